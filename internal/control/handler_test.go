package control

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/watch"
)

// fakeSubs is a scripted Subscriptions for unit tests of the processor.
type fakeSubs struct {
	apply func(context.Context, config.Subscription) error
	query func(context.Context, cache.Ref, string, bool, []cache.Ref) ([]watch.QueryResult, error)
	got   []any
}

func (f *fakeSubs) Apply(ctx context.Context, s config.Subscription) error {
	f.got = append(f.got, s)
	if f.apply != nil {
		return f.apply(ctx, s)
	}
	return nil
}

// Resource says every kind is served, namespaced.
func (f *fakeSubs) Resource(_ context.Context, gvk schema.GroupVersionKind) (cache.Resource, error) {
	return cache.Resource{GroupVersionResource: gvk.GroupVersion().WithResource(strings.ToLower(gvk.Kind) + "s"), Namespaced: true}, nil
}

func (f *fakeSubs) Delete(_ context.Context, w cache.Ref) error {
	f.got = append(f.got, w)
	return nil
}

func (f *fakeSubs) Query(ctx context.Context, w cache.Ref, route string, initial bool, qs []cache.Ref) ([]watch.QueryResult, error) {
	f.got = append(f.got, []any{w, route, initial, qs})
	if f.query != nil {
		return f.query(ctx, w, route, initial, qs)
	}
	return nil, nil
}

func decoded(t *testing.T, typ, data string) *Request {
	t.Helper()
	r, err := Decoder{}.DecodeNATS(binaryHeader(typ), []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestProcessor(t *testing.T) {
	secretObj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Secret", "metadata": map[string]any{"name": "db"},
		"data": map[string]any{"password": "aHVudGVyMg=="}, "stringData": map[string]any{"x": "y"},
	}}
	tests := map[string]struct {
		policy  config.Policy
		timeout time.Duration
		subs    *fakeSubs
		typ     string
		data    string
		check   func(t *testing.T, st *StatusData, err error, f *fakeSubs)
	}{
		"apply gets the defaults": {testPolicy(false), time.Second, &fakeSubs{}, TypeApply,
			`{"watcher":` + watcherJSON + `,"watched":[` + cmJSON + `]}`,
			func(t *testing.T, st *StatusData, err error, f *fakeSubs) {
				s := f.got[0].(config.Subscription)
				if err != nil || !st.Accepted || s.Route != "ctlroute" || s.InitialReconcile == nil || !*s.InitialReconcile {
					t.Errorf("%v %+v %+v", err, st, s)
				}
			}},
		"apply keeps what it says": {testPolicy(false), time.Second, &fakeSubs{}, TypeApply, applyJSON,
			func(t *testing.T, st *StatusData, err error, f *fakeSubs) {
				s := f.got[0].(config.Subscription)
				if s.Route != "fast" || *s.InitialReconcile {
					t.Errorf("%+v", s)
				}
			}},
		"policy first": {config.Policy{}, time.Second, &fakeSubs{}, TypeApply, applyJSON,
			func(t *testing.T, st *StatusData, err error, f *fakeSubs) {
				if !errors.Is(err, ErrDenied) || st.Accepted || !strings.Contains(st.Reason, "watched[0]:") || len(f.got) != 0 {
					t.Errorf("%v %+v %v", err, st, f.got)
				}
			}},
		"query defaults and redaction": {testPolicy(false), time.Second, &fakeSubs{query: func(context.Context, cache.Ref, string, bool, []cache.Ref) ([]watch.QueryResult, error) {
			return []watch.QueryResult{{Query: cmRef("ns", "a"), Objects: []*unstructured.Unstructured{secretObj, nil}}}, nil
		}}, TypeQuery, queryJSON,
			func(t *testing.T, st *StatusData, err error, f *fakeSubs) {
				args := f.got[0].([]any)
				if args[1] != "ctlroute" || args[2] != true {
					t.Errorf("query args %v", args)
				}
				if err != nil || len(st.Results) != 1 || len(st.Results[0].Objects) != 1 {
					t.Fatalf("%v %+v", err, st)
				}
				o := st.Results[0].Objects[0]
				if o["data"] != nil || o["stringData"] != nil || o["metadata"] == nil {
					t.Errorf("Secret not redacted: %v", o)
				}
				if secretObj.Object["data"] == nil {
					t.Error("redaction modified the cache's object")
				}
			}},
		"engine error": {testPolicy(false), time.Second, &fakeSubs{apply: func(context.Context, config.Subscription) error {
			return errors.New("forbidden: cannot list configmaps")
		}}, TypeApply, applyJSON,
			func(t *testing.T, st *StatusData, err error, f *fakeSubs) {
				if st.Accepted || st.Reason != "forbidden: cannot list configmaps" || reasonOf(err) != "failed" {
					t.Errorf("%v %+v", err, st)
				}
			}},
		"timeout": {testPolicy(false), 20 * time.Millisecond, &fakeSubs{apply: func(ctx context.Context, _ config.Subscription) error {
			<-ctx.Done()
			return errors.New("waiting for the list: rate limited")
		}}, TypeApply, applyJSON,
			func(t *testing.T, st *StatusData, err error, f *fakeSubs) {
				if st.Accepted || !strings.Contains(st.Reason, "gave up after 20ms") || reasonOf(err) != "timeout" {
					t.Errorf("%v %+v", err, st)
				}
			}},
		"panic is a rejection": {testPolicy(false), time.Second, &fakeSubs{apply: func(context.Context, config.Subscription) error {
			panic("boom")
		}}, TypeApply, applyJSON,
			func(t *testing.T, st *StatusData, err error, f *fakeSubs) {
				if st.Accepted || !strings.Contains(st.Reason, "panic while handling") {
					t.Errorf("%v %+v", err, st)
				}
			}},
		"delete": {config.Policy{}, time.Second, &fakeSubs{}, TypeDelete, deleteJSON,
			func(t *testing.T, st *StatusData, err error, f *fakeSubs) {
				if err != nil || !st.Accepted || st.Watcher == nil || f.got[0] != *st.Watcher {
					t.Errorf("a delete needs no policy: %v %+v", err, st)
				}
			}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := newProcessor(config.Control{Route: "ctlroute", Policy: tc.policy}, tc.subs, Options{MessageTimeout: tc.timeout}.withDefaults())
			st, err := p.handle(context.Background(), decoded(t, tc.typ, tc.data))
			if st.RequestID != "id-1" || st.RequestType != tc.typ {
				t.Errorf("status names %q %q", st.RequestID, st.RequestType)
			}
			tc.check(t, st, err, tc.subs)
		})
	}
}

func TestStatusEvent(t *testing.T) {
	w := cmRef("ns", "w")
	st := &StatusData{RequestID: "r1", RequestType: TypeApply, Watcher: &w, Accepted: true}
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	e, err := statusEvent("depbridge://c/i", "test://x", now, st, w.Key())
	if err != nil {
		t.Fatal(err)
	}
	if e.Type() != TypeStatus || e.Source() != "depbridge://c/i" || e.Subject() != w.Key() || !e.Time().Equal(now) ||
		e.Extensions()[ExtCorrelationID] != "r1" || e.Extensions()["partitionkey"] != w.Key() || e.DataContentType() != "application/json" {
		t.Errorf("attributes: %s", e.Context)
	}
	if got := statusOf(t, e); got.RequestID != "r1" || !got.Accepted || *got.Watcher != w {
		t.Errorf("data: %+v", got)
	}
	again, _ := statusEvent("depbridge://c/i", "test://x", now.Add(time.Hour), st, w.Key())
	if again.ID() != e.ID() {
		t.Error("the same answer to the same request has another id")
	}
	rej := *st
	rej.Accepted = false
	other, _ := statusEvent("depbridge://c/i", "test://x", now, &rej, w.Key())
	if other.ID() == e.ID() {
		t.Error("accepted and rejected answers share an id")
	}
	// Unknown watcher: no subject, no partition key.
	e, err = statusEvent("depbridge://c/i", "", now, &StatusData{RequestID: "r2", Reason: "bad"}, "")
	if err != nil || e.Subject() != "" || e.Extensions()["partitionkey"] != nil {
		t.Errorf("%v %s", err, e.Context)
	}
	// Results without objects when too large.
	st.Results = []QueryResult{{Query: w, Objects: []map[string]any{{"a": 1}}}}
	small := withoutObjects(st)
	if !small.ObjectsOmitted || len(small.Results[0].Objects) != 0 || small.Results[0].Objects == nil || len(st.Results[0].Objects) != 1 {
		t.Errorf("withoutObjects: %+v (original %+v)", small, st)
	}
}

func TestSerializer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := newSerializer(8)
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() { s.run(ctx) })
	}
	var (
		mu      sync.Mutex
		order   = map[string][]int{}
		running = map[string]int{}
		overlap atomic.Bool
		done    sync.WaitGroup
	)
	release := make(chan struct{})
	slowStarted := make(chan struct{})
	// A slow key does not hold up the others.
	done.Add(1)
	if err := s.add(ctx, "slow", func(context.Context) { close(slowStarted); <-release; done.Done() }); err != nil {
		t.Fatal(err)
	}
	<-slowStarted
	for i := range 20 {
		key := []string{"a", "b", "c"}[i%3]
		done.Add(1)
		if err := s.add(ctx, key, func(context.Context) {
			mu.Lock()
			running[key]++
			if running[key] > 1 {
				overlap.Store(true)
			}
			order[key] = append(order[key], i)
			mu.Unlock()
			time.Sleep(time.Millisecond)
			mu.Lock()
			running[key]--
			mu.Unlock()
			done.Done()
		}); err != nil {
			t.Fatal(err)
		}
	}
	close(release)
	done.Wait()
	if overlap.Load() {
		t.Error("one key ran concurrently")
	}
	for key, got := range order {
		for j := 1; j < len(got); j++ {
			if got[j] < got[j-1] {
				t.Errorf("key %s out of order: %v", key, got)
			}
		}
	}
	// Full: add waits, and gives up with its context.
	block := make(chan struct{})
	for range 8 {
		_ = s.add(ctx, "full", func(context.Context) { <-block })
	}
	actx, acancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer acancel()
	if err := s.add(actx, "x", func(context.Context) {}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("add on a full serializer: %v", err)
	}
	close(block)
	cancel()
	wg.Wait()
}

func TestReplayTracker(t *testing.T) {
	synced := func(r *replayTracker) bool {
		select {
		case <-r.synced:
			return true
		default:
			return false
		}
	}
	if !synced(newReplayTracker(0)) {
		t.Error("no readers: synced at once")
	}
	r := newReplayTracker(1)
	r.addReaders(2)
	r.add()
	r.readerDone() // setup
	r.readerDone()
	if synced(r) {
		t.Error("synced with a reader and a message left")
	}
	r.readerDone()
	if synced(r) {
		t.Error("synced with a message left")
	}
	r.handled()
	if !synced(r) {
		t.Error("not synced")
	}
	r.add()
	r.handled() // a second close would panic
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewMetrics(reg); err == nil {
		t.Error("registering twice on one registry succeeded")
	}
	if n := testutil.CollectAndCount(m.rejected); n != len(metricReasons) {
		t.Errorf("%d rejection reasons pre-created, want %d", n, len(metricReasons))
	}
	m.observe(TypeQuery, nil, time.Millisecond)
	m.observe("io.example.x", ErrUnsupported, time.Millisecond)
	m.observe(TypeApply, ErrOwned, time.Millisecond)
	var nilMetrics *Metrics
	nilMetrics.observe(TypeApply, nil, 0)
	for _, c := range []struct {
		c    prometheus.Collector
		want float64
	}{
		{m.messages.WithLabelValues("query", "accepted"), 1},
		{m.messages.WithLabelValues("unknown", "rejected"), 1},
		{m.rejected.WithLabelValues("unsupported"), 1},
		{m.rejected.WithLabelValues("owned"), 1},
		{m.messages.WithLabelValues("apply", "accepted"), 0},
	} {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("%v = %v, want %v", c.c, got, c.want)
		}
	}
}
