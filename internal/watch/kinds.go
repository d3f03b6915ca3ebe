package watch

import (
	"context"
	"errors"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	apiwatch "k8s.io/apimachinery/pkg/watch"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/depbridge/depbridge/internal/cache"
)

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// addPendingLocked makes a ref wait for its kind, and wakes the resolver.
func (e *Engine) addPendingLocked(st *refState) {
	e.pendLocked(st)
	e.kickResolver()
}

// pendLocked makes a ref wait for its kind without waking the resolver.
func (e *Engine) pendLocked(st *refState) {
	refs := e.pending[st.gvk]
	if refs == nil {
		refs = map[*refState]struct{}{}
		e.pending[st.gvk] = refs
	}
	refs[st] = struct{}{}
}

func (e *Engine) removePendingLocked(st *refState) {
	if refs := e.pending[st.gvk]; refs != nil {
		delete(refs, st)
		if len(refs) == 0 {
			delete(e.pending, st.gvk)
		}
	}
}

func (e *Engine) kickResolver() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// resolvePending looks up the kinds of pending refs whenever a CRD changes
// and, as a safety net (aggregated APIs, no permission to watch CRDs), with
// backoff from 1s to Options.PendingRetry. A kind found starts its watches.
func (e *Engine) resolvePending(ctx context.Context) {
	delay := time.Second
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		e.mu.Lock()
		gvks := make([]schema.GroupVersionKind, 0, len(e.pending))
		for gvk := range e.pending {
			gvks = append(gvks, gvk)
		}
		if len(gvks) > 0 {
			e.ensureCRDWatchLocked()
		} else {
			e.stopCRDWatchLocked()
		}
		e.mu.Unlock()

		if len(gvks) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-e.kick:
				delay = time.Second
				continue
			}
		}
		for _, gvk := range gvks {
			res, err := e.mapper.Resource(ctx, gvk)
			switch {
			case err == nil:
				e.mu.Lock()
				e.resolvedLocked(gvk, res)
				e.mu.Unlock()
			case errors.Is(err, ErrResourceUnwatchable):
				e.mu.Lock()
				for st := range e.pending[gvk] {
					e.dropRefLocked(st, err)
				}
				e.broadcastLocked()
				e.mu.Unlock()
			}
		}
		timer.Reset(delay)
		select {
		case <-ctx.Done():
			return
		case <-e.kick:
			delay = time.Second
		case <-timer.C:
			delay = min(2*delay, e.opts.PendingRetry)
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// resolvedLocked attaches the pending refs of a kind that is now served.
func (e *Engine) resolvedLocked(gvk schema.GroupVersionKind, res cache.Resource) {
	refs := e.pending[gvk]
	if refs == nil || e.state != running {
		return
	}
	delete(e.pending, gvk)
	e.log.Info("kind is served now; starting its watches", "kind", gvk.String(), "resource", res.GroupVersionResource.String())
	var attached []*refState
	// appeared are the pairs that now see the kind; replan, the kinds
	// their refs are attached to.
	var appeared []*pair
	replan := map[*kindState]bool{}
	for st := range refs {
		key := st.ref
		if !res.Namespaced {
			key.Namespace = ""
		}
		if key != st.ref {
			if e.refs[st.ref] == st {
				delete(e.refs, st.ref)
			}
			if into := e.refs[key]; into != nil {
				// Two refs became one (namespace ignored for a
				// cluster-scoped kind): move the watchers over. A pending
				// into is attached below with them; one attached already
				// counts them here, and they are told of its objects
				// below, as if it had just been attached.
				for ws, p := range st.pairs {
					delete(ws.pairs, st)
					if into.pairs[ws] == nil {
						p.r = into
						into.pairs[ws] = p
						ws.pairs[into] = p
						if into.kind != nil {
							if p.bodies {
								into.kind.bodyPairs++
							}
							appeared = append(appeared, p)
							replan[into.kind] = true
						}
					}
				}
				continue
			}
			st.ref = key
			e.refs[key] = st
		}
		attached = append(attached, st)
	}
	for _, st := range attached {
		e.attachLocked(st, res)
	}
	if k := e.kinds[res.GroupVersionResource]; k != nil {
		replan[k] = true
	}
	for _, st := range attached {
		for _, p := range st.pairs {
			appeared = append(appeared, p)
		}
	}
	for _, p := range appeared {
		if p.waitInitial {
			e.appearedLocked(p)
		}
	}
	for k := range replan {
		e.planLocked(k)
	}
	e.broadcastLocked()
}

// appearedLocked ends the wait of a pair whose kind was not served when it
// was added, or stopped being served since: what its ref matches was
// created after its watcher started to depend on it, so it is reported as
// added, whatever NoInitial says, not as initial. The objects come with
// the kind's first list (replace reports objects in scopes never listed as
// added), or now if a source covering the ref has listed already. With a
// Checkpoint, what the watcher was told before and no longer exists is
// reported gone first, as for an initial reconcile.
func (e *Engine) appearedLocked(p *pair) {
	p.waitInitial = false
	st := p.r
	// Listed: the store holds the scope, from a ready source or from one
	// being replaced (metadata-only by full), whose successor's first list
	// then reports only what differs, as addPairLocked assumes too.
	listed := e.store.Covered(st.kind.res.GroupVersionResource, st.ref.Namespace)
	if p.confirmed && !listed && e.opts.Checkpoint != nil && !e.toldDiffLocked(p) {
		e.opts.Checkpoint.Baseline(p.w.ref, st.ref.Key(), e.seenLocked(st))
	}
	if listed {
		e.eachMatch(st, func(o *cache.Object) {
			e.enqueueLocked(p.w, Cause{Watched: st.ref, Namespace: o.Namespace, Name: o.Name, UID: o.UID,
				ResourceVersion: o.ResourceVersion, Op: OpAdded})
		})
	}
}

// crdWatch is a metadata-only watch of CustomResourceDefinitions, running
// while kinds are pending: any change to a CRD invalidates discovery and
// wakes the resolver.
type crdWatch struct {
	cancel context.CancelFunc
}

func (e *Engine) ensureCRDWatchLocked() {
	if e.crd != nil || e.crdForbidden || e.state != running {
		return
	}
	ctx, cancel := context.WithCancel(e.runCtx)
	e.crd = &crdWatch{cancel: cancel}
	cw := e.crd
	store := &crdStore{e: e}
	lw := &toolscache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			l, err := e.meta.Resource(crdResource).List(ctx, o)
			e.crdFailed(cw, err)
			return l, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (apiwatch.Interface, error) {
			w, err := e.meta.Resource(crdResource).Watch(ctx, o)
			e.crdFailed(cw, err)
			return w, err
		},
	}
	r := toolscache.NewReflectorWithOptions(lw, &metav1.PartialObjectMetadata{}, store, toolscache.ReflectorOptions{Name: "customresourcedefinitions"})
	e.srcWG.Add(1)
	go func() {
		defer e.srcWG.Done()
		r.RunWithContext(ctx)
	}()
}

func (e *Engine) stopCRDWatchLocked() {
	if e.crd != nil {
		e.crd.cancel()
		e.crd = nil
	}
}

// crdFailed stops the CRD watch for good if it is not allowed; the resolver
// then only polls.
func (e *Engine) crdFailed(cw *crdWatch, err error) {
	if err == nil || !(apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err)) {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.crd == cw {
		e.log.Info("may not watch CustomResourceDefinitions; pending kinds are polled instead", "error", err)
		cw.cancel()
		e.crd = nil
		e.crdForbidden = true
	}
}

type crdStore struct{ e *Engine }

func (s *crdStore) changed() error {
	s.e.mapper.Invalidate()
	s.e.kickResolver()
	return nil
}
func (s *crdStore) Add(any) error               { return s.changed() }
func (s *crdStore) Update(any) error            { return s.changed() }
func (s *crdStore) Delete(any) error            { return s.changed() }
func (s *crdStore) Replace([]any, string) error { return s.changed() }
func (s *crdStore) Resync() error               { return nil }
