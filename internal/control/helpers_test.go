package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/testenv"
	"github.com/depbridge/depbridge/internal/watch"
)

// The control plane shared by this package's integration tests: started
// by the first test that needs it (so that unit tests and fuzzing do not
// pay for it), stopped by TestMain. A test that needs it fails, never
// skips, when it cannot start.
var (
	envOnce sync.Once
	env     *testenv.Env
	envErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if env != nil {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop control plane:", err)
		}
	}
	os.Exit(code)
}

// controlPlane returns the shared control plane, starting it if needed.
func controlPlane(t testing.TB) *testenv.Env {
	t.Helper()
	envOnce.Do(func() { env, envErr = testenv.Start() })
	if envErr != nil {
		t.Fatalf("control plane: %v", envErr)
	}
	return env
}

const wait = 30 * time.Second

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("DEPBRIDGE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// kube is an admin clientset of the shared control plane.
func kube(t testing.TB) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(controlPlane(t).Config)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var nsCounter atomic.Int64

// namespace creates a fresh namespace for one test.
func namespace(t testing.TB, c kubernetes.Interface) string {
	t.Helper()
	name := fmt.Sprintf("ctl-%d-%d", time.Now().UnixNano()%100000, nsCounter.Add(1))
	_, err := c.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return name
}

func configMap(t testing.TB, c kubernetes.Interface, ns, name string, data map[string]string) {
	t.Helper()
	_, err := c.CoreV1().ConfigMaps(ns).Create(context.Background(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "web"}}, Data: data,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

func updateConfigMap(t testing.TB, c kubernetes.Interface, ns, name string, data map[string]string) {
	t.Helper()
	cm, err := c.CoreV1().ConfigMaps(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data = data
	if _, err := c.CoreV1().ConfigMaps(ns).Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func secret(t testing.TB, c kubernetes.Interface, ns, name string) {
	t.Helper()
	_, err := c.CoreV1().Secrets(ns).Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name}, StringData: map[string]string{"password": "hunter2"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

func cmRef(ns, name string) cache.Ref {
	return cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: ns, Name: name}
}

func fnRef(ns, name string) cache.Ref {
	return cache.Ref{Group: "example.com", Version: "v1", Kind: "Function", Namespace: ns, Name: name}
}

// recorder is a Reconciler that records every request.
type recorder struct {
	mu      sync.Mutex
	calls   map[cache.Ref][]watch.Request
	changed chan struct{}
}

func newRecorder() *recorder {
	return &recorder{calls: map[cache.Ref][]watch.Request{}, changed: make(chan struct{})}
}

func (r *recorder) Reconcile(_ context.Context, req watch.Request) (watch.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[req.Watcher] = append(r.calls[req.Watcher], req)
	close(r.changed)
	r.changed = make(chan struct{})
	return watch.Result{}, nil
}

// waitFor waits until a request of w has a cause satisfying ok.
func (r *recorder) waitFor(t testing.TB, w cache.Ref, what string, ok func(watch.Cause) bool) {
	t.Helper()
	deadline := time.After(wait)
	for {
		r.mu.Lock()
		ch := r.changed
		for _, req := range r.calls[w] {
			for _, c := range req.Causes {
				if ok(c) {
					r.mu.Unlock()
					return
				}
			}
		}
		r.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("%s: no reconcile for %s within %s", w.Key(), what, wait)
		}
	}
}

// engineSubs is a small Subscriptions over a real engine: what the bridge
// does, without the publishing.
type engineSubs struct {
	e      *watch.Engine
	routes map[string]bool
	owned  map[cache.Ref]bool

	mu    sync.Mutex
	calls []string // "apply <key>", "delete <key>", "query <key>"
	route map[cache.Ref]string
}

func (s *engineSubs) record(op string, w cache.Ref) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, op+" "+w.Key())
}

func (s *engineSubs) callLog() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

func (s *engineSubs) check(w cache.Ref, route string) (cache.Ref, error) {
	c, err := w.Canonical()
	if err != nil {
		return w, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if s.owned[c] {
		return c, fmt.Errorf("%w: %s", ErrOwned, c.Key())
	}
	if route != "" && !s.routes[route] {
		return c, fmt.Errorf("%w: route %q does not exist", ErrInvalid, route)
	}
	return c, nil
}

func (s *engineSubs) Apply(ctx context.Context, sub config.Subscription) error {
	w, err := s.check(sub.Watcher, sub.Route)
	if err != nil {
		return err
	}
	s.record("apply", w)
	err = s.e.Subscribe(ctx, watch.Subscription{Watcher: w, Watched: sub.Watched, Options: watch.WatcherOptions{
		NoInitial: !*sub.InitialReconcile, Debounce: sub.Debounce.Duration,
	}})
	if errors.Is(err, watch.ErrInvalidInput) {
		err = fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err == nil {
		s.setRoute(w, sub.Route)
	}
	return err
}

func (s *engineSubs) Delete(_ context.Context, watcher cache.Ref) error {
	w, err := s.check(watcher, "")
	if err != nil {
		return err
	}
	s.record("delete", w)
	return s.e.RemoveWatcher(w)
}

func (s *engineSubs) Query(ctx context.Context, watcher cache.Ref, route string, initial bool, queries []cache.Ref) ([]watch.QueryResult, error) {
	w, err := s.check(watcher, route)
	if err != nil {
		return nil, err
	}
	s.record("query", w)
	rs, err := s.e.Query(ctx, w, watch.WatcherOptions{NoInitial: !initial}, queries)
	if errors.Is(err, watch.ErrInvalidInput) {
		err = fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err == nil {
		s.setRoute(w, route)
	}
	return rs, err
}

// Resource says how a kind is served, as the bridge's Subscriptions does:
// the policy needs to know which kinds are cluster-scoped.
func (s *engineSubs) Resource(ctx context.Context, gvk schema.GroupVersionKind) (cache.Resource, error) {
	return s.e.Resource(ctx, gvk)
}

func (s *engineSubs) routeOf(w cache.Ref) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.route[w]
}

func (s *engineSubs) setRoute(w cache.Ref, route string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.route == nil {
		s.route = map[cache.Ref]string{}
	}
	s.route[w] = route
}

// watchedNames returns the names of the objects w depends on, sorted;
// nil when w is not registered.
func watchedNames(t testing.TB, e *watch.Engine, w cache.Ref) []string {
	t.Helper()
	objs, err := e.ListWatched(w)
	if err != nil {
		t.Fatalf("ListWatched(%s): %v", w.Key(), err)
	}
	var names []string
	for _, o := range objs {
		names = append(names, o.GetKind()+"/"+o.GetName())
	}
	slices.Sort(names)
	return names
}

// harness is an engine over the shared control plane with its
// Subscriptions.
type harness struct {
	e    *watch.Engine
	rec  *recorder
	subs *engineSubs
	reg  *prometheus.Registry
	m    *Metrics
	stop func()
}

// startEngine runs an engine until stop (or the end of the test). owned
// lists watchers of the "configuration file".
func startEngine(t testing.TB, owned ...cache.Ref) *harness {
	t.Helper()
	rec := newRecorder()
	e, err := watch.New(controlPlane(t).Config, rec, watch.Options{Logger: testLogger(t), Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Start(ctx) }()
	<-e.Started()
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	subs := &engineSubs{e: e, routes: map[string]bool{"default": true, "fast": true}, owned: map[cache.Ref]bool{}}
	for _, o := range owned {
		subs.owned[o] = true
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("engine: %v", err)
				}
			case <-time.After(wait):
				t.Errorf("engine did not stop within %s", wait)
			}
		})
	}
	t.Cleanup(stop)
	return &harness{e: e, rec: rec, subs: subs, reg: reg, m: m, stop: stop}
}

// rejectedCount reads depbridge_control_rejected_total{reason}.
func (h *harness) rejectedCount(reason string) float64 {
	return testutil.ToFloat64(h.m.rejected.WithLabelValues(reason))
}

func (h *harness) messageCount(typ, result string) float64 {
	return testutil.ToFloat64(h.m.messages.WithLabelValues(typ, result))
}

// testPolicy allows core ConfigMaps and Secrets in every namespace;
// Secrets only with allowSecrets.
func testPolicy(allowSecrets bool) config.Policy {
	return config.Policy{
		Allow:        []config.PolicyRule{{Groups: []string{""}, Kinds: []string{"ConfigMap", "Secret"}}},
		AllowSecrets: allowSecrets,
	}
}

// newEvent builds a control message of typ with data.
func newEvent(t testing.TB, id, typ string, data any) ce.Event {
	t.Helper()
	e := ce.New(ce.CloudEventsVersionV1)
	e.SetID(id)
	e.SetSource("test://control")
	e.SetType(typ)
	if err := e.SetData("application/json", data); err != nil {
		t.Fatal(err)
	}
	return e
}

func applyData(w cache.Ref, watched ...cache.Ref) ApplyData {
	return ApplyData{Watcher: w, Watched: watched}
}

// statusOf decodes a status event's data.
func statusOf(t testing.TB, e ce.Event) StatusData {
	t.Helper()
	if e.Type() != TypeStatus {
		t.Fatalf("event type %q, want %s", e.Type(), TypeStatus)
	}
	var d StatusData
	dec := json.NewDecoder(strings.NewReader(string(e.Data())))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("status data %s: %v", e.Data(), err)
	}
	return d
}

// eventually polls cond until it holds or wait passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, wait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func boolPtr(b bool) *bool { return &b }

// stallSubs is a Subscriptions whose Apply, while stall is set, holds
// until its context is done and then fails with the context's error, as
// the engine does while waiting for a watch to start; otherwise it
// accepts everything.
type stallSubs struct {
	stall   bool
	started chan cache.Ref // an Apply started to stall

	mu      sync.Mutex
	applied []string
}

func newStallSubs(stall bool) *stallSubs {
	return &stallSubs{stall: stall, started: make(chan cache.Ref, 16)}
}

func (s *stallSubs) Apply(ctx context.Context, sub config.Subscription) error {
	if s.stall {
		s.started <- sub.Watcher
		<-ctx.Done()
		return fmt.Errorf("waiting for the watch to start: %w", ctx.Err())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applied = append(s.applied, sub.Watcher.Key())
	return nil
}

func (s *stallSubs) Delete(context.Context, cache.Ref) error { return nil }

func (s *stallSubs) Resource(ctx context.Context, gvk schema.GroupVersionKind) (cache.Resource, error) {
	return (&fakeSubs{}).Resource(ctx, gvk)
}

func (s *stallSubs) Query(context.Context, cache.Ref, string, bool, []cache.Ref) ([]watch.QueryResult, error) {
	return nil, nil
}

func (s *stallSubs) appliedKeys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.applied)
}

// waitStall waits until an Apply of s stalls.
func (s *stallSubs) waitStall(t testing.TB) cache.Ref {
	t.Helper()
	select {
	case w := <-s.started:
		return w
	case <-time.After(wait):
		t.Fatalf("no Apply within %s", wait)
		return cache.Ref{}
	}
}

// noCount checks that nothing was counted as handled.
func noCount(t testing.TB, m *Metrics) {
	t.Helper()
	for _, typ := range metricTypes {
		for _, res := range metricResults {
			if got := testutil.ToFloat64(m.messages.WithLabelValues(typ, res)); got != 0 {
				t.Errorf("messages_total{type=%q,result=%q} = %v, want 0", typ, res, got)
			}
		}
	}
	for _, r := range metricReasons {
		if got := testutil.ToFloat64(m.rejected.WithLabelValues(r)); got != 0 {
			t.Errorf("rejected_total{reason=%q} = %v, want 0", r, got)
		}
	}
}

func newTestMetrics(t testing.TB) *Metrics {
	t.Helper()
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return m
}
