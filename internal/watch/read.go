package watch

import (
	"cmp"
	"context"
	"slices"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/depbridge/depbridge/internal/cache"
)

// Resource maps a kind to the resource serving it, through the engine's
// discovery cache. It needs no running engine.
func (e *Engine) Resource(ctx context.Context, gvk schema.GroupVersionKind) (cache.Resource, error) {
	return e.mapper.Resource(ctx, gvk)
}

// Get reads a watched object from the cache, whatever query watches it:
// (nil, nil) if it does not exist, ErrNoCacheEntry if nothing watches its
// namespace and kind. The namespace is ignored for cluster-scoped kinds.
// Objects of kinds no watcher reads in full carry metadata only.
func (e *Engine) Get(ctx context.Context, gvk schema.GroupVersionKind, namespace, name string) (*unstructured.Unstructured, error) {
	gvr, namespace, err := e.cached(ctx, gvk, namespace)
	if err != nil {
		return nil, err
	}
	return e.store.Get(gvr, namespace, name)
}

// cached resolves a kind for a cache read, the namespace cleared for a
// cluster-scoped kind.
func (e *Engine) cached(ctx context.Context, gvk schema.GroupVersionKind, namespace string) (schema.GroupVersionResource, string, error) {
	if e.opts.DisableCache {
		return schema.GroupVersionResource{}, "", ErrCacheDisabled
	}
	res, err := e.mapper.Resource(ctx, gvk)
	if err != nil {
		return schema.GroupVersionResource{}, "", err
	}
	if !res.Namespaced {
		namespace = ""
	}
	return res.GroupVersionResource, namespace, nil
}

// List reads watched objects of a kind in namespace ("" for all) matching
// sel (nil for all) from the cache, sorted by namespace and name.
func (e *Engine) List(ctx context.Context, gvk schema.GroupVersionKind, namespace string, sel labels.Selector) ([]*unstructured.Unstructured, error) {
	gvr, namespace, err := e.cached(ctx, gvk, namespace)
	if err != nil {
		return nil, err
	}
	return e.store.List(gvr, namespace, sel)
}

// ListWatched returns every cached object some dependency of watcher
// matches, once each, sorted by kind, namespace and name.
func (e *Engine) ListWatched(watcher cache.Ref) ([]*unstructured.Unstructured, error) {
	if e.opts.DisableCache {
		return nil, ErrCacheDisabled
	}
	w, err := watcher.Canonical()
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	ws := e.watchers[w]
	if ws == nil {
		return nil, nil
	}
	type found struct {
		k *kindState
		o *cache.Object
	}
	seen := map[[3]string]bool{}
	var all []found
	for st := range ws.pairs {
		k := st.kind
		if k == nil {
			continue
		}
		e.eachMatch(st, func(o *cache.Object) {
			key := [3]string{k.res.GroupVersionResource.String(), o.Namespace, o.Name}
			if !seen[key] {
				seen[key] = true
				all = append(all, found{k, o})
			}
		})
	}
	slices.SortFunc(all, func(a, b found) int {
		return cmp.Or(cmp.Compare(a.k.gvk.Kind, b.k.gvk.Kind), cmp.Compare(a.k.gvk.Group, b.k.gvk.Group),
			cmp.Compare(a.o.Namespace, b.o.Namespace), cmp.Compare(a.o.Name, b.o.Name))
	})
	out := make([]*unstructured.Unstructured, 0, len(all))
	for _, f := range all {
		u, err := e.store.Export(f.k.gvk, f.o)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}
