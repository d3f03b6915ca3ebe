package bridge

import (
	"context"
	"fmt"
	"time"

	"github.com/depbridge/depbridge/internal/checkpoint"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/sink"
)

// openCheckpoint builds and loads the configured checkpoint store (nil when
// none is configured). Loading is retried with backoff until it succeeds
// or ctx is done: starting without the records would flood consumers.
func (b *Bridge) openCheckpoint(ctx context.Context, cfg *config.Config) (*checkpoint.Store, error) {
	cc := cfg.Checkpoint
	if cc == nil {
		return nil, nil
	}
	sinkCfg := func(name string) config.Sink {
		for _, s := range cfg.Sinks {
			if s.Name == name {
				return s
			}
		}
		return config.Sink{}
	}
	var backend checkpoint.Backend
	switch {
	case cc.File != nil:
		backend = &checkpoint.File{Path: cc.File.Path}
	case cc.JetStream != nil:
		sc := sinkCfg(cc.JetStream.Sink)
		if sc.JetStream == nil {
			return nil, fmt.Errorf("checkpoint: sink %q is not a jetstream sink", cc.JetStream.Sink)
		}
		nc, err := sink.DialNATS("checkpoint", sc.JetStream.NATSConn, b.log)
		if err != nil {
			return nil, fmt.Errorf("checkpoint: %w", err)
		}
		backend = checkpoint.NewKV(nc, cc.JetStream.Bucket)
	case cc.Kafka != nil:
		sc := sinkCfg(cc.Kafka.Sink)
		if sc.Kafka == nil {
			return nil, fmt.Errorf("checkpoint: sink %q is not a kafka sink", cc.Kafka.Sink)
		}
		var err error
		if backend, err = checkpoint.NewKafka(*sc.Kafka, cc.Kafka.Topic, b.log); err != nil {
			return nil, fmt.Errorf("checkpoint: %w", err)
		}
	default:
		return nil, fmt.Errorf("checkpoint: no store set")
	}
	store := checkpoint.New(backend, checkpoint.Options{Interval: cc.Interval.Duration, Logger: b.log})
	for delay := time.Second; ; delay = min(2*delay, 30*time.Second) {
		err := store.Load(ctx)
		if err == nil {
			return store, nil
		}
		b.log.Error("checkpoint store not readable; retrying", "error", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			_ = backend.Close()
			return nil, ctx.Err()
		case <-time.After(delay):
		}
	}
}
