package control_test

import (
	"context"
	"log/slog"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/control"
)

// How the program wires the control channel: metrics on its registry, the
// transport of the sink control.sink names, Start with the other runnables
// (an errgroup in the program), and ready only once Synced.
func ExampleNew() {
	var (
		cfg  *config.Config        // loaded and defaulted
		subs control.Subscriptions // the bridge, over its engine
		reg  = prometheus.NewRegistry()
		log  = slog.Default()
	)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if cfg == nil || cfg.Control == nil {
		return
	}
	metrics, err := control.NewMetrics(reg)
	if err != nil {
		log.Error("metrics", "err", err)
		return
	}
	var bus config.Sink // the sink named cfg.Control.Sink (or the embedded one)
	for _, s := range cfg.Sinks {
		if s.Name == cfg.Control.Sink {
			bus = s
		}
	}
	ch, err := control.New(*cfg.Control, bus, subs, control.Options{
		Logger: log, Metrics: metrics, Cluster: cfg.Cluster,
	})
	if err != nil {
		log.Error("control channel", "err", err)
		return
	}
	done := make(chan error, 1)
	go func() { done <- ch.Start(ctx) }()
	select {
	case <-ch.Synced():
		log.Info("control channel synced") // now report ready
	case err := <-done:
		log.Error("control channel", "err", err) // could not connect or set up
		return
	}
	<-ctx.Done()
	<-done
}
