package control

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the control channel. Create them with NewMetrics, from main,
// on an explicit registry; nothing is registered globally. A nil *Metrics
// counts nothing.
type Metrics struct {
	messages *prometheus.CounterVec
	rejected *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// Label values. Every combination is pre-created with a zero value, so
// dashboards see them before the first message.
var (
	metricTypes   = []string{"apply", "delete", "query", "unknown"}
	metricResults = []string{"accepted", "rejected"}
	// metricReasons are the values of reasonOf.
	metricReasons = []string{"too_large", "unsupported", "invalid", "denied", "owned", "timeout", "failed"}
)

// NewMetrics creates the control channel's metrics and registers them
// with reg:
//
//   - depbridge_control_messages_total{type,result}: control messages
//     handled, by type (apply, delete, query, unknown when the message
//     could not be read) and result (accepted, rejected). Messages replayed
//     at start count too; the bridge's own restores of a watcher's last
//     accepted message after a rejection do not.
//   - depbridge_control_rejected_total{reason}: rejected messages by
//     reason: too_large, unsupported (specversion, type, content type),
//     invalid (malformed, unknown field, bad Ref, wrong subject or key),
//     denied (policy), owned (watcher of the configuration file), timeout,
//     failed (the engine refused or failed).
//   - depbridge_control_message_duration_seconds{type}: time to handle a
//     message, from decoding to its status.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "depbridge_control_messages_total",
			Help: "Control messages handled, by type and result.",
		}, []string{"type", "result"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "depbridge_control_rejected_total",
			Help: "Control messages rejected, by reason; a rejected message changes nothing.",
		}, []string{"reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "depbridge_control_message_duration_seconds",
			Help:    "Time to handle one control message, from decoding to its status.",
			Buckets: []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30},
		}, []string{"type"}),
	}
	for _, c := range []prometheus.Collector{m.messages, m.rejected, m.duration} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register control metrics: %w", err)
		}
	}
	for _, t := range metricTypes {
		for _, r := range metricResults {
			m.messages.WithLabelValues(t, r).Add(0)
		}
		m.duration.WithLabelValues(t)
	}
	for _, r := range metricReasons {
		m.rejected.WithLabelValues(r).Add(0)
	}
	return m, nil
}

// observe counts one handled message of typ (a control type, or "" when
// unknown) whose outcome is err, handled in d.
func (m *Metrics) observe(typ string, err error, d time.Duration) {
	if m == nil {
		return
	}
	t := typeLabel(typ)
	m.duration.WithLabelValues(t).Observe(d.Seconds())
	if err == nil {
		m.messages.WithLabelValues(t, "accepted").Inc()
		return
	}
	m.messages.WithLabelValues(t, "rejected").Inc()
	m.rejected.WithLabelValues(reasonOf(err)).Inc()
}

func typeLabel(typ string) string {
	switch typ {
	case TypeApply:
		return "apply"
	case TypeDelete:
		return "delete"
	case TypeQuery:
		return "query"
	}
	return "unknown"
}

// reasonOf classifies a rejection for depbridge_control_rejected_total.
func reasonOf(err error) string {
	switch {
	case errors.Is(err, ErrTooLarge):
		return "too_large"
	case errors.Is(err, ErrUnsupported):
		return "unsupported"
	case errors.Is(err, ErrDenied):
		return "denied"
	case errors.Is(err, ErrOwned):
		return "owned"
	case errors.Is(err, ErrInvalid):
		return "invalid"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "failed"
}
