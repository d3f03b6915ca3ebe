package rbac

import (
	"context"
	"errors"
	"fmt"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"

	"github.com/depbridge/depbridge/internal/cache"
)

// DiscoveryResolver resolves kinds through the discovery API of a cluster,
// with cache.Mapper (so the same way the engine does). A kind without a
// version (named by the control policy) is looked up in the group's
// preferred version, then in its other versions. Discovery is read once and
// cached; safe for concurrent use.
func DiscoveryResolver(dc discovery.DiscoveryInterface) Resolver {
	m := cache.NewMapper(dc, cache.MapperOptions{})
	var (
		mu     sync.Mutex
		groups *metav1.APIGroupList
	)
	serverGroups := func() (*metav1.APIGroupList, error) {
		mu.Lock()
		defer mu.Unlock()
		if groups == nil {
			g, err := dc.ServerGroups()
			if err != nil {
				return nil, fmt.Errorf("discover API groups: %w", err)
			}
			groups = g
		}
		return groups, nil
	}
	return func(ctx context.Context, gvk schema.GroupVersionKind) (cache.Resource, error) {
		if gvk.Version != "" {
			return m.Resource(ctx, gvk)
		}
		list, err := serverGroups()
		if err != nil {
			return cache.Resource{}, err
		}
		for _, g := range list.Groups {
			if g.Name != gvk.Group {
				continue
			}
			versions := []string{g.PreferredVersion.Version}
			for _, v := range g.Versions {
				if v.Version != g.PreferredVersion.Version {
					versions = append(versions, v.Version)
				}
			}
			for _, v := range versions {
				res, err := m.Resource(ctx, gvk.GroupKind().WithVersion(v))
				if !errors.Is(err, cache.ErrNoVersionedResource) {
					return res, err
				}
			}
		}
		return cache.Resource{}, fmt.Errorf("%w: %s in any version", cache.ErrNoVersionedResource, gvk.GroupKind())
	}
}
