package control

import (
	"context"
	"fmt"

	"github.com/depbridge/depbridge/internal/config"
)

// Transport is a control channel on one bus: *NATS or *Kafka.
type Transport interface {
	// Start runs the channel until ctx is done; see NATS.Start and
	// Kafka.Start.
	Start(ctx context.Context) error
	// Synced is closed once the run-time subscriptions stored on the bus
	// have each been handled once.
	Synced() <-chan struct{}
	// Failures describes the stored run-time subscriptions that failed to
	// be restored for a reason that may pass and are being retried, one
	// "<watcher>: <error>" each; none once all are restored.
	Failures() []string
}

// New returns the control channel ctl over sinkCfg, the sink ctl.Sink
// names: a NATS transport for a jetstream sink, a Kafka transport for a
// kafka sink. It starts nothing.
func New(ctl config.Control, sinkCfg config.Sink, subs Subscriptions, opts Options) (Transport, error) {
	if sinkCfg.Name != ctl.Sink {
		return nil, fmt.Errorf("control: names sink %q, given sink %q", ctl.Sink, sinkCfg.Name)
	}
	switch {
	case sinkCfg.JetStream != nil:
		return NewNATS(ctl, sinkCfg.JetStream.NATSConn, subs, opts)
	case sinkCfg.Kafka != nil:
		return NewKafka(ctl, *sinkCfg.Kafka, subs, opts)
	}
	return nil, fmt.Errorf("control: sink %q is not a jetstream or kafka sink", sinkCfg.Name)
}

var (
	_ Transport = (*NATS)(nil)
	_ Transport = (*Kafka)(nil)
)
