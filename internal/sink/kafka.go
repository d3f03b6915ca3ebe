package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/depbridge/depbridge/internal/config"
)

// Delivery defaults of the Kafka sink. kafka-go's own defaults are
// RequireNone (fire and forget) and a 1s batch timeout, so every one that
// matters is set here, explicitly.
const (
	kafkaBatchSize  = 100
	kafkaBatchBytes = 1 << 20
	// kafkaMaxAttempts is how often kafka-go tries one batch within a
	// Send; past it Send fails and the caller retries.
	kafkaMaxAttempts = 3
)

// Kafka produces to Kafka with acks from all in-sync replicas: at least
// once. Send returns nil only after the partition leader acknowledged the
// record with acks=all. The record key is the event's partitionkey (the
// watcher key) and partitions are chosen by its hash, so one watcher's
// events stay in order on one partition (the engine never sends two events
// of one watcher at once).
//
// Concurrent Sends to the same topic and partition share produce batches.
// kafka-go sends a batch when it holds 100 records or when BatchTimeout
// (10ms by default) has passed since its first record, so a Send takes at
// least BatchTimeout unless 100 Sends to its partition are under way at
// once: with S concurrent senders the rate is at most about
// S / BatchTimeout (400 events/s for 4 senders at 10ms). BenchmarkKafka
// measures it.
type Kafka struct {
	w         *kafka.Writer
	client    *kafka.Client
	transport *kafka.Transport
	log       *slog.Logger
	inflight  inflight
}

// NewKafka configures a producer for cfg's brokers. kafka-go dials lazily;
// call Check to reach the brokers at start.
func NewKafka(name string, cfg config.Kafka, log *slog.Logger) (*Kafka, error) {
	log = orDiscard(log)
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("kafka: brokers is required")
	}
	t, err := tlsConfig(cfg.TLS)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	mech, err := saslMechanism(cfg.SASL)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	cfg.Default()
	clientID, batchTimeout, writeTimeout := cfg.ClientID, cfg.BatchTimeout.Duration, cfg.WriteTimeout.Duration
	transport := &kafka.Transport{
		DialTimeout: 5 * time.Second,
		IdleTimeout: 30 * time.Second,
		MetadataTTL: 6 * time.Second,
		ClientID:    clientID,
		TLS:         t,
		SASL:        mech,
	}
	addr := kafka.TCP(cfg.Brokers...)
	w := &kafka.Writer{
		Addr:                   addr,
		Balancer:               &kafka.Hash{},
		MaxAttempts:            kafkaMaxAttempts,
		WriteBackoffMin:        50 * time.Millisecond,
		WriteBackoffMax:        500 * time.Millisecond,
		BatchSize:              kafkaBatchSize,
		BatchBytes:             kafkaBatchBytes,
		BatchTimeout:           batchTimeout,
		ReadTimeout:            writeTimeout,
		WriteTimeout:           writeTimeout,
		RequiredAcks:           kafka.RequireAll,
		Async:                  false,
		AllowAutoTopicCreation: false,
		Transport:              transport,
		ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) {
			log.Debug("kafka-go: " + fmt.Sprintf(msg, args...))
		}),
	}
	return &Kafka{
		w:         w,
		client:    &kafka.Client{Addr: addr, Timeout: writeTimeout, Transport: transport},
		transport: transport,
		log:       log,
	}, nil
}

func saslMechanism(c *config.SASL) (sasl.Mechanism, error) {
	if c == nil {
		return nil, nil
	}
	switch strings.ToUpper(c.Mechanism) {
	case "PLAIN":
		return plain.Mechanism{Username: c.Username, Password: c.Password}, nil
	case "SCRAM-SHA-256":
		m, err := scram.Mechanism(scram.SHA256, c.Username, c.Password)
		if err != nil {
			return nil, fmt.Errorf("sasl SCRAM-SHA-256: %w", err)
		}
		return m, nil
	case "SCRAM-SHA-512":
		m, err := scram.Mechanism(scram.SHA512, c.Username, c.Password)
		if err != nil {
			return nil, fmt.Errorf("sasl SCRAM-SHA-512: %w", err)
		}
		return m, nil
	}
	return nil, fmt.Errorf("sasl: unsupported mechanism %q: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", c.Mechanism)
}

// Send produces e to topic t.Subject and waits for acks from all in-sync
// replicas.
func (s *Kafka) Send(ctx context.Context, t Target, e ce.Event) error {
	if err := s.inflight.add(); err != nil {
		return err
	}
	defer s.inflight.done()
	m, err := encodeKafka(t.Subject, t.Mode, &e)
	if err != nil {
		return err
	}
	if err := s.w.WriteMessages(ctx, m); err != nil {
		var werr kafka.WriteErrors
		if errors.As(err, &werr) && len(werr) == 1 && werr[0] != nil {
			err = werr[0]
		}
		return fmt.Errorf("publish %s to %q: %w", e.ID(), t.Subject, err)
	}
	return nil
}

// Check reaches the brokers and verifies that every topic without a
// per-watcher part ("*" in the pattern) exists: the sink never creates
// topics. Templated topics are checked only by their first Send.
func (s *Kafka) Check(ctx context.Context, patterns []string) error {
	var topics []string
	for _, p := range patterns {
		if !strings.Contains(p, "*") {
			topics = append(topics, p)
		} else {
			s.log.Info("topic depends on the watcher; not checked at start", "topic", p)
		}
	}
	resp, err := s.client.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
	if err != nil {
		return fmt.Errorf("kafka: reach brokers: %w", err)
	}
	var errs []error
	for _, t := range resp.Topics {
		if t.Error != nil {
			errs = append(errs, fmt.Errorf("kafka: topic %q: %w (the sink does not create topics)", t.Name, t.Error))
		}
	}
	return errors.Join(errs...)
}

// Close waits for running Sends, then closes the writer, which flushes
// what it still holds; ctx bounds both.
func (s *Kafka) Close(ctx context.Context) error {
	first, err := s.inflight.close(ctx)
	if !first {
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- s.w.Close() }()
	select {
	case werr := <-done:
		err = errors.Join(err, werr)
	case <-ctx.Done():
		err = errors.Join(err, fmt.Errorf("flush: %w", context.Cause(ctx)))
	}
	s.transport.CloseIdleConnections()
	if err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

var (
	_ Sink    = (*Kafka)(nil)
	_ Checker = (*Kafka)(nil)
)
