package checkpoint

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/kafkatopic"
	"github.com/depbridge/depbridge/internal/sink"
)

// Kafka keeps records in a compacted topic keyed by watcher (created if
// missing), so that every replica of the bridge shares them; a forgotten
// watcher is a tombstone.
type Kafka struct {
	cfg       config.Kafka
	topic     string
	log       *slog.Logger
	transport *kafka.Transport
	dialer    *kafka.Dialer
	client    *kafka.Client
	w         *kafka.Writer
	ready     bool
}

var _ Backend = (*Kafka)(nil)

// NewKafka uses topic on cfg's brokers, connected as the Kafka sink is.
// It dials nothing until Load. log may be nil.
func NewKafka(cfg config.Kafka, topic string, log *slog.Logger) (*Kafka, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.Default()
	transport, err := sink.KafkaTransport(cfg)
	if err != nil {
		return nil, err
	}
	dialer, err := sink.KafkaDialer(cfg)
	if err != nil {
		return nil, err
	}
	addr := kafka.TCP(cfg.Brokers...)
	return &Kafka{
		cfg: cfg, topic: topic, log: log, transport: transport, dialer: dialer,
		client: &kafka.Client{Addr: addr, Timeout: cfg.WriteTimeout.Duration, Transport: transport},
		w: &kafka.Writer{Addr: addr, Topic: topic, Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll, Async: false,
			BatchTimeout: time.Millisecond, WriteTimeout: cfg.WriteTimeout.Duration, Transport: transport},
	}, nil
}

// Load implements Backend: it makes sure the topic exists and is
// compacted, then reads the last record of each watcher.
func (k *Kafka) Load(ctx context.Context) (map[string][]byte, error) {
	if !k.ready {
		if err := kafkatopic.Ensure(ctx, k.client, []kafkatopic.Spec{{Topic: k.topic, Compacted: true}}, false, k.log); err != nil {
			return nil, fmt.Errorf("checkpoint topic: %w", err)
		}
		k.ready = true
	}
	return kafkatopic.Latest(ctx, k.client, k.dialer, k.cfg.Brokers, k.topic)
}

// Write implements Backend.
func (k *Kafka) Write(ctx context.Context, puts map[string][]byte, deletes []string) error {
	msgs := make([]kafka.Message, 0, len(puts)+len(deletes))
	for key, v := range puts {
		msgs = append(msgs, kafka.Message{Key: []byte(key), Value: v})
	}
	for _, key := range deletes {
		msgs = append(msgs, kafka.Message{Key: []byte(key)}) // a tombstone
	}
	if err := k.w.WriteMessages(ctx, msgs...); err != nil {
		return fmt.Errorf("write checkpoints to %q: %w", k.topic, err)
	}
	return nil
}

// MaxRecordBytes implements Backend: the writer's batch bytes (1 MiB,
// kafka-go's default, which rejects a whole write holding a larger
// message), less a margin.
func (k *Kafka) MaxRecordBytes() int {
	limit := k.w.BatchBytes
	if limit <= 0 {
		limit = 1 << 20
	}
	return int(limit - recordMargin)
}

// Close implements Backend.
func (k *Kafka) Close() error {
	err := k.w.Close()
	k.transport.CloseIdleConnections()
	return err
}
