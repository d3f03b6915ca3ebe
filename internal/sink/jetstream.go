package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/depbridge/depbridge/internal/config"
)

// Delivery defaults of the JetStream sink, set explicitly.
const (
	// maxPendingAcks bounds unacknowledged publishes on the connection;
	// past it PublishMsgAsync stalls briefly, then fails (and the caller
	// retries). It is well above the engine's bound on events in flight
	// (watch.Options.MaxInFlight), so it only guards against a caller
	// that ignores that bound.
	maxPendingAcks = 1 << 16
)

// JetStream publishes to a JetStream stream: at least once. Send returns
// nil, and SendAsync calls back with nil, only after the stream's PubAck.
// Each message carries the event id as Nats-Msg-Id, so within the stream's
// duplicate window (2 minutes by default) a retried event is stored once.
//
// Publishes are pipelined on one connection: each is published
// asynchronously and completed by the client's ack callback, so many
// events are in flight without a goroutine waiting on each. (Measured
// alternatives that were slower: a synchronous PublishMsg per Send, one
// goroutine waiting on each ack future, and spreading Sends over several
// connections.)
type JetStream struct {
	nc      *nats.Conn
	pub     jetstream.Publisher
	streams jetstream.StreamManager
	stream  string
	// expectStream is the Nats-Expected-Stream header value, shared by
	// every message; nil when the sink names no stream.
	expectStream []string
	name         string
	log          *slog.Logger
	inflight     inflight
	closed       chan struct{} // closed when the first Close has finished

	mu sync.Mutex
	// pending holds the callback of each published message until the
	// client reports its ack or failure.
	pending map[*nats.Msg]func(error)
}

// NewJetStream connects to the NATS server of cfg. It does not check
// streams: call Check with the routes' subject patterns.
func NewJetStream(name string, cfg config.JetStream, log *slog.Logger) (*JetStream, error) {
	log = orDiscard(log)
	nc, err := connectNATS(name, cfg.NATSConn, log)
	if err != nil {
		return nil, err
	}
	cfg.Default()
	s := &JetStream{nc: nc, stream: cfg.Stream, name: name, log: log, pending: map[*nats.Msg]func(error){}, closed: make(chan struct{})}
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncTimeout(cfg.AckTimeout.Duration),
		jetstream.WithPublishAsyncMaxPending(maxPendingAcks),
		jetstream.WithPublishAsyncAckHandler(s.acked),
		jetstream.WithPublishAsyncErrHandler(s.failed),
	)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	s.pub, s.streams = js, js
	if cfg.Stream != "" {
		s.expectStream = []string{cfg.Stream}
	}
	return s, nil
}

// Send publishes e to t.Subject and waits for the PubAck, ctx, or the ack
// timeout. A duplicate ack (the stream already had this id) is a success.
func (s *JetStream) Send(ctx context.Context, t Target, e ce.Event) error {
	return sendAndWait(ctx, s, t, e)
}

// SendAsync publishes e to t.Subject and calls done with nil on its PubAck
// (a duplicate ack included), or with the error: no ack within the ack
// timeout, a disconnection, a stream's rejection, Close.
func (s *JetStream) SendAsync(t Target, e ce.Event, done func(error)) {
	if err := s.inflight.add(); err != nil {
		done(err)
		return
	}
	m, err := encodeNATS(t.Subject, t.Mode, &e)
	if err != nil {
		s.inflight.done()
		done(err)
		return
	}
	// The headers jetstream.WithMsgID and WithExpectStream would set,
	// without the per-publish option machinery.
	m.Header[jetstream.MsgIDHeader] = []string{e.ID()}
	if s.expectStream != nil {
		m.Header[jetstream.ExpectedStreamHeader] = s.expectStream
	}
	// Registered before the publish: the ack may come before
	// PublishMsgAsync returns.
	s.mu.Lock()
	s.pending[m] = done
	s.mu.Unlock()
	if _, err := s.pub.PublishMsgAsync(m); err != nil {
		s.complete(m, err)
	}
}

// acked is the client's callback for a PubAck.
func (s *JetStream) acked(_ jetstream.JetStream, m *nats.Msg, ack *jetstream.PubAck) {
	if ack.Duplicate {
		s.log.Debug("stream already had the event", "event_id", m.Header.Get(jetstream.MsgIDHeader), "stream", ack.Stream, "seq", ack.Sequence)
	}
	s.complete(m, nil)
}

// failed is the client's callback for a publish that failed.
func (s *JetStream) failed(_ jetstream.JetStream, m *nats.Msg, err error) { s.complete(m, err) }

// complete calls m's callback once, with err wrapped to name the event.
func (s *JetStream) complete(m *nats.Msg, err error) {
	s.mu.Lock()
	done, ok := s.pending[m]
	delete(s.pending, m)
	s.mu.Unlock()
	if !ok {
		return
	}
	if err != nil {
		err = fmt.Errorf("publish %s to %q: %w", m.Header.Get(jetstream.MsgIDHeader), m.Subject, natsError(m, err))
	}
	done(err)
	s.inflight.done()
}

// Check verifies that one stream captures every subject each pattern can
// produce ("*" marks a token filled in per watcher), that the stream
// acknowledges publishes, and, when the sink names a stream, that it is
// that stream. It is called once at start, never per Send.
func (s *JetStream) Check(ctx context.Context, patterns []string) error {
	var errs []error
	for _, p := range patterns {
		if err := s.check(ctx, p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *JetStream) check(ctx context.Context, pattern string) error {
	var candidates []string
	if s.stream != "" {
		candidates = []string{s.stream}
	} else {
		names := s.streams.StreamNames(ctx, jetstream.WithStreamListSubject(pattern))
		for n := range names.Name() {
			candidates = append(candidates, n)
		}
		if err := names.Err(); err != nil {
			return fmt.Errorf("jetstream: list streams for subject %q: %w", pattern, err)
		}
	}
	for _, name := range candidates {
		st, err := s.streams.Stream(ctx, name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("jetstream: stream %q (sinks[%s].jetstream.stream) does not exist; create it with `nats stream add %s --subjects %q`", name, s.name, name, suggestSubjects(pattern))
		}
		if err != nil {
			return fmt.Errorf("jetstream: stream %q: %w", name, err)
		}
		cfg := st.CachedInfo().Config
		if !slices.ContainsFunc(cfg.Subjects, func(f string) bool { return subjectCovers(f, pattern) }) {
			if s.stream != "" {
				return fmt.Errorf("jetstream: stream %q captures %q, not every subject of %q; add %q to its subjects or change the route's subject", name, cfg.Subjects, pattern, suggestSubjects(pattern))
			}
			continue
		}
		if cfg.NoAck {
			return fmt.Errorf("jetstream: stream %q captures %q but has no_ack set, so publishes are never acknowledged", name, pattern)
		}
		s.log.Info("stream captures route subjects", "stream", name, "subjects", pattern, "duplicate_window", cfg.Duplicates)
		return nil
	}
	return fmt.Errorf("jetstream: no JetStream stream captures subject %q; create one with `nats stream add DEPBRIDGE --subjects %q` or set sinks[%s].jetstream.stream", pattern, suggestSubjects(pattern), s.name)
}

// Close waits for the acks of the events in flight until ctx is done,
// flushes and closes the connection; events still unacknowledged then
// fail with ErrClosed. A concurrent Close waits for the first one (within
// its own ctx) and fails nothing itself.
func (s *JetStream) Close(ctx context.Context) error {
	return closeNATS(ctx, s.nc, &s.inflight, s.closed, s.failPending)
}

// failPending fails the sends still waiting for their ack with ErrClosed.
func (s *JetStream) failPending() {
	s.mu.Lock()
	left := make([]*nats.Msg, 0, len(s.pending))
	for m := range s.pending {
		left = append(left, m)
	}
	s.mu.Unlock()
	for _, m := range left {
		s.complete(m, ErrClosed)
	}
}

// subjectCovers reports whether every subject matching pattern (whose "*"
// tokens are wildcards) also matches the stream subject filter.
func subjectCovers(filter, pattern string) bool {
	f := strings.Split(filter, ".")
	p := strings.Split(pattern, ".")
	for i, ft := range f {
		if ft == ">" {
			return len(p) > i
		}
		if i >= len(p) {
			return false
		}
		switch {
		case ft == "*":
			if p[i] == ">" {
				return false
			}
		case ft != p[i]:
			return false
		}
	}
	return len(f) == len(p)
}

// suggestSubjects is a stream subject filter covering pattern: its literal
// prefix followed by ">", or pattern itself when it has no wildcard.
func suggestSubjects(pattern string) string {
	tokens := strings.Split(pattern, ".")
	for i, t := range tokens {
		if t == "*" || t == ">" {
			return strings.Join(append(tokens[:i:i], ">"), ".")
		}
	}
	return pattern
}

var (
	_ Sink        = (*JetStream)(nil)
	_ AsyncSender = (*JetStream)(nil)
	_ Checker     = (*JetStream)(nil)
)
