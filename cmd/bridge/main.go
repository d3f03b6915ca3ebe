// Command bridge turns Kubernetes dependency changes into CloudEvents on
// NATS, Kafka or HTTP.
//
//	bridge run --config FILE        run the bridge
//	bridge validate FILE...         check configuration files; print every problem
//	bridge rbac --config FILE       print the least-privilege RBAC the configuration needs
//	bridge tail --nats URL          print the CloudEvents on a NATS subject
//	bridge version                  print the version
//
// Every flag can also be set in the environment as DEPBRIDGE_<FLAG>, with
// dashes as underscores (DEPBRIDGE_CONFIG, DEPBRIDGE_LOG_FORMAT, ...); a
// flag on the command line wins.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/depbridge/depbridge/internal/bridge"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: bridge <command> [flags]

commands:
  run --config FILE    run the bridge
  validate FILE...     check configuration files and print every problem
  rbac --config FILE   print the least-privilege RBAC (Roles, bindings) the configuration needs
  tail --nats URL      print the CloudEvents published on a NATS subject
  version              print the version

Run 'bridge <command> -h' for a command's flags. Every flag can be set in
the environment as DEPBRIDGE_<FLAG> (DEPBRIDGE_CONFIG, DEPBRIDGE_KUBECONFIG, ...).
`

// run is main without the exit, for tests.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, args := args[0], args[1:]
	var err error
	switch cmd {
	case "run":
		err = runBridge(args, stderr)
	case "validate":
		return validate(args, stdout, stderr)
	case "tail":
		err = tail(args, stdout, stderr)
	case "rbac":
		err = rbacCommand(args, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, version.String())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "bridge: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	fmt.Fprintln(stderr, "bridge:", err)
	return 1
}

var errUsage = errors.New("usage")

// parse parses flags, then fills every flag not given from the environment
// (DEPBRIDGE_<NAME>).
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		env := "DEPBRIDGE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", env, v, err))
			}
		}
	})
	return errors.Join(errs...)
}

// logFlags are the logging flags every long-running command has.
type logFlags struct {
	format, level string
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.format, "log-format", "text", "log format: text or json")
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn or error")
}

// logger builds the slog logger and routes client-go's klog into it.
func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", l.level)
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch l.format {
	case "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", l.format)
	}
	log := slog.New(h)
	klog.SetSlogLogger(log.With("logger", "client-go"))
	return log, nil
}

// restConfig resolves the API server the way kubectl does: --kubeconfig,
// else $KUBECONFIG, else ~/.kube/config, else the in-cluster service
// account; --context picks a context.
func restConfig(kubeconfig, kubeContext string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: kubeContext}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration: %w", err)
	}
	cfg.UserAgent = "depbridge/" + version.Version
	// The engine's lists and watches are few (one per resource and
	// namespace scope); the default 5 QPS would only slow down start-up.
	cfg.QPS, cfg.Burst = 50, 100
	return cfg, nil
}

func runBridge(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		lf           logFlags
		configPath   = fs.String("config", "", "configuration file (required)")
		kubeconfig   = fs.String("kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
		kubeContext  = fs.String("context", "", "kubeconfig context (default: the current context)")
		embeddedNATS = fs.String("embedded-nats", "127.0.0.1:4222", "listen address of the embedded NATS server started when no sinks are configured")
		embeddedDir  = fs.String("embedded-nats-dir", "", "JetStream storage of the embedded NATS server (default: a temporary directory)")
		instance     = fs.String("instance", "", "name of this replica in event sources (default: $POD_NAME or the host name)")
		noReload     = fs.Bool("no-reload", false, "do not watch the configuration file for changes")
		listen       = fs.String("listen", "", "address of /healthz, /readyz and /metrics (default: the configuration's listen)")
		leaderElect  = fs.Bool("leader-elect", false, "run only while holding a Lease, so that one of several replicas is active")
		leName       = fs.String("leader-elect-name", "depbridge", "name of the leader election Lease")
		leNamespace  = fs.String("leader-elect-namespace", "", "namespace of the Lease (default: $POD_NAMESPACE, the service account's namespace, or default)")
		leLease      = fs.Duration("leader-elect-lease-duration", 15*time.Second, "how long a standby waits after the leader stopped renewing")
		leRenew      = fs.Duration("leader-elect-renew-deadline", 10*time.Second, "how long the leader retries renewing before it gives up the lead")
		leRetry      = fs.Duration("leader-elect-retry-period", 2*time.Second, "time between leader election attempts")
	)
	lf.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if *configPath == "" {
		fmt.Fprintln(stderr, "bridge run: --config is required")
		fs.Usage()
		return errUsage
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(*configPath, stderr)
	if err != nil {
		return err
	}
	rc, err := restConfig(*kubeconfig, *kubeContext)
	if err != nil {
		return err
	}
	if *instance == "" {
		*instance = os.Getenv("POD_NAME")
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	opts := bridge.Options{Config: cfg, REST: rc, Instance: *instance, Registry: reg, Logger: log,
		EmbeddedNATS: *embeddedNATS, EmbeddedDir: *embeddedDir, Listen: *listen}
	if !*noReload {
		opts.ConfigPath = *configPath
	}
	if *leaderElect {
		opts.LeaderElection = &bridge.LeaderElection{Name: *leName, Namespace: leaseNamespace(*leNamespace),
			LeaseDuration: *leLease, RenewDeadline: *leRenew, RetryPeriod: *leRetry}
	}
	b, err := bridge.New(opts)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Info("starting", "version", version.String(), "config", *configPath, "apiserver", rc.Host, "instance", *instance)
	if err := b.Start(ctx); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// leaseNamespace is the flag's value, else the pod's namespace.
func leaseNamespace(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	if b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b))
	}
	return "default"
}

// validate checks each file and prints every problem with its position.
func validate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, "usage: bridge validate FILE...") }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	code := 0
	for _, path := range fs.Args() {
		cfg, err := loadConfig(path, stderr)
		if err != nil {
			code = 1
			continue
		}
		fmt.Fprintf(stdout, "%s: ok (%d subscriptions, %d sinks, %d routes)\n", path, len(cfg.Subscriptions), len(cfg.Sinks), len(cfg.Routes))
	}
	return code
}

// loadConfig loads and validates a configuration file. On error it prints
// every problem, one per line with its position, to stderr, and returns an
// error that says the file is not valid.
func loadConfig(path string, stderr io.Writer) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err == nil {
		err = cfg.Validate()
	}
	if err == nil {
		return cfg, nil
	}
	fes := config.FieldErrors(err)
	if len(fes) == 0 {
		fmt.Fprintf(stderr, "%s: %v\n", path, err)
	}
	for _, fe := range fes {
		fmt.Fprintln(stderr, fe)
	}
	return nil, fmt.Errorf("configuration %s is not valid", path)
}
