package checkpoint

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
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
	// batchBytes bounds the writer's record batches: the writer's 1 MiB,
	// or less for a topic that takes less (see Load); 0 until Load.
	batchBytes atomic.Int64
}

// writerBatchBytes is kafka-go's default Writer.BatchBytes, which the
// writer also applies to one message. batchHeader is what a record batch
// holds besides its records (61 bytes in the v2 format), which the broker
// counts against max.message.bytes.
const (
	writerBatchBytes = 1 << 20
	batchHeader      = 64
)

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
// compacted, reads the last record of each watcher, and then the topic's
// max.message.bytes, which the brokers measure each record batch against:
// when it is under the writer's 1 MiB, the writer's batches and records
// are bounded by it instead (see MaxRecordBytes).
func (k *Kafka) Load(ctx context.Context) (map[string][]byte, error) {
	if !k.ready {
		if err := kafkatopic.Ensure(ctx, k.client, []kafkatopic.Spec{{Topic: k.topic, Compacted: true}}, false, k.log); err != nil {
			return nil, fmt.Errorf("checkpoint topic: %w", err)
		}
		k.ready = true
	}
	// After Latest, which waits for a topic just created to be known.
	recs, err := kafkatopic.Latest(ctx, k.client, k.dialer, k.cfg.Brokers, k.topic)
	if err != nil {
		return nil, err
	}
	if k.batchBytes.Load() == 0 {
		topicMax, err := kafkatopic.MaxMessageBytes(ctx, k.client, k.topic)
		if err != nil {
			return nil, fmt.Errorf("checkpoint topic: %w", err)
		}
		limit := int64(writerBatchBytes)
		if topicMax > 0 && int64(topicMax-batchHeader) < limit {
			limit = int64(max(topicMax-batchHeader, 1))
			k.log.Info("checkpoint topic takes less than 1 MiB per record batch; records are bounded by it",
				"topic", k.topic, "maxMessageBytes", topicMax)
		}
		k.w.BatchBytes = limit // Write is not called before Load returns
		k.batchBytes.Store(limit)
	}
	return recs, nil
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

// MaxRecordBytes implements Backend: the writer's batch bytes, which it
// also applies to one message, rejecting a whole write that holds a larger
// one, less a margin. They are 1 MiB (kafka-go's default), or, once Load
// has read it, the topic's max.message.bytes if smaller.
func (k *Kafka) MaxRecordBytes() int {
	limit := k.batchBytes.Load()
	if limit <= 0 {
		limit = writerBatchBytes
	}
	return int(max(limit-recordMargin, 1))
}

// Close implements Backend.
func (k *Kafka) Close() error {
	err := k.w.Close()
	k.transport.CloseIdleConnections()
	return err
}
