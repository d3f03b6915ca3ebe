// Command depbridge runs depbridge's bridge (engine, publisher and
// JetStream sink, the product path) on a workload spec, for the driver in
// cmd/compare. It reports its stats on the endpoint it prints.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/depbridge/depbridge/bench/internal/proc"
	"github.com/depbridge/depbridge/bench/spec"
	"github.com/depbridge/depbridge/internal/bridge"
	"github.com/depbridge/depbridge/internal/config"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "depbridge:", err)
		os.Exit(1)
	}
}

func run() error {
	f, s, rest, log, err := proc.Setup()
	if err != nil {
		return err
	}

	cfg, err := config.Parse("bench.yaml", configText(s, f.NATS))
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	b, err := bridge.New(bridge.Options{Config: cfg, REST: rest, Listen: "127.0.0.1:0", Instance: "bench", Logger: log})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		select {
		case <-b.Started():
			proc.Ready.Store(true)
		case <-ctx.Done():
		}
	}()
	return b.Start(ctx)
}

// configText is the bridge's configuration for s: one JetStream sink, one
// route publishing to <subject>.<watcher name> in binary mode, and one
// subscription per watcher. JSON is YAML.
func configText(s *spec.Spec, natsURL string) []byte {
	type ref struct {
		Version   string `json:"version"`
		Kind      string `json:"kind"`
		Namespace string `json:"namespace"`
		Name      string `json:"name,omitempty"`
		Selector  string `json:"selector,omitempty"`
	}
	type sub struct {
		Watcher ref   `json:"watcher"`
		Watched []ref `json:"watched"`
	}
	subs := make([]sub, 0, len(s.Watchers))
	for _, w := range s.Watchers {
		x := sub{Watcher: ref{Version: "v1", Kind: "ConfigMap", Namespace: "watchers", Name: w.Name}}
		for _, n := range w.Names {
			x.Watched = append(x.Watched, ref{Version: "v1", Kind: w.Kind, Namespace: s.Namespace, Name: n})
		}
		x.Watched = append(x.Watched, ref{Version: "v1", Kind: w.Kind, Namespace: s.Namespace, Selector: w.Selector})
		subs = append(subs, x)
	}
	c := map[string]any{
		"cluster": "bench",
		"sinks":   []any{map[string]any{"name": "js", "jetstream": map[string]any{"url": natsURL, "stream": s.Stream}}},
		"routes": []any{map[string]any{"name": "default", "sink": "js", "subject": s.Subject + ".{{.Name}}",
			"mode": "binary"}},
		"subscriptions": subs,
	}
	b, err := json.Marshal(c)
	if err != nil {
		panic(err)
	}
	return b
}
