package sink

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/depbridge/depbridge/internal/config"
)

func connectJS(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

func createStream(t testing.TB, js jetstream.JetStream, name string, subjects ...string) jetstream.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: subjects, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatalf("create stream %s: %v", name, err)
	}
	return st
}

func newJetStreamSink(t testing.TB, url, stream string, log *logBuffer) *JetStream {
	t.Helper()
	l := testLogger(&logBuffer{})
	if log != nil {
		l = testLogger(log)
	}
	s, err := NewJetStream("js", config.JetStream{NATSConn: config.NATSConn{URL: url}, Stream: stream,
		AckTimeout: durationOf(time.Second)}, l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

// streamIDs reads every message of stream and returns the count of each
// event id (Nats-Msg-Id), and checks each message decodes as a CloudEvent
// with that id.
func streamIDs(t testing.TB, js jetstream.JetStream, stream string) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	if info.State.Msgs == 0 {
		return ids
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for read := uint64(0); read < info.State.Msgs; {
		batch, err := cons.Fetch(int(min(info.State.Msgs-read, 500)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			msg := &nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()}
			e, err := decodeNATS(msg)
			if err != nil {
				t.Fatalf("message %d does not decode: %v", read, err)
			}
			if id := m.Headers().Get("Nats-Msg-Id"); id != e.ID() {
				t.Errorf("Nats-Msg-Id %q, event id %q", id, e.ID())
			}
			ids[e.ID()]++
		}
		if err := batch.Error(); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatalf("read %d of %d messages, then nothing", read, info.State.Msgs)
		}
		read += uint64(n)
	}
	return ids
}

func TestJetStreamSendBothModes(t *testing.T) {
	srv := startNATS(t, 0, t.TempDir())
	_, js := connectJS(t, srv.ClientURL())
	createStream(t, js, "DEPBRIDGE", "depbridge.>")
	s := newJetStreamSink(t, srv.ClientURL(), "", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	route, err := NewRoute(config.Route{Name: "r", Sink: "js"}, config.Sink{Name: "js", JetStream: &config.JetStream{}}, s)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckRoutes(ctx, []*Route{route}); err != nil {
		t.Fatal(err)
	}
	sub, err := js.CreateOrUpdateConsumer(ctx, "DEPBRIDGE", jetstream.ConsumerConfig{AckPolicy: jetstream.AckNonePolicy})
	if err != nil {
		t.Fatal(err)
	}
	for i, mode := range []Mode{Binary, Structured} {
		e := trickyEvent(t)
		e.SetID("event-" + mode.String())
		tgt, err := route.Target(watcherRef(i))
		if err != nil {
			t.Fatal(err)
		}
		tgt.Mode = mode
		if err := s.Send(ctx, tgt, e); err != nil {
			t.Fatal(err)
		}
		m, err := sub.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject() != tgt.Subject {
			t.Errorf("subject = %q, want %q", m.Subject(), tgt.Subject)
		}
		isStructured := strings.HasPrefix(m.Headers().Get("Content-Type"), "application/cloudevents+json")
		if isStructured != (mode == Structured) {
			t.Errorf("%v mode: headers %v", mode, m.Headers())
		}
		back, err := decodeNATS(&nats.Msg{Header: m.Headers(), Data: m.Data()})
		if err != nil {
			t.Fatal(err)
		}
		assertSameEvent(t, back, e)
	}
}

func TestJetStreamDeduplicatesRetries(t *testing.T) {
	srv := startNATS(t, 0, t.TempDir())
	_, js := connectJS(t, srv.ClientURL())
	createStream(t, js, "DEPBRIDGE", "depbridge.>")
	logs := &logBuffer{}
	s := newJetStreamSink(t, srv.ClientURL(), "DEPBRIDGE", logs)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	e := testEvent(t, 1, 1)
	tgt := Target{Subject: "depbridge.reconcile.ConfigMap.ns.watcher-1"}
	for range 3 {
		if err := s.Send(ctx, tgt, e); err != nil {
			t.Fatal(err)
		}
	}
	// The same id published by another client is a duplicate too.
	ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: tgt.Subject, Data: []byte("{}")}, jetstream.WithMsgID(e.ID()))
	if err != nil {
		t.Fatal(err)
	}
	if !ack.Duplicate {
		t.Errorf("PubAck.Duplicate = false for a repeated Nats-Msg-Id")
	}
	if err := s.Send(ctx, tgt, testEvent(t, 1, 2)); err != nil {
		t.Fatal(err)
	}
	ids := streamIDs(t, js, "DEPBRIDGE")
	if len(ids) != 2 || ids[e.ID()] != 1 {
		t.Errorf("stream holds %v, want each of the 2 distinct ids once", ids)
	}
	if n := strings.Count(logs.String(), "stream already had the event"); n != 2 {
		t.Errorf("%d duplicate acks logged, want 2:\n%s", n, logs)
	}
}

func TestJetStreamCheck(t *testing.T) {
	srv := startNATS(t, 0, t.TempDir())
	_, js := connectJS(t, srv.ClientURL())
	createStream(t, js, "ALL", "depbridge.reconcile.>")
	createStream(t, js, "CM", "other.ConfigMap.>")
	createStream(t, js, "NOACK", "quiet.>")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := js.UpdateStream(ctx, jetstream.StreamConfig{Name: "NOACK", Subjects: []string{"quiet.>"}, NoAck: true}); err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		stream  string
		pattern string
		want    string // "" for success
	}{
		"covered by any stream":       {pattern: "depbridge.reconcile.*.*.*"},
		"covered by the named stream": {stream: "ALL", pattern: "depbridge.reconcile.*.*.*"},
		"literal subject":             {pattern: "depbridge.reconcile.x"},
		"no stream":                   {pattern: "nowhere.*", want: "no JetStream stream captures subject \"nowhere.*\"; create one with `nats stream add DEPBRIDGE --subjects \"nowhere.>\"` or set sinks[js].jetstream.stream"},
		"only partly covered":         {pattern: "other.*.x", want: `no JetStream stream captures subject "other.*.x"`},
		"named stream does not cover": {stream: "CM", pattern: "depbridge.reconcile.*.*.*", want: `stream "CM" captures ["other.ConfigMap.>"], not every subject of "depbridge.reconcile.*.*.*"`},
		"named stream missing":        {stream: "MISSING", pattern: "depbridge.reconcile.*.*.*", want: `stream "MISSING" (sinks[js].jetstream.stream) does not exist`},
		"stream that never acks":      {pattern: "quiet.*", want: "no_ack"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			s := newJetStreamSink(t, srv.ClientURL(), tt.stream, nil)
			err := s.Check(ctx, []string{tt.pattern})
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v\nwant it to contain %s", err, tt.want)
			}
		})
	}
}

// TestJetStreamSurvivesServerRestart stops the server for several seconds
// while events are being sent, restarts it on the same port with the same
// store, and checks that every event is in the stream exactly once: none
// lost, and every retry dropped as a duplicate.
func TestJetStreamSurvivesServerRestart(t *testing.T) {
	store := t.TempDir()
	srv := startNATS(t, 0, store)
	port := natsPort(srv)
	url := srv.ClientURL()
	_, js := connectJS(t, url)
	createStream(t, js, "DEPBRIDGE", "depbridge.>")
	s := newJetStreamSink(t, url, "DEPBRIDGE", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	const outage = 3 * time.Second
	var restarted time.Time
	sent, failures := outageRun(t, ctx, s, Target{Subject: "depbridge.reconcile.test"}, 20, 30,
		func() { srv.Shutdown(); srv.WaitForShutdown() },
		outage,
		func() { startNATS(t, port, store); restarted = time.Now() })
	if restarted.IsZero() {
		t.Fatal("server was not restarted")
	}
	if failures == 0 {
		t.Error("no send failed: the outage did not happen mid-stream, so this test showed nothing")
	}
	ids := streamIDs(t, js, "DEPBRIDGE")
	lost := 0
	for id := range sent {
		if ids[id] == 0 {
			lost++
		}
	}
	dups := 0
	for _, n := range ids {
		dups += n - 1
	}
	t.Logf("sent %d events, %d failed attempts during a %s outage, stream holds %d distinct (%d duplicates), lost %d",
		len(sent), failures, outage, len(ids), dups, lost)
	if len(sent) != 600 || lost != 0 {
		t.Errorf("sent %d of 600, lost %d", len(sent), lost)
	}
	if dups != 0 {
		t.Errorf("stream holds %d duplicates: retries carry the same Nats-Msg-Id and must be dropped within the duplicate window", dups)
	}
}

func TestCoreNATS(t *testing.T) {
	srv := startNATS(t, 0, t.TempDir())
	nc, _ := connectJS(t, srv.ClientURL())
	logs := &logBuffer{}
	s, err := NewNATS("core", config.NATS{NATSConn: config.NATSConn{URL: srv.ClientURL()}}, testLogger(logs))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	if !strings.Contains(logs.String(), "at most once") {
		t.Errorf("no at-most-once warning logged:\n%s", logs)
	}
	sub, err := nc.SubscribeSync("core.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, mode := range []Mode{Binary, Structured} {
		e := trickyEvent(t)
		if err := s.Send(ctx, Target{Subject: "core.events", Mode: mode}, e); err != nil {
			t.Fatal(err)
		}
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			t.Fatal(err)
		}
		back, err := decodeNATS(m)
		if err != nil {
			t.Fatal(err)
		}
		assertSameEvent(t, back, e)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(ctx, Target{Subject: "core.events"}, trickyEvent(t)); err != ErrClosed {
		t.Errorf("Send after Close = %v, want ErrClosed", err)
	}
}

func TestNATSConfigErrors(t *testing.T) {
	tests := map[string]struct {
		cfg  config.NATSConn
		want string
	}{
		"no url":                {config.NATSConn{}, "url is required"},
		"user and token":        {config.NATSConn{URL: "nats://127.0.0.1:1", User: "u", Token: "t"}, "not both"},
		"password alone":        {config.NATSConn{URL: "nats://127.0.0.1:1", Password: "secret-pw"}, "password without user"},
		"creds and nkey":        {config.NATSConn{URL: "nats://127.0.0.1:1", CredsFile: "a", NKeyFile: "b"}, "credsFile or nkeyFile"},
		"missing nkey file":     {config.NATSConn{URL: "nats://127.0.0.1:1", NKeyFile: "/nonexistent/seed"}, "nkeyFile"},
		"missing CA":            {config.NATSConn{URL: "nats://127.0.0.1:1", TLS: &config.TLS{CAFile: "/nonexistent/ca.pem"}}, "caFile"},
		"unreachable, redacted": {config.NATSConn{URL: "nats://u:secret-pw@127.0.0.1:1", User: "", Password: ""}, "connect"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := NewNATS("n", config.NATS{NATSConn: tt.cfg}, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "secret-pw") {
				t.Errorf("error leaks the password: %v", err)
			}
		})
	}
}

// Two Closes at once while acks are outstanding: the later one, whose ctx
// ends first, waits for the first Close and fails nothing, so the sends
// acked within the first Close's grace period succeed.
func TestJetStreamConcurrentClose(t *testing.T) {
	srv := startNATS(t, 0, t.TempDir())
	nc, _ := connectJS(t, srv.ClientURL())
	// A stand-in for a stream that holds the publishes until told to ack.
	held := make(chan *nats.Msg, 100)
	sub, err := nc.ChanSubscribe("hold.>", held)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	s, err := NewJetStream("js", config.JetStream{NATSConn: config.NATSConn{URL: srv.ClientURL()}, AckTimeout: durationOf(30 * time.Second)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	const n = 10
	cb := sendAll(t, s, Target{Subject: "hold.x"}, 0, n)
	msgs := make([]*nats.Msg, 0, n)
	for range n {
		select {
		case m := <-held:
			msgs = append(msgs, m)
		case <-ctx.Done():
			t.Fatalf("%d of %d publishes arrived", len(msgs), n)
		}
	}
	first := make(chan error, 1)
	go func() { first <- s.Close(ctx) }()
	waitFor(t, ctx, "the first Close has begun", func() bool {
		s.inflight.mu.RLock()
		defer s.inflight.mu.RUnlock()
		return s.inflight.closed
	})
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancelShort()
	if err := s.Close(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second Close = %v, want its deadline while the first still waits", err)
	}
	select {
	case err := <-first:
		t.Fatalf("first Close returned (%v) while acks were outstanding", err)
	default:
	}
	for i, m := range msgs {
		if err := m.Respond(fmt.Appendf(nil, `{"stream":"HOLD","seq":%d}`, i+1)); err != nil {
			t.Fatal(err)
		}
	}
	cb.acked(t)
	if err := <-first; err != nil {
		t.Errorf("first Close = %v", err)
	}
}
