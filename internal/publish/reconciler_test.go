package publish

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/event"
	"github.com/depbridge/depbridge/internal/sink"
	"github.com/depbridge/depbridge/internal/testenv"
	"github.com/depbridge/depbridge/internal/watch"
)

// recorder is a scripted sink: it fails with the errors in fail, in order,
// then accepts.
type recorder struct {
	mu      sync.Mutex
	fail    []error
	sent    []ce.Event
	targets []sink.Target
}

func (r *recorder) Send(_ context.Context, t sink.Target, e ce.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.fail) > 0 {
		err := r.fail[0]
		r.fail = r.fail[1:]
		return err
	}
	r.sent = append(r.sent, e)
	r.targets = append(r.targets, t)
	return nil
}

func (r *recorder) Close(context.Context) error { return nil }

var watcher = cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "apps", Name: "web.deps"}

func request() watch.Request {
	return watch.Request{Watcher: watcher, Enqueued: time.Unix(1700000000, 0), Causes: []watch.Cause{{
		Watched: cache.Ref{Version: "v1", Kind: "Secret", Namespace: "apps", Name: "db"}, Namespace: "apps", Name: "db",
		UID: "u1", ResourceVersion: "7", Op: watch.OpModified,
	}}}
}

func newRoute(t *testing.T, cfg config.Route, s sink.Sink) *sink.Route {
	t.Helper()
	cfg.Sink = "bus"
	r, err := sink.NewRoute(cfg, config.Sink{Name: "bus", JetStream: &config.JetStream{}}, s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestReconcilePublishes(t *testing.T) {
	rec := &recorder{}
	route := newRoute(t, config.Route{Name: "r", Mode: "structured"}, rec)
	reg := prometheus.NewPedanticRegistry()
	m, err := NewMetrics(reg, "bus")
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Options{Cluster: "prod", Instance: "b0", Router: RouterFunc(func(cache.Ref) (*sink.Route, error) { return route, nil }), Metrics: m,
		Objects: func(cache.Ref) ([]*unstructured.Unstructured, error) {
			t.Error("objects fetched for a route without them")
			return nil, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Reconcile(context.Background(), request()); err != nil {
		t.Fatal(err)
	}
	if len(rec.sent) != 1 {
		t.Fatalf("sent %d events", len(rec.sent))
	}
	want, _ := event.New(request(), event.Options{Cluster: "prod", Instance: "b0"})
	if got := rec.sent[0]; got.ID() != want.ID() || got.Source() != "depbridge://prod/b0" || string(got.Data()) != string(want.Data()) {
		t.Errorf("sent %s", got)
	}
	if tgt := rec.targets[0]; tgt.Subject != "depbridge.reconcile.ConfigMap.apps.web_2Edeps" || tgt.Mode != sink.Structured {
		t.Errorf("target = %+v", tgt)
	}
	if n := testutil.ToFloat64(m.published.WithLabelValues("bus")); n != 1 {
		t.Errorf("published = %v", n)
	}
	if n := testutil.CollectAndCount(m.duration); n != 1 {
		t.Errorf("%d duration series", n)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

func TestReconcileRetriesUntilAcked(t *testing.T) {
	unavailable := &sink.StatusError{StatusCode: 503, RetryAfter: 3 * time.Second}
	rec := &recorder{fail: []error{unavailable, errors.New("nats: timeout")}}
	route := newRoute(t, config.Route{Name: "r"}, rec)
	m, _ := NewMetrics(prometheus.NewRegistry())
	p, _ := New(Options{Router: RouterFunc(func(cache.Ref) (*sink.Route, error) { return route, nil }), Metrics: m})

	_, err := p.Reconcile(context.Background(), request())
	if !errors.Is(err, unavailable) {
		t.Fatalf("err = %v, want the sink's error wrapped", err)
	}
	if d, ok := sink.RetryAfter(err); !ok || d != 3*time.Second {
		t.Errorf("RetryAfter through the reconciler = %v, %v", d, ok)
	}
	if !strings.Contains(err.Error(), watcher.Key()) || !strings.Contains(err.Error(), `route "r"`) {
		t.Errorf("err = %v, want the watcher and the route", err)
	}
	if _, err := p.Reconcile(context.Background(), request()); err == nil {
		t.Fatal("second attempt should fail too")
	}
	if _, err := p.Reconcile(context.Background(), request()); err != nil {
		t.Fatal(err)
	}
	if len(rec.sent) != 1 {
		t.Errorf("sent %d", len(rec.sent))
	}
	for name, want := range map[string]float64{"failed": 2, "retries": 2, "published": 1} {
		c := map[string]*prometheus.CounterVec{"failed": m.failed, "retries": m.retries, "published": m.published}[name]
		if got := testutil.ToFloat64(c.WithLabelValues("bus")); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	// A later request of the watcher is not a retry.
	if _, err := p.Reconcile(context.Background(), request()); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m.retries.WithLabelValues("bus")); got != 2 {
		t.Errorf("retries = %v after a success, want 2", got)
	}
}

// A watcher removed after a failed publish is forgotten: added again, its
// first publish is not a retry.
func TestForgetRemovedWatcher(t *testing.T) {
	rec := &recorder{fail: []error{errors.New("nats: timeout")}}
	route := newRoute(t, config.Route{Name: "r"}, rec)
	m, _ := NewMetrics(prometheus.NewRegistry())
	p, _ := New(Options{Router: RouterFunc(func(cache.Ref) (*sink.Route, error) { return route, nil }), Metrics: m})
	if _, err := p.Reconcile(context.Background(), request()); err == nil {
		t.Fatal("the first publish should fail")
	}
	p.Forget(watcher)
	if _, err := p.Reconcile(context.Background(), request()); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m.retries.WithLabelValues("bus")); got != 0 {
		t.Errorf("retries = %v for the first publish after the watcher was forgotten, want 0", got)
	}
}

func TestReconcileObjects(t *testing.T) {
	secret := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Secret", "metadata": map[string]any{"name": "db"}, "data": map[string]any{"pw": "c2VjcmV0"},
	}}
	tests := map[string]struct {
		route      config.Route
		objects    ObjectsFunc
		wantErr    string
		wantSecret bool
	}{
		"redacted": {
			route: config.Route{Name: "r", IncludeObjects: true},
			objects: func(cache.Ref) ([]*unstructured.Unstructured, error) {
				return []*unstructured.Unstructured{secret}, nil
			},
		},
		"secret data kept": {
			route: config.Route{Name: "r", IncludeObjects: true, IncludeSecretData: true},
			objects: func(cache.Ref) ([]*unstructured.Unstructured, error) {
				return []*unstructured.Unstructured{secret}, nil
			},
			wantSecret: true,
		},
		"fetch fails": {
			route:   config.Route{Name: "r", IncludeObjects: true},
			objects: func(cache.Ref) ([]*unstructured.Unstructured, error) { return nil, errors.New("cache not synced") },
			wantErr: "fetch objects of watcher v1/ConfigMap/apps/web.deps: cache not synced",
		},
		"no fetcher": {
			route:   config.Route{Name: "r", IncludeObjects: true},
			wantErr: `route "r" includes objects`,
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			rec := &recorder{}
			route := newRoute(t, tt.route, rec)
			p, _ := New(Options{Router: RouterFunc(func(cache.Ref) (*sink.Route, error) { return route, nil }), Objects: tt.objects})
			_, err := p.Reconcile(context.Background(), request())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if len(rec.sent) != 0 {
					t.Error("sent despite the error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			data := string(rec.sent[0].Data())
			if !strings.Contains(data, `"objects":[{`) || strings.Contains(data, "c2VjcmV0") != tt.wantSecret {
				t.Errorf("data = %s", data)
			}
		})
	}
}

func TestReconcileRouteErrors(t *testing.T) {
	p, err := New(Options{Router: RouterFunc(func(w cache.Ref) (*sink.Route, error) {
		return nil, fmt.Errorf("no route named %q", "missing")
	})})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Reconcile(context.Background(), request()); err == nil || !strings.Contains(err.Error(), `route watcher v1/ConfigMap/apps/web.deps: no route named "missing"`) {
		t.Errorf("err = %v", err)
	}
	if _, err := New(Options{}); err == nil {
		t.Error("New without a Router succeeded")
	}
	if _, err := NewMetrics(prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	NewMetrics(reg)
	if _, err := NewMetrics(reg); err == nil {
		t.Error("registering twice succeeded")
	}
}

// pipelined is a sink.AsyncSender that keeps each send's callback for the
// test to answer.
type pipelined struct {
	recorder
	pending chan func(error)
}

func (p *pipelined) SendAsync(_ sink.Target, e ce.Event, done func(error)) {
	p.mu.Lock()
	p.sent = append(p.sent, e)
	p.mu.Unlock()
	p.pending <- done
}

// Begin hands the event to a pipelining sink and returns; done gets the
// sink's answer, wrapped, when it comes. On a sink that only sends, done
// is called before Begin returns.
func TestBeginPipelines(t *testing.T) {
	ps := &pipelined{pending: make(chan func(error), 1)}
	route := newRoute(t, config.Route{Name: "r"}, ps)
	m, _ := NewMetrics(prometheus.NewRegistry())
	p, _ := New(Options{Router: RouterFunc(func(cache.Ref) (*sink.Route, error) { return route, nil }), Metrics: m})

	results := make(chan error, 1)
	done := func(_ watch.Result, err error) { results <- err }
	p.Begin(context.Background(), request(), done)
	select {
	case err := <-results:
		t.Fatalf("done called before the sink answered: %v", err)
	default:
	}
	answer := <-ps.pending
	timeout := errors.New("nats: timeout")
	answer(timeout)
	if err := <-results; !errors.Is(err, timeout) || !strings.Contains(err.Error(), watcher.Key()) {
		t.Fatalf("done got %v, want the sink's error naming the watcher", err)
	}
	p.Begin(context.Background(), request(), done)
	(<-ps.pending)(nil)
	if err := <-results; err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]float64{"failed": 1, "retries": 1, "published": 1} {
		c := map[string]*prometheus.CounterVec{"failed": m.failed, "retries": m.retries, "published": m.published}[name]
		if got := testutil.ToFloat64(c.WithLabelValues("bus")); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if n := len(ps.sent); n != 2 {
		t.Errorf("%d events handed to the sink, want 2", n)
	}

	rec := &recorder{}
	p, _ = New(Options{Router: RouterFunc(func(cache.Ref) (*sink.Route, error) { return newRoute(t, config.Route{Name: "r"}, rec), nil })})
	p.Begin(context.Background(), request(), done)
	select {
	case err := <-results:
		if err != nil || len(rec.sent) != 1 {
			t.Fatalf("done = %v after %d sends, want nil after 1", err, len(rec.sent))
		}
	default:
		t.Fatal("Begin on a sink without SendAsync returned before done")
	}
}

// bigObject is a watched object of about n bytes of JSON.
func bigObject(n int) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": "db", "namespace": "apps"},
		"data": map[string]any{"blob": strings.Repeat("x", n)},
	}}
}

// limited is a sink that refuses, as too large, events whose data is over
// limit bytes, the way the real sinks mark such refusals.
type limited struct {
	recorder
	limit int
	tries int
}

func (l *limited) Send(ctx context.Context, t sink.Target, e ce.Event) error {
	l.mu.Lock()
	l.tries++
	l.mu.Unlock()
	if n := len(e.Data()); n > l.limit {
		return fmt.Errorf("publish %s: %w: %d bytes: nats: maximum payload exceeded", e.ID(), sink.ErrTooLarge, n)
	}
	return l.recorder.Send(ctx, t, e)
}

// An event that the sink refuses for its size with the route's objects is
// sent without them, marked objectsOmitted, under the same id; without
// objects to leave out, the refusal is an error the engine retries.
func TestReconcileOmitsObjectsTooLarge(t *testing.T) {
	objects := func(cache.Ref) ([]*unstructured.Unstructured, error) {
		return []*unstructured.Unstructured{bigObject(4096)}, nil
	}
	withObjects, err := event.New(request(), event.Options{IncludeObjects: true, Objects: []*unstructured.Unstructured{bigObject(4096)}})
	if err != nil {
		t.Fatal(err)
	}

	s := &limited{limit: 2048}
	m, _ := NewMetrics(prometheus.NewRegistry(), "bus")
	route := newRoute(t, config.Route{Name: "r", IncludeObjects: true}, s)
	p, _ := New(Options{Router: RouterFunc(func(cache.Ref) (*sink.Route, error) { return route, nil }), Objects: objects, Metrics: m})
	if _, err := p.Reconcile(context.Background(), request()); err != nil {
		t.Fatalf("Reconcile = %v, want the event sent without its objects", err)
	}
	if s.tries != 2 || len(s.sent) != 1 {
		t.Fatalf("%d tries, %d sent; want 2 and 1", s.tries, len(s.sent))
	}
	got := s.sent[0]
	if data := string(got.Data()); !strings.Contains(data, `"objectsOmitted":true`) || strings.Contains(data, `"objects"`) {
		t.Errorf("data = %s, want objectsOmitted and no objects", data)
	}
	if got.ID() != withObjects.ID() {
		t.Errorf("id %s, want %s, the id of the event with objects", got.ID(), withObjects.ID())
	}
	for name, want := range map[string]float64{"omitted": 1, "failed": 0, "published": 1} {
		c := map[string]*prometheus.CounterVec{"omitted": m.omitted, "failed": m.failed, "published": m.published}[name]
		if v := testutil.ToFloat64(c.WithLabelValues("bus")); v != want {
			t.Errorf("%s = %v, want %v", name, v, want)
		}
	}

	// Small enough with its objects: sent with them.
	s = &limited{limit: 1 << 20}
	route = newRoute(t, config.Route{Name: "r", IncludeObjects: true}, s)
	if _, err := p.Reconcile(context.Background(), request()); err != nil || len(s.sent) != 1 ||
		!strings.Contains(string(s.sent[0].Data()), `"objects":[{`) || strings.Contains(string(s.sent[0].Data()), "objectsOmitted") {
		t.Fatalf("Reconcile = %v, sent %d; want the event with its objects", err, len(s.sent))
	}

	// Too large even without objects: the refusal is returned, and
	// nothing counts as sent without objects.
	s = &limited{limit: 10}
	route = newRoute(t, config.Route{Name: "r", IncludeObjects: true}, s)
	if _, err := p.Reconcile(context.Background(), request()); !errors.Is(err, sink.ErrTooLarge) || s.tries != 2 {
		t.Fatalf("Reconcile = %v after %d tries, want ErrTooLarge after 2 (with objects, then without)", err, s.tries)
	}
	if v := testutil.ToFloat64(m.omitted.WithLabelValues("bus")); v != 1 {
		t.Errorf("omitted = %v after an event still too large without objects, want 1 (unchanged)", v)
	}
	// The next attempt is a retry, counted once although it is sent twice.
	if _, err := p.Reconcile(context.Background(), request()); !errors.Is(err, sink.ErrTooLarge) {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(m.retries.WithLabelValues("bus")); v != 1 {
		t.Errorf("retries = %v after one retry, want 1", v)
	}
	s = &limited{limit: 10}
	route = newRoute(t, config.Route{Name: "r"}, s)
	if _, err := p.Reconcile(context.Background(), request()); !errors.Is(err, sink.ErrTooLarge) || s.tries != 1 {
		t.Fatalf("Reconcile = %v after %d tries, want ErrTooLarge after 1", err, s.tries)
	}
}

// Begin on a sink that only sends resends on the worker's goroutine:
// done before Begin returns, as for any send on such a sink.
func TestBeginOmitsObjectsOnSendingSink(t *testing.T) {
	s := &limited{limit: 2048}
	route := newRoute(t, config.Route{Name: "r", IncludeObjects: true}, s)
	p, _ := New(Options{Router: RouterFunc(func(cache.Ref) (*sink.Route, error) { return route, nil }),
		Objects: func(cache.Ref) ([]*unstructured.Unstructured, error) {
			return []*unstructured.Unstructured{bigObject(4096)}, nil
		}})
	var got error
	called := false
	p.Begin(context.Background(), request(), func(_ watch.Result, err error) { got, called = err, true })
	if !called || got != nil || s.tries != 2 || len(s.sent) != 1 {
		t.Fatalf("after Begin: done called %v with %v, %d tries, %d sent; want done(nil) after 2 tries", called, got, s.tries, len(s.sent))
	}
}

// On a pipelining sink, the event without objects is handed over once the
// sink refused the one with them, and done gets the second answer.
func TestBeginOmitsObjectsTooLarge(t *testing.T) {
	ps := &pipelined{pending: make(chan func(error), 1)}
	route := newRoute(t, config.Route{Name: "r", IncludeObjects: true}, ps)
	p, _ := New(Options{Router: RouterFunc(func(cache.Ref) (*sink.Route, error) { return route, nil }),
		Objects: func(cache.Ref) ([]*unstructured.Unstructured, error) {
			return []*unstructured.Unstructured{bigObject(100)}, nil
		}})
	results := make(chan error, 1)
	p.Begin(context.Background(), request(), func(_ watch.Result, err error) { results <- err })
	(<-ps.pending)(fmt.Errorf("publish: %w", sink.ErrTooLarge))
	var answer func(error)
	select {
	case answer = <-ps.pending:
	case err := <-results:
		t.Fatalf("done = %v before the event without objects was sent", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the event without objects was not sent within 10s")
	}
	answer(nil)
	if err := <-results; err != nil {
		t.Fatal(err)
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if len(ps.sent) != 2 || !strings.Contains(string(ps.sent[0].Data()), `"objects":[{`) ||
		!strings.Contains(string(ps.sent[1].Data()), `"objectsOmitted":true`) {
		t.Errorf("sent %d events, want one with objects, then one with objectsOmitted", len(ps.sent))
	}
}

// Through a real JetStream stream whose max_msg_size the objects exceed,
// on the engine's pipelined path: the request is acknowledged, and the
// stream holds its event without objects, marked objectsOmitted.
func TestOmitsObjectsOverJetStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, _, stream := testenv.StartNATSStream(t, jetstream.StreamConfig{Name: "EVENTS", Subjects: []string{"events.>"}, MaxMsgSize: 4 << 10})
	s, err := sink.NewJetStream("bus", config.JetStream{NATSConn: config.NATSConn{URL: n.URL()}, Stream: "EVENTS"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	route := newRoute(t, config.Route{Name: "r", Subject: "events.{{.Name}}", IncludeObjects: true}, s)
	size := 100
	p, _ := New(Options{Router: RouterFunc(func(cache.Ref) (*sink.Route, error) { return route, nil }),
		Objects: func(cache.Ref) ([]*unstructured.Unstructured, error) {
			return []*unstructured.Unstructured{bigObject(size)}, nil
		}})
	for i, sz := range []int{100, 8 << 10} {
		size = sz
		req := request() // another id each time, or the stream would drop the second as a duplicate
		req.Causes[0].ResourceVersion = fmt.Sprint(10 + i)
		results := make(chan error, 1)
		p.Begin(ctx, req, func(_ watch.Result, err error) { results <- err })
		select {
		case err := <-results:
			if err != nil {
				t.Fatalf("object of %d bytes: %v", size, err)
			}
		case <-ctx.Done():
			t.Fatalf("object of %d bytes: no answer", size)
		}
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var data []string
	for m := range batch.Messages() {
		data = append(data, string(m.Data()))
	}
	if len(data) != 2 || !strings.Contains(data[0], `"objects":[{`) || strings.Contains(data[0], "objectsOmitted") ||
		strings.Contains(data[1], `"objects"`) || !strings.Contains(data[1], `"objectsOmitted":true`) {
		t.Errorf("stream holds %d events, want one with objects, then one with objectsOmitted and none:\n%s", len(data), strings.Join(data, "\n"))
	}
}
