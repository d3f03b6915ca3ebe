package publish

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of publishing, per sink. Register them with NewMetrics from main,
// on an explicit registry; nothing is registered globally.
type Metrics struct {
	published *prometheus.CounterVec
	failed    *prometheus.CounterVec
	retries   *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	omitted   *prometheus.CounterVec
}

// NewMetrics creates the publishing metrics and registers them with reg.
// sinks are pre-created with zero values, so dashboards see every sink
// before its first event.
//
//   - depbridge_sink_published_total{sink}: events the broker acknowledged.
//   - depbridge_sink_failed_total{sink}: reconciles that did not publish
//     (delivery or encoding failed); each is retried by the engine.
//   - depbridge_sink_retries_total{sink}: reconciles of a watcher whose
//     previous publish failed.
//   - depbridge_sink_send_duration_seconds{sink}: Send latency, until the
//     acknowledgement or the error.
//   - depbridge_sink_objects_omitted_total{sink}: events the broker
//     acknowledged without the objects their route includes, because with
//     them the sink refused them for their size.
func NewMetrics(reg prometheus.Registerer, sinks ...string) (*Metrics, error) {
	m := &Metrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "depbridge_sink_published_total",
			Help: "Events the sink's broker acknowledged.",
		}, []string{"sink"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "depbridge_sink_failed_total",
			Help: "Reconcile requests whose event was not published (delivery or encoding failed); the engine retries them.",
		}, []string{"sink"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "depbridge_sink_retries_total",
			Help: "Reconcile requests of a watcher whose previous publish failed.",
		}, []string{"sink"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "depbridge_sink_send_duration_seconds",
			Help:    "Time from Send to the broker's acknowledgement or the error.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		}, []string{"sink"}),
		omitted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "depbridge_sink_objects_omitted_total",
			Help: "Events the broker acknowledged without the objects their route includes, because with them the sink refused them for their size.",
		}, []string{"sink"}),
	}
	for _, c := range []prometheus.Collector{m.published, m.failed, m.retries, m.duration, m.omitted} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register publish metrics: %w", err)
		}
	}
	for _, s := range sinks {
		m.published.WithLabelValues(s).Add(0)
		m.failed.WithLabelValues(s).Add(0)
		m.retries.WithLabelValues(s).Add(0)
		m.omitted.WithLabelValues(s).Add(0)
		m.duration.WithLabelValues(s)
	}
	return m, nil
}
