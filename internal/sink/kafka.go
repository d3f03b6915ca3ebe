package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"github.com/depbridge/depbridge/internal/config"
)

// Kafka produces to Kafka with acks from all in-sync replicas: at least
// once. Send returns nil only after the partition leader acknowledged the
// record with acks=all. The record key is the event's partitionkey (the
// watcher key) and partitions are chosen by its hash (kafka-go's Hash
// balancer), so one watcher's events stay in order on one partition (the
// engine never sends two events of one watcher at once).
//
// Concurrent Sends to one partition share produce requests without a
// timer: while a request to a partition is in flight, the records that
// arrive for it wait and go together in the next, sent as soon as it
// returns (see producer, kafkaproducer.go, for why this is not kafka-go's
// Writer). A lone Send costs one round trip; S concurrent Sends spread
// over P partitions make requests of about S/P records.
type Kafka struct {
	p         *producer
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
	transport, err := KafkaTransport(cfg)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	cfg.Default()
	// Timeout bounds each request, a produce request included.
	client := &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Timeout: cfg.WriteTimeout.Duration, Transport: transport}
	return &Kafka{
		p:         newProducer(client, transport, cfg.BatchTimeout.Duration, log),
		client:    client,
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
// replicas, ctx, or the failure of its produce request (after up to
// kafkaMaxAttempts tries when the error is retriable). A record over the
// topic's max.message.bytes fails with an error matching ErrTooLarge.
func (s *Kafka) Send(ctx context.Context, t Target, e ce.Event) error {
	if err := s.inflight.add(); err != nil {
		return err
	}
	defer s.inflight.done()
	r, err := newKafkaRecord(t.Subject, t.Mode, &e)
	if err != nil {
		return err
	}
	if err := s.p.produce(ctx, r); err != nil {
		return fmt.Errorf("publish %s to %q: %w", e.ID(), t.Subject, err)
	}
	return nil
}

// SendAsync produces e as Send does and calls done with the result; a
// record is tried up to kafkaMaxAttempts times when the error is retriable.
func (s *Kafka) SendAsync(t Target, e ce.Event, done func(error)) {
	if err := s.inflight.add(); err != nil {
		done(err)
		return
	}
	r, err := newKafkaRecord(t.Subject, t.Mode, &e)
	if err != nil {
		s.inflight.done()
		done(err)
		return
	}
	id, topic := e.ID(), t.Subject // not e itself, which would move to the heap
	s.p.produceAsync(context.Background(), r, func(err error) {
		if err != nil {
			err = fmt.Errorf("publish %s to %q: %w", id, topic, err)
		}
		done(err)
		s.inflight.done()
	})
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

// Close waits for running Sends, and so for the acks of their records,
// until ctx is done; then it aborts what is still in flight (those Sends
// fail) and closes the connections.
func (s *Kafka) Close(ctx context.Context) error {
	first, err := s.inflight.close(ctx)
	if !first {
		return nil
	}
	s.p.stop()
	s.transport.CloseIdleConnections()
	if err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

var (
	_ Sink        = (*Kafka)(nil)
	_ AsyncSender = (*Kafka)(nil)
	_ Checker     = (*Kafka)(nil)
)
