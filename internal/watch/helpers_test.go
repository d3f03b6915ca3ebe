package watch

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/testenv"
)

// env is the control plane shared by this package's integration tests.
var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// integration returns the shared control plane.
func integration(t *testing.T) *testenv.Env {
	t.Helper()
	return env
}

const wait = 30 * time.Second

func testLogger() *slog.Logger {
	if os.Getenv("DEPBRIDGE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// recorder is a Reconciler that records every request; fn, if set,
// decides each call's outcome (n counts the watcher's calls from 1).
type recorder struct {
	mu       sync.Mutex
	calls    map[cache.Ref][]Request
	inflight map[cache.Ref]int
	overlap  bool // a watcher was reconciled concurrently
	total    int
	changed  chan struct{}
	fn       func(req Request, n int) (Result, error)
}

func newRecorder() *recorder {
	return &recorder{calls: map[cache.Ref][]Request{}, inflight: map[cache.Ref]int{}, changed: make(chan struct{})}
}

func (r *recorder) Reconcile(_ context.Context, req Request) (Result, error) {
	fn, n := r.record(req)
	defer r.finished(req.Watcher)
	if fn != nil {
		return fn(req, n)
	}
	return Result{}, nil
}

// record notes req as begun and returns fn and the watcher's call count.
func (r *recorder) record(req Request) (func(Request, int) (Result, error), int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inflight[req.Watcher]++
	if r.inflight[req.Watcher] > 1 {
		r.overlap = true
	}
	r.calls[req.Watcher] = append(r.calls[req.Watcher], req)
	r.total++
	close(r.changed)
	r.changed = make(chan struct{})
	return r.fn, len(r.calls[req.Watcher])
}

// finished notes that w's reconcile ended.
func (r *recorder) finished(w cache.Ref) {
	r.mu.Lock()
	r.inflight[w]--
	r.mu.Unlock()
}

// asyncRecorder is an AsyncReconciler that records every request and
// hands each to the test (on begun), which finishes it by calling done.
type asyncRecorder struct {
	*recorder
	begun chan begunRequest
}

type begunRequest struct {
	req  Request
	done func(Result, error)
}

func newAsyncRecorder() *asyncRecorder {
	return &asyncRecorder{recorder: newRecorder(), begun: make(chan begunRequest, 1000)}
}

func (a *asyncRecorder) Begin(_ context.Context, req Request, done func(Result, error)) {
	a.record(req)
	a.begun <- begunRequest{req: req, done: func(res Result, err error) {
		a.finished(req.Watcher)
		done(res, err)
	}}
}

// next returns the next request begun, failing the test after wait.
func (a *asyncRecorder) next(t *testing.T) begunRequest {
	t.Helper()
	return receive(t, a.begun, wait, "no request begun")
}

// receive returns the next value from ch, failing the test with "<what>
// within <within>" if none comes within that time.
func receive[T any](t *testing.T, ch <-chan T, within time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(within):
		t.Fatalf("%s within %s", what, within)
		var zero T
		return zero
	}
}

// none fails the test if a request is begun within d.
func (a *asyncRecorder) none(t *testing.T, d time.Duration, why string) {
	t.Helper()
	select {
	case b := <-a.begun:
		t.Fatalf("request for %s begun (causes %+v), want none: %s", b.req.Watcher.Key(), b.req.Causes, why)
	case <-time.After(d):
	}
}

// requests returns the watcher's requests so far.
func (r *recorder) requests(w cache.Ref) []Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Request(nil), r.calls[w]...)
}

// waitFor waits until the watcher has had at least n requests.
func (r *recorder) waitFor(t *testing.T, w cache.Ref, n int) []Request {
	t.Helper()
	deadline := time.After(wait)
	for {
		r.mu.Lock()
		got := append([]Request(nil), r.calls[w]...)
		ch := r.changed
		r.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("%s: %d reconciles after %s, want %d: %v", w.Key(), len(got), wait, n, got)
		}
	}
}

// startEngine runs an engine until the test ends.
func startEngine(t *testing.T, cfg *rest.Config, rec Reconciler, opts Options) *Engine {
	t.Helper()
	r := runEngine(t, cfg, rec, opts)
	t.Cleanup(func() {
		if err := r.stop(t, wait); err != nil {
			t.Errorf("Start: %v", err)
		}
	})
	return r.Engine
}

// runningEngine is an engine whose Start runs in a goroutine (runEngine).
type runningEngine struct {
	*Engine
	// cancel cancels Start's context; done then yields what Start returned.
	cancel context.CancelFunc
	done   chan error
}

// runEngine starts an engine (logging to testLogger unless opts has a
// Logger) and returns once it has started; the test stops it (stop, or
// cancel and done).
func runEngine(t *testing.T, cfg *rest.Config, rec Reconciler, opts Options) *runningEngine {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger()
	}
	e, err := New(cfg, rec, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningEngine{Engine: e, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- e.Start(ctx) }()
	<-e.Started()
	return r
}

// stop cancels Start's context and returns what Start returned; the test
// fails if Start does not return within that time.
func (r *runningEngine) stop(t *testing.T, within time.Duration) error {
	t.Helper()
	r.cancel()
	return receive(t, r.done, within, "Start did not return after cancel")
}

// loggedNotDelivered fails the test unless logs say that key's request
// was not delivered.
func loggedNotDelivered(t *testing.T, logs *syncBuffer, key string) {
	t.Helper()
	if out := logs.String(); !strings.Contains(out, "not delivered") || !strings.Contains(out, key) {
		t.Fatalf("the request of %s was not logged as not delivered:\n%s", key, out)
	}
}

func kube(t *testing.T) kubernetes.Interface {
	t.Helper()
	return kubernetes.NewForConfigOrDie(integration(t).Config)
}

func randSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// namespace creates a namespace for one test, deleted when it ends.
func namespace(t *testing.T) string {
	t.Helper()
	cs := kube(t)
	name := "t-" + randSuffix()
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return name
}

func createCM(t *testing.T, ns, name string, lbls map[string]string) *corev1.ConfigMap {
	t.Helper()
	cm, err := kube(t).CoreV1().ConfigMaps(ns).Create(context.Background(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: lbls,
			Annotations: map[string]string{cache.LastAppliedAnnotation: `{"big":"blob"}`, "keep": "me"}},
		Data: map[string]string{"v": "0"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cm
}

// updateCM changes data (and labels, if lbls is not nil).
func updateCM(t *testing.T, ns, name string, lbls map[string]string) *corev1.ConfigMap {
	t.Helper()
	cs := kube(t)
	cm, err := cs.CoreV1().ConfigMaps(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["v"] = randSuffix()
	if lbls != nil {
		cm.Labels = lbls
	}
	cm, err = cs.CoreV1().ConfigMaps(ns).Update(context.Background(), cm, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cm
}

func deleteCM(t *testing.T, ns, name string) {
	t.Helper()
	if err := kube(t).CoreV1().ConfigMaps(ns).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

func cmRef(ns, name string) cache.Ref {
	return cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: ns, Name: name}
}

func cmSel(ns, sel string) cache.Ref {
	return cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: ns, Selector: sel}
}

// watcher is a watcher identifier; watchers need not exist.
func watcher(name string) cache.Ref {
	return cache.Ref{Group: "example.com", Version: "v1", Kind: "Policy", Namespace: "policies", Name: name}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

// barrier proves negatives without sleeping: a sentinel watcher depends on
// a sentinel ConfigMap in the same namespace (same source, same stream) as
// the objects under test. Events on one stream are dispatched in order, so
// once the sentinel's change has been reconciled and the queue is idle,
// every reconcile an earlier change caused has happened.
type barrier struct {
	e    *Engine
	rec  *recorder
	ns   string
	w    cache.Ref
	seen int
}

func newBarrier(t *testing.T, e *Engine, rec *recorder, ns string) *barrier {
	t.Helper()
	b := &barrier{e: e, rec: rec, ns: ns, w: watcher("barrier-" + ns)}
	createCM(t, ns, "barrier", nil)
	if err := e.Subscribe(ctxT(t), Subscription{Watcher: b.w, Watched: []cache.Ref{cmRef(ns, "barrier")}, Options: WatcherOptions{NoInitial: true}}); err != nil {
		t.Fatal(err)
	}
	return b
}

// wait returns once everything caused before it has been reconciled.
func (b *barrier) wait(t *testing.T) {
	t.Helper()
	updateCM(t, b.ns, "barrier", nil)
	b.seen++
	b.rec.waitFor(t, b.w, b.seen)
	deadline := time.Now().Add(wait)
	for !b.e.queue.idle() {
		if time.Now().After(deadline) {
			t.Fatal("reconcile queue not idle")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// count is the number of requests for w, after a barrier.
func (b *barrier) count(t *testing.T, w cache.Ref) int {
	t.Helper()
	b.wait(t)
	return len(b.rec.requests(w))
}

func ops(reqs []Request) []Op {
	var out []Op
	for _, r := range reqs {
		for _, c := range r.Causes {
			out = append(out, c.Op)
		}
	}
	return out
}

// eventually polls cond until it holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", wait, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
