package watch

import (
	"context"
	"errors"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/depbridge/depbridge/internal/cache"
)

// AddWatcher adds dependencies to watcher (registering it if new, with
// default options), keeping the ones it has. It returns once every
// dependency it names is being watched, including one a concurrent call is
// still adding: its list+watch is established, or its kind is not served
// yet and the watch waits, visibly pending, for its CRD. On any error
// nothing changes. Requires a running engine and no open batch
// for watcher.
func (e *Engine) AddWatcher(ctx context.Context, watcher cache.Ref, watched ...cache.Ref) error {
	if len(watched) == 0 {
		return fmt.Errorf("%w: add watcher %s: no watched objects", ErrInvalidInput, watcher)
	}
	_, err := e.register(ctx, watcher, watched, nil, false, nil)
	return err
}

// Subscribe adds watcher, or replaces its options and whole set of
// dependencies, with the semantics of AddWatcher. Dependencies it had and
// keeps are not disturbed (no initial reconcile, no gap); ones it loses are
// dropped without a reconcile. On any error the previous subscription
// stays.
func (e *Engine) Subscribe(ctx context.Context, s Subscription) error {
	if len(s.Watched) == 0 {
		return fmt.Errorf("%w: subscribe %s: no watched objects (use RemoveWatcher)", ErrInvalidInput, s.Watcher)
	}
	_, err := e.register(ctx, s.Watcher, s.Watched, &s.Options, true, nil)
	return err
}

// RemoveWatcher drops watcher and all its dependencies, without a
// reconcile. Watches no other watcher needs stop before it returns; it never
// waits on the API server. Removing an unknown watcher does nothing.
func (e *Engine) RemoveWatcher(watcher cache.Ref) error {
	watcher, err := watcher.Canonical()
	if err != nil {
		return fmt.Errorf("remove watcher: %w", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.checkRunningLocked(); err != nil {
		return err
	}
	ws := e.watchers[watcher]
	if ws == nil {
		return nil
	}
	if ws.batch != nil {
		return fmt.Errorf("%w: remove watcher %s", ErrBatchInProgress, watcher)
	}
	kinds := map[*kindState]bool{}
	for _, p := range ws.pairs {
		if p.r.kind != nil {
			kinds[p.r.kind] = true
		}
		e.removePairLocked(p)
	}
	delete(e.watchers, watcher)
	for k := range kinds {
		e.planLocked(k)
	}
	return nil
}

// resolved is a watched Ref with what discovery says of its kind.
type resolved struct {
	ref     cache.Ref
	res     cache.Resource
	pending bool
}

// register is AddWatcher, Subscribe, Query, and the batch's Get and List.
// It returns the watched Refs as registered (namespace cleared for
// cluster-scoped kinds) with their resources.
//
// It returns once every dependency it names is watched, whoever added it:
// a dependency another call is still registering is waited for too, and
// if that call fails and rolls it back, this one adds it again itself
// (a terminal failure of the shared watch is returned to both). A watcher
// that reads bodies (Objects) also waits for its sources to be full, so
// that the cache holds more than the metadata-only copies a previous
// source left.
func (e *Engine) register(ctx context.Context, watcher cache.Ref, watched []cache.Ref, opts *WatcherOptions, replace bool, batch *Batch) ([]resolved, error) {
	e.mu.Lock()
	err := e.checkRunningLocked()
	e.mu.Unlock()
	if err != nil {
		return nil, err
	}
	watcher, err = watcher.Canonical()
	if err != nil {
		return nil, fmt.Errorf("watcher: %w", err)
	}
	refs := make([]cache.Ref, 0, len(watched))
	for i, r := range watched {
		c, err := r.Canonical()
		if err != nil {
			return nil, fmt.Errorf("watched[%d]: %w", i, err)
		}
		refs = append(refs, c)
	}
	if opts != nil && opts.Debounce < 0 {
		return nil, fmt.Errorf("%w: watcher %s: negative debounce %s", ErrInvalidInput, watcher, opts.Debounce)
	}
	c := &registration{e: e, watcher: watcher, opts: opts, batch: batch}
	for {
		// Discovery happens before the lock is taken, and before anything
		// changes, so that a bad kind changes nothing. It is redone when
		// the call must start over: a pending kind may be served since.
		rs, err := e.resolveAll(ctx, refs)
		if err != nil {
			e.mu.Lock()
			c.rollbackLocked()
			e.mu.Unlock()
			return nil, err
		}
		e.mu.Lock()
		err = c.applyLocked(rs)
		if err == nil {
			err = e.waitReadyLocked(ctx, c.ws, c.named, c.bodies())
		}
		if errors.Is(err, errStartOver) {
			e.mu.Unlock()
			continue
		}
		if err != nil {
			c.rollbackLocked()
			e.mu.Unlock()
			return nil, err
		}
		c.confirmLocked()
		if replace {
			kinds := map[*kindState]bool{}
			keep := make(map[*pair]bool, len(c.named))
			for _, p := range c.named {
				keep[p] = true
			}
			for st, p := range c.ws.pairs {
				if !keep[p] {
					if st.kind != nil {
						kinds[st.kind] = true
					}
					e.removePairLocked(p)
				}
			}
			for k := range kinds {
				e.planLocked(k)
			}
		}
		e.mu.Unlock()
		return rs, nil
	}
}

// errStartOver: a dependency the call waited for was dropped by another
// call (which rolled back, or replaced the watcher's dependencies), or the
// watcher's options changed under it; the call applies itself again.
var errStartOver = errors.New("registration changed by a concurrent call")

// registration is the state of one register call, which may apply itself
// more than once (errStartOver). Guarded by the engine's mutex.
type registration struct {
	e       *Engine
	watcher cache.Ref
	opts    *WatcherOptions
	batch   *Batch

	ws *watcherState // the watcher as last applied to
	// created: this call registered ws.
	created bool
	// optsWS, prevOpts and setOpts say which options this call replaced,
	// to restore them on failure unless a later call changed them again.
	optsWS            *watcherState
	prevOpts, setOpts WatcherOptions
	// added are the pairs this call created; named, those it names, as
	// last applied.
	added, named []*pair
}

// bodies reports whether the call reads objects' bodies.
func (c *registration) bodies() bool {
	return c.batch != nil || (c.opts != nil && c.opts.Objects)
}

// applyLocked registers the watcher (if needed), sets its options and adds
// the dependencies it lacks; c.named are then the pairs for rs, in order.
func (c *registration) applyLocked(rs []resolved) error {
	e := c.e
	if err := e.checkRunningLocked(); err != nil {
		return err
	}
	ws := e.watchers[c.watcher]
	if ws != nil && ws.batch != nil && ws.batch != c.batch {
		return fmt.Errorf("%w: %s", ErrBatchInProgress, c.watcher)
	}
	if ws == nil {
		ws = &watcherState{ref: c.watcher, pairs: map[*refState]*pair{}}
		ws.opts.NoInitial = e.opts.DisableInitialReconcile
		e.watchers[c.watcher] = ws
		c.created = true
	} else if ws != c.ws {
		c.created = false
	}
	c.ws = ws
	want := ws.opts
	if c.opts != nil {
		want = *c.opts
	}
	if c.batch != nil {
		want.Objects = true
	}
	// Options.DisableInitialReconcile holds for every watcher, whatever
	// its NoInitial says.
	want.NoInitial = want.NoInitial || e.opts.DisableInitialReconcile
	if want != ws.opts {
		if c.optsWS != ws {
			c.optsWS, c.prevOpts = ws, ws.opts
		}
		e.setOptionsLocked(ws, want)
		c.setOpts = ws.opts
	}
	named := make([]*pair, 0, len(rs))
	kinds := map[*kindState]bool{}
	for _, r := range rs {
		st := e.refLocked(r)
		if st.kind != nil {
			kinds[st.kind] = true
		}
		p := ws.pairs[st]
		if p == nil {
			p = e.addPairLocked(ws, st)
			c.added = append(c.added, p)
		}
		named = append(named, p)
	}
	for k := range kinds {
		e.planLocked(k)
	}
	c.named = named
	return nil
}

// rollbackLocked drops the pairs the call added, except those a
// concurrent call that named them too has confirmed (it returned on them),
// and restores the options it replaced (unless another call set others
// since).
func (c *registration) rollbackLocked() {
	e := c.e
	kinds := map[*kindState]bool{}
	for _, p := range c.added {
		if p.w.pairs[p.r] == p && !p.confirmed {
			if p.r.kind != nil {
				kinds[p.r.kind] = true
			}
			e.removePairLocked(p)
		}
	}
	if ws := c.optsWS; ws != nil && e.watchers[c.watcher] == ws && ws.opts == c.setOpts {
		e.setOptionsLocked(ws, c.prevOpts)
	}
	if ws := c.ws; c.created && e.watchers[c.watcher] == ws && len(ws.pairs) == 0 && ws.batch == nil {
		delete(e.watchers, c.watcher)
	}
	for k := range kinds {
		e.planLocked(k)
	}
}

// confirmLocked marks the pairs the call names as registered, those a
// concurrent call added and has not confirmed yet included (this call
// returns on them, so no rollback may drop them), and sends the initial
// reconciles of those whose scope was listed already; others get them when
// it is (maybeReadyLocked). A pair added while its kind was not served
// gets none: it is told of its objects as added when the kind appears
// (appearedLocked).
func (c *registration) confirmLocked() {
	for _, p := range c.named {
		if p.w.pairs[p.r] != p || p.confirmed {
			continue // dropped since by another call, or confirmed before
		}
		p.confirmed = true
		if !p.waitInitial && !p.addedPending {
			c.e.initialLocked(p)
		}
	}
}

// resolveAll maps each Ref's kind to its resource. A kind that is not
// served is accepted as pending if a CRD could define it later (its group
// has a dot), and is an error otherwise.
func (e *Engine) resolveAll(ctx context.Context, refs []cache.Ref) ([]resolved, error) {
	byGVK := map[schema.GroupVersionKind]resolved{}
	out := make([]resolved, 0, len(refs))
	for _, r := range refs {
		gvk := r.GroupVersionKind()
		rv, ok := byGVK[gvk]
		if !ok {
			res, err := e.mapper.Resource(ctx, gvk)
			switch {
			case err == nil:
				rv = resolved{res: res}
			case errors.Is(err, ErrNoVersionedResource) && strings.Contains(r.Group, "."):
				rv = resolved{pending: true}
			default:
				return nil, fmt.Errorf("watch %s: %w", r, err)
			}
			byGVK[gvk] = rv
		}
		rv.ref = r
		if !rv.pending && !rv.res.Namespaced {
			rv.ref.Namespace = ""
		}
		out = append(out, rv)
	}
	return out, nil
}

// refLocked returns the state of a watched Ref, creating it (attached to its
// kind, or pending) if new.
func (e *Engine) refLocked(r resolved) *refState {
	if st := e.refs[r.ref]; st != nil {
		return st
	}
	st := &refState{ref: r.ref, gvk: r.ref.GroupVersionKind(), pairs: map[*watcherState]*pair{}}
	if r.ref.Selector != "" {
		st.sel, _ = cache.ParseSelector(r.ref.Selector) // canonical: parses
	}
	e.refs[r.ref] = st
	if r.pending {
		e.addPendingLocked(st)
	} else {
		e.attachLocked(st, r.res)
	}
	return st
}

// attachLocked adds a ref to its kind's index and counts.
func (e *Engine) attachLocked(st *refState, res cache.Resource) {
	k := e.kinds[res.GroupVersionResource]
	if k == nil {
		k = &kindState{res: res, gvk: st.gvk, refs: map[*refState]struct{}{}, index: newIndex(),
			nsRefs: map[string]int{}, sources: map[string]*source{}}
		e.kinds[res.GroupVersionResource] = k
	}
	st.kind = k
	k.refs[st] = struct{}{}
	k.index.add(st)
	k.nsRefs[st.ref.Namespace]++
	if st.ref.Namespace == "" && res.Namespaced {
		// A new cluster-wide need: try cluster-wide access again.
		k.clusterForbidden = false
	}
	for _, p := range st.pairs {
		if p.bodies {
			k.bodyPairs++
		}
	}
}

// detachLocked removes a ref from its kind (which the caller replans).
func (e *Engine) detachLocked(st *refState) {
	k := st.kind
	if k == nil {
		return
	}
	delete(k.refs, st)
	k.index.remove(st)
	if k.nsRefs[st.ref.Namespace]--; k.nsRefs[st.ref.Namespace] <= 0 {
		delete(k.nsRefs, st.ref.Namespace)
	}
	for _, p := range st.pairs {
		if p.bodies {
			k.bodyPairs--
		}
	}
	st.kind = nil
}

func (e *Engine) addPairLocked(ws *watcherState, st *refState) *pair {
	p := &pair{w: ws, r: st, bodies: ws.opts.Objects, addedPending: st.kind == nil}
	// Not listed yet: the initial reconcile waits for the list.
	p.waitInitial = st.kind == nil || !e.store.Covered(st.kind.res.GroupVersionResource, st.ref.Namespace)
	ws.pairs[st] = p
	st.pairs[ws] = p
	if p.bodies && st.kind != nil {
		st.kind.bodyPairs++
	}
	return p
}

// removePairLocked drops a dependency; the ref goes when no watcher needs
// it. The caller replans the kind.
func (e *Engine) removePairLocked(p *pair) {
	st := p.r
	if st.pairs[p.w] != p {
		return
	}
	delete(st.pairs, p.w)
	delete(p.w.pairs, st)
	if p.bodies && st.kind != nil {
		st.kind.bodyPairs--
	}
	if len(st.pairs) > 0 {
		return
	}
	if e.refs[st.ref] == st {
		delete(e.refs, st.ref)
	}
	if st.kind != nil {
		e.detachLocked(st)
	} else {
		e.removePendingLocked(st)
	}
}

// setOptionsLocked changes a watcher's options, keeping body counts right.
// opts are as applyLocked decides them (Options.DisableInitialReconcile
// included).
func (e *Engine) setOptionsLocked(ws *watcherState, opts WatcherOptions) {
	if ws.opts.Objects != opts.Objects {
		kinds := map[*kindState]bool{}
		for _, p := range ws.pairs {
			if k := p.r.kind; k != nil {
				if p.bodies {
					k.bodyPairs--
				}
				if opts.Objects {
					k.bodyPairs++
				}
				kinds[k] = true
			}
			p.bodies = opts.Objects
		}
		ws.opts = opts
		for k := range kinds {
			e.planLocked(k)
		}
	}
	ws.opts = opts
}

// waitReadyLocked waits until each of the watcher's pairs is watched: a
// ready source covers its ref (a full one if the watcher reads bodies), or
// its kind is pending. It is called with e.mu held, and returns with it
// held, releasing it while it waits. A ref dropped by a terminal failure
// returns that failure; a pair dropped by another call, or bodies no
// longer read when the call needs them, return errStartOver. Readiness is
// checked again before a done ctx is reported, so a call never rolls back
// a dependency that became ready (another call may have returned on it).
func (e *Engine) waitReadyLocked(ctx context.Context, ws *watcherState, pairs []*pair, bodies bool) error {
	for {
		if err := e.checkRunningLocked(); err != nil {
			return err
		}
		done := true
		for _, p := range pairs {
			if p.r.err != nil {
				return p.r.err
			}
			if ws.pairs[p.r] != p || e.watchers[ws.ref] != ws {
				return errStartOver
			}
			if !e.pairReadyLocked(p) {
				done = false
			}
		}
		if bodies && !ws.opts.Objects {
			return errStartOver
		}
		if done {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("waiting for the watch to start: %w", err)
		}
		ch := e.changed
		e.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		e.mu.Lock()
	}
}

// pairReadyLocked reports whether a pair's ref is watched: its kind is
// pending, or a ready source covers it, full if the pair reads bodies (a
// metadata-only source being replaced leaves metadata-only copies behind).
func (e *Engine) pairReadyLocked(p *pair) bool {
	st := p.r
	if st.kind == nil {
		return true // pending: accepted
	}
	s := st.kind.coveringSource(st.ref.Namespace)
	return s != nil && s.ready && (s.full || !p.bodies || e.opts.DisableCache)
}

// coveringSource is the source whose list+watch includes namespace, if any.
func (k *kindState) coveringSource(namespace string) *source {
	if s := k.sources[""]; s != nil {
		return s
	}
	if namespace == "" {
		return nil
	}
	return k.sources[namespace]
}

// initialLocked sends pair p its initial reconcile: one cause per stored
// object its ref matches, or nothing if none does or initial reconciles are
// off for the watcher.
func (e *Engine) initialLocked(p *pair) {
	p.waitInitial = false
	st := p.r
	if st.kind == nil || e.toldDiffLocked(p) {
		return
	}
	sent := false
	if !p.w.opts.NoInitial {
		e.eachMatch(st, func(o *cache.Object) {
			sent = true
			e.enqueueLocked(p.w, Cause{Watched: st.ref, Namespace: o.Namespace, Name: o.Name, UID: o.UID,
				ResourceVersion: o.ResourceVersion, Op: OpInitial})
		})
	}
	if !sent && e.opts.Checkpoint != nil {
		e.opts.Checkpoint.Baseline(p.w.ref, st.ref.Key(), e.seenLocked(st))
	}
}

// eachMatch calls fn for every stored object a ref of a served kind
// matches: one lookup for a name in a namespace, else a scan of the
// namespace (or of all of them).
func (e *Engine) eachMatch(st *refState, fn func(*cache.Object)) {
	gvr := st.kind.res.GroupVersionResource
	if st.sel == nil && st.ref.Namespace != "" {
		if o := e.store.Lookup(gvr, st.ref.Namespace, st.ref.Name); o != nil {
			fn(o)
		}
		return
	}
	e.store.Each(gvr, st.ref.Namespace, func(o *cache.Object) bool {
		if (st.sel == nil && o.Name == st.ref.Name) || (st.sel != nil && st.sel.Matches(o.Labels)) {
			fn(o)
		}
		return true
	})
}

func (e *Engine) enqueueLocked(ws *watcherState, c Cause) {
	e.queue.add(ws.ref, c, ws.opts.Debounce)
}

// dropRefLocked removes a ref from every watcher because it cannot be
// watched (access revoked, unwatchable). Watchers whose registration had
// completed get one OpLost reconcile; callers still waiting get err.
func (e *Engine) dropRefLocked(st *refState, err error) {
	st.err = err
	for _, p := range st.pairs {
		if p.confirmed {
			e.enqueueLocked(p.w, Cause{Watched: st.ref, Op: OpLost, Reason: err.Error()})
		}
		e.removePairLocked(p)
		if len(p.w.pairs) == 0 && p.w.batch == nil && e.watchers[p.w.ref] == p.w && p.confirmed {
			delete(e.watchers, p.w.ref)
		}
	}
}

// permissionHint wraps a forbidden or unauthorized error with what to do;
// apierrors.IsForbidden still holds for the result.
func permissionHint(gvr schema.GroupVersionResource, namespace string, err error) error {
	if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
		where := "in all namespaces"
		if namespace != "" {
			where = "in namespace " + namespace
		}
		return fmt.Errorf("list and watch %s %s (ensure the bridge may list and watch it): %w", gvr.GroupResource(), where, err)
	}
	return fmt.Errorf("list and watch %s: %w", gvr.GroupResource(), err)
}
