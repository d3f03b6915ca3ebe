package control

import (
	"context"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/watch"
)

// Subscriptions is what the control channel changes; the bridge implements
// it over its watch engine. Calls for one watcher are never concurrent
// (the transports serialize a watcher's messages); calls for different
// watchers are.
type Subscriptions interface {
	// Apply adds or replaces the run-time subscription of s.Watcher. It
	// validates s (refs, route exists, debounce) and returns an error
	// wrapping ErrInvalid for bad input, ErrOwned when the watcher is
	// defined in the config file (the file wins), or the engine's error
	// (forbidden, unknown kind ...). Nothing changes on error. s arrives
	// with its defaults applied: Route set (control.route when the
	// message names none) and InitialReconcile non-nil.
	Apply(ctx context.Context, s config.Subscription) error
	// Delete removes the run-time subscription of watcher; unknown is not
	// an error; ErrOwned for config-file watchers.
	Delete(ctx context.Context, watcher cache.Ref) error
	// Query makes exactly queries the watcher's dependencies (end-of-batch
	// semantics: what it had and did not ask again is dropped; all or
	// nothing) with events going to route, and returns what each query
	// finds in the cache, unredacted. ErrOwned / ErrInvalid as above.
	Query(ctx context.Context, watcher cache.Ref, route string, initial bool, queries []cache.Ref) ([]watch.QueryResult, error)
	// KindResolver says how a kind is served, for the policy.
	KindResolver
}

// KindResolver says how a kind is served; the bridge's Subscriptions does,
// through the engine's discovery cache (watch.Engine.Resource). The
// policy needs it: the engine ignores the namespace of a Ref of a
// cluster-scoped kind, so such a Ref is judged as one with no namespace,
// and a client allowed only some namespaces cannot watch, say, every Node
// by naming one of them.
type KindResolver interface {
	// Resource returns where gvk is served: an error wrapping
	// cache.ErrNoVersionedResource when it is not (yet), or
	// cache.ErrResourceUnwatchable with the Resource; any other error
	// (discovery failed) makes the message fail.
	Resource(ctx context.Context, gvk schema.GroupVersionKind) (cache.Resource, error)
}
