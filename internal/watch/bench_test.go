package watch

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/testenv"
)

// latencyRecorder is a Reconciler that notes when each watcher first got a
// request and when each resourceVersion reached a reconcile.
type latencyRecorder struct {
	mu      sync.Mutex
	first   map[cache.Ref]time.Time
	seen    map[string]time.Time // resourceVersion -> first reconcile
	done    chan struct{}
	want    int
	initial time.Time
}

func (r *latencyRecorder) Reconcile(_ context.Context, req Request) (Result, error) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.first[req.Watcher]; !ok {
		r.first[req.Watcher] = now
		if len(r.first) == r.want {
			r.initial = now
			close(r.done)
		}
	}
	for _, c := range req.Causes {
		if c.Op == OpModified {
			if _, ok := r.seen[c.ResourceVersion]; !ok {
				r.seen[c.ResourceVersion] = now
			}
		}
	}
	return Result{}, nil
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkEngine: W watchers, each depending on M named objects and one
// label selector, over K kinds (ConfigMaps and Secrets) in one namespace,
// on the real API server. Reports API WATCH streams and LIST requests
// (counted in the client's transport), the time from the first
// registration until every watcher had its initial reconcile, heap bytes
// per cached object, and latency from an API write to the reconcile call at
// a steady write rate. The seed library would open one WATCH per distinct
// named object or selector (W*M + distinct selectors); the target here is
// at most 2*K whatever W is.
func BenchmarkEngine(b *testing.B) {
	for _, w := range []int{100, 1000} {
		b.Run(fmt.Sprintf("W=%d,M=5,K=2", w), func(b *testing.B) {
			for range b.N {
				benchEngine(b, w, 5, 2)
			}
		})
	}
}

func benchEngine(b *testing.B, watchers, m, kinds int) {
	b.StopTimer()
	ctx := context.Background()
	cs := kubernetes.NewForConfigOrDie(env.Config)
	ns := "bench-" + randSuffix()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) }()

	// Objects: watcher i owns M objects of kind i%K, labelled group=g<i%50>,
	// so its selector matches the objects of 1 in 50 watchers.
	const groups = 50
	kindOf := func(i int) string { return []string{"ConfigMap", "Secret"}[i%kinds] }
	name := func(i, j int) string { return fmt.Sprintf("o-%d-%d", i, j) }
	type obj struct{ kind, name string }
	var objs []obj
	var wg sync.WaitGroup
	work := make(chan func())
	for range 16 {
		wg.Go(func() {
			for f := range work {
				f()
			}
		})
	}
	for i := range watchers {
		lbls := map[string]string{"group": fmt.Sprintf("g%d", i%groups)}
		for j := range m {
			o := obj{kindOf(i), name(i, j)}
			objs = append(objs, o)
			work <- func() {
				meta := metav1.ObjectMeta{Name: o.name, Namespace: ns, Labels: lbls}
				var err error
				if o.kind == "ConfigMap" {
					_, err = cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: meta, Data: map[string]string{"v": "0"}}, metav1.CreateOptions{})
				} else {
					_, err = cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: meta, StringData: map[string]string{"v": "0"}}, metav1.CreateOptions{})
				}
				if err != nil {
					b.Error(err)
				}
			}
		}
	}
	close(work)
	wg.Wait()
	if b.Failed() {
		return
	}

	faults := testenv.NewFaults()
	rec := &latencyRecorder{first: map[cache.Ref]time.Time{}, seen: map[string]time.Time{}, done: make(chan struct{}), want: watchers}
	heap0 := heapInUse()
	e, err := New(faults.Wrap(env.Config), rec, Options{Logger: testLogger(), Workers: 8})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	stopped := make(chan error)
	go func() { stopped <- e.Start(runCtx) }()
	defer func() { cancel(); <-stopped }()
	<-e.Started()

	b.StartTimer()
	start := time.Now()
	regs := make(chan int)
	var rwg sync.WaitGroup
	for range 8 {
		rwg.Go(func() {
			for i := range regs {
				watched := make([]cache.Ref, 0, m+1)
				for j := range m {
					watched = append(watched, cache.Ref{Version: "v1", Kind: kindOf(i), Namespace: ns, Name: name(i, j)})
				}
				watched = append(watched, cache.Ref{Version: "v1", Kind: kindOf(i), Namespace: ns, Selector: fmt.Sprintf("group=g%d", i%groups)})
				w := cache.Ref{Group: "example.com", Version: "v1", Kind: "Function", Namespace: "fn", Name: fmt.Sprint("f", i)}
				if err := e.AddWatcher(ctx, w, watched...); err != nil {
					b.Error(err)
				}
			}
		})
	}
	for i := range watchers {
		regs <- i
	}
	close(regs)
	rwg.Wait()
	select {
	case <-rec.done:
	case <-time.After(5 * time.Minute):
		b.Fatal("not every watcher got its initial reconcile within 5 minutes")
	}
	b.StopTimer()
	initial := rec.initial.Sub(start)
	st := e.Stats()
	heapPerObject := float64(heapInUse()-heap0) / float64(st.Objects)
	lists, watches := faults.Counts()

	// Steady writes to random watched objects; each write's resourceVersion
	// is matched to the reconcile that carried it.
	const rate, seconds = 50, 10
	writes := map[string]time.Time{}
	tick := time.NewTicker(time.Second / rate)
	for range rate * seconds {
		<-tick.C
		o := objs[rand.IntN(len(objs))]
		t0 := time.Now()
		var rv string
		if o.kind == "ConfigMap" {
			cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, o.name, metav1.GetOptions{})
			if err != nil {
				b.Fatal(err)
			}
			cm.Data["v"] = t0.String()
			t0 = time.Now()
			if cm, err = cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
				b.Fatal(err)
			}
			rv = cm.ResourceVersion
		} else {
			s, err := cs.CoreV1().Secrets(ns).Get(ctx, o.name, metav1.GetOptions{})
			if err != nil {
				b.Fatal(err)
			}
			s.Data["v"] = []byte(t0.String())
			t0 = time.Now()
			if s, err = cs.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
				b.Fatal(err)
			}
			rv = s.ResourceVersion
		}
		writes[rv] = t0
	}
	tick.Stop()
	var lat []time.Duration
	deadline := time.Now().Add(30 * time.Second)
	for {
		lat = lat[:0]
		rec.mu.Lock()
		for rv, t0 := range writes {
			if t1, ok := rec.seen[rv]; ok {
				lat = append(lat, t1.Sub(t0))
			}
		}
		rec.mu.Unlock()
		if len(lat) >= len(writes)*95/100 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[int(float64(len(lat)-1)*p)]) / float64(time.Millisecond)
	}

	b.ReportMetric(float64(st.Streams), "streams")
	b.ReportMetric(float64(watches), "WATCHes")
	b.ReportMetric(float64(lists), "LISTs")
	b.ReportMetric(float64(st.Watched), "watched-refs")
	b.ReportMetric(float64(st.Objects), "objects")
	b.ReportMetric(initial.Seconds(), "initial-s")
	b.ReportMetric(heapPerObject, "heap-B/obj")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(len(lat))/float64(len(writes)), "latency-samples")
	if st.Streams > 2*kinds {
		b.Errorf("%d streams for %d kinds, want <= %d", st.Streams, kinds, 2*kinds)
	}
}
