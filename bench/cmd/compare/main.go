// Command compare drives the side-by-side benchmark of issue 6: depbridge,
// github.com/stolostron/kubernetes-dependency-watches and a bare client-go
// watch, each a separate process, each run on a fresh kube-apiserver, etcd
// and in-process NATS server with the same workload and the same write
// schedule. It prints a markdown table of the medians with ratios against
// depbridge and writes it, with the per-run figures, to results/.
//
//	go run ./cmd/compare -w 100,1000,5000 -runs 3
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

// impls are the implementations, in table order; depbridge is the
// baseline of the ratios.
var impls = []string{"depbridge", "seed", "bare"}

func main() {
	var (
		ws       = flag.String("w", "100,1000,5000", "watcher counts")
		runs     = flag.Int("runs", 3, "runs per implementation and W (the table shows medians)")
		only     = flag.String("impls", strings.Join(impls, ","), "implementations to run")
		rate     = flag.Int("rate", 100, "API writes per second in the steady phase")
		dur      = flag.Duration("duration", 20*time.Second, "length of the steady phase")
		warmup   = flag.Duration("warmup", 5*time.Second, "first part of the steady phase left out of the figures")
		initial  = flag.Duration("initial-timeout", 180*time.Second, "time box of the initial reconciles")
		runsFor  = flag.String("runs-for", "", "runs for given W, overriding -runs: W=n[,W=n]")
		out      = flag.String("out", "results", "directory for the results file; empty: print only")
		binDir   = flag.String("bin", "bin", "directory for the implementation binaries")
		jsonOut  = flag.String("json", "", "also write every run's figures as JSON here")
		noBuild  = flag.Bool("no-build", false, "use the binaries in -bin as they are")
		logDir   = flag.String("logs", "", "directory for the implementations' stderr; default a temporary one")
		writeSed = flag.Uint64("write-seed", 42, "seed of the write schedule")
	)
	flag.Parse()
	ctrllog.SetLogger(logr.Discard())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var wl []workload
	for _, f := range strings.Split(*ws, ",") {
		w, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || w < 2 {
			fatal(fmt.Errorf("bad -w %q", f))
		}
		wl = append(wl, workload{W: w, Rate: *rate, Duration: *dur, Warmup: *warmup, InitialTimeout: *initial,
			DrainTimeout: 60 * time.Second, RecoverTimeout: 60 * time.Second, Seed: *writeSed})
	}
	nruns := map[int]int{}
	for _, f := range strings.Split(*runsFor, ",") {
		if f == "" {
			continue
		}
		w, n, ok := strings.Cut(f, "=")
		wi, err1 := strconv.Atoi(w)
		ni, err2 := strconv.Atoi(n)
		if !ok || err1 != nil || err2 != nil {
			fatal(fmt.Errorf("bad -runs-for %q", f))
		}
		nruns[wi] = ni
	}
	names := strings.Split(*only, ",")
	bins := map[string]string{}
	for _, n := range names {
		abs, err := filepath.Abs(filepath.Join(*binDir, n))
		if err != nil {
			fatal(err)
		}
		bins[n] = abs
	}
	if !*noBuild {
		if err := build(bins, "."); err != nil {
			fatal(err)
		}
	}
	if *logDir == "" {
		d, err := os.MkdirTemp("", "benchcmp-logs-")
		if err != nil {
			fatal(err)
		}
		*logDir = d
	}
	fmt.Fprintf(os.Stderr, "implementation logs in %s\n", *logDir)

	began := time.Now()
	var all []result
	path := ""
	if *out != "" {
		if err := os.MkdirAll(*out, 0o755); err != nil {
			fatal(err)
		}
		path = filepath.Join(*out, fmt.Sprintf("%s-%s.md", time.Now().UTC().Format("2006-01-02"), machineTag()))
	}
	// save writes what has been measured so far, after every run, so that
	// an interrupted benchmark still leaves its table.
	save := func(final bool) {
		md := report(all, wl, names, time.Since(began), final)
		if path != "" {
			if err := os.WriteFile(path, []byte(md), 0o644); err != nil {
				fatal(err)
			}
		}
		if *jsonOut != "" {
			b, _ := json.MarshalIndent(all, "", "  ")
			if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
				fatal(err)
			}
		}
		if final {
			fmt.Println(md)
			if path != "" {
				fmt.Fprintf(os.Stderr, "wrote %s\n", path)
			}
		}
	}
outer:
	for _, w := range wl {
		n := *runs
		if v, ok := nruns[w.W]; ok {
			n = v
		}
		// Runs interleave the implementations, so that drift on a shared
		// machine spreads over all of them.
		skip := map[string]string{}
		for r := range n {
			for _, name := range names {
				if ctx.Err() != nil {
					break outer
				}
				if why, ok := skip[name]; ok {
					all = append(all, result{Impl: name, W: w.W, Run: r, Err: "skipped: an earlier run did not complete (" + why + ")"})
					continue
				}
				t0 := time.Now()
				res := runOne(ctx, name, bins[name], w, r, *logDir)
				fmt.Fprintf(os.Stderr, "%s W=%d run %d: %s (%s)\n", name, w.W, r+1, summary(res), time.Since(t0).Round(time.Second))
				// A run that could not do its initial reconciles in the
				// time box will not on the next try: skip the rest.
				if !res.Steady {
					skip[name] = res.Err
				}
				all = append(all, res)
				save(false)
			}
		}
	}
	save(ctx.Err() == nil)
	if ctx.Err() != nil {
		// Print the partial table too.
		fmt.Println(report(all, wl, names, time.Since(began), false))
	}
}

func summary(r result) string {
	s := fmt.Sprintf("initial %.1fs, %d watches, p50 %.0fms p99 %.0fms, %.0f/s, recover %.2fs, %d restart msgs",
		r.InitialSec, r.OpenWatches, r.P50ms, r.P99ms, r.PerSec, r.RecoverSec, r.RestartMsgs)
	if r.Err != "" {
		s += "; ERROR " + r.Err
	}
	return s
}

// build compiles the implementations: depbridge and bare from this module
// (in directory dir), the seed runner from its own (dir/seed).
func build(bins map[string]string, dir string) error {
	for name, out := range bins {
		cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./cmd/"+name)
		cmd.Dir = dir
		if name == "seed" {
			cmd = exec.Command("go", "build", "-trimpath", "-o", out, ".")
			cmd.Dir = filepath.Join(dir, "seed")
		}
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("build %s: %w", name, err)
		}
	}
	return nil
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "compare:", err)
	os.Exit(1)
}
