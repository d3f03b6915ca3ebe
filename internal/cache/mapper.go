package cache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/restmapper"
)

// Resource is where a kind is served.
type Resource struct {
	schema.GroupVersionResource
	Namespaced bool
}

// MapperOptions tunes a Mapper.
type MapperOptions struct {
	// TTL after which cached discovery is refetched on the next lookup; a
	// refetch starts a new TTL. Defaults to 10 minutes.
	TTL time.Duration
	// MinRefresh is the least time between two refetches caused by lookups
	// of unknown kinds, so that asking again and again for a kind that does
	// not exist does not hammer discovery. Defaults to 1 second.
	MinRefresh time.Duration
	// Now is the clock. Defaults to time.Now.
	Now func() time.Time
}

// Mapper maps kinds to resources through client-go's cached discovery and
// DeferredDiscoveryRESTMapper. Unlike the seed library's cache, a refetch
// starts a new TTL, transient discovery failures are never remembered as
// "no such kind", and Invalidate (called when CRDs come and go) makes the
// next lookup refetch. Safe for concurrent use.
type Mapper struct {
	disc discovery.CachedDiscoveryInterface
	rm   *restmapper.DeferredDiscoveryRESTMapper
	opts MapperOptions

	mu        sync.Mutex
	fetched   time.Time // when the cache was last reset
	refreshed time.Time // when a lookup miss last reset it
}

// NewMapper returns a Mapper over dc.
func NewMapper(dc discovery.DiscoveryInterface, opts MapperOptions) *Mapper {
	if opts.TTL <= 0 {
		opts.TTL = 10 * time.Minute
	}
	if opts.MinRefresh <= 0 {
		opts.MinRefresh = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	disc := memory.NewMemCacheClient(dc)
	return &Mapper{disc: disc, rm: restmapper.NewDeferredDiscoveryRESTMapper(disc), opts: opts, fetched: opts.Now()}
}

// Invalidate makes the next lookup refetch discovery.
func (m *Mapper) Invalidate() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.resetLocked()
}

func (m *Mapper) resetLocked() {
	m.rm.Reset()
	m.fetched = m.opts.Now()
}

// Resource returns where gvk is served. Errors:
//   - ErrNoVersionedResource (wrapped): discovery says the group/version is
//     not served or has no such kind;
//   - ErrResourceUnwatchable (wrapped), together with the Resource: the kind
//     exists but cannot be listed and watched;
//   - anything else: discovery failed; nothing is remembered and the next
//     call asks again.
func (m *Mapper) Resource(ctx context.Context, gvk schema.GroupVersionKind) (Resource, error) {
	m.mu.Lock()
	if m.opts.Now().Sub(m.fetched) > m.opts.TTL {
		m.resetLocked()
	}
	m.mu.Unlock()

	gk, gv := gvk.GroupKind(), gvk.GroupVersion()
	mapping, err := m.rm.RESTMappingWithContext(ctx, gk, gvk.Version)
	if meta.IsNoMatchError(err) && m.refreshAllowed() {
		mapping, err = m.rm.RESTMappingWithContext(ctx, gk, gvk.Version)
	}
	if err != nil {
		if !meta.IsNoMatchError(err) {
			return Resource{}, fmt.Errorf("discover %s: %w", gvk, err)
		}
		// The REST mapper drops group/versions whose discovery failed, so a
		// transient failure looks like "no match": ask for the group/version
		// itself before concluding.
		if _, gverr := m.disc.ServerResourcesForGroupVersion(gv.String()); gverr != nil && !notFound(gverr) {
			return Resource{}, fmt.Errorf("discover %s: %w", gv, gverr)
		}
		return Resource{}, fmt.Errorf("%w: %s", ErrNoVersionedResource, gvk)
	}
	res := Resource{GroupVersionResource: mapping.Resource, Namespaced: mapping.Scope.Name() == meta.RESTScopeNameNamespace}
	list, err := m.disc.ServerResourcesForGroupVersion(gv.String())
	if err != nil {
		return Resource{}, fmt.Errorf("discover %s: %w", gv, err)
	}
	for _, r := range list.APIResources {
		if r.Name == res.Resource {
			if !slices.Contains(r.Verbs, "list") || !slices.Contains(r.Verbs, "watch") {
				return res, fmt.Errorf("%w: %s (verbs %v)", ErrResourceUnwatchable, res.GroupVersionResource, r.Verbs)
			}
			return res, nil
		}
	}
	return res, nil
}

// refreshAllowed resets the cache after a miss unless one was reset less
// than MinRefresh ago.
func (m *Mapper) refreshAllowed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.opts.Now()
	if now.Sub(m.refreshed) < m.opts.MinRefresh {
		return false
	}
	m.refreshed = now
	m.resetLocked()
	return true
}

func notFound(err error) bool {
	return errors.Is(err, memory.ErrCacheNotFound) || apierrors.IsNotFound(err)
}
