package proc

import (
	"fmt"
	"log/slog"
	"os"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/depbridge/depbridge/bench/spec"
	"github.com/depbridge/depbridge/internal/testenv"
)

// Setup is how the implementations of this module start: it parses the
// flags, reads the workload, routes client-go's logs to the returned
// logger (warnings and worse, on stderr), and returns a client
// configuration for the API server whose LIST and WATCH requests are
// counted and served on the stats endpoint (Serve). The seed runner, in
// a module of its own, does the same with its own copy.
func Setup() (Flags, *spec.Spec, *rest.Config, *slog.Logger, error) {
	f := ParseFlags()
	s, err := spec.Read(f.Spec)
	if err != nil {
		return f, nil, nil, nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", f.Kubeconfig)
	if err != nil {
		return f, nil, nil, nil, fmt.Errorf("kubeconfig %s: %w", f.Kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 1000, 2000
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	klog.SetSlogLogger(log.With("logger", "client-go"))
	counts := testenv.NewFaults()
	Serve(func() (int64, int64, int) {
		l, w := counts.Counts()
		return l, w, counts.Open()
	})
	return f, s, counts.Wrap(cfg), log, nil
}
