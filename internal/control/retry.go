package control

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Backoff of the retries of replayed messages: the first retry waits
// retryMin, each next one twice as long, at most retryMax.
const (
	retryMin = time.Second
	retryMax = 30 * time.Second
)

// transient is the outcome of a replayed message whose handling failed for
// a reason that may pass (not final: discovery, a timeout, RBAC not bound
// yet, the API server unavailable). It was not carried out, counted or
// answered; the retry set handles it again.
type transient struct {
	watcher string // key of the message's watcher
	err     error
}

// retrySet keeps, per serializer key (a watcher's subject or record key),
// the replayed message whose handling failed for a reason that may pass,
// and handles it again with backoff (retryMin doubling to retryMax) until
// it is carried out, a newer message of the key replaces it, or the
// channel stops. Both transports use it the same way:
//
//   - every function they queue on the serializer goes through handle,
//     which drops the key's pending retry (the newer message replaces it:
//     an apply or query supersedes it, a delete removes it) before
//     handling the message;
//   - retries are queued on the same serializer, under the same key, so
//     that a retry never runs concurrently with, or after, a newer message
//     of its watcher that has started: a retry that finds itself replaced
//     when its turn comes does nothing.
//
// While it holds anything, failures reports it and the bridge is not
// ready.
type retrySet struct {
	log      *slog.Logger
	min, max time.Duration
	wake     chan struct{} // a retry was added or rescheduled; buffered 1

	mu      sync.Mutex
	pending map[string]*retry
	stopped bool
}

// retry is one replayed message waiting to be handled again.
type retry struct {
	handle  func(context.Context) *transient
	watcher string
	err     error         // why the last attempt failed
	delay   time.Duration // the wait before the next attempt
	due     time.Time
	queued  bool // on the serializer, not run yet
}

func newRetrySet(log *slog.Logger) *retrySet {
	return &retrySet{log: log, min: retryMin, max: retryMax, wake: make(chan struct{}, 1), pending: map[string]*retry{}}
}

// handle runs fn, the handling of a message of key, on the serializer: it
// first drops the key's pending retry, which the message replaces; when
// fn reports a transient failure (replayed messages only), the message is
// kept for retry.
func (r *retrySet) handle(ctx context.Context, key string, fn func(context.Context) *transient) {
	r.mu.Lock()
	delete(r.pending, key)
	r.mu.Unlock()
	f := fn(ctx)
	if f == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return
	}
	e := &retry{handle: fn, watcher: f.watcher, err: f.err, delay: r.min, due: time.Now().Add(r.min)}
	r.pending[key] = e
	r.log.Debug("replayed control message will be retried", "watcher", f.watcher, "retry_in", e.delay)
	r.notify()
}

// attempt handles the pending retry e of key again, on the serializer,
// unless a newer message replaced it meanwhile.
func (r *retrySet) attempt(ctx context.Context, key string, e *retry) {
	r.mu.Lock()
	current := r.pending[key] == e
	e.queued = false
	r.mu.Unlock()
	if !current {
		return
	}
	f := e.handle(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending[key] != e {
		return // the set stopped
	}
	if f == nil {
		// Carried out, or left on the bus because the channel stops.
		delete(r.pending, key)
		return
	}
	e.err = f.err
	e.delay = min(2*e.delay, r.max)
	e.due = time.Now().Add(e.delay)
	r.log.Debug("replayed control message will be retried", "watcher", f.watcher, "retry_in", e.delay)
	r.notify()
}

func (r *retrySet) notify() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// run queues each pending retry on ser, under its key, when it is due,
// until ctx is done; then it drops them all (they stay on the bus for the
// next start). It blocks.
func (r *retrySet) run(ctx context.Context, ser *serializer) {
	defer func() {
		r.mu.Lock()
		r.stopped = true
		clear(r.pending)
		r.mu.Unlock()
	}()
	timer := time.NewTimer(r.max)
	timer.Stop()
	for {
		type dueRetry struct {
			key string
			e   *retry
		}
		var due []dueRetry
		var next time.Time
		now := time.Now()
		r.mu.Lock()
		for key, e := range r.pending {
			switch {
			case e.queued:
			case !e.due.After(now):
				e.queued = true
				due = append(due, dueRetry{key, e})
			case next.IsZero() || e.due.Before(next):
				next = e.due
			}
		}
		r.mu.Unlock()
		for _, d := range due {
			if ser.add(ctx, d.key, func(ctx context.Context) { r.attempt(ctx, d.key, d.e) }) != nil {
				return
			}
		}
		var fire <-chan time.Time
		if !next.IsZero() {
			timer.Reset(time.Until(next))
			fire = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-fire:
		}
		timer.Stop()
	}
}

// failures describes the replayed messages waiting for a retry, one
// "<watcher>: <last error>" each, sorted.
func (r *retrySet) failures() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.pending))
	for _, e := range r.pending {
		out = append(out, e.watcher+": "+e.err.Error())
	}
	slices.Sort(out)
	return out
}
