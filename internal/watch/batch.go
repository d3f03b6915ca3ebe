package watch

import (
	"context"
	"fmt"
	"sync"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/depbridge/depbridge/internal/cache"
)

// Batch is a query batch: the objects a watcher reads through Get and List
// become its dependencies, read from the engine's cache, and End drops the
// dependencies it had and did not read again. Get and List may be called
// concurrently; End waits for them. While a batch is open, AddWatcher,
// Subscribe, RemoveWatcher and Query for its watcher fail with
// ErrBatchInProgress.
type Batch struct {
	e       *Engine
	watcher cache.Ref
	ws      *watcherState

	mu sync.RWMutex // Get and List hold it shared, End exclusively

	// guarded by e.mu
	ended   bool
	touched map[cache.Ref]bool
}

// StartBatch opens a batch for watcher (registering it if new). One batch
// per watcher at a time.
func (e *Engine) StartBatch(watcher cache.Ref) (*Batch, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	// ErrNotStarted comes first, then ErrCacheDisabled (AC-01, AC-05).
	if err := e.checkRunningLocked(); err != nil {
		return nil, err
	}
	if e.opts.DisableCache {
		return nil, ErrCacheDisabled
	}
	w, err := watcher.Canonical()
	if err != nil {
		return nil, fmt.Errorf("start batch: %w", err)
	}
	ws := e.watchers[w]
	if ws == nil {
		ws = &watcherState{ref: w, pairs: map[*refState]*pair{}, opts: WatcherOptions{NoInitial: e.opts.DisableInitialReconcile}}
		e.watchers[w] = ws
	}
	if ws.batch != nil {
		return nil, fmt.Errorf("%w: %s", ErrBatchInProgress, w)
	}
	b := &Batch{e: e, watcher: w, ws: ws, touched: map[cache.Ref]bool{}}
	ws.batch = b
	return b, nil
}

// Get returns the object (nil if it does not exist) and makes it a
// dependency of the watcher: a later creation, change or deletion
// reconciles it. The namespace is ignored for cluster-scoped kinds.
func (b *Batch) Get(ctx context.Context, gvk schema.GroupVersionKind, namespace, name string) (*unstructured.Unstructured, error) {
	ref := cache.Ref{Group: gvk.Group, Version: gvk.Version, Kind: gvk.Kind, Namespace: namespace, Name: name}
	r, err := b.query(ctx, ref)
	if err != nil || r.pending {
		return nil, err
	}
	return b.e.store.Get(r.res.GroupVersionResource, r.ref.Namespace, name)
}

// List returns the objects of a kind in namespace ("" for all) matching sel
// (nil for all) and makes that query a dependency of the watcher.
func (b *Batch) List(ctx context.Context, gvk schema.GroupVersionKind, namespace string, sel labels.Selector) ([]*unstructured.Unstructured, error) {
	ref := cache.Ref{Group: gvk.Group, Version: gvk.Version, Kind: gvk.Kind, Namespace: namespace, Selector: cache.SelectorString(sel)}
	r, err := b.query(ctx, ref)
	if err != nil || r.pending {
		return nil, err
	}
	return b.e.store.List(r.res.GroupVersionResource, r.ref.Namespace, r.selector())
}

func (b *Batch) query(ctx context.Context, ref cache.Ref) (resolved, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	b.e.mu.Lock()
	ended := b.ended
	b.e.mu.Unlock()
	if ended {
		return resolved{}, ErrNoBatch
	}
	rs, err := b.e.register(ctx, b.watcher, []cache.Ref{ref}, nil, false, b)
	if err != nil {
		return resolved{}, err
	}
	b.e.mu.Lock()
	b.touched[rs[0].ref] = true
	b.e.mu.Unlock()
	return rs[0], nil
}

// End closes the batch: dependencies the watcher had and did not read
// through it are dropped (without a reconcile), and the watcher goes if it
// has none left.
func (b *Batch) End() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.e
	e.mu.Lock()
	defer e.mu.Unlock()
	if b.ended {
		return ErrNoBatch
	}
	b.endLocked()
	if e.state != running {
		return nil
	}
	kinds := map[*kindState]bool{}
	for st, p := range b.ws.pairs {
		if !b.touched[st.ref] {
			if st.kind != nil {
				kinds[st.kind] = true
			}
			e.removePairLocked(p)
		}
	}
	if len(b.ws.pairs) == 0 && e.watchers[b.watcher] == b.ws {
		delete(e.watchers, b.watcher)
	}
	for k := range kinds {
		e.planLocked(k)
	}
	return nil
}

func (b *Batch) endLocked() {
	b.ended = true
	if b.ws.batch == b {
		b.ws.batch = nil
	}
}

func (r resolved) selector() labels.Selector {
	if r.ref.Selector == "" {
		return nil
	}
	sel, _ := cache.ParseSelector(r.ref.Selector) // canonical: parses
	return sel
}

// QueryResult is what one query of Query found.
type QueryResult struct {
	// Query as registered (canonical; namespace cleared for cluster-scoped
	// kinds).
	Query cache.Ref
	// Objects found: at most one for a query by name.
	Objects []*unstructured.Unstructured
	// Pending: the kind is not served yet; the query waits for its CRD.
	Pending bool
}

// Query is a one-shot batch: it makes exactly queries (Refs by name or
// selector) the watcher's dependencies, all or nothing, and returns what
// each finds in the cache. No queries removes the watcher. The watcher's
// options become opts, with Objects set.
func (e *Engine) Query(ctx context.Context, watcher cache.Ref, opts WatcherOptions, queries []cache.Ref) ([]QueryResult, error) {
	// ErrNotStarted comes first, then ErrCacheDisabled (AC-01, AC-05).
	e.mu.Lock()
	err := e.checkRunningLocked()
	e.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if e.opts.DisableCache {
		return nil, ErrCacheDisabled
	}
	if len(queries) == 0 {
		return nil, e.RemoveWatcher(watcher)
	}
	opts.Objects = true
	rs, err := e.register(ctx, watcher, queries, &opts, true, nil)
	if err != nil {
		return nil, err
	}
	out := make([]QueryResult, len(rs))
	for i, r := range rs {
		out[i] = QueryResult{Query: r.ref, Pending: r.pending}
		if r.pending {
			continue
		}
		gvr := r.res.GroupVersionResource
		if r.ref.Name != "" {
			o, err := e.store.Get(gvr, r.ref.Namespace, r.ref.Name)
			if err != nil {
				return nil, fmt.Errorf("query %s: %w", r.ref, err)
			}
			if o != nil {
				out[i].Objects = []*unstructured.Unstructured{o}
			}
			continue
		}
		objs, err := e.store.List(gvr, r.ref.Namespace, r.selector())
		if err != nil {
			return nil, fmt.Errorf("query %s: %w", r.ref, err)
		}
		out[i].Objects = objs
	}
	return out, nil
}
