// Package bridge is the depbridge program: it runs the watch engine, the
// sinks and routes, the publishing reconciler, the subscriptions of the
// configuration file (reloaded when it changes) and the health and metrics
// endpoints, and starts an embedded NATS server when no broker is
// configured.
package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/control"
	"github.com/depbridge/depbridge/internal/metrics"
	"github.com/depbridge/depbridge/internal/publish"
	"github.com/depbridge/depbridge/internal/sink"
	"github.com/depbridge/depbridge/internal/watch"
)

// Options configure a Bridge.
type Options struct {
	// Config is the loaded and validated configuration. Required.
	Config *config.Config
	// ConfigPath, if set, is polled and its new versions' subscriptions
	// applied without a restart.
	ConfigPath string
	// REST reaches the Kubernetes API server. Required.
	REST *rest.Config
	// Listen, if set, overrides the configuration's listen address.
	Listen string
	// Instance names this replica in event sources. Defaults to the host
	// name.
	Instance string
	// Registry receives every metric. Defaults to a new registry.
	Registry *prometheus.Registry
	// Logger defaults to discarding.
	Logger *slog.Logger
	// EmbeddedNATS is the listen address of the NATS server started when
	// the configuration has no sinks. Defaults to "127.0.0.1:4222".
	EmbeddedNATS string
	// EmbeddedDir stores the embedded server's JetStream data. Defaults to
	// a temporary directory removed at exit.
	EmbeddedDir string
	// CloseTimeout bounds flushing the sinks at shutdown, after the engine
	// stopped (whose own grace for reconciles in flight is
	// watch.Options.ShutdownGrace). Defaults to 10s.
	CloseTimeout time.Duration
	// LeaderElection, if set, runs the bridge only while this replica holds
	// a Lease; standbys serve /healthz and report not ready.
	LeaderElection *LeaderElection
}

// Bridge is the running program. Build it with New and run it with Start.
type Bridge struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	engine  *watch.Engine
	subs    *subscriptions
	sinkErr map[string]error // sinks whose start-up check has not passed
	leading bool
	control control.Transport // nil when there is no control channel
	addr    net.Addr
	started chan struct{}
}

// New checks opts. It starts nothing.
func New(opts Options) (*Bridge, error) {
	if opts.Config == nil || opts.REST == nil {
		return nil, errors.New("bridge: Config and REST are required")
	}
	if opts.Instance == "" {
		opts.Instance, _ = os.Hostname()
		if opts.Instance == "" {
			opts.Instance = "depbridge"
		}
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.EmbeddedNATS == "" {
		opts.EmbeddedNATS = "127.0.0.1:4222"
	}
	if opts.CloseTimeout <= 0 {
		opts.CloseTimeout = 10 * time.Second
	}
	return &Bridge{opts: opts, log: opts.Logger, started: make(chan struct{})}, nil
}

// Addr is the address of the health and metrics server, once Started.
func (b *Bridge) Addr() net.Addr {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.addr
}

// Started is closed once the bridge serves requests and has registered
// the configuration's subscriptions (or recorded why it could not).
func (b *Bridge) Started() <-chan struct{} { return b.started }

// Start runs the bridge until ctx is done or a component fails, and
// returns after everything it started has stopped: the engine first (its
// reconciles in flight get their grace), then the sinks are flushed and
// closed, then the embedded server stops. With leader election, the bridge
// runs only while this replica leads, and Start returns an error when it
// loses the lead.
func (b *Bridge) Start(ctx context.Context) error {
	listen := b.opts.Config.Listen
	if b.opts.Listen != "" {
		listen = b.opts.Listen
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen for health and metrics on %s: %w", listen, err)
	}
	b.mu.Lock()
	b.addr = ln.Addr()
	b.mu.Unlock()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return serveHTTP(gctx, ln, b.opts.Registry, b.readiness) })
	if b.opts.LeaderElection == nil {
		g.Go(func() error { return b.run(gctx) })
	} else {
		g.Go(func() error { return b.lead(gctx) })
	}
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// run is the active bridge: it returns when ctx is done (nil) or a
// component fails.
func (b *Bridge) run(ctx context.Context) error {
	fileCfg := b.opts.Config
	cfg := *fileCfg
	cfg.Sinks = slices.Clone(cfg.Sinks)
	cfg.Routes = slices.Clone(cfg.Routes)

	if len(cfg.Sinks) == 0 {
		emb, err := startEmbedded(ctx, b.opts.EmbeddedNATS, b.opts.EmbeddedDir, b.log)
		if err != nil {
			return err
		}
		defer emb.stop()
		withEmbeddedSink(&cfg, emb.url)
	}

	sinks, routes, err := b.buildSinks(&cfg)
	defer b.closeSinks(sinks)
	if err != nil {
		return err
	}
	reg := b.opts.Registry
	names := make([]string, 0, len(sinks))
	for name := range sinks {
		names = append(names, name)
	}
	pubMetrics, err := publish.NewMetrics(reg, names...)
	if err != nil {
		return fmt.Errorf("register publish metrics: %w", err)
	}
	queueMetrics, err := metrics.NewWorkqueue(reg)
	if err != nil {
		return fmt.Errorf("register queue metrics: %w", err)
	}

	cp, err := b.openCheckpoint(ctx, &cfg)
	if err != nil {
		return err
	}
	var checkpointer watch.Checkpoint
	if cp != nil {
		checkpointer = cp
		// The store runs until the engine has stopped, so that its last
		// write holds the last acknowledgements.
		cpCtx, cpStop := context.WithCancel(context.WithoutCancel(ctx))
		cpDone := make(chan error, 1)
		go func() { cpDone <- cp.Start(cpCtx) }()
		defer func() {
			cpStop()
			if err := <-cpDone; err != nil {
				b.log.Error("close checkpoint store", "error", err)
			}
		}()
	} else {
		b.log.Info("no checkpoint store configured: every watcher is reconciled at start (level triggered)")
	}

	subs := newSubscriptions(nil, routes, b.log)
	if cp != nil {
		subs.persist = cp.FlushWatchers
	} else {
		subs.resyncPending = true
	}
	var engine *watch.Engine
	rec, err := publish.New(publish.Options{
		Cluster: cfg.Cluster, Instance: b.opts.Instance, Router: subs, Metrics: pubMetrics, Logger: b.log,
		Objects: func(w cache.Ref) ([]*unstructured.Unstructured, error) { return engine.ListWatched(w) },
	})
	if err != nil {
		return err
	}
	subs.forget = func(w cache.Ref) {
		rec.Forget(w)
		if cp != nil {
			cp.Forget(w)
		}
	}
	engine, err = watch.New(b.opts.REST, rec, watch.Options{Logger: b.log, Workers: cfg.Engine.Workers, MaxInFlight: cfg.Engine.MaxInFlight, QueueMetrics: queueMetrics,
		Checkpoint: checkpointer})
	if err != nil {
		return err
	}
	subs.e = engine
	if err := reg.Register(metrics.NewCollector(engine)); err != nil {
		return fmt.Errorf("register engine metrics: %w", err)
	}
	b.mu.Lock()
	b.engine, b.subs = engine, subs
	b.mu.Unlock()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return engine.Start(gctx) })
	select {
	case <-engine.Started():
	case <-gctx.Done():
		return g.Wait()
	}
	g.Go(func() error { b.checkSinks(gctx, routes); return nil })
	subs.setFile(gctx, cfg.Subscriptions)
	ctl, err := b.startControl(gctx, g, &cfg, subs)
	if err != nil {
		g.Go(func() error { return err }) // stops the engine
		return g.Wait()
	}
	if cp == nil {
		// Once the control channel's subscriptions are back too.
		g.Go(func() error {
			if ctl != nil {
				select {
				case <-ctl.Synced():
				case <-gctx.Done():
					return nil
				}
			}
			subs.resyncAll()
			return nil
		})
	}
	g.Go(func() error { subs.retryFailed(gctx); return nil })
	if b.opts.ConfigPath != "" {
		r := &config.Reloader{Path: b.opts.ConfigPath, Current: fileCfg,
			OnChange: func(next *config.Config) { b.reload(gctx, fileCfg, next); fileCfg = next },
			OnError: func(err error) {
				b.log.Error("configuration file rejected; the running configuration stays", "error", err)
			},
		}
		g.Go(func() error { return r.Start(gctx) })
	}
	close(b.started)
	b.log.Info("bridge started", "listen", b.Addr().String(), "subscriptions", len(cfg.Subscriptions), "sinks", len(sinks))
	return g.Wait()
}

// buildSinks connects the configured sinks and compiles the routes. On
// error, the sinks built so far are returned for closing.
func (b *Bridge) buildSinks(cfg *config.Config) (map[string]sink.Sink, map[string]*sink.Route, error) {
	sinks := map[string]sink.Sink{}
	byName := map[string]config.Sink{}
	for _, sc := range cfg.Sinks {
		s, err := sink.New(sc, b.log)
		if err != nil {
			return sinks, nil, err
		}
		sinks[sc.Name], byName[sc.Name] = s, sc
	}
	routes := map[string]*sink.Route{}
	for _, rc := range cfg.Routes {
		r, err := sink.NewRoute(rc, byName[rc.Sink], sinks[rc.Sink])
		if err != nil {
			return sinks, nil, fmt.Errorf("route %q: %w", rc.Name, err)
		}
		routes[rc.Name] = r
	}
	return sinks, routes, nil
}

// checkSinks checks once that every route's sink can take its events
// (reachable, a stream captures its subjects, its topic exists), retrying
// with backoff until it passes; readiness reports what fails meanwhile.
func (b *Bridge) checkSinks(ctx context.Context, routes map[string]*sink.Route) {
	list := make([]*sink.Route, 0, len(routes))
	for _, r := range routes {
		list = append(list, r)
	}
	delay := time.Second
	for {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := sink.CheckRoutes(cctx, list)
		cancel()
		b.mu.Lock()
		if err == nil {
			b.sinkErr = nil
		} else {
			b.sinkErr = map[string]error{"sinks": err}
		}
		b.mu.Unlock()
		if err == nil {
			return
		}
		b.log.Error("sink check failed; retrying", "error", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 30*time.Second)
	}
}

func (b *Bridge) closeSinks(sinks map[string]sink.Sink) {
	ctx, cancel := context.WithTimeout(context.Background(), b.opts.CloseTimeout)
	defer cancel()
	for name, s := range sinks {
		if err := s.Close(ctx); err != nil {
			b.log.Error("close sink", "sink", name, "error", err)
		}
	}
}

// reload applies a new version of the configuration file: its
// subscriptions now; anything else at the next restart.
func (b *Bridge) reload(ctx context.Context, old, next *config.Config) {
	ch := config.Diff(old, next)
	if ch.Sinks || ch.Routes || ch.Control || ch.Settings {
		b.log.Warn("configuration changes to sinks, routes, control or settings take effect at the next restart",
			"sinks", ch.Sinks, "routes", ch.Routes, "control", ch.Control, "settings", ch.Settings)
	}
	b.log.Info("configuration reloaded", "added", len(ch.Added), "changed", len(ch.Changed), "removed", len(ch.Removed))
	b.subs.setFile(ctx, next.Subscriptions)
}

// readiness lists what keeps the bridge from being ready; none means ready.
func (b *Bridge) readiness() []string {
	b.mu.Lock()
	engine, subs, sinkErr, ctl, standby := b.engine, b.subs, b.sinkErr, b.control, b.opts.LeaderElection != nil && !b.leading
	b.mu.Unlock()
	if standby {
		return []string{"standby: another replica holds the lease"}
	}
	var problems []string
	select {
	case <-b.started:
	default:
		return []string{"starting: registering subscriptions"}
	}
	if engine == nil || !engine.Synced() {
		problems = append(problems, "watches are still syncing")
	}
	for _, err := range sinkErr {
		problems = append(problems, err.Error())
	}
	if subs != nil {
		for _, f := range subs.failures() {
			problems = append(problems, "subscription "+f)
		}
	}
	if ctl != nil {
		select {
		case <-ctl.Synced():
		default:
			problems = append(problems, "control channel: restoring run-time subscriptions")
		}
		for _, f := range ctl.Failures() {
			problems = append(problems, "control channel: run-time subscription "+f)
		}
	}
	return problems
}

// startControl starts the control channel, if configured, in g.
func (b *Bridge) startControl(ctx context.Context, g *errgroup.Group, cfg *config.Config, subs *subscriptions) (control.Transport, error) {
	if cfg.Control == nil {
		return nil, nil
	}
	var sinkCfg config.Sink
	for _, s := range cfg.Sinks {
		if s.Name == cfg.Control.Sink {
			sinkCfg = s
		}
	}
	m, err := control.NewMetrics(b.opts.Registry)
	if err != nil {
		return nil, fmt.Errorf("register control metrics: %w", err)
	}
	ch, err := control.New(*cfg.Control, sinkCfg, subs, control.Options{Logger: b.log, Metrics: m, Cluster: cfg.Cluster, Instance: b.opts.Instance})
	if err != nil {
		return nil, fmt.Errorf("control channel: %w", err)
	}
	b.mu.Lock()
	b.control = ch
	b.mu.Unlock()
	g.Go(func() error { return ch.Start(ctx) })
	return ch, nil
}
