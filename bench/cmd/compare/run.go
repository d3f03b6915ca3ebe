package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/depbridge/depbridge/bench/internal/proc"
	"github.com/depbridge/depbridge/bench/spec"
	"github.com/depbridge/depbridge/internal/testenv"
)

// workload is what every run of every implementation shares.
type workload struct {
	W              int
	Rate           int           // writes per second
	Duration       time.Duration // of the write phase
	Warmup         time.Duration // first part of the write phase, not measured
	InitialTimeout time.Duration
	DrainTimeout   time.Duration
	RecoverTimeout time.Duration
	Seed           uint64
}

// result is one run of one implementation on one workload. Zero values of
// a phase that did not run are reported as missing, with Err saying why.
type result struct {
	Impl string `json:"impl"`
	W    int    `json:"w"`
	Run  int    `json:"run"`
	// Err says which phase did not complete and why; the phases before it
	// have their figures.
	Err string `json:"err,omitempty"`

	Objects      int     `json:"objects"`
	InitialSec   float64 `json:"initialSec"`
	OpenWatches  int     `json:"openWatches"`
	InitialLists int64   `json:"initialLists"`
	InitialWatch int64   `json:"initialWatches"`
	InitialMsgs  int64   `json:"initialMsgs"`

	Writes      int     `json:"writes"`
	WritesLate  int     `json:"writesLate"`
	Pairs       int     `json:"pairs"`
	PairsMissed int     `json:"pairsMissed"`
	P50ms       float64 `json:"p50ms"`
	P99ms       float64 `json:"p99ms"`
	MaxMs       float64 `json:"maxMs"`
	PerSec      float64 `json:"perSec"`
	SteadyCPU   float64 `json:"steadyCPU"`
	SteadyLists int64   `json:"steadyLists"`
	Steady      bool    `json:"steady"`

	Relists      int64   `json:"relists"`
	Rewatches    int64   `json:"rewatches"`
	RestartMsgs  int64   `json:"restartMsgs"`
	RecoverSec   float64 `json:"recoverSec"`
	Restarted    bool    `json:"restarted"`
	RecoverMissd int     `json:"recoverMissed"`
	APIReadySec  float64 `json:"apiReadySec"`

	RSSPeakMiB  float64 `json:"rssPeakMiB"`
	HeapPeakMiB float64 `json:"heapPeakMiB"`
	CPUSec      float64 `json:"cpuSec"`
}

// delivery is one (watcher, object) pair seen in a message: the object's
// resourceVersion as the message reports it, and when the stream stored it.
type delivery struct {
	rv int64
	ts time.Time
}

// recorder consumes the stream and indexes what each message says.
type recorder struct {
	mu       sync.Mutex
	byPair   map[string][]delivery // "<watcher>\x00<object>" -> in stream order
	watchers map[string]bool       // watchers (or, bare, objects) with a message
	stamps   []time.Time           // stream timestamps of every message
	count    atomic.Int64
	last     atomic.Int64 // unix nanos of the last message received
	bad      atomic.Int64
}

// payload covers the three message formats: depbridge's CloudEvent data
// (watcher, causes), the seed runner's (watcher, objects) and the bare
// watch's (objects).
type payload struct {
	Watcher struct {
		Name string `json:"name"`
	} `json:"watcher"`
	Causes  []objRV `json:"causes"`
	Objects []objRV `json:"objects"`
}

type objRV struct {
	Name            string `json:"name"`
	ResourceVersion string `json:"resourceVersion"`
}

func (r *recorder) handle(m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		r.bad.Add(1)
		return
	}
	var p payload
	if err := json.Unmarshal(m.Data(), &p); err != nil {
		r.bad.Add(1)
		return
	}
	ts := md.Timestamp
	r.mu.Lock()
	r.stamps = append(r.stamps, ts)
	objs := append(p.Causes, p.Objects...)
	if p.Watcher.Name != "" {
		r.watchers[p.Watcher.Name] = true
	} else {
		for _, o := range objs {
			r.watchers[o.Name] = true
		}
	}
	for _, o := range objs {
		rv, err := strconv.ParseInt(o.ResourceVersion, 10, 64)
		if err != nil {
			continue
		}
		k := p.Watcher.Name + "\x00" + o.Name
		r.byPair[k] = append(r.byPair[k], delivery{rv: rv, ts: ts})
	}
	r.mu.Unlock()
	r.count.Add(1)
	r.last.Store(time.Now().UnixNano())
}

// delivered returns when watcher (empty for bare) was first told of object
// at resourceVersion rv or later.
func (r *recorder) delivered(watcher, object string, rv int64) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range r.byPair[watcher+"\x00"+object] {
		if d.rv >= rv {
			return d.ts, true
		}
	}
	return time.Time{}, false
}

func (r *recorder) seen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.watchers)
}

// between counts messages the stream stored in [from, to).
func (r *recorder) between(from, to time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, t := range r.stamps {
		if !t.Before(from) && t.Before(to) {
			n++
		}
	}
	return n
}

// quiet waits until no message has arrived for d, at most max.
func (r *recorder) quiet(ctx context.Context, d, max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		last := time.Unix(0, r.last.Load())
		if time.Since(last) >= d {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// impl is a running implementation process.
type impl struct {
	cmd    *exec.Cmd
	stats  string
	exited chan struct{}
	err    error
	stderr string
}

func startImpl(bin string, args []string, logPath string) (*impl, error) {
	cmd := exec.Command(bin, args...)
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &impl{cmd: cmd, exited: make(chan struct{}), stderr: logPath}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), "STATS "); ok {
				lines <- u
			}
		}
	}()
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	select {
	case p.stats = <-lines:
		return p, nil
	case <-p.exited:
		return nil, fmt.Errorf("%s exited: %v: %s", filepath.Base(bin), p.err, tail(logPath))
	case <-time.After(30 * time.Second):
		p.stop()
		return nil, fmt.Errorf("%s printed no stats address in 30s", filepath.Base(bin))
	}
}

func (p *impl) alive() error {
	select {
	case <-p.exited:
		return fmt.Errorf("process exited: %v: %s", p.err, tail(p.stderr))
	default:
		return nil
	}
}

func (p *impl) read() (proc.Stats, error) {
	var s proc.Stats
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(p.stats)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&s)
	return s, err
}

// usage reads peak RSS and CPU seconds from /proc.
func (p *impl) usage() (rssPeakMiB, cpuSec float64) {
	pid := p.cmd.Process.Pid
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				rssPeakMiB = kb / 1024
			}
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		// Fields after the command name, which is in parentheses.
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i > 0 {
			f := strings.Fields(s[i+1:])
			if len(f) > 13 {
				ut, _ := strconv.ParseFloat(f[11], 64)
				st, _ := strconv.ParseFloat(f[12], 64)
				cpuSec = (ut + st) / 100 // USER_HZ
			}
		}
	}
	return rssPeakMiB, cpuSec
}

func (p *impl) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return strings.TrimSpace(string(b))
}

// runOne runs implementation name (binary bin) once on wl, on a fresh API
// server, etcd and NATS server.
func runOne(ctx context.Context, name, bin string, wl workload, runIdx int, logDir string) (res result) {
	res = result{Impl: name, W: wl.W, Run: runIdx}
	fail := func(phase string, err error) result {
		res.Err = fmt.Sprintf("%s: %v", phase, err)
		return res
	}
	s := spec.New(wl.W)
	res.Objects = len(s.Objects)
	deps := s.Dependents()

	env, err := testenv.Start()
	if err != nil {
		return fail("start API server", err)
	}
	defer func() { _ = env.Stop() }()
	broker, err := testenv.StartNATS()
	if err != nil {
		return fail("start NATS", err)
	}
	defer broker.Close()
	nc, err := nats.Connect(broker.URL(), nats.MaxReconnects(-1))
	if err != nil {
		return fail("connect NATS", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fail("jetstream", err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: s.Stream, Subjects: []string{s.Subject + ".>"}}); err != nil {
		return fail("create stream", err)
	}

	cs := kubernetes.NewForConfigOrDie(env.Config)
	if err := createObjects(ctx, cs, s); err != nil {
		return fail("create objects", err)
	}
	dir, err := os.MkdirTemp("", "benchcmp-")
	if err != nil {
		return fail("temp dir", err)
	}
	defer os.RemoveAll(dir)
	kubeconfig, specPath := filepath.Join(dir, "kubeconfig"), filepath.Join(dir, "spec.json")
	if err := env.WriteKubeconfig(kubeconfig); err != nil {
		return fail("kubeconfig", err)
	}
	if err := s.Write(specPath); err != nil {
		return fail("spec", err)
	}

	rec := &recorder{byPair: map[string][]delivery{}, watchers: map[string]bool{}}
	cons, err := js.OrderedConsumer(ctx, s.Stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return fail("consumer", err)
	}
	cc, err := cons.Consume(rec.handle)
	if err != nil {
		return fail("consume", err)
	}
	defer cc.Stop()

	// Initial: from process start until every watcher (bare: every
	// object) has a message in the stream.
	want := len(s.Watchers)
	if name == "bare" {
		want = len(s.Objects)
	}
	start := time.Now()
	p, err := startImpl(bin, []string{"-kubeconfig", kubeconfig, "-nats", broker.URL(), "-spec", specPath},
		filepath.Join(logDir, fmt.Sprintf("%s-w%d-run%d.log", name, wl.W, runIdx)))
	if err != nil {
		return fail("start", err)
	}
	defer p.stop()
	usage := func() {
		res.RSSPeakMiB, res.CPUSec = p.usage()
		if st, err := p.read(); err == nil {
			res.HeapPeakMiB = float64(st.HeapPeak) / (1 << 20)
		}
	}
	defer usage()

	for rec.seen() < want {
		if err := p.alive(); err != nil {
			return fail("initial reconcile", err)
		}
		if time.Since(start) > wl.InitialTimeout {
			st, _ := p.read()
			return fail("initial reconcile", fmt.Errorf("%d of %d %s had a message after %s (%d API watch streams open)",
				rec.seen(), want, map[bool]string{true: "objects", false: "watchers"}[name == "bare"], wl.InitialTimeout, st.OpenWatches))
		}
		time.Sleep(20 * time.Millisecond)
	}
	res.InitialSec = time.Since(start).Seconds()
	// Let the initial burst end (registration may still be adding
	// watches) before measuring.
	for {
		st, err := p.read()
		if err == nil && st.Ready {
			break
		}
		if time.Since(start) > wl.InitialTimeout {
			return fail("registration", fmt.Errorf("not ready after %s", wl.InitialTimeout))
		}
		time.Sleep(50 * time.Millisecond)
	}
	rec.quiet(ctx, 2*time.Second, 60*time.Second)
	st, err := p.read()
	if err != nil {
		return fail("stats", err)
	}
	res.OpenWatches, res.InitialLists, res.InitialWatch = st.OpenWatches, st.Lists, st.Watches
	res.InitialMsgs = rec.count.Load()

	// Steady writes: the same schedule for every implementation.
	_, cpu0 := p.usage()
	before := st
	ws, wstart, late := writeSchedule(ctx, cs, s, wl)
	res.Writes, res.WritesLate = len(ws), late
	wend := wstart.Add(wl.Duration)
	type pair struct {
		w   write
		who string
	}
	var pairs []pair
	for _, w := range ws {
		if w.err != nil || w.t0.Before(wstart.Add(wl.Warmup)) {
			continue
		}
		if name == "bare" {
			pairs = append(pairs, pair{w, ""})
			continue
		}
		for _, who := range deps[w.key] {
			pairs = append(pairs, pair{w, who})
		}
	}
	// Drain: until every pair is delivered, or nothing has come for 5s.
	drainEnd := time.Now().Add(wl.DrainTimeout)
	var lat []time.Duration
	for {
		lat = lat[:0]
		for _, pr := range pairs {
			if t, ok := rec.delivered(pr.who, pr.w.name, pr.w.rv); ok {
				lat = append(lat, t.Sub(pr.w.t0))
			}
		}
		if len(lat) == len(pairs) || time.Now().After(drainEnd) ||
			time.Since(time.Unix(0, rec.last.Load())) > 5*time.Second {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	slices.Sort(lat)
	res.Pairs, res.PairsMissed = len(pairs), len(pairs)-len(lat)
	if len(lat) > 0 {
		pct := func(q float64) float64 { return ms(lat[int(float64(len(lat)-1)*q)]) }
		res.P50ms, res.P99ms, res.MaxMs = pct(0.5), pct(0.99), ms(lat[len(lat)-1])
	}
	res.PerSec = float64(rec.between(wstart.Add(wl.Warmup), wend)) / (wl.Duration - wl.Warmup).Seconds()
	_, cpu1 := p.usage()
	res.SteadyCPU = cpu1 - cpu0
	rec.quiet(ctx, 2*time.Second, 30*time.Second)
	if st, err = p.read(); err == nil {
		res.SteadyLists = st.Lists - before.Lists
	}
	res.Steady = true
	if err := p.alive(); err != nil {
		return fail("steady writes", err)
	}

	// API server restart, then one probe write: time until every
	// watcher of the probed object was told of it.
	before = st
	msgs0 := rec.count.Load()
	if err := env.StopAPIServer(); err != nil {
		return fail("stop API server", err)
	}
	stopped := time.Now()
	if err := env.StartAPIServer(); err != nil {
		// envtest gives up waiting after 60s but leaves the process
		// running: give it one more minute before calling the run
		// failed, since a reconnect storm is what is being measured.
		if !waitReady(ctx, cs, time.Minute) {
			return fail("restart", fmt.Errorf("API server not ready %s after it was started again: %v",
				time.Since(stopped).Round(time.Second), err))
		}
	}
	res.APIReadySec = time.Since(stopped).Seconds()
	probe := s.Objects[0]
	pw := patch(ctx, cs, s.Namespace, probe, "probe")
	if pw.err != nil {
		return fail("probe write", pw.err)
	}
	who := deps[pw.key]
	if name == "bare" {
		who = []string{""}
	}
	for {
		done := 0
		var latest time.Time
		for _, w := range who {
			if t, ok := rec.delivered(w, pw.name, pw.rv); ok {
				done++
				if t.After(latest) {
					latest = t
				}
			}
		}
		if done == len(who) {
			res.RecoverSec = latest.Sub(pw.t0).Seconds()
			break
		}
		if err := p.alive(); err != nil {
			return fail("recover", err)
		}
		if time.Since(pw.t0) > wl.RecoverTimeout {
			res.RecoverMissd = len(who) - done
			return fail("recover", fmt.Errorf("%d of %d watchers not told of a write %s after the restart", len(who)-done, len(who), wl.RecoverTimeout))
		}
		time.Sleep(50 * time.Millisecond)
	}
	rec.quiet(ctx, 3*time.Second, 60*time.Second)
	if st, err = p.read(); err != nil {
		return fail("stats", err)
	}
	res.Relists, res.Rewatches = st.Lists-before.Lists, st.Watches-before.Watches
	res.RestartMsgs = max(0, rec.count.Load()-msgs0-int64(len(who)))
	res.Restarted = true
	return res
}

// waitReady polls the API server's /readyz for up to d.
func waitReady(ctx context.Context, cs kubernetes.Interface, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
		cancel()
		if err == nil {
			return true
		}
		time.Sleep(time.Second)
	}
	return false
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// write is one API write: the object, the resourceVersion it made and
// when it was sent.
type write struct {
	key, name string
	rv        int64
	t0        time.Time
	err       error
}

func patch(ctx context.Context, cs kubernetes.Interface, ns string, o spec.Object, v string) write {
	w := write{key: o.Kind + "/" + o.Name, name: o.Name}
	var rv string
	w.t0 = time.Now()
	switch o.Kind {
	case "ConfigMap":
		body := fmt.Sprintf(`{"data":{"v":%q}}`, v)
		cm, err := cs.CoreV1().ConfigMaps(ns).Patch(ctx, o.Name, types.MergePatchType, []byte(body), metav1.PatchOptions{})
		if err != nil {
			w.err = err
			return w
		}
		rv = cm.ResourceVersion
	default:
		body := fmt.Sprintf(`{"data":{"v":%q}}`, base64.StdEncoding.EncodeToString([]byte(v)))
		sec, err := cs.CoreV1().Secrets(ns).Patch(ctx, o.Name, types.MergePatchType, []byte(body), metav1.PatchOptions{})
		if err != nil {
			w.err = err
			return w
		}
		rv = sec.ResourceVersion
	}
	w.rv, w.err = strconv.ParseInt(rv, 10, 64)
	return w
}

// writeSchedule writes to random objects at wl.Rate for wl.Duration: the
// objects come from a generator seeded with wl.Seed, so every
// implementation gets the same sequence. Writes are issued on time
// whatever the API server's latency (up to 64 in flight); late counts
// those that had to wait for a slot.
func writeSchedule(ctx context.Context, cs kubernetes.Interface, s *spec.Spec, wl workload) ([]write, time.Time, int) {
	rng := rand.New(rand.NewPCG(wl.Seed, wl.Seed^0x5eed))
	n := wl.Rate * int(wl.Duration/time.Second)
	out := make([]write, n)
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	late := 0
	start := time.Now()
	for i := range n {
		o := s.Objects[rng.IntN(len(s.Objects))]
		at := start.Add(time.Duration(i) * time.Second / time.Duration(wl.Rate))
		time.Sleep(time.Until(at))
		select {
		case sem <- struct{}{}:
		default:
			late++
			sem <- struct{}{}
		}
		wg.Go(func() {
			defer func() { <-sem }()
			out[i] = patch(ctx, cs, s.Namespace, o, strconv.Itoa(i))
		})
	}
	wg.Wait()
	return out, start, late
}

func createObjects(ctx context.Context, cs kubernetes.Interface, s *spec.Spec) error {
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: s.Namespace}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	work := make(chan spec.Object)
	for range 16 {
		wg.Go(func() {
			for o := range work {
				meta := metav1.ObjectMeta{Name: o.Name, Namespace: s.Namespace, Labels: o.Labels}
				var err error
				if o.Kind == "ConfigMap" {
					_, err = cs.CoreV1().ConfigMaps(s.Namespace).Create(ctx, &corev1.ConfigMap{ObjectMeta: meta, Data: map[string]string{"v": "0"}}, metav1.CreateOptions{})
				} else {
					_, err = cs.CoreV1().Secrets(s.Namespace).Create(ctx, &corev1.Secret{ObjectMeta: meta, Data: map[string][]byte{"v": []byte("0")}}, metav1.CreateOptions{})
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for _, o := range s.Objects {
		work <- o
	}
	close(work)
	wg.Wait()
	return errors.Join(errs...)
}
