package watch

import (
	"context"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/depbridge/depbridge/internal/cache"
)

// Op says what happened to a watched object.
type Op string

const (
	// OpAdded: the object was created.
	OpAdded Op = "added"
	// OpModified: the object changed (and, for a selector, still matches).
	OpModified Op = "modified"
	// OpDeleted: the object was deleted.
	OpDeleted Op = "deleted"
	// OpEntered: the object's labels changed so that it now matches the selector.
	OpEntered Op = "entered"
	// OpLeft: the object's labels changed so that it no longer matches the selector.
	OpLeft Op = "left"
	// OpInitial: the object existed when the watcher started to depend on it.
	OpInitial Op = "initial"
	// OpRelisted: a relist (after 410 Gone, a broken stream or a restart)
	// found the object different from the last state seen. ResourceVersion is
	// empty when the object no longer exists.
	OpRelisted Op = "relisted"
	// OpLost: the engine can no longer watch the watched Ref, because access
	// was revoked (the Ref is removed from the watcher) or its kind was
	// removed (the Ref stays, pending, until the kind is served again).
	// Reason says which.
	OpLost Op = "lost"
	// OpResync: the bridge started without a record of what the watcher was
	// told before (it keeps no checkpoints); reconcile it from scratch. Has
	// no Watched Ref and no object.
	OpResync Op = "resync"
)

// Cause is one reason why a watcher is reconciled.
type Cause struct {
	// Watched is the dependency (a name or selector Ref) that matched;
	// zero for OpResync.
	Watched cache.Ref `json:"watched,omitzero"`
	// Namespace and Name of the object that changed; empty for OpLost.
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	// UID and ResourceVersion of the object after the change (of its last
	// known state for OpDeleted and OpLeft).
	UID             types.UID `json:"uid,omitempty"`
	ResourceVersion string    `json:"resourceVersion,omitempty"`
	Op              Op        `json:"op"`
	// Reason explains OpLost.
	Reason string `json:"reason,omitempty"`
}

// Request asks for a watcher to be reconciled.
type Request struct {
	Watcher cache.Ref
	// Causes accumulated while the watcher waited in the queue, oldest first,
	// one per watched object (a later change of the same object updates its
	// cause). Causes of a failed reconcile are kept for the retry. Empty for a
	// requeue asked for by Result.RequeueAfter.
	Causes []Cause
	// Truncated counts causes dropped because the watcher had more pending
	// than Options.MaxCauses; when it is non-zero, treat every dependency as
	// possibly changed.
	Truncated int
	// Enqueued is when the first of Causes was recorded.
	Enqueued time.Time
}

// Result of a successful reconcile.
type Result struct {
	// RequeueAfter, if positive, reconciles the watcher again after this
	// long (with no causes) unless a change comes first.
	RequeueAfter time.Duration
}

// Reconciler is called with each reconcile request. The engine never calls
// it concurrently for the same watcher, but does for different watchers (see
// Options.Workers).
type Reconciler interface {
	// Reconcile brings the outside world in line with what the watcher
	// depends on. A nil error means done. Any other error retries the same
	// request (its causes merged with newer ones) with capped exponential
	// backoff, except errors wrapping ErrTerminal, which are logged and
	// dropped. A panic counts as an error.
	Reconcile(ctx context.Context, req Request) (Result, error)
}

// AsyncReconciler is a Reconciler that can finish after it returns: a
// publisher hands the event to a pipelining sink and is told of the ack
// later. The engine calls Begin instead of Reconcile; the worker moves on
// at once, and the watcher stays in reconcile (not handed to another
// worker, its new causes kept for the next request) until done is called.
// Options.MaxInFlight bounds the requests begun and not done.
type AsyncReconciler interface {
	Reconciler
	// Begin starts reconciling req and calls done exactly once with what
	// Reconcile would have returned, from any goroutine, possibly before
	// Begin returns. done does not block. A panic in Begin before it
	// called done counts as an error.
	Begin(ctx context.Context, req Request, done func(Result, error))
}

// ReconcilerFunc adapts a function to Reconciler.
type ReconcilerFunc func(ctx context.Context, req Request) (Result, error)

// Reconcile calls f.
func (f ReconcilerFunc) Reconcile(ctx context.Context, req Request) (Result, error) {
	return f(ctx, req)
}
