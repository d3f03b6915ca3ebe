// Package sink delivers CloudEvents to brokers: core NATS, JetStream, Kafka
// (segmentio/kafka-go), HTTP and stdout, each in one file, with the
// CloudEvents protocol-binding writers they need (natsmsg.go, kafkamsg.go;
// HTTP uses sdk-go's own).
//
// Contract of every Sink:
//   - Send returns nil only when the broker has accepted the event as
//     durably as the transport allows: a JetStream PubAck, a Kafka produce
//     acknowledged by all in-sync replicas, an HTTP 2xx. Core NATS and stdout
//     are the exceptions and say so.
//   - Send retries little on its own. Beyond what the client library does
//     inside one call, only Kafka retries: it tries a batch up to
//     kafkaMaxAttempts times, with backoff, on a retriable error (a leader
//     moving, a connection reset) while a caller still waits. Past that,
//     the caller (the engine's queue) retries, with the same event id, so
//     brokers that deduplicate by id (JetStream) drop repeats.
//   - Send and Close are safe for concurrent use. Send after Close fails
//     with ErrClosed.
//   - An error that carries a receiver's request to wait (HTTP 429/5xx with
//     Retry-After) is found with RetryAfter, through any wrapping.
//   - An event the broker can never take for its size (over the NATS
//     server's max_payload or a stream's max_msg_size, a Kafka record over
//     the topic's max.message.bytes, an HTTP 413) fails with an error that
//     errors.Is matches to ErrTooLarge, through any wrapping, so the
//     caller can send a smaller event instead of retrying for ever.
//
// Routes (route.go) bind a configured route to its sink and render the
// subject or topic per watcher. Call CheckRoutes once at start: it asks the
// sinks that can (JetStream, Kafka) whether the routes' subjects lead
// somewhere, so a missing stream or topic fails at start rather than as
// endless retries.
package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	ce "github.com/cloudevents/sdk-go/v2/event"

	"github.com/depbridge/depbridge/internal/config"
)

// Sink delivers events.
type Sink interface {
	// Send blocks until the broker has durably accepted e (JetStream
	// PubAck, Kafka acks=all, HTTP 2xx), ctx is done, or delivery failed.
	// t says where (NATS subject, Kafka topic) and how (content mode). Safe
	// for concurrent use.
	Send(ctx context.Context, t Target, e ce.Event) error
	// Close waits for in-flight sends, flushes and releases the
	// connection; ctx bounds the wait.
	Close(ctx context.Context) error
}

// AsyncSender is implemented by sinks that pipeline: many events in
// flight on one connection, each completed by a callback instead of a
// goroutine waiting for its ack (JetStream, Kafka). The engine's workers
// hand an event over and move on, so events in flight are not bounded by
// workers.
type AsyncSender interface {
	// SendAsync starts delivering e as Send would and returns. done is
	// called exactly once with what Send would have returned: nil only
	// once the broker has durably accepted e. It may be called before
	// SendAsync returns (an event that cannot be encoded, a closed sink)
	// and otherwise runs on the client library's goroutine, so it must
	// not block. A send with no answer fails after the sink's ack timeout;
	// Close fails those still pending when its deadline passes, so done
	// is always called.
	SendAsync(t Target, e ce.Event, done func(error))
}

// sendAndWait is Send over SendAsync: it waits for done or ctx.
func sendAndWait(ctx context.Context, s AsyncSender, t Target, e ce.Event) error {
	result := make(chan error, 1) // done never blocks, even after ctx
	s.SendAsync(t, e, func(err error) { result <- err })
	select {
	case err := <-result:
		return err
	case <-ctx.Done():
		return fmt.Errorf("publish %s to %q: wait for ack: %w", e.ID(), t.Subject, context.Cause(ctx))
	}
}

// Checker is implemented by sinks that can verify at start that the
// subjects of their routes lead somewhere (JetStream: a stream captures
// them). Patterns are NATS subjects in which "*" stands for a token filled
// in per watcher (see Route.Pattern).
type Checker interface {
	Check(ctx context.Context, patterns []string) error
}

// Target says where and how one event is delivered.
type Target struct {
	// Subject is the NATS subject or Kafka topic, rendered by a Route.
	// Ignored by HTTP and stdout.
	Subject string
	// Mode is the CloudEvents content mode. Ignored by stdout, which is
	// always structured.
	Mode Mode
}

// Mode is a CloudEvents content mode.
type Mode int

const (
	// Binary puts the attributes in headers and the data in the body.
	Binary Mode = iota
	// Structured puts the whole event, encoded as JSON, in the body.
	Structured
)

// ParseMode parses "binary" or "structured"; "" is Binary.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "", "binary":
		return Binary, nil
	case "structured":
		return Structured, nil
	}
	return Binary, fmt.Errorf("unsupported content mode %q: want binary or structured", s)
}

func (m Mode) String() string {
	if m == Structured {
		return "structured"
	}
	return "binary"
}

// ErrClosed is returned by Send after Close.
var ErrClosed = errors.New("sink closed")

// ErrTooLarge matches (errors.Is) the error of a Send whose event the
// broker refuses for its size, whatever the retries: see the package
// contract.
var ErrTooLarge = errors.New("event too large for the broker")

// tooLarge wraps err, the client's or broker's own error for an event of
// size bytes, so that errors.Is(err, ErrTooLarge) holds. size is 0 when
// unknown.
func tooLarge(size int, err error) error {
	if size > 0 {
		return fmt.Errorf("%w: %d bytes: %w", ErrTooLarge, size, err)
	}
	return fmt.Errorf("%w: %w", ErrTooLarge, err)
}

// New connects the sink cfg describes. Exactly one transport field of cfg
// must be set. log may be nil (discard).
func New(cfg config.Sink, log *slog.Logger) (Sink, error) {
	log = orDiscard(log).With("sink", cfg.Name)
	if err := checkOneOf(cfg); err != nil {
		return nil, err
	}
	var (
		s   Sink
		err error
	)
	switch {
	case cfg.NATS != nil:
		s, err = NewNATS(cfg.Name, *cfg.NATS, log)
	case cfg.JetStream != nil:
		s, err = NewJetStream(cfg.Name, *cfg.JetStream, log)
	case cfg.Kafka != nil:
		s, err = NewKafka(cfg.Name, *cfg.Kafka, log)
	case cfg.HTTP != nil:
		s, err = NewHTTP(cfg.Name, *cfg.HTTP, log)
	case cfg.Stdout != nil:
		s = NewStdout(nil)
	}
	if err != nil {
		return nil, fmt.Errorf("sink %q: %w", cfg.Name, err)
	}
	return s, nil
}

// checkOneOf reports a sink config that sets no transport or several.
func checkOneOf(cfg config.Sink) error {
	var set []string
	for name, ok := range map[string]bool{
		"nats": cfg.NATS != nil, "jetstream": cfg.JetStream != nil, "kafka": cfg.Kafka != nil,
		"http": cfg.HTTP != nil, "stdout": cfg.Stdout != nil,
	} {
		if ok {
			set = append(set, name)
		}
	}
	switch len(set) {
	case 0:
		return fmt.Errorf("sink %q: set one of nats, jetstream, kafka, http, stdout", cfg.Name)
	case 1:
		return nil
	}
	return fmt.Errorf("sink %q: set only one of nats, jetstream, kafka, http, stdout (got %d)", cfg.Name, len(set))
}

// inflight tracks running Sends so that Close can wait for them.
type inflight struct {
	mu     sync.RWMutex
	closed bool
	wg     sync.WaitGroup
}

// add registers a Send; it fails once close has been called.
func (f *inflight) add() error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return ErrClosed
	}
	f.wg.Add(1)
	return nil
}

func (f *inflight) done() { f.wg.Done() }

// close refuses new Sends and waits for running ones until ctx is done.
// It reports whether this call closed (false if already closed).
func (f *inflight) close(ctx context.Context) (first bool, err error) {
	f.mu.Lock()
	first = !f.closed
	f.closed = true
	f.mu.Unlock()
	idle := make(chan struct{})
	go func() { f.wg.Wait(); close(idle) }()
	select {
	case <-idle:
		return first, nil
	case <-ctx.Done():
		return first, fmt.Errorf("wait for in-flight sends: %w", context.Cause(ctx))
	}
}

// orDiscard returns log, or a logger that discards when log is nil.
func orDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}
