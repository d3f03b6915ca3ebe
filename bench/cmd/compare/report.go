package main

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/depbridge/depbridge/bench/spec"
	"github.com/depbridge/depbridge/internal/testenv"
)

// SeedVersion is the kubernetes-dependency-watches version bench/seed
// pins; keep in step with seed/go.mod.
const SeedVersion = "v0.10.2"

type phase int

const (
	phaseAny phase = iota // any run that started
	phaseInitial
	phaseSteady
	phaseRestart
)

func (r result) reached(p phase) bool {
	switch p {
	case phaseInitial:
		return r.InitialSec > 0
	case phaseSteady:
		return r.Steady
	case phaseRestart:
		return r.Restarted
	}
	return r.CPUSec > 0
}

type metric struct {
	name  string
	phase phase
	unit  string // printf verb for the value
	get   func(result) float64
}

var metrics = []metric{
	{"API WATCH streams open after start-up", phaseInitial, "%.0f", func(r result) float64 { return float64(r.OpenWatches) }},
	{"WATCH requests, start-up", phaseInitial, "%.0f", func(r result) float64 { return float64(r.InitialWatch) }},
	{"LIST calls, start-up", phaseInitial, "%.0f", func(r result) float64 { return float64(r.InitialLists) }},
	{"time until every watcher had its initial reconcile (s)", phaseInitial, "%.2f", func(r result) float64 { return r.InitialSec }},
	{"messages at start-up", phaseInitial, "%.0f", func(r result) float64 { return float64(r.InitialMsgs) }},
	{"latency API write → broker ack, p50 (ms)", phaseSteady, "%.1f", func(r result) float64 { return r.P50ms }},
	{"latency p99 (ms)", phaseSteady, "%.1f", func(r result) float64 { return r.P99ms }},
	{"latency max (ms)", phaseSteady, "%.1f", func(r result) float64 { return r.MaxMs }},
	{"(write, watcher) pairs never delivered (%)", phaseSteady, "%.2f", func(r result) float64 {
		if r.Pairs == 0 {
			return 0
		}
		return 100 * float64(r.PairsMissed) / float64(r.Pairs)
	}},
	{"reconcile requests delivered per second", phaseSteady, "%.0f", func(r result) float64 { return r.PerSec }},
	{"CPU seconds in the write phase", phaseSteady, "%.2f", func(r result) float64 { return r.SteadyCPU }},
	{"LIST calls in the write phase", phaseSteady, "%.0f", func(r result) float64 { return float64(r.SteadyLists) }},
	{"process RSS, peak (MiB)", phaseAny, "%.0f", func(r result) float64 { return r.RSSPeakMiB }},
	{"Go heap in use, peak (MiB)", phaseAny, "%.1f", func(r result) float64 { return r.HeapPeakMiB }},
	{"CPU seconds, whole run", phaseAny, "%.2f", func(r result) float64 { return r.CPUSec }},
	{"after API server restart: LIST calls (relists)", phaseRestart, "%.0f", func(r result) float64 { return float64(r.Relists) }},
	{"after restart: WATCH requests", phaseRestart, "%.0f", func(r result) float64 { return float64(r.Rewatches) }},
	{"after restart: reconciles emitted", phaseRestart, "%.0f", func(r result) float64 { return float64(r.RestartMsgs) }},
	{"after restart: API server start to ready (s)", phaseRestart, "%.1f", func(r result) float64 { return r.APIReadySec }},
	{"after restart: time to recover (s)", phaseRestart, "%.2f", func(r result) float64 { return r.RecoverSec }},
}

func median(v []float64) float64 {
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// cell is the median of m over the runs that reached its phase, and a note
// when some did not.
func cell(rs []result, m metric) (float64, string, bool) {
	var v []float64
	var why string
	for _, r := range rs {
		if r.reached(m.phase) {
			v = append(v, m.get(r))
		} else if why == "" {
			why = r.Err
		}
	}
	if len(v) == 0 {
		if why == "" {
			why = "not run"
		}
		return 0, why, false
	}
	note := ""
	if len(v) < len(rs) {
		note = fmt.Sprintf(" (%d of %d runs)", len(v), len(rs))
	}
	return median(v), note, true
}

func report(all []result, wls []workload, names []string, took time.Duration, final bool) string {
	var b strings.Builder
	now := time.Now().UTC()
	fmt.Fprintf(&b, "# depbridge vs kubernetes-dependency-watches vs a bare watch, %s\n\n", now.Format("2006-01-02 15:04 MST"))
	if final {
		fmt.Fprintf(&b, "Produced by `make bench-compare` in %s (`compare %s`).\n\n", took.Round(time.Second), strings.Join(os.Args[1:], " "))
	} else {
		fmt.Fprintf(&b, "**Partial**: the benchmark was interrupted or is still running; %s measured so far.\n\n", took.Round(time.Second))
	}
	b.WriteString("## Machine\n\n")
	fmt.Fprintf(&b, "- %s, %d cores, %s memory, %s/%s\n", cpuModel(), runtime.NumCPU(), memTotal(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(&b, "- %s; kube-apiserver %s and etcd %s (envtest, one fresh pair per run); nats-server %s in the driver process\n",
		runtime.Version(), testenv.K8sVersion, testenv.EtcdVersion, server.VERSION)
	fmt.Fprintf(&b, "- kubernetes-dependency-watches %s; shared with other work, so absolute figures are noisy: compare within a run\n\n", SeedVersion)

	b.WriteString("## Workload\n\n")
	if len(wls) > 0 {
		wl := wls[0]
		fmt.Fprintf(&b, "Each W: W watchers, half on ConfigMaps, half on Secrets, in one namespace; each depends on %d named objects and one label selector "+
			"(grp=g<n>, %d objects per group). Each object is named by %d watchers and each group selected by about 4, so a write concerns about 6 watchers. ",
			spec.NamesPerWatcher, spec.GroupSize, spec.NameSharing)
		fmt.Fprintf(&b, "Steady phase: %d merge patches per second to uniformly random objects for %s (schedule seeded, the same for every implementation), "+
			"the first %s left out; then the API server is stopped and started again (etcd keeps running) and one probe write is made. "+
			"Every implementation publishes to the same JetStream stream (file storage) and waits for each PubAck. ",
			wl.Rate, wl.Duration, wl.Warmup)
		fmt.Fprintf(&b, "Initial reconciles are time-boxed at %s.\n\n", wl.InitialTimeout)
		b.WriteString("| W | objects | distinct named refs | distinct selectors |\n|---|---|---|---|\n")
		for _, wl := range wls {
			s := spec.New(wl.W)
			named, sels := map[string]bool{}, map[string]bool{}
			for _, w := range s.Watchers {
				for _, n := range w.Names {
					named[w.Kind+"/"+n] = true
				}
				sels[w.Kind+"/"+w.Selector] = true
			}
			fmt.Fprintf(&b, "| %d | %d | %d | %d |\n", wl.W, len(s.Objects), len(named), len(sels))
		}
		b.WriteString("\n")
	}
	b.WriteString(`Implementations:

- **depbridge**: the product path (internal/bridge: engine, publisher, JetStream sink) configured with one subscription per watcher, default settings (256 workers).
- **seed**: kubernetes-dependency-watches ` + SeedVersion + `, one DynamicWatcher (EnableCache, DisableInitialReconcile, as its consumers configure it) with AddOrUpdateWatcher per watcher, each followed by one reconcile of that watcher from the runner (the library gives none to a watcher whose objects another watcher already watches); its Reconciler reads the watcher's objects from the cache and publishes them with a synchronous JetStream Publish (waits for the ack). The library runs one reconcile worker.
- What is read: depbridge watches both kinds as metadata only (no route asks for object bodies), as does the bare informer; the seed's cache holds full objects (ConfigMaps and Secrets here are a few bytes of data, so this matters little).
- **bare**: one client-go metadata informer per kind that publishes every event (one message per object change, no watchers, asynchronous publish, acks counted). The floor: what the API server and broker allow. Its "initial reconcile" is every object's first message, and its latency is per write rather than per (write, watcher).

How measured: LIST and WATCH requests are counted in each process's own client transport; "open" is the number of watch response bodies not closed. depbridge and the bare informer use client-go v0.37's Reflector, which lists through a WATCH with sendInitialEvents (WatchList) where the server allows it, so they make no LIST call; the seed (client-go v0.31, its own List then RetryWatcher) makes one LIST per watched name or selector. Latency is from just before the PATCH request to the stream's timestamp of the first message for that watcher that reports the object at that resourceVersion or later (depbridge: its causes; seed: the cached objects it read; bare: the event). RSS peak is VmHWM, CPU is utime+stime of the process, Go heap is HeapInuse sampled every 100ms in the process. "Reconciles emitted" after the restart leave out the probe's. "Time to recover" runs from the probe write, made as soon as the restarted API server is ready, to the last of its watchers being told; "start to ready" is how long the restarted API server took to report ready (with the implementation's watches reconnecting). Every figure is the median of the runs that reached it.

`)
	for _, wl := range wls {
		var rsW []result
		for _, r := range all {
			if r.W == wl.W {
				rsW = append(rsW, r)
			}
		}
		runs := 0
		for _, r := range rsW {
			runs = max(runs, r.Run+1)
		}
		fmt.Fprintf(&b, "## W = %d (median of %d runs; ratios are implementation ÷ depbridge)\n\n", wl.W, runs)
		b.WriteString("| metric |")
		for _, n := range names {
			fmt.Fprintf(&b, " %s |", n)
		}
		b.WriteString("\n|---|")
		for range names {
			b.WriteString("---|")
		}
		b.WriteString("\n")
		byImpl := map[string][]result{}
		for _, r := range rsW {
			byImpl[r.Impl] = append(byImpl[r.Impl], r)
		}
		for _, m := range metrics {
			fmt.Fprintf(&b, "| %s |", m.name)
			base, _, baseOK := cell(byImpl["depbridge"], m)
			for _, n := range names {
				v, note, ok := cell(byImpl[n], m)
				if !ok {
					fmt.Fprintf(&b, " did not complete: %s |", escape(note))
					continue
				}
				s := fmt.Sprintf(m.unit, v)
				if n != "depbridge" && baseOK {
					s += " (" + ratio(v, base) + ")"
				}
				fmt.Fprintf(&b, " %s%s |", s, note)
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
	}

	b.WriteString("## Every run\n\n")
	b.WriteString("| impl | W | run | initial s | open watches | start-up LISTs | p50 ms | p99 ms | max ms | pairs missed | req/s | RSS MiB | heap MiB | CPU s | relists | restart msgs | recover s | API ready s | error |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range all {
		fmt.Fprintf(&b, "| %s | %d | %d | %.2f | %d | %d | %.1f | %.1f | %.1f | %d/%d | %.0f | %.0f | %.1f | %.2f | %d | %d | %.2f | %.1f | %s |\n",
			r.Impl, r.W, r.Run+1, r.InitialSec, r.OpenWatches, r.InitialLists, r.P50ms, r.P99ms, r.MaxMs, r.PairsMissed, r.Pairs,
			r.PerSec, r.RSSPeakMiB, r.HeapPeakMiB, r.CPUSec, r.Relists, r.RestartMsgs, r.RecoverSec, r.APIReadySec, escape(r.Err))
	}
	return b.String()
}

func ratio(v, base float64) string {
	switch {
	case base == 0 && v == 0:
		return "="
	case base == 0:
		return "∞"
	}
	return strconv.FormatFloat(v/base, 'f', 2, 64) + "×"
}

func escape(s string) string {
	s = strings.ReplaceAll(s, "|", "\\|")
	return strings.ReplaceAll(s, "\n", " ")
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}

func memKiB() int64 {
	b, _ := os.ReadFile("/proc/meminfo")
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	return 0
}

func memTotal() string { return fmt.Sprintf("%.1f GiB", float64(memKiB())/(1<<20)) }

// machineTag names a results file: cores and memory.
func machineTag() string {
	return fmt.Sprintf("%dcpu-%dgib", runtime.NumCPU(), (memKiB()+(1<<19))>>20)
}
