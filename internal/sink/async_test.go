package sink

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// callbacks records the done calls of SendAsync, by event id.
type callbacks struct {
	mu    sync.Mutex
	calls map[string][]error
	all   chan struct{} // closed when want ids have been called back
	want  int
}

func newCallbacks(want int) *callbacks {
	return &callbacks{calls: map[string][]error{}, all: make(chan struct{}), want: want}
}

func (c *callbacks) done(id string) func(error) {
	return func(err error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.calls[id] = append(c.calls[id], err)
		if len(c.calls) == c.want && len(c.calls[id]) == 1 {
			close(c.all)
		}
	}
}

// wait waits until every id was called back, then checks that each was
// called exactly once and that check accepts its error.
func (c *callbacks) wait(t *testing.T, within time.Duration, check func(id string, err error)) {
	t.Helper()
	timeout := time.NewTimer(within)
	defer timeout.Stop()
	select {
	case <-c.all:
	default:
		select {
		case <-c.all:
		case <-timeout.C:
			c.mu.Lock()
			defer c.mu.Unlock()
			t.Fatalf("%d of %d sends called back within %s", len(c.calls), c.want, within)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, errs := range c.calls {
		if len(errs) != 1 {
			t.Errorf("%s: done called %d times (%v), want once", id, len(errs), errs)
			continue
		}
		check(id, errs[0])
	}
}

// sendAll hands n events to s with SendAsync, event i of watcher i%50
// with sequence first+i, and returns their callbacks.
func sendAll(t *testing.T, s AsyncSender, tgt Target, first, n int) *callbacks {
	t.Helper()
	cb := newCallbacks(n)
	for i := range n {
		e := testEvent(t, i%50, first+i)
		s.SendAsync(tgt, e, cb.done(e.ID()))
	}
	return cb
}

// acked waits for cb's sends and checks that each succeeded.
func (c *callbacks) acked(t *testing.T) {
	t.Helper()
	c.wait(t, 20*time.Second, func(id string, err error) {
		if err != nil {
			t.Errorf("%s: %v", id, err)
		}
	})
}

// closeFailsPending closes s with a 200ms deadline while cb's sends are
// unanswered: Close reports the deadline and each send fails with
// ErrClosed naming its event.
func closeFailsPending(t *testing.T, s Sink, cb *callbacks) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := s.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close with unacknowledged events = %v, want the deadline", err)
	}
	cb.wait(t, 5*time.Second, func(id string, err error) {
		if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), id) {
			t.Errorf("%s: %v, want ErrClosed naming the event", id, err)
		}
	})
}

// SendAsync on JetStream: every event is acknowledged through its
// callback, exactly once, and stored; an event nobody acknowledges fails
// with ErrClosed when Close's deadline passes, and is not called back
// again when its ack timeout comes.
func TestJetStreamSendAsync(t *testing.T) {
	srv := startNATS(t, 0, t.TempDir())
	nc, js := connectJS(t, srv.ClientURL())
	createStream(t, js, "DEPBRIDGE", "depbridge.>")
	s := newJetStreamSink(t, srv.ClientURL(), "", nil)

	const n = 500
	sendAll(t, s, Target{Subject: "depbridge.reconcile.async"}, 0, n).acked(t)
	if ids := streamIDs(t, js, "DEPBRIDGE"); len(ids) != n {
		t.Errorf("stream holds %d distinct events, want %d", len(ids), n)
	}

	// A plain subscriber on the subject: the publish is delivered, so no
	// "no responders", but nothing ever acks it.
	sub, err := nc.SubscribeSync("hold.>")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	heldCB := sendAll(t, s, Target{Subject: "hold.x"}, n, 10)
	closeFailsPending(t, s, heldCB)
	time.Sleep(1500 * time.Millisecond) // past the sink's 1s ack timeout
	heldCB.wait(t, 0, func(string, error) {})

	closed := sendAll(t, s, Target{Subject: "depbridge.reconcile.async"}, n+10, 1)
	closed.wait(t, time.Second, func(id string, err error) {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("SendAsync after Close: %v, want ErrClosed", err)
		}
	})
}

// SendAsync on Kafka: every event is acknowledged through its callback,
// exactly once; events whose produce
// request is held fail with ErrClosed when Close's deadline passes.
func TestKafkaSendAsync(t *testing.T) {
	c := startKafka(t, 0, "", kfake.NumBrokers(1), kfake.SeedTopics(2, "async", "stuck"))
	addr := c.ListenAddrs()[0]
	s := newKafkaSink(t, addr)

	const n = 500
	sendAll(t, s, Target{Subject: "async"}, 0, n).acked(t)
	ids := map[string]bool{}
	for _, r := range readTopic(t, addr, "async", 2) {
		ids[r.id] = true
	}
	if len(ids) != n {
		t.Errorf("topic holds %d distinct events, want %d", len(ids), n)
	}

	held, _, release := holdProduce(c)
	defer release()
	stuckCB := sendAll(t, s, Target{Subject: "stuck"}, n, 10)
	<-held
	closeFailsPending(t, s, stuckCB)
}
