// Package metrics exposes the watch engine to Prometheus: a collector that
// reads the engine's counts once per scrape, and a provider for client-go's
// workqueue metrics (depth, adds, latencies, retries) under
// controller-runtime's names. Everything is registered by the caller on an
// explicit registry; nothing here is global.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/util/workqueue"

	"github.com/depbridge/depbridge/internal/watch"
)

// Engine is what the collector reads.
type Engine interface {
	Stats() watch.Stats
	Sources() []watch.SourceStatus
}

// Collector reports an engine's state at scrape time.
type Collector struct {
	e Engine

	watchers, watched, streams, pending, objects, queued, oldest, sources, lists *prometheus.Desc
}

// NewCollector returns a collector for e.
func NewCollector(e Engine) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("depbridge_"+name, help, labels, nil)
	}
	return &Collector{
		e:        e,
		watchers: d("watchers", "Watchers registered."),
		watched:  d("watched_refs", "Distinct watched identifiers (names, selectors, namespaces)."),
		streams:  d("api_streams", "List+watch sources running against the API server."),
		pending:  d("pending_refs", "Watched identifiers whose kind is not served yet (CRD missing)."),
		objects:  d("cached_objects", "Objects held in the cache."),
		queued:   d("queue_pending_watchers", "Watchers with a reconcile request not yet acknowledged."),
		oldest:   d("queue_oldest_pending_seconds", "Age of the oldest reconcile request not yet acknowledged."),
		sources:  d("sources", "List+watch sources by state.", "state"),
		lists:    d("source_lists", "Lists stored by the running sources: one at start, one per relist (after 410 Gone or a restart of the API server)."),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.watchers, c.watched, c.streams, c.pending, c.objects, c.queued, c.oldest, c.sources, c.lists} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.e.Stats()
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	g(c.watchers, float64(st.Watchers))
	g(c.watched, float64(st.Watched))
	g(c.streams, float64(st.Streams))
	g(c.pending, float64(st.Pending))
	g(c.objects, float64(st.Objects))
	g(c.queued, float64(st.Queued))
	g(c.oldest, st.OldestQueued.Seconds())
	states := map[watch.SourceState]int{watch.StatePending: 0, watch.StateSyncing: 0, watch.StateActive: 0, watch.StateRestarting: 0, watch.StateFailed: 0}
	lists := 0
	for _, s := range c.e.Sources() {
		states[s.State]++
		lists += s.Lists
	}
	g(c.lists, float64(lists))
	for s, n := range states {
		g(c.sources, float64(n), string(s))
	}
}

var _ prometheus.Collector = (*Collector)(nil)

// Workqueue provides client-go workqueue metrics, named as
// controller-runtime names them (workqueue_depth{name}, ...).
type Workqueue struct {
	depth                   *prometheus.GaugeVec
	adds, retries           *prometheus.CounterVec
	latency, workDuration   *prometheus.HistogramVec
	unfinished, longestProc *prometheus.GaugeVec
}

// NewWorkqueue creates the workqueue metrics and registers them on reg.
func NewWorkqueue(reg prometheus.Registerer) (*Workqueue, error) {
	buckets := prometheus.ExponentialBuckets(10e-9, 10, 12)
	w := &Workqueue{
		depth: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "workqueue_depth", Help: "Current depth of workqueue."}, []string{"name"}),
		adds:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "workqueue_adds_total", Help: "Total number of adds handled by workqueue."}, []string{"name"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "workqueue_retries_total",
			Help: "Total number of retries handled by workqueue."}, []string{"name"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "workqueue_queue_duration_seconds",
			Help: "How long in seconds an item stays in workqueue before being requested.", Buckets: buckets}, []string{"name"}),
		workDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "workqueue_work_duration_seconds",
			Help: "How long in seconds processing an item from workqueue takes.", Buckets: buckets}, []string{"name"}),
		unfinished: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "workqueue_unfinished_work_seconds",
			Help: "How many seconds of work has been done that is in progress and hasn't been observed by work_duration."}, []string{"name"}),
		longestProc: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "workqueue_longest_running_processor_seconds",
			Help: "How many seconds has the longest running processor for workqueue been running."}, []string{"name"}),
	}
	for _, c := range []prometheus.Collector{w.depth, w.adds, w.retries, w.latency, w.workDuration, w.unfinished, w.longestProc} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return w, nil
}

func (w *Workqueue) NewDepthMetric(name string) workqueue.GaugeMetric {
	return w.depth.WithLabelValues(name)
}
func (w *Workqueue) NewAddsMetric(name string) workqueue.CounterMetric {
	return w.adds.WithLabelValues(name)
}
func (w *Workqueue) NewLatencyMetric(name string) workqueue.HistogramMetric {
	return w.latency.WithLabelValues(name)
}
func (w *Workqueue) NewWorkDurationMetric(name string) workqueue.HistogramMetric {
	return w.workDuration.WithLabelValues(name)
}
func (w *Workqueue) NewUnfinishedWorkSecondsMetric(name string) workqueue.SettableGaugeMetric {
	return w.unfinished.WithLabelValues(name)
}
func (w *Workqueue) NewLongestRunningProcessorSecondsMetric(name string) workqueue.SettableGaugeMetric {
	return w.longestProc.WithLabelValues(name)
}
func (w *Workqueue) NewRetriesMetric(name string) workqueue.CounterMetric {
	return w.retries.WithLabelValues(name)
}

var _ workqueue.MetricsProvider = (*Workqueue)(nil)

// NewLeader creates depbridge_leader, 1 while this replica holds the
// leader election lease, and registers it on reg.
func NewLeader(reg prometheus.Registerer) (prometheus.Gauge, error) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "depbridge_leader", Help: "1 while this replica holds the leader election lease."})
	if err := reg.Register(g); err != nil {
		return nil, err
	}
	return g, nil
}
