package watch

import (
	"errors"
	"time"

	"github.com/depbridge/depbridge/internal/cache"
)

var (
	// ErrNotStarted: the call needs a running engine (Start not called yet,
	// or returned).
	ErrNotStarted = errors.New("watch engine is not running")
	// ErrCacheDisabled: the engine was built with Options.DisableCache.
	ErrCacheDisabled = errors.New("the object cache is disabled")
	// ErrBatchInProgress: the watcher has an open query batch; its watches
	// change only through the batch until it ends.
	ErrBatchInProgress = errors.New("a query batch is open for this watcher")
	// ErrNoBatch: the batch has ended.
	ErrNoBatch = errors.New("query batch is not open")
	// ErrTerminal, wrapped by a Reconcile error, means "do not retry".
	ErrTerminal = errors.New("terminal reconcile error")

	// ErrInvalidInput, ErrNoVersionedResource, ErrResourceUnwatchable and
	// ErrNoCacheEntry are the cache package's, re-exported for callers of
	// the engine.
	ErrInvalidInput        = cache.ErrInvalidInput
	ErrNoVersionedResource = cache.ErrNoVersionedResource
	ErrResourceUnwatchable = cache.ErrResourceUnwatchable
	ErrNoCacheEntry        = cache.ErrNoCacheEntry
)

// RetryDelayer is implemented by reconcile errors that know when a retry
// can succeed (an HTTP 429 or 503 with Retry-After, see sink.StatusError);
// the engine then waits at least that long before retrying.
type RetryDelayer interface {
	RetryDelay() (delay time.Duration, ok bool)
}
