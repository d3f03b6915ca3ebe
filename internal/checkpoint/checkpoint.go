// Package checkpoint records what each watcher was told, so that a
// restarted bridge emits requests only for watchers whose dependencies
// changed while it was down (with causes saying what changed, deletions
// included), and none for the others.
//
// A Store keeps the latest record of every watcher in memory and writes
// changed records to a Backend in the background: recording never delays
// delivery. Records only move forward after an acknowledged request, so a
// record lost or written late makes a restart re-announce changes that
// were already delivered (duplicates), never skip one (losses).
package checkpoint

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/watch"
)

// Backend persists records by watcher key.
type Backend interface {
	// Load returns every record.
	Load(ctx context.Context) (map[string][]byte, error)
	// Write stores puts and removes deletes.
	Write(ctx context.Context, puts map[string][]byte, deletes []string) error
	// Close releases the backend.
	Close() error
}

// Options of a Store.
type Options struct {
	// Interval between writes of changed records. Defaults to 500ms.
	Interval time.Duration
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Store is a watch.Checkpoint over a Backend. Load it, then run Start.
type Store struct {
	b    Backend
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	views   map[string]watch.View // by watcher key
	dirty   map[string]bool       // written at the next flush (deleted if absent from views)
	loaded  int
	written int
}

var _ watch.Checkpoint = (*Store)(nil)

// New returns a Store over b.
func New(b Backend, opts Options) *Store {
	if opts.Interval <= 0 {
		opts.Interval = 500 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Store{b: b, opts: opts, log: opts.Logger, views: map[string]watch.View{}, dirty: map[string]bool{}}
}

// Load reads every record; a record that does not decode is dropped (its
// watcher is treated as new) and logged.
func (s *Store) Load(ctx context.Context) error {
	recs, err := s.b.Load(ctx)
	if err != nil {
		return fmt.Errorf("load checkpoints: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, b := range recs {
		var v watch.View
		if err := json.Unmarshal(b, &v); err != nil {
			s.log.Warn("dropping a checkpoint that does not decode", "watcher", k, "error", err)
			continue
		}
		s.views[k] = v
	}
	s.loaded = len(s.views)
	s.log.Info("checkpoints loaded", "watchers", s.loaded)
	return nil
}

// Told implements watch.Checkpoint. The view returned must not be
// modified.
func (s *Store) Told(w cache.Ref) (watch.View, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.views[w.Key()]
	return v, ok
}

// Acked implements watch.Checkpoint; it never blocks on the backend.
func (s *Store) Acked(w cache.Ref, v watch.View) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recordLocked(w.Key(), v)
}

// Baseline implements watch.Checkpoint; it never blocks on the backend.
func (s *Store) Baseline(w cache.Ref, ref string, seen []watch.Seen) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recordLocked(w.Key(), watch.View{ref: seen})
}

// recordLocked sets some Refs of a watcher's record, keeping the others.
// Records are replaced, never modified: Told hands them out.
func (s *Store) recordLocked(w string, refs watch.View) {
	old := s.views[w]
	v := make(watch.View, len(old)+len(refs))
	for k, e := range old {
		v[k] = e
	}
	for k, e := range refs {
		v[k] = e
	}
	s.views[w] = v
	s.dirty[w] = true
}

// Forget drops the record of a watcher that is gone.
func (s *Store) Forget(w cache.Ref) {
	k := w.Key()
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.views[k]; ok {
		delete(s.views, k)
		s.dirty[k] = true
	}
}

// Len is the number of watchers with a record.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.views)
}

// Start writes changed records every Interval until ctx is done, then once
// more (bounded by 5s), and closes the backend. A failed write is retried
// at the next tick.
func (s *Store) Start(ctx context.Context) error {
	t := time.NewTicker(s.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			err := s.Flush(fctx)
			cancel()
			if err != nil {
				s.log.Error("final checkpoint write failed; a restart will send duplicates", "error", err)
			}
			return s.b.Close()
		case <-t.C:
			if err := s.Flush(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("checkpoint write failed; retrying", "error", err)
			}
		}
	}
}

// Flush writes the records changed since the last flush.
func (s *Store) Flush(ctx context.Context) error {
	s.mu.Lock()
	if len(s.dirty) == 0 {
		s.mu.Unlock()
		return nil
	}
	puts := map[string][]byte{}
	var deletes []string
	for k := range s.dirty {
		v, ok := s.views[k]
		if !ok {
			deletes = append(deletes, k)
			continue
		}
		b, err := json.Marshal(v)
		if err != nil {
			s.mu.Unlock()
			return fmt.Errorf("encode checkpoint of %s: %w", k, err)
		}
		puts[k] = b
	}
	dirty := s.dirty
	s.dirty = map[string]bool{}
	s.mu.Unlock()
	if err := s.b.Write(ctx, puts, deletes); err != nil {
		// Put them back, unless newer changes came meanwhile (they are
		// dirty already).
		s.mu.Lock()
		for k := range dirty {
			s.dirty[k] = true
		}
		s.mu.Unlock()
		return err
	}
	s.mu.Lock()
	s.written += len(puts) + len(deletes)
	s.mu.Unlock()
	return nil
}
