package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/depbridge/depbridge/internal/config"
)

// Delivery defaults of the JetStream sink, set explicitly.
const (
	// maxPendingAcks bounds unacknowledged publishes on the connection;
	// past it PublishMsgAsync stalls briefly, then fails (and the caller
	// retries). Each engine worker has one publish in flight, so with the
	// default 256 workers it is never reached; it only guards against a
	// configuration with thousands of workers.
	maxPendingAcks = 4096
)

// JetStream publishes to a JetStream stream: at least once. Send returns
// nil only after the stream's PubAck. Each message carries the event id as
// Nats-Msg-Id, so within the stream's duplicate window (2 minutes by
// default) a retried event is stored once.
//
// Concurrent Sends share the connection: each publishes asynchronously and
// waits for its own ack, so throughput grows with the number of senders.
// (Measured alternatives that were slower: a synchronous PublishMsg per
// Send, and spreading Sends over several connections.)
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
	ackTimeout := cfg.AckTimeout.Duration
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncTimeout(ackTimeout),
		jetstream.WithPublishAsyncMaxPending(maxPendingAcks),
	)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	s := &JetStream{nc: nc, pub: js, streams: js, stream: cfg.Stream, name: name, log: log}
	if cfg.Stream != "" {
		s.expectStream = []string{cfg.Stream}
	}
	return s, nil
}

// Send publishes e to t.Subject and waits for the PubAck, ctx, or the ack
// timeout. A duplicate ack (the stream already had this id) is a success.
func (s *JetStream) Send(ctx context.Context, t Target, e ce.Event) error {
	if err := s.inflight.add(); err != nil {
		return err
	}
	defer s.inflight.done()
	m, err := encodeNATS(t.Subject, t.Mode, &e)
	if err != nil {
		return err
	}
	// The headers jetstream.WithMsgID and WithExpectStream would set,
	// without the per-publish option machinery.
	m.Header[jetstream.MsgIDHeader] = []string{e.ID()}
	if s.expectStream != nil {
		m.Header[jetstream.ExpectedStreamHeader] = s.expectStream
	}
	f, err := s.pub.PublishMsgAsync(m)
	if err != nil {
		return fmt.Errorf("publish %s to %q: %w", e.ID(), t.Subject, err)
	}
	select {
	case ack := <-f.Ok():
		if ack.Duplicate {
			s.log.Debug("stream already had the event", "event_id", e.ID(), "stream", ack.Stream, "seq", ack.Sequence)
		}
		return nil
	case err := <-f.Err():
		return fmt.Errorf("publish %s to %q: %w", e.ID(), t.Subject, err)
	case <-ctx.Done():
		return fmt.Errorf("publish %s to %q: wait for ack: %w", e.ID(), t.Subject, context.Cause(ctx))
	}
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

// Close waits for running Sends (and so their acks), flushes and closes the
// connection.
func (s *JetStream) Close(ctx context.Context) error {
	return closeNATS(ctx, s.nc, &s.inflight)
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
	_ Sink    = (*JetStream)(nil)
	_ Checker = (*JetStream)(nil)
)
