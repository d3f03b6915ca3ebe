package watch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/workqueue"

	"github.com/depbridge/depbridge/internal/cache"
)

// Options configures an Engine. The zero value works.
type Options struct {
	// Logger receives the engine's logs. Defaults to discarding them.
	Logger *slog.Logger
	// Workers reconcile different watchers concurrently. A Reconciler
	// that waits for a broker's ack holds its worker until then, so
	// workers bound its requests in flight (throughput is about workers /
	// ack latency); an AsyncReconciler's worker only builds and hands
	// over the event, and MaxInFlight is the bound. Defaults to 256
	// (config.DefaultWorkers).
	Workers int
	// MaxInFlight bounds the requests an AsyncReconciler has begun and
	// not finished; workers wait for a slot before taking a watcher.
	// Ignored for other Reconcilers. Defaults to 4096
	// (config.DefaultMaxInFlight).
	MaxInFlight int
	// RateLimiter spaces the retries of a watcher whose reconcile failed.
	// Defaults to per-watcher exponential backoff from 5ms to 30s: never
	// giving up, and with no global token bucket, so that a broker outage
	// does not leave thousands of watchers queued behind a 10 qps limit
	// once it ends.
	RateLimiter workqueue.TypedRateLimiter[cache.Ref]
	// DisableInitialReconcile suppresses, for every watcher, the request
	// sent when it starts to depend on objects that exist. Defaults to
	// false (see also WatcherOptions.NoInitial).
	DisableInitialReconcile bool
	// DisableCache turns off reads of watched objects (Get, List,
	// ListWatched, batches and Query return ErrCacheDisabled) and keeps
	// only metadata. Defaults to false.
	DisableCache bool
	// UnsafeDisableDeepCopy makes cache reads return the stored objects
	// instead of copies; callers must not modify them.
	UnsafeDisableDeepCopy bool
	// MaxCauses bounds the causes kept for one pending watcher; beyond it
	// they are counted in Request.Truncated. Defaults to 1000.
	MaxCauses int
	// MaxNamespaceSources is how many namespaces of one resource get a
	// list+watch each before the engine switches to one cluster-wide
	// list+watch (if RBAC allows it). Defaults to 16.
	MaxNamespaceSources int
	// ShutdownGrace is how long reconciles in flight when Start's context
	// ends may go on. Defaults to 10s.
	ShutdownGrace time.Duration
	// PendingRetry is the longest wait between two attempts to find the
	// kinds of pending watches (CRD not installed yet). Defaults to 30s.
	PendingRetry time.Duration
	// Mapper tunes discovery caching.
	Mapper cache.MapperOptions
	// Checkpoint, if set, is told what each acknowledged request covered,
	// and consulted when a watcher's dependencies are first listed: a
	// dependency it has a record of gets relisted causes for what differs
	// from that record (nothing if nothing changed) instead of an initial
	// reconcile. Defaults to none.
	Checkpoint Checkpoint
	// QueueMetrics receives the reconcile queue's workqueue metrics.
	// Defaults to none.
	QueueMetrics workqueue.MetricsProvider
}

// WatcherOptions are a watcher's settings.
type WatcherOptions struct {
	// NoInitial suppresses initial reconciles for this watcher.
	NoInitial bool
	// Objects says the watcher's reconciles read watched objects' bodies
	// (not just metadata); their kinds are then listed and watched in full.
	// Batches and Query set it.
	Objects bool
	// Debounce holds the watcher's requests this long after the first
	// change so that a burst of changes makes one request.
	Debounce time.Duration
}

// Subscription is a watcher with the whole set of Refs it depends on.
type Subscription struct {
	Watcher cache.Ref
	Watched []cache.Ref
	Options WatcherOptions
}

// Engine watches what watchers depend on and reconciles them when it
// changes. See the package documentation for its guarantees.
type Engine struct {
	opts   Options
	log    *slog.Logger
	dyn    dynamic.Interface
	meta   metadata.Interface
	mapper *cache.Mapper
	store  *cache.Store
	rec    Reconciler
	queue  *queue
	// slots bounds the requests in flight: a worker puts one in before
	// taking a watcher, the request's end takes it out. MaxInFlight for an
	// AsyncReconciler; Workers otherwise, where each worker holds its
	// request anyway.
	slots chan struct{}
	// reconciling counts the requests taken and not finished.
	reconciling sync.WaitGroup

	startedCh chan struct{}
	kick      chan struct{} // wakes the pending-kind resolver

	mu       sync.Mutex
	state    runState
	runCtx   context.Context // sources run under it
	watchers map[cache.Ref]*watcherState
	refs     map[cache.Ref]*refState
	kinds    map[schema.GroupVersionResource]*kindState
	pending  map[schema.GroupVersionKind]map[*refState]struct{}
	changed  chan struct{}              // closed and replaced when a source or ref changes state
	failed   map[failedKey]SourceStatus // sources stopped for good, until restarted
	crd      *crdWatch
	// crdForbidden: may not watch CRDs; pending kinds are only polled.
	crdForbidden bool
	srcWG        sync.WaitGroup
}

type failedKey struct {
	gvr schema.GroupVersionResource
	ns  string
}

type runState int

const (
	notStarted runState = iota
	running
	stopped
)

type watcherState struct {
	ref   cache.Ref
	opts  WatcherOptions
	pairs map[*refState]*pair
	batch *Batch
}

// pair is one dependency of one watcher.
type pair struct {
	w *watcherState
	r *refState
	// confirmed once a call that named it has returned successfully (the
	// one that added it, or a concurrent one that waited for it): from
	// then on no rollback removes it.
	confirmed bool
	// addedPending: added while its kind was not served; it is told of
	// its objects as added when the kind appears (appearedLocked), never
	// given an initial reconcile.
	addedPending bool
	// waitInitial: the pair was added before its scope was listed; it gets
	// its initial reconcile (if any) when a covering source is ready, and
	// relist differences are not sent to it meanwhile.
	waitInitial bool
	// bodies: counted in its kind's bodyPairs.
	bodies bool
}

// refState is one distinct watched Ref.
type refState struct {
	ref   cache.Ref // canonical, namespace cleared for cluster-scoped kinds
	sel   labels.Selector
	gvk   schema.GroupVersionKind
	kind  *kindState // nil while the kind is not served (pending)
	pairs map[*watcherState]*pair
	// err is set when a terminal source failure dropped the ref; callers
	// still waiting for it return it.
	err error
}

// kindState is everything about one watched resource.
type kindState struct {
	res              cache.Resource
	gvk              schema.GroupVersionKind
	refs             map[*refState]struct{}
	index            *index
	nsRefs           map[string]int // refs per namespace; "" = every namespace
	bodyPairs        int
	clusterForbidden bool
	sources          map[string]*source // by namespace; "" = cluster-wide
}

// New returns an engine for the cluster of cfg. It starts nothing; call
// Start.
func New(cfg *rest.Config, rec Reconciler, opts Options) (*Engine, error) {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("dynamic client: %w", err)
	}
	meta, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("metadata client: %w", err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("discovery client: %w", err)
	}
	return NewWithClients(dyn, meta, disc, rec, opts), nil
}

// NewWithClients is New with clients supplied by the caller.
func NewWithClients(dyn dynamic.Interface, meta metadata.Interface, disc discovery.DiscoveryInterface, rec Reconciler, opts Options) *Engine {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Workers <= 0 {
		opts.Workers = 256
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = 4096
	}
	if opts.RateLimiter == nil {
		opts.RateLimiter = workqueue.NewTypedItemExponentialFailureRateLimiter[cache.Ref](5*time.Millisecond, 30*time.Second)
	}
	if opts.MaxCauses <= 0 {
		opts.MaxCauses = 1000
	}
	if opts.MaxNamespaceSources <= 0 {
		opts.MaxNamespaceSources = 16
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = 10 * time.Second
	}
	if opts.PendingRetry <= 0 {
		opts.PendingRetry = 30 * time.Second
	}
	store := cache.NewStore()
	store.UnsafeDisableDeepCopy = opts.UnsafeDisableDeepCopy
	return &Engine{
		opts:      opts,
		log:       opts.Logger,
		dyn:       dyn,
		meta:      meta,
		mapper:    cache.NewMapper(disc, opts.Mapper),
		store:     store,
		rec:       rec,
		startedCh: make(chan struct{}),
		kick:      make(chan struct{}, 1),
		watchers:  map[cache.Ref]*watcherState{},
		refs:      map[cache.Ref]*refState{},
		kinds:     map[schema.GroupVersionResource]*kindState{},
		pending:   map[schema.GroupVersionKind]map[*refState]struct{}{},
		failed:    map[failedKey]SourceStatus{},
		changed:   make(chan struct{}),
	}
}

// Start runs the engine until ctx is done: it accepts registrations, runs
// list+watch sources and reconciles. It blocks, and returns only after
// every goroutine it started has exited and every watch was torn down. An
// engine runs once.
func (e *Engine) Start(ctx context.Context) error {
	e.mu.Lock()
	if e.state != notStarted {
		e.mu.Unlock()
		return errors.New("watch engine: Start called twice")
	}
	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	e.runCtx = runCtx
	e.queue = newQueue(e.opts.RateLimiter, e.opts.MaxCauses, e.opts.QueueMetrics)
	e.state = running
	close(e.startedCh)
	e.mu.Unlock()

	// Reconciles in flight at shutdown get ShutdownGrace to finish.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stopGrace := context.AfterFunc(ctx, func() {
		t := time.NewTimer(e.opts.ShutdownGrace)
		defer t.Stop()
		select {
		case <-t.C:
			cancelWork()
		case <-workCtx.Done():
		}
	})
	defer stopGrace()

	inFlight := e.opts.Workers
	if _, ok := e.rec.(AsyncReconciler); ok {
		inFlight = e.opts.MaxInFlight
	}
	e.slots = make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	for range e.opts.Workers {
		wg.Go(func() { e.work(workCtx) })
	}
	wg.Go(func() { e.resolvePending(runCtx) })
	e.log.Info("watch engine started", "workers", e.opts.Workers, "max_in_flight", cap(e.slots))

	<-ctx.Done()

	e.mu.Lock()
	e.state = stopped
	e.teardownLocked()
	e.mu.Unlock()
	e.queue.shutdown()
	wg.Wait()
	// Requests an AsyncReconciler began finish within the grace too.
	finished := make(chan struct{})
	go func() { e.reconciling.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-workCtx.Done():
	}
	cancelWork()
	e.srcWG.Wait()
	unsent := e.queue.undelivered()
	if len(unsent) > 0 {
		keys := make([]string, len(unsent))
		for i, w := range unsent {
			keys[i] = w.Key()
		}
		e.log.Warn("watch engine stopped with reconcile requests not delivered", "count", len(unsent), "watchers", keys)
	}
	e.log.Info("watch engine stopped")
	return nil
}

// Started is closed once the engine accepts registrations.
func (e *Engine) Started() <-chan struct{} { return e.startedCh }

// teardownLocked stops every source and forgets every registration; no
// reconcile is sent. Batches still open are ended.
func (e *Engine) teardownLocked() {
	for _, k := range e.kinds {
		for _, s := range k.sources {
			e.stopSourceLocked(s)
		}
	}
	for _, ws := range e.watchers {
		if ws.batch != nil {
			ws.batch.endLocked()
		}
	}
	e.stopCRDWatchLocked()
	clear(e.watchers)
	clear(e.refs)
	clear(e.kinds)
	clear(e.pending)
	clear(e.failed)
	e.store.Clear()
	e.broadcastLocked()
}

// broadcastLocked wakes every caller waiting for a source or ref to change.
func (e *Engine) broadcastLocked() {
	close(e.changed)
	e.changed = make(chan struct{})
}

// checkRunningLocked returns ErrNotStarted unless Start is running.
func (e *Engine) checkRunningLocked() error {
	if e.state != running {
		return ErrNotStarted
	}
	return nil
}

// Stats counts what the engine holds.
type Stats struct {
	// Watchers registered.
	Watchers int
	// Watched is the number of distinct watched Refs.
	Watched int
	// Streams is the number of list+watch sources running against the API
	// server (each one WATCH stream when healthy), including the CRD watch
	// used while kinds are pending.
	Streams int
	// Pending is the number of watched Refs whose kind is not served yet.
	Pending int
	// Objects stored in the cache.
	Objects int
	// Queued is the number of watchers with a request not acknowledged
	// yet: waiting to be reconciled, or being reconciled (for an
	// AsyncReconciler, until the broker acknowledges).
	Queued int
	// OldestQueued is how long ago the oldest of those requests was
	// enqueued (a retried request keeps its first time).
	OldestQueued time.Duration
}

// Stats returns the current counts.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := Stats{Watchers: len(e.watchers), Watched: len(e.refs)}
	for _, k := range e.kinds {
		st.Streams += len(k.sources)
		st.Objects += e.store.Len(k.res.GroupVersionResource)
	}
	for _, refs := range e.pending {
		st.Pending += len(refs)
	}
	if e.crd != nil {
		st.Streams++
	}
	if e.queue != nil {
		st.Queued, st.OldestQueued = e.queue.depth()
	}
	return st
}
