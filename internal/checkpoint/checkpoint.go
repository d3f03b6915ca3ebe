// Package checkpoint records what each watcher was told, so that a
// restarted bridge emits requests only for watchers whose dependencies
// changed while it was down (with causes saying what changed, deletions
// included), and none for the others.
//
// A Store keeps the latest record of every watcher in memory and writes
// changed records to a Backend in the background. Records only move
// forward after an acknowledged request, so a record lost or written late
// makes a restart re-announce changes that were already delivered
// (duplicates). That alone would lose one kind of change: an object
// announced to a watcher for the first time, whose acknowledgement was not
// written yet when the bridge stopped, and which was gone (deleted, or out
// of the selector) by the restart, is in no record and no list, so nothing
// would tell the watcher it went. So before a request that names an
// object new to the watcher's record is published, Telling writes it, as
// "may have been told", and waits for the write: the one case where
// recording delays delivery (it waits for that watcher's record only). A
// restart tells the watcher such objects are gone if they are.
//
// A record larger than its Backend takes (MaxRecordBytes: a watcher whose
// view holds some ten thousand objects, on a bus whose messages are capped
// at 1 MiB) is not written, and the one written last stays, so that it
// blocks neither the other records nor its watcher's delivery. It is
// logged once, when it grows too large. A restart compares that watcher
// with its last record written: it re-announces what changed since
// (duplicates), and cannot tell it that objects first announced since then
// are gone.
//
// A baseline (what a dependency registered without a request starts from)
// is the other record whose loss would lose changes: with no record, a
// restart starts from the state then. Baseline never blocks, so the caller
// that registers subscriptions calls FlushWatchers before it reports them
// registered (the bridge does).
package checkpoint

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
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
	// MaxRecordBytes is the size of the largest record Write takes, 0 if
	// there is no limit. The Store never writes a larger one.
	MaxRecordBytes() int
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
	maybe   map[string]watch.View // by watcher key: recorded by Telling, not acknowledged since
	dirty   map[string]bool       // written at the next flush (deleted if absent from views and maybe)
	tooBig  map[string]bool       // last encoded over the backend's limit, and logged so
	loaded  int
	written int

	flushMu sync.Mutex // one Flush at a time, so that a Flush that returns has written what was dirty when it was called
}

// maybePrefix marks, in a stored record, the Refs of a watcher's "may
// have been told" objects ("maybe:" and the Ref's Key, which never starts
// so).
const maybePrefix = "maybe:"

var _ watch.Checkpoint = (*Store)(nil)

// New returns a Store over b. A backend that logs and has no logger (a
// File with none) gets the Store's.
func New(b Backend, opts Options) *Store {
	if opts.Interval <= 0 {
		opts.Interval = 500 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if l, ok := b.(interface{ defaultLogger(*slog.Logger) }); ok {
		l.defaultLogger(opts.Logger)
	}
	return &Store{b: b, opts: opts, log: opts.Logger, views: map[string]watch.View{}, maybe: map[string]watch.View{},
		dirty: map[string]bool{}, tooBig: map[string]bool{}}
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
		told, maybe := watch.View{}, watch.View{}
		for ref, seen := range v {
			if r, ok := strings.CutPrefix(ref, maybePrefix); ok {
				maybe[r] = seen
			} else {
				told[ref] = seen
			}
		}
		if len(told) > 0 || len(maybe) == 0 {
			s.views[k] = told
		}
		if len(maybe) > 0 {
			s.maybe[k] = maybe
		}
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

// Acked implements watch.Checkpoint; it never blocks on the backend. The
// objects Telling recorded for the Refs of v are covered by it.
func (s *Store) Acked(w cache.Ref, v watch.View) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := w.Key()
	s.recordLocked(k, v)
	if old := s.maybe[k]; len(old) > 0 {
		m := make(watch.View, len(old))
		for ref, seen := range old {
			if _, ok := v[ref]; !ok {
				m[ref] = seen
			}
		}
		if len(m) == 0 {
			delete(s.maybe, k)
		} else {
			s.maybe[k] = m
		}
	}
}

// Telling implements watch.Checkpoint: the objects of causes that are in
// their Ref's set and new to the watcher's record are recorded and
// written before it returns. Causes about objects already recorded (by
// namespace, name and uid), or gone, need no write. It writes the
// watcher's record alone, so that it waits for no other record (only for
// a write already under way); a record too large for the backend is not
// written (see the package doc), and Telling returns nil: delivery goes
// before recording.
func (s *Store) Telling(ctx context.Context, w cache.Ref, causes []watch.Cause) error {
	k := w.Key()
	s.mu.Lock()
	var m watch.View
	for _, c := range causes {
		if c.Name == "" || c.Op == watch.OpDeleted || c.Op == watch.OpLeft || (c.Op == watch.OpRelisted && c.ResourceVersion == "") {
			continue
		}
		ref := c.Watched.Key()
		if holds(s.views[k][ref], c) || holds(s.maybe[k][ref], c) || holds(m[ref], c) {
			continue
		}
		if m == nil {
			m = watch.View{}
		}
		m[ref] = append(m[ref], watch.Seen{Namespace: c.Namespace, Name: c.Name, UID: c.UID, ResourceVersion: c.ResourceVersion})
	}
	if m == nil {
		s.mu.Unlock()
		return nil
	}
	// Records are replaced, never modified: MayHaveTold hands them out.
	old := s.maybe[k]
	next := make(watch.View, len(old)+len(m))
	for ref, seen := range old {
		next[ref] = seen
	}
	for ref, seen := range m {
		next[ref] = append(slices.Clone(next[ref]), seen...)
	}
	s.maybe[k] = next
	s.dirty[k] = true
	s.mu.Unlock()
	if err := s.flush(ctx, []string{k}); err != nil {
		return fmt.Errorf("record objects %s may be told of: %w", k, err)
	}
	return nil
}

// holds reports whether seen has c's object (namespace, name and uid).
func holds(seen []watch.Seen, c watch.Cause) bool {
	for _, s := range seen {
		if s.Name == c.Name && s.Namespace == c.Namespace && s.UID == c.UID {
			return true
		}
	}
	return false
}

// MayHaveTold implements watch.Checkpoint. The view returned must not be
// modified.
func (s *Store) MayHaveTold(w cache.Ref) watch.View {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maybe[w.Key()]
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
	_, told := s.views[k]
	_, maybe := s.maybe[k]
	if told || maybe {
		delete(s.views, k)
		delete(s.maybe, k)
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

// Flush writes the records changed since the last flush. Flushes run one
// at a time: when Flush returns nil, every record changed before it was
// called is written, except those too large for the backend (see the
// package doc).
func (s *Store) Flush(ctx context.Context) error {
	return s.flush(ctx, nil)
}

// FlushWatchers writes the changed records of watchers ws only, as Flush
// does: a caller that needs some records durable (the baselines of
// subscriptions just registered) waits for no others.
func (s *Store) FlushWatchers(ctx context.Context, ws ...cache.Ref) error {
	keys := make([]string, len(ws))
	for i, w := range ws {
		keys[i] = w.Key()
	}
	return s.flush(ctx, keys)
}

// flush writes the changed records: all, or, if only is not nil, those of
// the watchers (by key) in only.
func (s *Store) flush(ctx context.Context, only []string) error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	limit := s.b.MaxRecordBytes()
	s.mu.Lock()
	keys := slices.Collect(maps.Keys(s.dirty))
	if only != nil {
		keys = slices.DeleteFunc(slices.Clone(only), func(k string) bool { return !s.dirty[k] })
		slices.Sort(keys)
		keys = slices.Compact(keys)
	}
	if len(keys) == 0 {
		s.mu.Unlock()
		return nil
	}
	puts := map[string][]byte{}
	var deletes []string
	for _, k := range keys {
		v, ok := s.views[k]
		maybe := s.maybe[k]
		if !ok && len(maybe) == 0 {
			deletes = append(deletes, k)
			continue
		}
		if len(maybe) > 0 {
			all := make(watch.View, len(v)+len(maybe))
			for ref, seen := range v {
				all[ref] = seen
			}
			for ref, seen := range maybe {
				all[maybePrefix+ref] = seen
			}
			v = all
		}
		b, err := json.Marshal(v)
		if err != nil {
			s.mu.Unlock()
			return fmt.Errorf("encode checkpoint of %s: %w", k, err)
		}
		puts[k] = b
	}
	for _, k := range keys {
		delete(s.dirty, k)
	}
	for _, k := range deletes {
		delete(s.tooBig, k)
	}
	for k, b := range puts {
		switch {
		case limit > 0 && len(b) > limit:
			delete(puts, k)
			if !s.tooBig[k] {
				s.tooBig[k] = true
				s.log.Error("checkpoint too large for the store; keeping the last one written, so a restart re-announces "+
					"what changed since (duplicates) and cannot tell the watcher that objects first announced since are gone",
					"watcher", k, "bytes", len(b), "limit", limit)
			}
		case s.tooBig[k]:
			delete(s.tooBig, k)
			s.log.Info("checkpoint fits the store again", "watcher", k, "bytes", len(b), "limit", limit)
		}
	}
	s.mu.Unlock()
	if len(puts) == 0 && len(deletes) == 0 {
		return nil
	}
	if err := s.b.Write(ctx, puts, deletes); err != nil {
		// Put them back, unless newer changes came meanwhile (they are
		// dirty already).
		s.mu.Lock()
		for k := range puts {
			s.dirty[k] = true
		}
		for _, k := range deletes {
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
