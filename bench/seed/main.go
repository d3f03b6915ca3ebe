// Command seed runs github.com/stolostron/kubernetes-dependency-watches on
// a workload spec, for the driver in bench/cmd/compare: one DynamicWatcher
// with its cache on, one AddOrUpdateWatcher per watcher (its five named
// objects and its selector) followed by that watcher's first reconcile, and
// a Reconciler that reads the watcher's
// objects from the cache (as a real reconciler does) and publishes them to
// JetStream, returning after the PubAck. It is its own module because the
// library pins client-go v0.31, which cannot build with depbridge's.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	depwatch "github.com/stolostron/kubernetes-dependency-watches/client"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// spec is the part of bench/spec.Spec this runner reads.
type spec struct {
	Namespace string `json:"namespace"`
	Subject   string `json:"subject"`
	Watchers  []struct {
		Name     string   `json:"name"`
		Kind     string   `json:"kind"`
		Names    []string `json:"names"`
		Selector string   `json:"selector"`
	} `json:"watchers"`
}

// stats is bench/internal/proc.Stats.
type stats struct {
	Lists       int64  `json:"lists"`
	Watches     int64  `json:"watches"`
	OpenWatches int    `json:"openWatches"`
	HeapInuse   uint64 `json:"heapInuse"`
	HeapPeak    uint64 `json:"heapPeak"`
	Published   int64  `json:"published"`
	Failed      int64  `json:"failed"`
	Ready       bool   `json:"ready"`
}

var published, failed atomic.Int64

type object struct {
	Name            string `json:"name"`
	ResourceVersion string `json:"resourceVersion"`
}

type message struct {
	Watcher struct {
		Name string `json:"name"`
	} `json:"watcher"`
	Objects []object `json:"objects"`
}

// reconciler publishes the watcher's cached objects and waits for the ack.
type reconciler struct {
	dw      depwatch.DynamicWatcher
	js      jetstream.JetStream
	subject string
}

func (r *reconciler) Reconcile(ctx context.Context, w depwatch.ObjectIdentifier) (reconcile.Result, error) {
	objs, err := r.dw.ListWatchedFromCache(w)
	if err != nil {
		return reconcile.Result{}, err
	}
	var m message
	m.Watcher.Name = w.Name
	for _, o := range objs {
		m.Objects = append(m.Objects, object{Name: o.GetName(), ResourceVersion: o.GetResourceVersion()})
	}
	b, err := json.Marshal(m)
	if err != nil {
		return reconcile.Result{}, err
	}
	if _, err := r.js.Publish(ctx, r.subject+"."+w.Name, b); err != nil {
		failed.Add(1)
		return reconcile.Result{}, err
	}
	published.Add(1)
	return reconcile.Result{}, nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "seed:", err)
		os.Exit(1)
	}
}

func run() error {
	var kubeconfig, natsURL, specPath string
	flag.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the API server")
	flag.StringVar(&natsURL, "nats", "", "NATS URL")
	flag.StringVar(&specPath, "spec", "", "workload spec (JSON)")
	flag.Parse()
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	_ = klogFlags.Set("v", "0")
	_ = klogFlags.Set("logtostderr", "true")

	b, err := os.ReadFile(specPath)
	if err != nil {
		return err
	}
	var s spec
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 1000, 2000
	c := &counter{open: map[*trackedBody]struct{}{}}
	cfg = c.wrap(cfg)
	var ready atomic.Bool
	serve(c, &ready)

	nc, err := nats.Connect(natsURL, nats.MaxReconnects(-1))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	r := &reconciler{js: js, subject: s.Subject}
	// As every surveyed consumer configures it: cache on, and no initial
	// reconcile from the library (a second watcher of a watched object
	// would get none anyway); the runner reconciles each watcher once
	// after registering it.
	dw, err := depwatch.New(cfg, r, &depwatch.Options{EnableCache: true, DisableInitialReconcile: true})
	if err != nil {
		return err
	}
	r.dw = dw
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- dw.Start(ctx) }()
	select {
	case <-dw.Started():
	case err := <-errc:
		return err
	}
	// One AddOrUpdateWatcher per watcher, from a few goroutines as a
	// controller's workers would call it (the library serialises them on
	// its lock anyway).
	work := make(chan int)
	var wg sync.WaitGroup
	var regErr atomic.Value
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				w := s.Watchers[i]
				watcher := depwatch.ObjectIdentifier{Version: "v1", Kind: "ConfigMap", Namespace: "watchers", Name: w.Name}
				watched := make([]depwatch.ObjectIdentifier, 0, len(w.Names)+1)
				for _, n := range w.Names {
					watched = append(watched, depwatch.ObjectIdentifier{Version: "v1", Kind: w.Kind, Namespace: s.Namespace, Name: n})
				}
				watched = append(watched, depwatch.ObjectIdentifier{Version: "v1", Kind: w.Kind, Namespace: s.Namespace, Selector: w.Selector})
				if err := dw.AddOrUpdateWatcher(watcher, watched...); err != nil {
					regErr.Store(fmt.Errorf("AddOrUpdateWatcher %s: %w", w.Name, err))
					continue
				}
				// The watcher's own first reconcile, as the consumer's
				// controller does it: the library gives none to a watcher
				// whose objects another watcher watches already.
				for {
					if _, err := r.Reconcile(ctx, watcher); err == nil || ctx.Err() != nil {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	}
	for i := range s.Watchers {
		select {
		case work <- i:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	if err, ok := regErr.Load().(error); ok {
		fmt.Fprintln(os.Stderr, "seed:", err)
	}
	ready.Store(true)
	return <-errc
}

// counter counts LIST and WATCH requests in the client transport, as
// depbridge's testenv.Faults does for the other implementations.
type counter struct {
	lists, watches atomic.Int64
	mu             sync.Mutex
	open           map[*trackedBody]struct{}
}

func (c *counter) wrap(cfg *rest.Config) *rest.Config {
	cfg = rest.CopyConfig(cfg)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return &countTransport{c: c, next: rt} }
	return cfg
}

type countTransport struct {
	c    *counter
	next http.RoundTripper
}

func (t *countTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	isWatch := req.Method == http.MethodGet && req.URL.Query().Get("watch") == "true"
	if isWatch {
		t.c.watches.Add(1)
	} else if req.Method == http.MethodGet && isCollection(req.URL.Path) {
		t.c.lists.Add(1)
	}
	resp, err := t.next.RoundTrip(req)
	if err != nil || !isWatch || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	b := &trackedBody{ReadCloser: resp.Body, c: t.c}
	t.c.mu.Lock()
	t.c.open[b] = struct{}{}
	t.c.mu.Unlock()
	resp.Body = b
	return resp, nil
}

func isCollection(path string) bool {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	if len(parts) < 2 {
		return false
	}
	if parts[0] == "api" {
		parts = parts[2:]
	} else if parts[0] == "apis" && len(parts) >= 3 {
		parts = parts[3:]
	} else {
		return false
	}
	if len(parts) >= 2 && parts[0] == "namespaces" {
		if len(parts) == 2 {
			return false
		}
		parts = parts[2:]
	}
	return len(parts) == 1
}

type trackedBody struct {
	io.ReadCloser
	c    *counter
	once sync.Once
}

func (b *trackedBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(func() {
		b.c.mu.Lock()
		delete(b.c.open, b)
		b.c.mu.Unlock()
	})
	return err
}

// serve is bench/internal/proc.Serve.
func serve(c *counter, ready *atomic.Bool) {
	var peak atomic.Uint64
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
	var smu sync.Mutex
	heap := func() uint64 {
		smu.Lock()
		metrics.Read(sample)
		h := sample[0].Value.Uint64() + sample[1].Value.Uint64()
		smu.Unlock()
		for {
			p := peak.Load()
			if h <= p || peak.CompareAndSwap(p, h) {
				return h
			}
		}
	}
	go func() {
		for range time.Tick(100 * time.Millisecond) {
			heap()
		}
	}()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go func() {
		_ = http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			c.mu.Lock()
			open := len(c.open)
			c.mu.Unlock()
			h := heap()
			_ = json.NewEncoder(w).Encode(stats{Lists: c.lists.Load(), Watches: c.watches.Load(), OpenWatches: open,
				HeapInuse: h, HeapPeak: peak.Load(), Published: published.Load(), Failed: failed.Load(), Ready: ready.Load()})
		}))
	}()
	fmt.Printf("STATS http://%s\n", l.Addr())
}
