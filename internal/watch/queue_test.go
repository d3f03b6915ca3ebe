package watch

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/testenv"
)

var deleteNow = metav1.DeleteOptions{}

// AC-44, AC-Δ10: a failed (or panicking) reconcile is retried with the
// same causes, and then not again.
func TestRetryKeepsCauses(t *testing.T) {
	for name, fail := range map[string]func(){
		"error": nil,
		"panic": func() { panic("boom") },
	} {
		t.Run(name, func(t *testing.T) {
			ns := namespace(t)
			createCM(t, ns, "cm", nil)
			rec := newRecorder()
			rec.fn = func(req Request, n int) (Result, error) {
				if n == 1 {
					if fail != nil {
						fail()
					}
					return Result{}, errors.New("first attempt fails")
				}
				return Result{}, nil
			}
			e := startEngine(t, integration(t).Config, rec, Options{Workers: 1})
			b := newBarrier(t, e, rec, ns)
			w := watcher("retry")
			if err := e.AddWatcher(ctxT(t), w, cmRef(ns, "cm")); err != nil {
				t.Fatal(err)
			}
			reqs := rec.waitFor(t, w, 2)
			if !slices.Equal(reqs[0].Causes, reqs[1].Causes) || len(reqs[1].Causes) != 1 || reqs[1].Causes[0].Op != OpInitial {
				t.Fatalf("retry causes %+v, want the first request's %+v", reqs[1].Causes, reqs[0].Causes)
			}
			time.Sleep(200 * time.Millisecond) // a stray retry would be due by now (5ms, 10ms, ...)
			if n := b.count(t, w); n != 2 {
				t.Fatalf("%d reconciles, want exactly 2", n)
			}
		})
	}
}

// Causes that arrive while a failed request waits to be retried are merged
// into it, older ones first; a terminal error is not retried.
func TestCausesMergeAndTerminal(t *testing.T) {
	ns := namespace(t)
	createCM(t, ns, "a", nil)
	createCM(t, ns, "b", nil)
	rec := newRecorder()
	var failing atomic.Bool
	failing.Store(true)
	rec.fn = func(req Request, n int) (Result, error) {
		if failing.Load() {
			return Result{}, errors.New("broker down")
		}
		return Result{}, nil
	}
	e := startEngine(t, integration(t).Config, rec, Options{Workers: 1, RateLimiter: nil})
	w := watcher("merge")
	if err := e.Subscribe(ctxT(t), Subscription{Watcher: w, Watched: []cache.Ref{cmRef(ns, "a"), cmRef(ns, "b")}, Options: WatcherOptions{NoInitial: true}}); err != nil {
		t.Fatal(err)
	}
	updateCM(t, ns, "a", nil)
	rec.waitFor(t, w, 1)
	updateCM(t, ns, "b", nil)
	eventually(t, "a retry carries both causes", func() bool {
		reqs := rec.requests(w)
		last := reqs[len(reqs)-1]
		return len(last.Causes) == 2
	})
	failing.Store(false)
	reqs := rec.requests(w)
	last := reqs[len(reqs)-1]
	if last.Causes[0].Name != "a" || last.Causes[1].Name != "b" {
		t.Fatalf("merged causes = %+v, want a then b", last.Causes)
	}

	term := watcher("terminal")
	rec2 := newRecorder()
	rec2.fn = func(Request, int) (Result, error) { return Result{}, fmt.Errorf("%w: bad request", ErrTerminal) }
	e2 := startEngine(t, integration(t).Config, rec2, Options{Workers: 1})
	b2 := newBarrier(t, e2, rec2, ns)
	if err := e2.AddWatcher(ctxT(t), term, cmRef(ns, "a")); err != nil {
		t.Fatal(err)
	}
	rec2.waitFor(t, term, 1)
	time.Sleep(200 * time.Millisecond)
	if n := b2.count(t, term); n != 1 {
		t.Fatalf("terminal error retried: %d reconciles", n)
	}
}

// AC-45: RequeueAfter reconciles once more after the delay, with no causes.
func TestRequeueAfter(t *testing.T) {
	ns := namespace(t)
	createCM(t, ns, "cm", nil)
	rec := newRecorder()
	rec.fn = func(req Request, n int) (Result, error) {
		if n == 1 {
			return Result{RequeueAfter: 300 * time.Millisecond}, nil
		}
		return Result{}, nil
	}
	e := startEngine(t, integration(t).Config, rec, Options{Workers: 1})
	b := newBarrier(t, e, rec, ns)
	w := watcher("requeue")
	start := time.Now()
	if err := e.AddWatcher(ctxT(t), w, cmRef(ns, "cm")); err != nil {
		t.Fatal(err)
	}
	reqs := rec.waitFor(t, w, 2)
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("requeued after %s, want >= 300ms", d)
	}
	if len(reqs[1].Causes) != 0 {
		t.Fatalf("requeue causes = %+v, want none", reqs[1].Causes)
	}
	time.Sleep(100 * time.Millisecond)
	if n := b.count(t, w); n != 2 {
		t.Fatalf("%d reconciles, want exactly 2", n)
	}
}

// Several workers reconcile different watchers at once, never one watcher
// twice at once; a burst of changes to one watcher coalesces.
func TestWorkersAndCoalescing(t *testing.T) {
	ns := namespace(t)
	const n = 8
	for i := range n {
		createCM(t, ns, fmt.Sprintf("cm%d", i), nil)
	}
	rec := newRecorder()
	var peak, cur atomic.Int32
	rec.fn = func(Request, int) (Result, error) {
		c := cur.Add(1)
		defer cur.Add(-1)
		for {
			p := peak.Load()
			if c <= p || peak.CompareAndSwap(p, c) {
				break
			}
		}
		time.Sleep(50 * time.Millisecond) // a slow broker
		return Result{}, nil
	}
	e := startEngine(t, integration(t).Config, rec, Options{Workers: 4})
	for i := range n {
		if err := e.AddWatcher(ctxT(t), watcher(fmt.Sprint(i)), cmRef(ns, fmt.Sprintf("cm%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		rec.waitFor(t, watcher(fmt.Sprint(i)), 1)
	}
	// A burst on one object: fewer reconciles than changes, the last state
	// delivered.
	var last string
	for range 10 {
		last = updateCM(t, ns, "cm0", nil).ResourceVersion
	}
	eventually(t, "last change delivered", func() bool {
		reqs := rec.requests(watcher("0"))
		c := reqs[len(reqs)-1].Causes
		return len(c) > 0 && c[len(c)-1].ResourceVersion == last
	})
	if got := len(rec.requests(watcher("0"))); got >= 11 {
		t.Errorf("%d reconciles for 10 rapid changes, want them coalesced", got)
	}
	rec.mu.Lock()
	overlap := rec.overlap
	rec.mu.Unlock()
	if overlap {
		t.Error("a watcher was reconciled concurrently")
	}
	if peak.Load() < 2 {
		t.Errorf("peak concurrency %d with 4 workers, want >= 2", peak.Load())
	}
}

// Debounce holds a watcher's request after a change so that a burst makes
// one request.
func TestDebounce(t *testing.T) {
	ns := namespace(t)
	createCM(t, ns, "cm", nil)
	rec := newRecorder()
	e := startEngine(t, integration(t).Config, rec, Options{})
	w := watcher("debounce")
	if err := e.Subscribe(ctxT(t), Subscription{Watcher: w, Watched: []cache.Ref{cmRef(ns, "cm")},
		Options: WatcherOptions{NoInitial: true, Debounce: 2 * time.Second}}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for range 5 {
		updateCM(t, ns, "cm", nil)
	}
	reqs := rec.waitFor(t, w, 1)
	if d := time.Since(start); d < 2*time.Second {
		t.Fatalf("request after %s, want >= 2s", d)
	}
	if len(reqs[0].Causes) != 1 || reqs[0].Causes[0].Op != OpModified {
		t.Fatalf("causes = %+v, want one coalesced modified", reqs[0].Causes)
	}
	if got := len(rec.requests(w)); got != 1 {
		t.Fatalf("%d requests for a burst within the debounce window, want 1", got)
	}
}

type retryLater time.Duration

func (r retryLater) Error() string                     { return "receiver busy" }
func (r retryLater) RetryDelay() (time.Duration, bool) { return time.Duration(r), true }

// A reconcile error that carries a retry delay (HTTP Retry-After) is
// retried no sooner than that.
func TestRetryDelay(t *testing.T) {
	ns := namespace(t)
	createCM(t, ns, "cm", nil)
	rec := newRecorder()
	rec.fn = func(req Request, n int) (Result, error) {
		if n == 1 {
			return Result{}, fmt.Errorf("send: %w", retryLater(time.Second))
		}
		return Result{}, nil
	}
	e := startEngine(t, integration(t).Config, rec, Options{})
	w := watcher("retry-delay")
	if err := e.AddWatcher(ctxT(t), w, cmRef(ns, "cm")); err != nil {
		t.Fatal(err)
	}
	first := rec.waitFor(t, w, 1)[0]
	reqs := rec.waitFor(t, w, 2)
	if d := time.Since(first.Enqueued); d < time.Second {
		t.Fatalf("retried %s after the first attempt's request, want >= 1s", d)
	}
	if !slices.Equal(reqs[0].Causes, reqs[1].Causes) {
		t.Fatalf("retry causes = %+v, want %+v", reqs[1].Causes, reqs[0].Causes)
	}
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer = testenv.SyncBuffer

// At shutdown, a reconcile in flight finishes (it gets ShutdownGrace, not a
// cancelled context), requests still queued are not started, and the
// watchers whose requests were not acknowledged are logged.
func TestShutdownFinishesInFlightAndLogsTheRest(t *testing.T) {
	ns := namespace(t)
	createCM(t, ns, "slow", nil)
	createCM(t, ns, "queued", nil)
	started, release := make(chan struct{}), make(chan struct{})
	var finished atomic.Bool
	rec := newRecorder()
	rec.fn = func(req Request, n int) (Result, error) {
		if req.Watcher.Name == "slow" {
			close(started)
			<-release // a broker taking its time to ack
			finished.Store(true)
		}
		return Result{}, nil
	}
	logs := &syncBuffer{}
	e := runEngine(t, integration(t).Config, rec, Options{Workers: 1, ShutdownGrace: 10 * time.Second,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err := e.AddWatcher(ctxT(t), watcher("slow"), cmRef(ns, "slow")); err != nil {
		t.Fatal(err)
	}
	<-started
	if err := e.AddWatcher(ctxT(t), watcher("queued"), cmRef(ns, "queued")); err != nil {
		t.Fatal(err)
	}
	e.cancel()
	time.Sleep(200 * time.Millisecond) // Start is now waiting for the reconcile in flight
	select {
	case <-e.done:
		t.Fatal("Start returned while a reconcile was in flight")
	default:
	}
	close(release)
	if err := e.stop(t, wait); err != nil {
		t.Fatal(err)
	}
	if !finished.Load() {
		t.Fatal("the reconcile in flight did not finish")
	}
	if n := len(rec.requests(watcher("queued"))); n != 0 {
		t.Fatalf("a queued request was started after shutdown (%d)", n)
	}
	loggedNotDelivered(t, logs, watcher("queued").Key())
}
