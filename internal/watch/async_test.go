package watch

import (
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"
)

// An AsyncReconciler's worker moves on once Begin returns: with one
// worker, MaxInFlight requests are begun before any is done, and no more.
// A watcher in flight is not begun again; the causes that arrive
// meanwhile join those of its request when that fails, in its retry.
func TestAsyncReconciler(t *testing.T) {
	ns := namespace(t)
	const n = 5
	for i := range n {
		createCM(t, ns, fmt.Sprintf("cm%d", i), nil)
	}
	rec := newAsyncRecorder()
	e := startEngine(t, integration(t).Config, rec, Options{Workers: 1, MaxInFlight: 3})
	for i := range n {
		if err := e.AddWatcher(ctxT(t), watcher(fmt.Sprint(i)), cmRef(ns, fmt.Sprintf("cm%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	first, second, third := rec.next(t), rec.next(t), rec.next(t)
	rec.none(t, 300*time.Millisecond, "3 requests in flight and MaxInFlight 3")

	// A change to first's object while it is in flight.
	w0 := first.req.Watcher
	rv := updateCM(t, ns, "cm"+w0.Name, nil).ResourceVersion
	eventually(t, "the change queued for "+w0.Key(), func() bool {
		e.queue.mu.Lock()
		defer e.queue.mu.Unlock()
		p := e.queue.pending[w0]
		return p != nil && len(p.causes) == 1 && p.causes[0].ResourceVersion == rv
	})

	// Each finished request frees a slot for a watcher not yet begun;
	// first's watcher, still in flight, is not begun again.
	second.done(Result{}, nil)
	fourth := rec.next(t)
	third.done(Result{}, nil)
	fifth := rec.next(t)
	for _, b := range []begunRequest{fourth, fifth} {
		if b.req.Watcher == w0 || b.req.Watcher == second.req.Watcher || b.req.Watcher == third.req.Watcher {
			t.Fatalf("%s begun again while in flight or after its ack", b.req.Watcher.Key())
		}
	}
	fourth.done(Result{}, nil)
	fifth.done(Result{}, nil)
	rec.none(t, 300*time.Millisecond, w0.Key()+" is still in flight")

	// first fails: its retry carries its cause merged with the change.
	first.done(Result{}, errors.New("broker down"))
	retry := rec.next(t)
	if retry.req.Watcher != w0 {
		t.Fatalf("retry for %s, want %s", retry.req.Watcher.Key(), w0.Key())
	}
	if c := retry.req.Causes; len(c) != 1 || c[0].Op != OpInitial || c[0].ResourceVersion != rv {
		t.Fatalf("retry causes %+v, want one initial cause at resourceVersion %s", c, rv)
	}
	retry.done(Result{}, nil)
	rec.none(t, 300*time.Millisecond, "every request was acknowledged")
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.overlap {
		t.Error("a watcher was reconciled concurrently")
	}
	if rec.total != n+1 {
		t.Errorf("%d requests begun, want %d", rec.total, n+1)
	}
}

// A request begun and not finished when the shutdown grace ends is logged
// as not delivered; its late answer changes nothing.
func TestAsyncShutdownLogsInFlight(t *testing.T) {
	ns := namespace(t)
	createCM(t, ns, "cm", nil)
	rec := newAsyncRecorder()
	logs := &syncBuffer{}
	e := runEngine(t, integration(t).Config, rec, Options{Workers: 1, ShutdownGrace: 300 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	w := watcher("unacked")
	if err := e.AddWatcher(ctxT(t), w, cmRef(ns, "cm")); err != nil {
		t.Fatal(err)
	}
	b := rec.next(t)
	if err := e.stop(t, wait); err != nil {
		t.Fatal(err)
	}
	loggedNotDelivered(t, logs, w.Key())
	b.done(Result{}, errors.New("connection closed")) // late: must not panic or block
}
