package control

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/sink"
	"github.com/depbridge/depbridge/internal/watch"
)

// errForbidden is an engine error that may pass: the bridge's RBAC is not
// bound yet.
var errForbidden = errors.New(`configmaps is forbidden: User "system:serviceaccount:depbridge:depbridge" cannot list resource "configmaps"`)

// flakySubs is a Subscriptions whose Apply fails with errForbidden while
// fail says so for the subscription and the call (1 for a watcher's first
// Apply); otherwise it applies. It keeps the last subscription applied to
// each watcher; Delete removes it.
type flakySubs struct {
	fail  func(sub config.Subscription, call int) bool
	calls chan config.Subscription // every Apply

	mu      sync.Mutex
	n       map[cache.Ref]int
	applied map[cache.Ref]config.Subscription
}

func newFlakySubs(fail func(config.Subscription, int) bool) *flakySubs {
	return &flakySubs{fail: fail, calls: make(chan config.Subscription, 64),
		n: map[cache.Ref]int{}, applied: map[cache.Ref]config.Subscription{}}
}

func (s *flakySubs) Apply(_ context.Context, sub config.Subscription) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n[sub.Watcher]++
	select {
	case s.calls <- sub:
	default:
	}
	if s.fail != nil && s.fail(sub, s.n[sub.Watcher]) {
		return fmt.Errorf("watch %s: %w", sub.Watched[0].Key(), errForbidden)
	}
	s.applied[sub.Watcher] = sub
	return nil
}

func (s *flakySubs) Delete(_ context.Context, w cache.Ref) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.applied, w)
	return nil
}

func (s *flakySubs) Query(context.Context, cache.Ref, string, bool, []cache.Ref) ([]watch.QueryResult, error) {
	return nil, nil
}

func (s *flakySubs) Resource(ctx context.Context, gvk schema.GroupVersionKind) (cache.Resource, error) {
	return (&fakeSubs{}).Resource(ctx, gvk)
}

// appliedTo returns the subscription applied to w, if any, and how many
// times Apply was called for w.
func (s *flakySubs) appliedTo(w cache.Ref) (config.Subscription, bool, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub, ok := s.applied[w]
	return sub, ok, s.n[w]
}

// replayBus is a bus holding a control channel's messages, for the tests
// that run both transports the same way.
type replayBus struct {
	// start runs a new transport over the bus with subs until stop or the
	// end of the test, and waits for Synced.
	start func(t *testing.T, subs Subscriptions, m *Metrics) (tr Transport, stop func())
	// send stores e on the bus as a message of its watcher w and returns
	// the status of a running transport.
	send func(t *testing.T, w cache.Ref, e ce.Event) StatusData
	// store stores e as a message of w and returns at once.
	store func(t *testing.T, w cache.Ref, e ce.Event)
	// noStatus fails the test if a status comes within a short while.
	noStatus func(t *testing.T)
	// last is the id of w's last message on the bus, and whether it is
	// a restore (the bus put back after a rejection).
	last func(t *testing.T, w cache.Ref) (id string, restore bool)
}

func natsBus(t *testing.T) replayBus {
	srv := startNATS(t, t.TempDir())
	c := newNATSClient(t, srv)
	return replayBus{
		start: func(t *testing.T, subs Subscriptions, m *Metrics) (Transport, func()) {
			tr, err := NewNATS(config.Control{Sink: "bus", Subject: prefix, Policy: testPolicy(false)},
				config.NATSConn{URL: natsURL(srv)}, subs, Options{Logger: testLogger(t), Metrics: m, MessageTimeout: 20 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			return tr, runTransport(t, tr)
		},
		send: func(t *testing.T, w cache.Ref, e ce.Event) StatusData {
			c.publish(t, WatcherSubject(prefix, w), e, sink.Binary)
			_, st := c.waitStatus(t, e.ID())
			return st
		},
		store:    func(t *testing.T, w cache.Ref, e ce.Event) { c.publish(t, WatcherSubject(prefix, w), e, sink.Binary) },
		noStatus: func(t *testing.T) { c.noStatus(t, 300*time.Millisecond) },
		last: func(t *testing.T, w cache.Ref) (string, bool) {
			s, err := c.js.Stream(context.Background(), DefaultStream)
			if err != nil {
				t.Fatal(err)
			}
			m, err := s.GetLastMsgForSubject(context.Background(), WatcherSubject(prefix, w))
			if err != nil {
				t.Fatalf("last message of %s: %v", w.Key(), err)
			}
			return m.Header.Get("ce-id"), m.Header.Get(hdrRestored) != ""
		},
	}
}

func kafkaBus(t *testing.T) replayBus {
	addr := startKafka(t)
	var c *kafkaClient // once a transport created the topics
	return replayBus{
		start: func(t *testing.T, subs Subscriptions, m *Metrics) (Transport, func()) {
			tr, err := NewKafka(config.Control{Sink: "bus", Subject: topic, Policy: testPolicy(false)},
				config.Kafka{Brokers: []string{addr}, WriteTimeout: metav1.Duration{Duration: 5 * time.Second}}, subs,
				Options{Logger: testLogger(t), Metrics: m, MessageTimeout: 20 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			stop := runTransport(t, tr)
			if c == nil {
				c = newKafkaClient(t, addr)
			}
			return tr, stop
		},
		send: func(t *testing.T, w cache.Ref, e ce.Event) StatusData {
			c.produce(t, w.Key(), &e, sink.Binary)
			_, st := c.waitStatus(t, e.ID())
			return st
		},
		store: func(t *testing.T, w cache.Ref, e ce.Event) { c.produce(t, w.Key(), &e, sink.Binary) },
		noStatus: func(t *testing.T) {
			select {
			case s := <-c.status:
				t.Errorf("status after the stop: %s", s.Value)
			case <-time.After(500 * time.Millisecond):
			}
		},
		last: func(t *testing.T, w cache.Ref) (string, bool) {
			m, ok := lastRecord(t, addr, w.Key())
			if !ok {
				t.Fatalf("no record of %s", w.Key())
			}
			return kafkaHeader(m, "ce_id"), kafkaHeader(m, hdrRestoredKafka) != ""
		},
	}
}

// testStopInFlight: a message being handled when the channel stops is not
// answered, not counted and not removed or replaced on the bus: it was not
// carried out, and the next start does it.
func testStopInFlight(t *testing.T, bus replayBus) {
	subs, m := newStallSubs(true), newTestMetrics(t)
	_, stop := bus.start(t, subs, m)
	w := fnRef("ns", "fn")
	bus.store(t, w, newEvent(t, "in-flight", TypeApply, applyData(w, cmRef("ns", "a"))))
	subs.waitStall(t)
	stop()
	bus.noStatus(t)
	noCount(t, m)
	if id, restore := bus.last(t, w); id != "in-flight" || restore {
		t.Fatalf("the message in flight is no longer its watcher's last: id %q, restore %v", id, restore)
	}

	// The next start carries it out.
	subs2 := newStallSubs(false)
	bus.start(t, subs2, newTestMetrics(t))
	if got, want := subs2.appliedKeys(), []string{w.Key()}; !slices.Equal(got, want) {
		t.Errorf("applied at the next start: %v, want %v", got, want)
	}
}

func TestNATSStopInFlight(t *testing.T)  { testStopInFlight(t, natsBus(t)) }
func TestKafkaStopInFlight(t *testing.T) { testStopInFlight(t, kafkaBus(t)) }

// seedApply stores an accepted apply of w watching a on bus, through a
// transport that is stopped afterwards.
func seedApply(t *testing.T, bus replayBus, w, a cache.Ref) {
	t.Helper()
	_, stop := bus.start(t, newFlakySubs(nil), newTestMetrics(t))
	if st := bus.send(t, w, newEvent(t, "seed", TypeApply, applyData(w, a))); !st.Accepted {
		t.Fatalf("seed apply rejected: %s", st.Reason)
	}
	stop()
}

// testReplayRetry: a replayed apply that fails for a reason that may pass
// is reported by Failures once Synced, retried with backoff until it is
// applied, and then counted once, as accepted.
func testReplayRetry(t *testing.T, bus replayBus) {
	w, a := fnRef("ns", "fn"), cmRef("ns", "a")
	seedApply(t, bus, w, a)

	subs, m := newFlakySubs(func(_ config.Subscription, call int) bool { return call <= 2 }), newTestMetrics(t)
	tr, _ := bus.start(t, subs, m)
	// Synced: the replayed apply was handled once, and failed.
	if f := tr.Failures(); len(f) != 1 || !strings.HasPrefix(f[0], w.Key()+": ") || !strings.Contains(f[0], "forbidden") {
		t.Fatalf("Failures once synced = %q, want the replayed apply of %s", f, w.Key())
	}
	if _, ok, _ := subs.appliedTo(w); ok {
		t.Fatal("applied although Apply failed")
	}
	noCount(t, m)

	eventually(t, "the replayed apply retried until applied", func() bool {
		_, ok, _ := subs.appliedTo(w)
		return ok
	})
	eventually(t, "no failures once applied", func() bool { return len(tr.Failures()) == 0 })
	if sub, _, n := subs.appliedTo(w); n != 3 || !slices.Equal(sub.Watched, []cache.Ref{a}) {
		t.Errorf("applied %v after %d calls, want [%s] after 3", sub.Watched, n, a.Key())
	}
	if got := testutil.ToFloat64(m.messages.WithLabelValues("apply", "accepted")); got != 1 {
		t.Errorf("accepted applies counted: %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.messages.WithLabelValues("apply", "rejected")); got != 0 {
		t.Errorf("rejected applies counted: %v, want 0", got)
	}
}

// testReplayRetrySuperseded: a newer message of the watcher replaces the
// pending retry of its replayed message (an apply supersedes it, a delete
// removes it): the replayed message is not handled again, and Failures
// no longer reports it.
func testReplayRetrySuperseded(t *testing.T, newBus func(*testing.T) replayBus) {
	tests := map[string]struct {
		newer   func(t *testing.T, w cache.Ref) ce.Event
		watched []cache.Ref // applied at the end; nil: none
	}{
		"apply": {
			newer: func(t *testing.T, w cache.Ref) ce.Event {
				return newEvent(t, "newer", TypeApply, applyData(w, cmRef("ns", "b")))
			},
			watched: []cache.Ref{cmRef("ns", "b")},
		},
		"delete": {
			newer: func(t *testing.T, w cache.Ref) ce.Event {
				return newEvent(t, "newer", TypeDelete, DeleteData{Watcher: w})
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			bus := newBus(t)
			w, a := fnRef("ns", "fn"), cmRef("ns", "a")
			seedApply(t, bus, w, a)

			// Applies watching a fail, always.
			subs := newFlakySubs(func(sub config.Subscription, _ int) bool { return slices.Contains(sub.Watched, a) })
			tr, _ := bus.start(t, subs, newTestMetrics(t))
			if f := tr.Failures(); len(f) != 1 || !strings.HasPrefix(f[0], w.Key()+": ") {
				t.Fatalf("Failures once synced = %q, want the replayed apply of %s", f, w.Key())
			}
			if st := bus.send(t, w, tc.newer(t, w)); !st.Accepted {
				t.Fatalf("newer message rejected: %s", st.Reason)
			}
			if f := tr.Failures(); len(f) != 0 {
				t.Errorf("Failures after the newer message = %q, want none", f)
			}
			for len(subs.calls) > 0 {
				<-subs.calls
			}
			// The first retry would come 1s after the replay, the next 2s
			// after that.
			select {
			case sub := <-subs.calls:
				t.Errorf("Apply %v after the newer message", sub.Watched)
			case <-time.After(2500 * time.Millisecond):
			}
			sub, ok, _ := subs.appliedTo(w)
			switch {
			case tc.watched == nil && ok:
				t.Errorf("%s has a subscription (%v) after the delete", w.Key(), sub.Watched)
			case tc.watched != nil && !slices.Equal(sub.Watched, tc.watched):
				t.Errorf("%s watches %v, want %v", w.Key(), sub.Watched, tc.watched)
			}
			if f := tr.Failures(); len(f) != 0 {
				t.Errorf("Failures at the end = %q, want none", f)
			}
		})
	}
}

func TestNATSReplayRetry(t *testing.T)  { testReplayRetry(t, natsBus(t)) }
func TestKafkaReplayRetry(t *testing.T) { testReplayRetry(t, kafkaBus(t)) }

func TestNATSReplayRetrySuperseded(t *testing.T)  { testReplayRetrySuperseded(t, natsBus) }
func TestKafkaReplayRetrySuperseded(t *testing.T) { testReplayRetrySuperseded(t, kafkaBus) }

// TestRetrySet runs the retry set on a serializer, with short backoff: a
// transient failure is retried with growing delays until it passes, never
// concurrently with another function of its key; a newer message of the
// key replaces it; stopping drops what is pending.
func TestRetrySet(t *testing.T) {
	start := func(t *testing.T) (*retrySet, *serializer, context.CancelFunc, *sync.WaitGroup) {
		ctx, cancel := context.WithCancel(context.Background())
		ser := newSerializer(16)
		r := newRetrySet(testLogger(t))
		r.min, r.max = 10*time.Millisecond, 40*time.Millisecond
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() { ser.run(ctx) })
		}
		wg.Go(func() { r.run(ctx, ser) })
		t.Cleanup(func() { cancel(); wg.Wait() })
		return r, ser, cancel, &wg
	}
	// inKey tracks the functions of one key running, to catch overlaps.
	type inKey struct {
		mu      sync.Mutex
		running int
		overlap bool
		log     []string
		times   []time.Time
	}
	enter := func(k *inKey, what string) func() {
		k.mu.Lock()
		k.running++
		k.overlap = k.overlap || k.running > 1
		k.log = append(k.log, what)
		k.times = append(k.times, time.Now())
		k.mu.Unlock()
		return func() {
			k.mu.Lock()
			k.running--
			k.mu.Unlock()
		}
	}
	logOf := func(k *inKey) []string {
		k.mu.Lock()
		defer k.mu.Unlock()
		return slices.Clone(k.log)
	}

	t.Run("retried with backoff until it passes", func(t *testing.T) {
		r, ser, _, _ := start(t)
		k := &inKey{}
		calls := 0
		fn := func(context.Context) *transient {
			defer enter(k, "old")()
			if calls++; calls <= 4 {
				return &transient{watcher: "w", err: errForbidden}
			}
			return nil
		}
		if err := ser.add(context.Background(), "k", func(ctx context.Context) { r.handle(ctx, "k", fn) }); err != nil {
			t.Fatal(err)
		}
		eventually(t, "five attempts", func() bool { return len(logOf(k)) == 5 })
		eventually(t, "no failures", func() bool { return len(r.failures()) == 0 })
		k.mu.Lock()
		defer k.mu.Unlock()
		if k.overlap {
			t.Error("attempts overlapped")
		}
		// Waits of 10, 20, 40 and 40ms (the maximum) between attempts.
		for i, want := range []time.Duration{10, 20, 40, 40} {
			if got := k.times[i+1].Sub(k.times[i]); got < want*time.Millisecond {
				t.Errorf("wait before attempt %d: %s, want at least %dms", i+2, got, want)
			}
		}
	})

	t.Run("a newer message replaces it", func(t *testing.T) {
		r, ser, _, _ := start(t)
		k := &inKey{}
		old := func(context.Context) *transient {
			defer enter(k, "old")()
			return &transient{watcher: "w", err: errForbidden}
		}
		newer := func(context.Context) *transient {
			defer enter(k, "newer")()
			return nil
		}
		add := func(fn func(context.Context)) {
			if err := ser.add(context.Background(), "k", fn); err != nil {
				t.Fatal(err)
			}
		}
		add(func(ctx context.Context) { r.handle(ctx, "k", old) })
		eventually(t, "a retry of the old message", func() bool { return len(logOf(k)) >= 2 })
		if f := r.failures(); !slices.Equal(f, []string{"w: " + errForbidden.Error()}) {
			t.Errorf("failures = %q", f)
		}
		// The key is busy while the newer message is read, and the retry
		// falls due and is queued behind it.
		release := make(chan struct{})
		add(func(context.Context) { <-release })
		add(func(ctx context.Context) { r.handle(ctx, "k", newer) })
		eventually(t, "the retry queued", func() bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			e := r.pending["k"]
			return e != nil && e.queued
		})
		close(release)
		// Everything queued before this has run.
		done := make(chan struct{})
		add(func(context.Context) { close(done) })
		select {
		case <-done:
		case <-time.After(wait):
			t.Fatal("the key's functions did not run")
		}
		got := logOf(k)
		if got[len(got)-1] != "newer" {
			t.Errorf("handled %v: the old message ran after the newer one", got)
		}
		if f := r.failures(); len(f) != 0 {
			t.Errorf("failures after the newer message = %q", f)
		}
		k.mu.Lock()
		defer k.mu.Unlock()
		if k.overlap {
			t.Error("a retry overlapped the newer message")
		}
	})

	t.Run("stopping drops it", func(t *testing.T) {
		r, ser, cancel, wg := start(t)
		fn := func(context.Context) *transient { return &transient{watcher: "w", err: errForbidden} }
		if err := ser.add(context.Background(), "k", func(ctx context.Context) { r.handle(ctx, "k", fn) }); err != nil {
			t.Fatal(err)
		}
		eventually(t, "a failure", func() bool { return len(r.failures()) == 1 })
		cancel()
		wg.Wait()
		if f := r.failures(); len(f) != 0 {
			t.Errorf("failures after the stop = %q", f)
		}
	})
}

// Which failures of a replayed message are retried: those that may pass,
// not those that would fail the same way again (a kind the cluster does
// not serve, or serves without list and watch, included: an API removed
// by an upgrade must not keep the bridge retrying, not ready, for ever).
func TestRetriedFailures(t *testing.T) {
	for name, tt := range map[string]struct {
		err  error
		want bool
	}{
		"forbidden":          {errors.New(`configmaps is forbidden: User "depbridge" cannot watch`), true},
		"timeout":            {fmt.Errorf("waiting for the watch to start: %w", context.DeadlineExceeded), true},
		"kind not served":    {fmt.Errorf("watched[0]: batch/v1beta1 CronJob: %w", cache.ErrNoVersionedResource), false},
		"kind not watchable": {fmt.Errorf("watched[0]: v1 Binding: %w", cache.ErrResourceUnwatchable), false},
		"invalid":            {fmt.Errorf("%w: watcher: no kind", ErrInvalid), false},
		"denied":             {fmt.Errorf("%w: no rule allows it", ErrDenied), false},
		"owned":              {ErrOwned, false},
	} {
		if got := retried(true, tt.err); got != tt.want {
			t.Errorf("%s: retried = %v, want %v", name, got, tt.want)
		}
		if retried(false, tt.err) {
			t.Errorf("%s: a live message's failure is retried", name)
		}
	}
}
