package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/segmentio/kafka-go"

	"github.com/depbridge/depbridge/internal/event"
	"github.com/depbridge/depbridge/internal/sink"
)

// consumers read every event from the JetStream stream and the Kafka topic
// into the ledger, from the start, across broker outages (each resumes
// after the last message it read).
type consumers struct {
	l      *ledger
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	errs []error // events that did not decode
}

func startConsumers(l *ledger, natsURL, stream, kafkaAddr, topic string) (*consumers, error) {
	nc, err := nats.Connect(natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		return nil, fmt.Errorf("consumer: connect to NATS: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &consumers{l: l, cancel: cancel}
	c.wg.Go(func() {
		defer nc.Close()
		c.jetstream(ctx, js, stream)
	})
	c.wg.Go(func() { c.kafka(ctx, kafkaAddr, topic) })
	return c, nil
}

// stop stops reading and returns the decoding errors.
func (c *consumers) stop() []error {
	c.cancel()
	c.wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.errs
}

func (c *consumers) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errs = append(c.errs, err)
}

// jetstream reads the stream with an ordered consumer, recreated after
// the last sequence read whenever it fails.
func (c *consumers) jetstream(ctx context.Context, js jetstream.JetStream, stream string) {
	next := uint64(1)
	for ctx.Err() == nil {
		oc, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
			DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: next})
		if err != nil {
			pause(ctx, 200*time.Millisecond)
			continue
		}
		it, err := oc.Messages()
		if err != nil {
			pause(ctx, 200*time.Millisecond)
			continue
		}
		for {
			m, err := it.Next(jetstream.NextContext(ctx))
			if err != nil {
				break
			}
			md, err := m.Metadata()
			if err != nil {
				c.fail(fmt.Errorf("jetstream message metadata: %w", err))
				continue
			}
			next = md.Sequence.Stream + 1
			e, err := sink.DecodeNATS(ctx, &nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
			c.add("jetstream", e, err)
		}
		it.Stop()
	}
}

// kafka reads partition 0 of topic (the suite's topic has one), resuming
// after the last offset read.
func (c *consumers) kafka(ctx context.Context, addr, topic string) {
	offset := int64(0)
	for ctx.Err() == nil {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: topic, Partition: 0,
			MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 100 * time.Millisecond, // kfake holds a fetch until MaxWait
			ErrorLogger: kafka.LoggerFunc(func(string, ...any) {})})
		if err := r.SetOffset(offset); err != nil {
			_ = r.Close()
			pause(ctx, 200*time.Millisecond)
			continue
		}
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				break
			}
			offset = m.Offset + 1
			e, err := sink.DecodeKafka(ctx, m)
			c.add("kafka", e, err)
		}
		_ = r.Close()
		pause(ctx, 200*time.Millisecond)
	}
}

func (c *consumers) add(sinkName string, e *ce.Event, err error) {
	now := time.Now()
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			c.fail(err)
		}
		return
	}
	var d event.Data
	if err := json.Unmarshal(e.Data(), &d); err != nil {
		c.fail(fmt.Errorf("event %s: data: %w", e.ID(), err))
		return
	}
	if e.Subject() != d.Watcher.Key() {
		c.fail(fmt.Errorf("event %s: subject %q is not the watcher %q", e.ID(), e.Subject(), d.Watcher.Key()))
	}
	c.l.receive(received{sink: sinkName, id: e.ID(), watcher: e.Subject(), at: now, time: e.Time(), data: d})
}

// pause waits d or until ctx is done.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
