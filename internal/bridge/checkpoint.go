package bridge

import (
	"context"
	"fmt"
	"time"

	"github.com/depbridge/depbridge/internal/checkpoint"
	"github.com/depbridge/depbridge/internal/config"
)

// openCheckpoint builds and loads the configured checkpoint store (nil when
// none is configured). Loading is retried with backoff until it succeeds
// or ctx is done: starting without the records would flood consumers.
func (b *Bridge) openCheckpoint(ctx context.Context, cfg *config.Config) (*checkpoint.Store, error) {
	cc := cfg.Checkpoint
	if cc == nil {
		return nil, nil
	}
	var backend checkpoint.Backend
	switch {
	case cc.File != nil:
		backend = &checkpoint.File{Path: cc.File.Path}
	default:
		return nil, fmt.Errorf("checkpoint: only file stores are wired so far")
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
