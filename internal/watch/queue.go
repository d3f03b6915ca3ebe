package watch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"

	"github.com/depbridge/depbridge/internal/cache"
)

// queue is the reconcile queue: client-go's rate-limited workqueue keyed by
// watcher, plus the causes each queued watcher accumulated. The workqueue
// never hands the same key to two workers at once, so a watcher is never
// reconciled concurrently, and adding a key that is already queued
// coalesces.
type queue struct {
	wq        workqueue.TypedRateLimitingInterface[cache.Ref]
	limiter   workqueue.TypedRateLimiter[cache.Ref]
	maxCauses int

	mu      sync.Mutex
	closed  bool
	pending map[cache.Ref]*pendingRequest
	// taken are the watchers whose request is being reconciled (taken and
	// not finished, so not acknowledged yet), with when it was enqueued.
	taken map[cache.Ref]time.Time
	// requeued are the watchers whose last reconcile asked to be called
	// again (Result.RequeueAfter) and was not since.
	requeued map[cache.Ref]struct{}
}

type pendingRequest struct {
	causes    []Cause
	at        map[causeKey]int // index into causes
	truncated int
	enqueued  time.Time
}

// causeKey: later causes for the same object through the same Ref update
// the earlier one instead of piling up. A recreated object (new UID) gets a
// cause of its own.
type causeKey struct {
	watched   cache.Ref
	namespace string
	name      string
	uid       types.UID
	op        Op // only distinguishes OpLost and OpResync, which have no object
}

func newQueue(limiter workqueue.TypedRateLimiter[cache.Ref], maxCauses int, metrics workqueue.MetricsProvider) *queue {
	return &queue{
		wq: workqueue.NewTypedRateLimitingQueueWithConfig(limiter,
			workqueue.TypedRateLimitingQueueConfig[cache.Ref]{Name: "reconcile", MetricsProvider: metrics}),
		limiter:   limiter,
		maxCauses: maxCauses,
		pending:   map[cache.Ref]*pendingRequest{},
		taken:     map[cache.Ref]time.Time{},
		requeued:  map[cache.Ref]struct{}{},
	}
}

// add records c for watcher w and queues w, after delay if positive.
// Never blocks.
func (q *queue) add(w cache.Ref, c Cause, delay time.Duration) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	p := q.request(w)
	p.merge(c, q.maxCauses)
	q.mu.Unlock()
	if delay > 0 {
		q.wq.AddAfter(w, delay)
	} else {
		q.wq.Add(w)
	}
}

func (q *queue) request(w cache.Ref) *pendingRequest {
	p := q.pending[w]
	if p == nil {
		p = &pendingRequest{at: map[causeKey]int{}, enqueued: time.Now()}
		q.pending[w] = p
	}
	return p
}

func (p *pendingRequest) merge(c Cause, maxCauses int) {
	k := causeKey{watched: c.Watched, namespace: c.Namespace, name: c.Name, uid: c.UID}
	if c.Op == OpLost || c.Op == OpResync {
		k.op = c.Op // no object: one of each per Ref
	}
	if i, ok := p.at[k]; ok {
		p.causes[i] = mergeCause(p.causes[i], c)
		return
	}
	if len(p.causes) >= maxCauses {
		p.truncated++
		return
	}
	p.at[k] = len(p.causes)
	p.causes = append(p.causes, c)
}

// mergeCause folds a later cause for the same object into an earlier one:
// the later state wins, but a modification does not hide that the object
// was new to the watcher (added, entered, initial).
func mergeCause(earlier, later Cause) Cause {
	if later.Op == OpModified {
		switch earlier.Op {
		case OpAdded, OpEntered, OpInitial:
			later.Op = earlier.Op
		}
	}
	return later
}

// take removes and returns the request of w. ok is false after shutdown,
// and when w has nothing to reconcile: no causes pending and no requeue
// asked for. That happens when a watcher whose request failed got a change
// while in reconcile: the change makes the workqueue hand it out again at
// once, the retry's causes with it, and the retry scheduled by the failure
// then finds nothing left.
func (q *queue) take(w cache.Ref) (Request, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return Request{}, false
	}
	_, requeued := q.requeued[w]
	delete(q.requeued, w)
	req := Request{Watcher: w}
	if p := q.pending[w]; p != nil {
		req.Causes, req.Truncated, req.Enqueued = p.causes, p.truncated, p.enqueued
		delete(q.pending, w)
	} else if requeued {
		req.Enqueued = time.Now()
	} else {
		return Request{}, false
	}
	q.taken[w] = req.Enqueued
	return req, true
}

// requeue schedules w's next reconcile after d, with no causes unless a
// change comes first.
func (q *queue) requeue(w cache.Ref, d time.Duration) {
	q.mu.Lock()
	q.requeued[w] = struct{}{}
	q.mu.Unlock()
	q.wq.Forget(w)
	q.wq.AddAfter(w, d)
}

// finished records that w's request is no longer being reconciled.
func (q *queue) finished(w cache.Ref) {
	q.mu.Lock()
	delete(q.taken, w)
	q.mu.Unlock()
}

// restore puts back the causes of a failed request, before any that came
// in since.
func (q *queue) restore(req Request, maxCauses int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	newer := q.pending[req.Watcher]
	p := &pendingRequest{at: map[causeKey]int{}, enqueued: req.Enqueued, truncated: req.Truncated}
	for _, c := range req.Causes {
		p.merge(c, maxCauses)
	}
	if newer != nil {
		for _, c := range newer.causes {
			p.merge(c, maxCauses)
		}
		p.truncated += newer.truncated
	}
	q.pending[req.Watcher] = p
}

// depth is how many watchers have a request not yet acknowledged (waiting,
// or being reconciled, which for an AsyncReconciler lasts until the broker
// acknowledges), and how long ago the oldest of those requests was
// enqueued.
func (q *queue) depth() (int, time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var oldest time.Time
	older := func(t time.Time) {
		if oldest.IsZero() || t.Before(oldest) {
			oldest = t
		}
	}
	n := len(q.pending)
	for _, p := range q.pending {
		older(p.enqueued)
	}
	for w, enqueued := range q.taken {
		if _, ok := q.pending[w]; !ok {
			n++
		}
		older(enqueued)
	}
	if oldest.IsZero() {
		return n, 0
	}
	return n, time.Since(oldest)
}

// idle reports whether nothing is queued, waiting or being reconciled
// (retries scheduled for later do not count).
func (q *queue) idle() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending) == 0 && q.wq.Len() == 0 && len(q.taken) == 0
}

// shutdown stops handing out work; requests still pending stay recorded
// for undelivered.
func (q *queue) shutdown() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.wq.ShutDown()
}

// undelivered lists, after shutdown, the watchers whose requests were not
// acknowledged (pending, or still being reconciled), sorted by key.
func (q *queue) undelivered() []cache.Ref {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []cache.Ref
	for w := range q.pending {
		out = append(out, w)
	}
	for w := range q.taken {
		if _, ok := q.pending[w]; !ok {
			out = append(out, w)
		}
	}
	slices.SortFunc(out, func(a, b cache.Ref) int { return cmp.Compare(a.Key(), b.Key()) })
	return out
}

// work is one worker: the canonical workqueue loop, except that with an
// AsyncReconciler a watcher is Done when its reconcile finishes, not when
// the worker moves on; a slot of e.slots is held from before Get until
// then.
func (e *Engine) work(ctx context.Context) {
	q := e.queue
	for {
		select {
		case e.slots <- struct{}{}:
		case <-ctx.Done(): // shutdown grace over, slots still taken
			return
		}
		w, shutdown := q.wq.Get()
		if shutdown {
			<-e.slots
			return
		}
		e.reconciling.Add(1)
		e.process(ctx, w, func() {
			q.wq.Done(w)
			e.reconciling.Done()
			<-e.slots
		})
	}
}

// process reconciles w's pending request and calls release once it is
// finished: before it returns, or later for an AsyncReconciler.
func (e *Engine) process(ctx context.Context, w cache.Ref, release func()) {
	q := e.queue
	var (
		req  Request
		ok   bool
		view View
	)
	if e.opts.Checkpoint != nil {
		// The request and what it covers, in one step: no change can fall
		// between them.
		e.mu.Lock()
		if req, ok = q.take(w); ok {
			view = e.viewLocked(w)
		}
		e.mu.Unlock()
	} else {
		req, ok = q.take(w)
	}
	if !ok {
		release()
		return
	}
	finish := func(res Result, err error) {
		e.finish(req, view, res, err)
		release()
	}
	if e.opts.Checkpoint != nil {
		// What the request may tell is recorded before it can be told.
		if err := e.opts.Checkpoint.Telling(ctx, w, req.Causes); err != nil {
			finish(Result{}, fmt.Errorf("record what %s may be told before publishing: %w", w.Key(), err))
			return
		}
	}
	if ar, ok := e.rec.(AsyncReconciler); ok {
		e.begin(ctx, ar, req, finish)
		return
	}
	finish(e.reconcile(ctx, req))
}

// finish settles a reconciled request: recorded as acknowledged, or put
// back and retried with backoff, or dropped (ErrTerminal), or requeued as
// the Result asks.
func (e *Engine) finish(req Request, view View, res Result, err error) {
	q, w := e.queue, req.Watcher
	// Last, after a failed request's causes are restored: the queue is
	// never idle in between.
	defer q.finished(w)
	if err == nil && view != nil {
		e.opts.Checkpoint.Acked(w, view)
	}
	switch {
	case err != nil && errors.Is(err, ErrTerminal):
		q.wq.Forget(w)
		e.log.Error("reconcile failed; not retrying", "watcher", w.Key(), "error", err)
	case err != nil:
		q.restore(req, e.opts.MaxCauses)
		delay := q.limiter.When(w)
		var rd RetryDelayer
		if errors.As(err, &rd) {
			if d, ok := rd.RetryDelay(); ok && d > delay {
				delay = d
			}
		}
		q.wq.AddAfter(w, delay)
		e.log.Warn("reconcile failed; retrying", "watcher", w.Key(), "retry_in", delay, "attempt", q.limiter.NumRequeues(w), "error", err)
	case res.RequeueAfter > 0:
		q.requeue(w, res.RequeueAfter)
	default:
		q.wq.Forget(w)
	}
}

// begin calls the AsyncReconciler; done runs once, a panic before it ran
// counting as an error.
func (e *Engine) begin(ctx context.Context, ar AsyncReconciler, req Request, done func(Result, error)) {
	var once sync.Once
	finish := func(res Result, err error) { once.Do(func() { done(res, err) }) }
	defer func() {
		if r := recover(); r != nil {
			e.log.Error("reconcile panicked", "watcher", req.Watcher.Key(), "panic", r, "stack", string(debug.Stack()))
			finish(Result{}, fmt.Errorf("reconcile of %s panicked: %v", req.Watcher.Key(), r))
		}
	}()
	ar.Begin(ctx, req, finish)
}

// reconcile calls the Reconciler, turning a panic into an error.
func (e *Engine) reconcile(ctx context.Context, req Request) (res Result, err error) {
	defer func() {
		if r := recover(); r != nil {
			e.log.Error("reconcile panicked", "watcher", req.Watcher.Key(), "panic", r, "stack", string(debug.Stack()))
			err = fmt.Errorf("reconcile of %s panicked: %v", req.Watcher.Key(), r)
		}
	}()
	return e.rec.Reconcile(ctx, req)
}
