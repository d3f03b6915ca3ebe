package watch

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilwait "k8s.io/apimachinery/pkg/util/wait"
	apiwatch "k8s.io/apimachinery/pkg/watch"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/depbridge/depbridge/internal/cache"
)

// SourceState is where a list+watch source is in its life.
type SourceState string

const (
	// StatePending: the kind is not served (yet); waiting for its CRD.
	StatePending SourceState = "pending"
	// StateSyncing: the first list has not completed.
	StateSyncing SourceState = "syncing"
	// StateActive: listed and watching.
	StateActive SourceState = "active"
	// StateRestarting: was active; the watch broke and is being
	// re-established (relisting if needed), with backoff.
	StateRestarting SourceState = "restarting"
	// StateFailed: stopped for good because the API server refused it
	// (access revoked, not watchable); its watches were dropped and their
	// watchers told (OpLost). Shown until a source starts again for the
	// same resource and namespace.
	StateFailed SourceState = "failed"
)

// source is one list+watch of a resource in one namespace ("" for all),
// run by a client-go Reflector whose store it is. All fields but the
// immutable ones are guarded by the engine's mutex.
type source struct {
	e      *Engine
	k      *kindState
	ns     string
	full   bool // full objects, not metadata only
	cancel context.CancelFunc

	current bool // false once stopped: late callbacks are ignored
	state   SourceState
	synced  bool // a list has been stored
	watchOK bool // a watch request has succeeded
	ready   bool // synced and watchOK: registrations covered by it return
	err     error
	since   time.Time
	lists   int
}

func (e *Engine) startSourceLocked(k *kindState, ns string, full bool) {
	delete(e.failed, failedKey{k.res.GroupVersionResource, ns})
	ctx, cancel := context.WithCancel(e.runCtx)
	s := &source{e: e, k: k, ns: ns, full: full, cancel: cancel, current: true, state: StateSyncing, since: time.Now()}
	k.sources[ns] = s
	e.log.Debug("source starting", "resource", k.res.GroupVersionResource.String(), "namespace", ns, "full", full)
	e.srcWG.Add(1)
	go func() {
		defer e.srcWG.Done()
		s.run(ctx)
	}()
}

func (e *Engine) stopSourceLocked(s *source) {
	if !s.current {
		return
	}
	s.current = false
	s.cancel()
	if s.k.sources[s.ns] == s {
		delete(s.k.sources, s.ns)
	}
	e.log.Debug("source stopped", "resource", s.k.res.GroupVersionResource.String(), "namespace", s.ns)
	e.broadcastLocked()
}

// run blocks until ctx is done. The Reflector lists, watches with
// bookmarks, resumes from the last resourceVersion after a broken stream,
// relists after 410 Gone, and backs off with jitter between attempts.
func (s *source) run(ctx context.Context) {
	var expected runtime.Object = &metav1.PartialObjectMetadata{}
	if s.full {
		u := &unstructured.Unstructured{}
		u.SetGroupVersionKind(s.k.gvk)
		expected = u
	}
	name := s.k.res.GroupVersionResource.String()
	if s.ns != "" {
		name += " in " + s.ns
	}
	backoff := reconnectBackoff
	r := toolscache.NewReflectorWithOptions(&listWatch{s: s}, expected, s, toolscache.ReflectorOptions{Name: name, Backoff: &backoff})
	// A stream that breaks mid-event surfaces as an internal error; without
	// this the Reflector relists at once. With it, it resumes watching from
	// the last resourceVersion, and relists only if that fails for this long
	// or the server answers 410 Gone.
	r.MaxInternalErrorRetryDuration = resumeFor
	r.RunWithContext(ctx)
}

// reconnectBackoff spaces a source's list and watch attempts after a
// failure: 250ms doubling to 4s, plus up to half again of jitter, reset
// after 2 quiet minutes. client-go's default (0.8s doubling to 30s, plus up
// to 100%) left the bridge blind for up to a minute after an API server
// came back. A shorter cap costs little here: the engine has one source per
// resource (and namespace), not one per watched object, so an API server
// that restarts sees a handful of retries per bridge, not thousands.
var reconnectBackoff = utilwait.Backoff{Duration: 250 * time.Millisecond, Factor: 2, Jitter: 0.5, Cap: 4 * time.Second, Steps: math.MaxInt32}

// resumeFor is how long a source keeps resuming a broken watch before it
// relists.
const resumeFor = 5 * time.Minute

// listWatch lists and watches for a source, telling the engine how each
// request went: the Reflector itself retries everything forever, so this is
// where terminal failures (forbidden, resource gone) are noticed.
type listWatch struct{ s *source }

func (lw *listWatch) client() (list func(context.Context, metav1.ListOptions) (runtime.Object, error), watch func(context.Context, metav1.ListOptions) (apiwatch.Interface, error)) {
	s := lw.s
	gvr := s.k.res.GroupVersionResource
	if s.full {
		ri := s.e.dyn.Resource(gvr)
		if s.ns != "" {
			nri := ri.Namespace(s.ns)
			return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return nri.List(ctx, o) }, nri.Watch
		}
		return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return ri.List(ctx, o) }, ri.Watch
	}
	mi := s.e.meta.Resource(gvr)
	if s.ns != "" {
		nmi := mi.Namespace(s.ns)
		return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return nmi.List(ctx, o) }, nmi.Watch
	}
	return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return mi.List(ctx, o) }, mi.Watch
}

func (lw *listWatch) ListWithContext(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	list, _ := lw.client()
	obj, err := list(ctx, opts)
	if err != nil && ctx.Err() == nil {
		lw.s.e.observe(lw.s, err, false)
	}
	return obj, err
}

func (lw *listWatch) WatchWithContext(ctx context.Context, opts metav1.ListOptions) (apiwatch.Interface, error) {
	_, watch := lw.client()
	w, err := watch(ctx, opts)
	if ctx.Err() == nil {
		lw.s.e.observe(lw.s, err, err == nil)
	}
	return w, err
}

// List and Watch satisfy toolscache.ListerWatcher; the Reflector uses the
// context variants.
func (lw *listWatch) List(opts metav1.ListOptions) (runtime.Object, error) {
	return lw.ListWithContext(context.Background(), opts)
}

func (lw *listWatch) Watch(opts metav1.ListOptions) (apiwatch.Interface, error) {
	return lw.WatchWithContext(context.Background(), opts)
}

// The source is the Reflector's store: each call updates the object store
// and dispatches causes under the engine's lock.

func (s *source) Add(obj any) error    { return s.e.upsert(s, obj) }
func (s *source) Update(obj any) error { return s.e.upsert(s, obj) }
func (s *source) Delete(obj any) error { return s.e.remove(s, obj) }
func (s *source) Resync() error        { return nil }
func (s *source) Replace(list []any, _ string) error {
	return s.e.replace(s, list)
}

var _ toolscache.ReflectorStore = (*source)(nil)

func (e *Engine) upsert(s *source, obj any) error {
	o, err := cache.NewObject(obj)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !s.current {
		return nil
	}
	if old, changed := e.store.Apply(s.k.res.GroupVersionResource, s.k.gvk, o); changed {
		e.dispatchLocked(s.k, old, o, false)
	}
	return nil
}

func (e *Engine) remove(s *source, obj any) error {
	m, err := meta.Accessor(obj)
	if err != nil {
		return fmt.Errorf("deleted object: %w", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !s.current {
		return nil
	}
	if old := e.store.Delete(s.k.res.GroupVersionResource, m.GetNamespace(), m.GetName()); old != nil {
		e.dispatchLocked(s.k, old, nil, false)
	}
	return nil
}

// replace stores a (re)list and reports what differs from what was stored
// as relisted causes: after a relist only watchers whose view changed are
// reconciled. An object in a namespace no list covered before is new, not
// relisted: only pairs of a kind that was not served when they were added
// hear of it (resolvedLocked), as added; the others wait for their initial
// reconcile.
func (e *Engine) replace(s *source, list []any) error {
	objs := make([]*cache.Object, 0, len(list))
	for _, item := range list {
		o, err := cache.NewObject(item)
		if err != nil {
			return err
		}
		objs = append(objs, o)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if !s.current {
		return nil
	}
	gvr := s.k.res.GroupVersionResource
	covered := map[string]bool{}
	for _, o := range objs {
		if _, ok := covered[o.Namespace]; !ok {
			covered[o.Namespace] = e.store.Covered(gvr, o.Namespace)
		}
	}
	for _, c := range e.store.Replace(gvr, s.k.gvk, s.ns, objs) {
		e.dispatchLocked(s.k, c.Old, c.New, c.Old != nil || covered[c.New.Namespace])
	}
	s.synced = true
	s.lists++
	e.maybeReadyLocked(s)
	return nil
}

// observe records the outcome of a list or watch request.
func (e *Engine) observe(s *source, err error, watchOK bool) {
	e.mu.Lock()
	gone := e.observeLocked(s, err, watchOK)
	e.mu.Unlock()
	if gone {
		// Discovery forgets the kind outside the engine's lock: client-go's
		// DeferredDiscoveryRESTMapper holds its own lock for a whole
		// discovery fetch, which Invalidate waits for. Only then is the
		// resolver woken to look for the kind again.
		e.mapper.Invalidate()
		e.kickResolver()
	}
}

// observeLocked is observe under the lock; it reports whether the kind
// went away (kindGoneLocked), so that discovery must be invalidated.
func (e *Engine) observeLocked(s *source, err error, watchOK bool) bool {
	if !s.current {
		return false
	}
	if err == nil {
		if watchOK {
			s.watchOK = true
			s.err = nil
			e.maybeReadyLocked(s)
		}
		return false
	}
	s.err = err
	switch {
	case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) || apierrors.IsMethodNotSupported(err):
		e.sourceForbiddenLocked(s, err)
	case apierrors.IsNotFound(err):
		return e.kindGoneLocked(s.k, err)
	default:
		if s.ready {
			s.state = StateRestarting
		}
		e.log.Debug("list/watch failed; retrying", "resource", s.k.res.GroupVersionResource.String(), "namespace", s.ns, "error", err)
	}
	return false
}

// maybeReadyLocked makes a source active once it has listed and watched,
// and gives the pairs that waited for the list their initial reconciles.
func (e *Engine) maybeReadyLocked(s *source) {
	if !s.synced || !s.watchOK {
		return
	}
	if s.state != StateActive {
		s.state = StateActive
		s.since = time.Now()
	}
	if s.ready {
		return
	}
	s.ready = true
	for st := range s.k.refs {
		if s.ns != "" && st.ref.Namespace != s.ns {
			continue
		}
		for _, p := range st.pairs {
			if !p.waitInitial {
				continue
			}
			if p.confirmed {
				e.initialLocked(p)
			} else {
				p.waitInitial = false // the registering call sends it
			}
		}
	}
	e.broadcastLocked()
}

// sourceForbiddenLocked handles a list or watch the API server refuses. A
// cluster-wide source that only namespaced refs need gives way to one
// source per namespace (a namespace-scoped Role is enough). Otherwise the
// refs it serves are dropped: their watchers are reconciled once, with
// OpLost, and callers still registering them get the error.
func (e *Engine) sourceForbiddenLocked(s *source, err error) {
	k := s.k
	err = permissionHint(k.res.GroupVersionResource, s.ns, err)
	clusterWide := s.ns == "" && k.res.Namespaced
	e.stopSourceLocked(s)
	if clusterWide {
		k.clusterForbidden = true
	}
	if clusterWide && k.nsRefs[""] == 0 {
		e.log.Info("cluster-wide list+watch forbidden; using one per namespace",
			"resource", k.res.GroupVersionResource.String(), "error", err)
		e.planLocked(k)
		return
	}
	e.log.Warn("list+watch forbidden; dropping the watches it served", "resource", k.res.GroupVersionResource.String(),
		"namespace", s.ns, "error", err)
	e.failed[failedKey{k.res.GroupVersionResource, s.ns}] = SourceStatus{Group: k.gvk.Group, Version: k.gvk.Version, Kind: k.gvk.Kind,
		Resource: k.res.Resource, Namespace: s.ns, State: StateFailed, Full: s.full, Lists: s.lists, Error: err.Error(), Since: time.Now()}
	var failing []*refState
	for st := range k.refs {
		if (clusterWide && st.ref.Namespace == "") || !clusterWide && (s.ns == "" || st.ref.Namespace == s.ns) {
			failing = append(failing, st)
		}
	}
	for _, st := range failing {
		e.dropRefLocked(st, err)
	}
	e.planLocked(k)
	e.broadcastLocked()
}

// kindGoneLocked handles a resource that is no longer served (its CRD was
// deleted): every source of it stops, its objects are forgotten, its
// watchers are reconciled once with OpLost, and its refs wait, pending,
// for the kind to come back. It reports whether it did so; the caller
// then invalidates discovery and wakes the resolver, after unlocking
// (neither is done here: the pending refs must not be looked up in
// discovery that still knows the kind).
func (e *Engine) kindGoneLocked(k *kindState, err error) bool {
	gvr := k.res.GroupVersionResource
	if e.kinds[gvr] != k {
		return false
	}
	e.log.Warn("resource no longer served; its watches wait for it to return", "resource", gvr.String(), "error", err)
	for _, s := range k.sources {
		e.stopSourceLocked(s)
	}
	delete(e.kinds, gvr)
	e.store.Forget(gvr)
	reason := fmt.Sprintf("%s is no longer served: %v", gvr.GroupResource(), err)
	for st := range k.refs {
		e.detachLocked(st)
		for _, p := range st.pairs {
			if p.confirmed {
				e.enqueueLocked(p.w, Cause{Watched: st.ref, Op: OpLost, Reason: reason})
			}
			p.waitInitial = true
		}
		e.pendLocked(st)
	}
	e.broadcastLocked()
	return true
}

// planLocked starts and stops the sources of a kind to match its refs:
// one cluster-wide source if a ref spans namespaces (or too many namespaces
// are watched), else one per watched namespace; full objects if any
// watcher reads them, else metadata only. A source whose scope or mode
// changes is replaced: the new one's list is compared with the store, so
// nothing that changed in between is missed.
func (e *Engine) planLocked(k *kindState) {
	gvr := k.res.GroupVersionResource
	if e.kinds[gvr] != k || e.state != running {
		return
	}
	if len(k.refs) == 0 {
		for _, s := range k.sources {
			e.stopSourceLocked(s)
		}
		delete(e.kinds, gvr)
		e.store.Forget(gvr)
		return
	}
	desired := k.desiredScopes(e.opts.MaxNamespaceSources)
	full := k.bodyPairs > 0 && !e.opts.DisableCache
	for ns, s := range k.sources {
		if !slices.Contains(desired, ns) || s.full != full {
			e.stopSourceLocked(s)
		}
	}
	for _, ns := range desired {
		if k.sources[ns] == nil {
			e.startSourceLocked(k, ns, full)
		}
	}
	e.store.Retain(gvr, desired)
}

func (k *kindState) desiredScopes(maxNamespaces int) []string {
	if !k.res.Namespaced || k.nsRefs[""] > 0 {
		return []string{""}
	}
	if len(k.nsRefs) > maxNamespaces && !k.clusterForbidden {
		return []string{""}
	}
	nss := make([]string, 0, len(k.nsRefs))
	for ns := range k.nsRefs {
		nss = append(nss, ns)
	}
	slices.Sort(nss)
	return nss
}
