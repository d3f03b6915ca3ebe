package watch

import (
	"cmp"
	"context"
	"slices"

	"k8s.io/apimachinery/pkg/types"

	"github.com/depbridge/depbridge/internal/cache"
)

// Checkpoint lets a restarted engine neither miss what changed while it was
// down nor re-announce what did not: it records what each watcher was told,
// and is asked about it when the watcher's dependencies are first listed.
type Checkpoint interface {
	// Told returns what watcher was last told (nil, false if nothing is
	// known). Must be fast: it is called under the engine's lock.
	Told(watcher cache.Ref) (View, bool)
	// Acked records that watcher's last request was acknowledged, and view
	// what it covered (for the Refs in view; others keep their record).
	// Must not block: delivery never waits on checkpoints.
	Acked(watcher cache.Ref, view View)
	// Baseline records what watcher starts from for one watched Ref (by
	// its Key) when no request was needed to tell it: its dependency was
	// registered without an initial reconcile (none wanted, or nothing
	// matched), so changes after this state are the ones it must get.
	// Called under the engine's lock; must not block.
	Baseline(watcher cache.Ref, ref string, seen []Seen)
	// Telling is called before each request is published, with its
	// causes. It records, durably before it returns, every object the
	// causes may tell watcher is in the set of a Ref and that its record
	// does not hold yet: a record written only after the acknowledgement
	// lags the broker, and an object announced in that lag and gone
	// before a restart would be in no record and no list, so the watcher
	// would never hear it went. An error fails the request, which is
	// retried. It may block (a write to the backend), but only for
	// objects new to the record.
	Telling(ctx context.Context, watcher cache.Ref, causes []Cause) error
	// MayHaveTold returns, per Ref Key, the objects Telling recorded and
	// no acknowledged request has covered since: watcher may or may not
	// have been told they are in the Ref's set. Called under the
	// engine's lock; must be fast. The view must not be modified.
	MayHaveTold(watcher cache.Ref) View
}

// View is what a watcher was told, per watched Ref (by its Key), object by
// object. A Ref present with no objects was told "nothing matches".
type View map[string][]Seen

// Seen is one object's identity and version.
type Seen struct {
	Namespace       string    `json:"ns,omitempty"`
	Name            string    `json:"name"`
	UID             types.UID `json:"uid"`
	ResourceVersion string    `json:"rv"`
}

// viewLocked is what a watcher's next request covers: for each dependency
// that is registered and has had its initial evaluation, the objects it
// matches now. Taken with the request, under the lock, so that everything
// it holds was caused in this or an earlier request.
func (e *Engine) viewLocked(w cache.Ref) View {
	ws := e.watchers[w]
	if ws == nil {
		return nil
	}
	v := View{}
	for st, p := range ws.pairs {
		if st.kind == nil || !p.confirmed || p.waitInitial {
			continue
		}
		v[st.ref.Key()] = e.seenLocked(st)
	}
	return v
}

// seenLocked lists what a ref matches now, sorted.
func (e *Engine) seenLocked(st *refState) []Seen {
	seen := []Seen{}
	e.eachMatch(st, func(o *cache.Object) {
		seen = append(seen, Seen{Namespace: o.Namespace, Name: o.Name, UID: o.UID, ResourceVersion: o.ResourceVersion})
	})
	slices.SortFunc(seen, func(a, b Seen) int { return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name)) })
	return seen
}

// toldDiffLocked sends pair p relisted causes for every difference between
// what its watcher was told about p's Ref and what it matches now: changed
// or new objects, and objects gone (no resourceVersion), including those
// it may have been told of (Checkpoint.MayHaveTold) without a record of
// the acknowledgement. It reports false when nothing was recorded for the
// Ref, so the caller falls back to the initial reconcile (gone objects it
// may have been told of still get their cause).
func (e *Engine) toldDiffLocked(p *pair) bool {
	if e.opts.Checkpoint == nil {
		return false
	}
	key := p.r.ref.Key()
	maybe := e.opts.Checkpoint.MayHaveTold(p.w.ref)[key]
	view, ok := e.opts.Checkpoint.Told(p.w.ref)
	told, recorded := view[key]
	if !ok || !recorded {
		e.maybeGoneLocked(p, maybe, nil)
		return false
	}
	was := make(map[[2]string]Seen, len(told))
	for _, s := range told {
		was[[2]string{s.Namespace, s.Name}] = s
	}
	present := map[[2]string]bool{}
	e.eachMatch(p.r, func(o *cache.Object) {
		k := [2]string{o.Namespace, o.Name}
		present[k] = true
		s, ok := was[k]
		delete(was, k)
		if ok && s.UID == o.UID && s.ResourceVersion == o.ResourceVersion {
			return
		}
		e.enqueueLocked(p.w, Cause{Watched: p.r.ref, Namespace: o.Namespace, Name: o.Name, UID: o.UID,
			ResourceVersion: o.ResourceVersion, Op: OpRelisted})
	})
	for k, s := range was {
		present[k] = true // told gone here; not again below
		e.enqueueLocked(p.w, Cause{Watched: p.r.ref, Namespace: s.Namespace, Name: s.Name, UID: s.UID, Op: OpRelisted})
	}
	e.maybeGoneLocked(p, maybe, present)
	return true
}

// maybeGoneLocked sends pair p a relisted cause with no resourceVersion
// for each object its watcher may have been told of that p's Ref does
// not match now, except those in skip.
func (e *Engine) maybeGoneLocked(p *pair, maybe []Seen, skip map[[2]string]bool) {
	if len(maybe) == 0 {
		return
	}
	if skip == nil {
		skip = map[[2]string]bool{}
		e.eachMatch(p.r, func(o *cache.Object) { skip[[2]string{o.Namespace, o.Name}] = true })
	}
	for _, s := range maybe {
		k := [2]string{s.Namespace, s.Name}
		if skip[k] {
			continue
		}
		skip[k] = true
		e.enqueueLocked(p.w, Cause{Watched: p.r.ref, Namespace: s.Namespace, Name: s.Name, UID: s.UID, Op: OpRelisted})
	}
}

// Resync queues watcher for one reconcile with an OpResync cause: "what it
// was told before is unknown; reconcile from scratch". The bridge sends it
// to every watcher at start when it keeps no checkpoints.
func (e *Engine) Resync(watcher cache.Ref) error {
	w, err := watcher.Canonical()
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.checkRunningLocked(); err != nil {
		return err
	}
	ws := e.watchers[w]
	if ws == nil {
		return nil
	}
	e.enqueueLocked(ws, Cause{Op: OpResync})
	return nil
}
