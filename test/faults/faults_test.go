package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kfake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/depbridge/depbridge/internal/testenv"
)

// Names on the brokers.
const (
	streamName = "FAULTS"
	topic      = "faults"
)

// How long the suite waits for coverage: after a fault ends, and after the
// driver stops at the end of a phase. Generous: a watcher that failed
// through a 30 s broker outage retries after up to 30 s (the engine's
// backoff cap), and a source's Reflector, after failures in a row (API
// server restarts), waits up to 4 s with half as much jitter again before
// it watches and again before it relists.
const (
	settleTimeout = 150 * time.Second
	finalTimeout  = 120 * time.Second
	// brokerOutage is the issue's: stop the broker for 30 s.
	brokerOutage = 30 * time.Second
	// partition is how long the 410 fault keeps the bridge away from the
	// API server: more than two compaction intervals, so that the last
	// resourceVersion it saw is compacted when it comes back.
	partition          = 12 * time.Second
	compactionInterval = "5s"
	// relistTimeout bounds the wait for a relist after the API server
	// comes back: a source's Reflector waits up to 6 s (4 s plus jitter)
	// before it watches and again before it relists.
	relistTimeout = 60 * time.Second
)

// TestFaults is issue 5's fault suite. Each subtest is one fault, repeated,
// over a namespace of its own (24 watchers on 12 named ConfigMaps and
// overlapping selectors over team ConfigMaps, half routed to JetStream and
// half to Kafka, with checkpoints in a JetStream key-value bucket), while a
// driver changes the objects ten times a second. After each fault ends, the
// suite measures how long until every change made before it ended is
// covered (the coverage rule is on ledger); at the end of each subtest it
// stops the driver and requires every change covered for every watcher: 0
// lost. It prints the table of results, and writes it to the file named by
// $FAULTS_RESULTS when set.
func TestFaults(t *testing.T) {
	began := time.Now()
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("FAULTS_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("FAULTS_SEED=%q: %v", v, err)
		}
		seed = n
	}
	t.Logf("seed %d (set FAULTS_SEED to repeat the driver's and the faults' choices)", seed)
	s := setup(t, seed)

	var rows []row
	for _, f := range []struct {
		name string
		run  func(t *testing.T) row
	}{
		{"sigkill", s.sigkill},
		{"broker-outage", s.brokerOutage},
		{"apiserver-restart", s.apiserverRestart},
		{"compaction-410", s.compaction},
		{"leader-kill", s.leaderKill},
	} {
		t.Run(f.name, func(t *testing.T) { rows = append(rows, f.run(t)) })
	}
	took := time.Since(began).Round(time.Second)
	table := formatTable(rows)
	t.Logf("fault suite took %s\n%s", took, table)
	if path := os.Getenv("FAULTS_RESULTS"); path != "" {
		if err := writeResults(path, table, took, seed, t.Failed()); err != nil {
			t.Error(err)
		}
	}
}

// suite is what the faults share: the bridge binary, a control plane, the
// brokers and the ledger their consumers fill.
type suite struct {
	binary     string
	dir        string
	env        *testenv.Env
	kubeconfig string
	nats       *testenv.NATS
	kafka      *testenv.Kafka
	l          *ledger
	rnd        *rand.Rand
	seed       uint64
}

func setup(t *testing.T, seed uint64) *suite {
	dir := t.TempDir()
	s := &suite{dir: dir, binary: filepath.Join(dir, "bridge"), l: newLedger(), rnd: rand.New(rand.NewPCG(seed, 1)), seed: seed}
	// Built once, without -race: the subprocess is the product as shipped.
	if out, err := exec.Command("go", "build", "-o", s.binary, "../../cmd/bridge").CombinedOutput(); err != nil {
		t.Fatalf("build the bridge: %v\n%s", err, out)
	}
	var err error
	if s.env, err = testenv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.env.Stop(); err != nil {
			t.Errorf("stop the control plane: %v", err)
		}
	})
	s.kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := s.env.WriteKubeconfig(s.kubeconfig); err != nil {
		t.Fatal(err)
	}
	if s.nats, err = testenv.StartNATS(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.nats.Close)
	if err := createStream(s.nats.URL()); err != nil {
		t.Fatal(err)
	}
	if s.kafka, err = testenv.StartKafka(kfake.SeedTopics(1, topic)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.kafka.Close)
	cons, err := startConsumers(s.l, s.nats.URL(), streamName, s.kafka.Addr(), topic)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, err := range cons.stop() {
			t.Errorf("consumer: %v", err)
		}
	})
	return s
}

func createStream(url string) error {
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: streamName, Subjects: []string{topic + ".>"}, Storage: jetstream.FileStorage})
	if err != nil {
		return fmt.Errorf("create stream %s: %w", streamName, err)
	}
	return nil
}

// phase is one fault's run: its namespace, watchers, driver, bridges and
// the recovery times measured.
type phase struct {
	s          *suite
	t          *testing.T
	name, ns   string
	cs         kubernetes.Interface
	config     string
	kubeconfig string
	drv        *driver
	bridges    []*bridge
	cutoffs    []cutoff
	// blindFrom is the start of the blind window open now (zero if none):
	// a fault began and the bridge has not been seen watching again.
	blindFrom time.Time
}

// cutoff is the end of one fault: recovered once every change made
// before it is covered.
type cutoff struct {
	end       time.Time
	recovered time.Duration // -1 until recovered
}

// newPhase makes the namespace, its objects and the bridge configuration
// of a fault, on the control plane of cfg; bridges reach it through
// kubeconfig.
func (s *suite) newPhase(t *testing.T, name string, cfg *rest.Config, kubeconfig string) *phase {
	t.Helper()
	ns := "faults-" + name
	cs := kubernetes.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	subs := subscriptions(ns)
	bucket := "faults_" + strings.ReplaceAll(name, "-", "_")
	conf := fmt.Sprintf(`cluster: faults
sinks:
  - name: js
    jetstream: {url: %q, stream: %s, ackTimeout: 2s}
  - name: kafka
    kafka: {brokers: [%q], writeTimeout: 5s}
routes:
  - {name: js, sink: js, subject: "%s.{{.Namespace}}.{{.Name}}"}
  - {name: kafka, sink: kafka, subject: %s, mode: structured}
checkpoint:
  jetstream: {sink: js, bucket: %s}
`, s.nats.URL(), streamName, s.kafka.Addr(), topic, topic, bucket) + subscriptionsYAML(subs)
	path := filepath.Join(s.dir, name+".yaml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &phase{s: s, t: t, name: name, ns: ns, cs: cs, config: path, kubeconfig: kubeconfig,
		drv: newDriver(cs, ns, subs, s.l, s.seed+uint64(len(name)))}
	if err := p.drv.seed(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.drv.stop()
		for _, b := range p.bridges {
			_ = b.kill()
		}
		for i, b := range p.bridges {
			if t.Failed() && i >= len(p.bridges)-2 {
				t.Logf("last output of bridge %s:\n%s", b.name, b.tail(40))
			}
			if d := os.Getenv("FAULTS_LOG_DIR"); d != "" { // every bridge's whole output, to study a run
				_ = os.WriteFile(filepath.Join(d, b.name+".log"), []byte(b.logs.String()), 0o644)
			}
		}
	})
	return p
}

// startBridge starts a bridge of the phase (killed when the test ends).
func (p *phase) startBridge(name string, extra ...string) *bridge {
	p.t.Helper()
	b, err := startBridge(p.s.binary, name, p.config, p.kubeconfig, extra...)
	if err != nil {
		p.t.Fatal(err)
	}
	p.bridges = append(p.bridges, b)
	return b
}

// startDriving starts the phase's first bridge, waits for it to be ready,
// and starts the driver's changes 2 s before the first fault.
func (p *phase) startDriving(bridgeName string) *bridge {
	p.t.Helper()
	b := p.startBridge(bridgeName)
	if err := b.waitReady(60 * time.Second); err != nil {
		p.t.Fatal(err)
	}
	p.drv.start()
	p.sleep(2 * time.Second)
	return b
}

// faultEnded records the end of one run of the fault.
func (p *phase) faultEnded(at time.Time) {
	p.cutoffs = append(p.cutoffs, cutoff{end: at, recovered: -1})
}

// blindLead is how long before a fault its blind window opens: a change
// made just before the fault may not have reached the bridge's watch, or
// been published, when the fault struck (a watch event in flight, a
// request still queued in a process that is then killed), and the bridge
// may find the object gone once it watches again. Healthy, the bridge
// publishes a change within milliseconds; a second is ample and still
// short beside the phases' seconds between faults.
const blindLead = time.Second

// blindStart opens a blind window blindLead before t (just before a fault
// starts), unless one is open: the bridge has not been seen watching since
// an earlier fault, so it has been blind since then.
func (p *phase) blindStart(t time.Time) {
	if p.blindFrom.IsZero() {
		p.blindFrom = t.Add(-blindLead)
	}
}

// blindEnd closes the open blind window at t, when the bridge was seen
// watching again, and records it in the ledger: the only times at which an
// object a watcher was never told of may have come and gone unseen.
func (p *phase) blindEnd(t time.Time) {
	if p.blindFrom.IsZero() {
		return
	}
	p.s.l.blindWindow(p.ns, p.blindFrom, t)
	p.blindFrom = time.Time{}
}

// waitRelisted waits, resolving fault ends meanwhile, until b has stored a
// list for each of its sources since its depbridge_source_lists was
// before, and closes the open blind window then: from that list on, every
// object there is in b's snapshot and every later change reaches its
// watch. If b does not relist within relistTimeout (it resumed its watches,
// which replay what happened meanwhile), the window closes at the fault's
// end, when the API server was reachable again.
func (p *phase) waitRelisted(b *bridge, before float64) {
	p.t.Helper()
	faultEnd := p.cutoffs[len(p.cutoffs)-1].end
	deadline := time.Now().Add(relistTimeout)
	for {
		p.tick()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		lists, err := b.metricSum(ctx, "depbridge_source_lists")
		var sources float64
		if err == nil {
			sources, err = b.metricSum(ctx, "depbridge_sources")
		}
		cancel()
		if err == nil && sources > 0 && lists-before >= sources {
			now := time.Now()
			p.t.Logf("relisted %s after the fault ended (depbridge_source_lists %v -> %v, %v sources)",
				now.Sub(faultEnd).Round(time.Millisecond), before, lists, sources)
			p.blindEnd(now)
			return
		}
		if time.Now().After(deadline) {
			p.t.Logf("no relist within %s of the fault's end (depbridge_source_lists %v -> %v, %v sources, err %v): blind until the fault's end",
				relistTimeout, before, lists, sources, err)
			p.blindEnd(faultEnd)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// tick sweeps the ledger and resolves the fault ends every change before
// which is now covered; it reports whether all are.
func (p *phase) tick() bool {
	oldest, n := p.s.l.sweep(p.ns)
	now := time.Now()
	all := true
	for i := range p.cutoffs {
		c := &p.cutoffs[i]
		if c.recovered >= 0 {
			continue
		}
		if n == 0 || oldest.After(c.end) {
			c.recovered = now.Sub(c.end)
			continue
		}
		all = false
	}
	return all
}

// sleep waits d, resolving fault ends meanwhile.
func (p *phase) sleep(d time.Duration) { p.sleepPolling(d, nil) }

// sleepPolling waits d, resolving fault ends and calling poll (if not nil)
// meanwhile.
func (p *phase) sleepPolling(d time.Duration, poll func()) {
	end := time.Now().Add(d)
	for {
		p.tick()
		if poll != nil {
			poll()
		}
		left := time.Until(end)
		if left <= 0 {
			return
		}
		time.Sleep(min(left, 50*time.Millisecond))
	}
}

// settle waits until every fault end so far has recovered; a fault end
// that does not within timeout fails the test (its changes show up as
// lost at the end unless they are covered later).
func (p *phase) settle(timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for !p.tick() {
		if time.Now().After(deadline) {
			p.t.Errorf("changes made before a fault ended still not covered %s later", timeout)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// finish stops the driver, waits until every change is covered (or
// finalTimeout), checks the phase and returns its row.
func (p *phase) finish(runs int) row {
	t := p.t
	t.Helper()
	p.drv.stop()
	deadline := time.Now().Add(finalTimeout)
	for {
		_, n := p.s.l.sweep(p.ns)
		if n == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.tick()
	st := p.s.l.stats(p.ns)
	r := row{fault: p.name, runs: runs, changes: st.changes, expectations: st.expectations, events: st.recv.events,
		lost: st.lost, duplicates: st.recv.duplicates, reannounced: st.recv.reannounced, resync: st.recv.resync,
		lostCauses: st.recv.lost, truncated: st.recv.truncated, driverErrors: p.drv.errors, transients: st.transients}
	for _, c := range p.cutoffs {
		if c.recovered < 0 {
			r.unrecovered++
			continue
		}
		r.maxRecovery = max(r.maxRecovery, c.recovered)
	}
	if st.lost > 0 {
		t.Errorf("%d of %d watcher changes lost; the first:\n  %s", st.lost, st.expectations, strings.Join(st.uncovered, "\n  "))
	}
	if st.changes == 0 || st.expectations == 0 {
		t.Errorf("the driver made no change anyone watches")
	}
	for _, sink := range []string{"jetstream", "kafka"} {
		if st.recv.bySink[sink] == 0 {
			t.Errorf("no event received through %s", sink)
		}
	}
	for _, pr := range st.problems {
		t.Error(pr)
	}
	if r.unrecovered > 0 {
		t.Errorf("%d of %d fault runs never recovered", r.unrecovered, len(p.cutoffs))
	}
	if len(p.cutoffs) != runs {
		t.Errorf("%d fault ends recorded for %d runs", len(p.cutoffs), runs)
	}
	if !p.blindFrom.IsZero() {
		t.Errorf("the blind window opened at %s never closed", p.blindFrom.Format("15:04:05.000"))
	}
	var blind time.Duration
	windows := p.s.l.blindWindows(p.ns)
	for _, w := range windows {
		blind += w.to.Sub(w.from)
	}
	t.Logf("%s: %d blind windows (%s in all): %v", p.name, len(windows), blind.Round(time.Millisecond), windows)
	for _, b := range p.bridges {
		select {
		case <-b.exited:
			continue
		default:
		}
		if err := b.stop(); err != nil {
			t.Error(err)
		}
	}
	t.Logf("%s: %d runs, %d changes (%d for watchers), %d events (%v), %d lost, %d duplicates, %d re-announced with a new id, "+
		"%d unseen transients, %d resync and %d lost causes, %d truncated, max recovery %s, driver write errors %d", p.name, runs, r.changes,
		r.expectations, r.events, st.recv.bySink, r.lost, r.duplicates, r.reannounced, r.transients, r.resync, r.lostCauses, r.truncated,
		r.maxRecovery.Round(time.Millisecond), r.driverErrors)
	return r
}

// waitStatus waits until b's /readyz answers want.
func waitStatus(b *bridge, want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for b.ready() != want {
		select {
		case <-b.exited:
			return fmt.Errorf("bridge %s exited: %v\n%s", b.name, b.err, b.tail(20))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bridge %s: /readyz is %d, want %d after %s", b.name, b.ready(), want, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// sigkill: SIGKILL the bridge 20 times, each after a random 0.5-3 s of
// uptime (so some while it starts, some while it publishes), restarting it
// at once; a fault ends at the restart. Blind from just before the kill
// until a restarted bridge is seen ready (its lists stored; /readyz polled
// meanwhile): a bridge killed before it was ready extends the window.
func (s *suite) sigkill(t *testing.T) row {
	const runs = 20
	p := s.newPhase(t, "sigkill", s.env.Config, s.kubeconfig)
	b := p.startDriving("sigkill-0")
	var kills []string
	defer func() { t.Logf("killed at %v", kills) }()
	for i := range runs {
		started := time.Now()
		uptime := 500*time.Millisecond + time.Duration(s.rnd.Int64N(int64(2500*time.Millisecond)))
		p.sleepPolling(uptime-time.Since(started), func() {
			if !p.blindFrom.IsZero() && b.ready() == http.StatusOK {
				p.blindEnd(time.Now())
			}
		})
		p.blindStart(time.Now())
		if err := b.kill(); err != nil {
			t.Fatal(err)
		}
		kills = append(kills, time.Now().Format("15:04:05.000"))
		b = p.startBridge(fmt.Sprintf("sigkill-%d", i+1))
		p.faultEnded(time.Now())
	}
	if err := b.waitReady(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	p.blindEnd(time.Now())
	p.settle(settleTimeout)
	return p.finish(runs)
}

// brokerOutage: stop the NATS server (the JetStream route and the
// checkpoint bucket) for 30 s, then, in a second run, the Kafka broker,
// while changes go on; a fault ends when the broker is started again. No
// blind window: the bridge watches the API server all along.
func (s *suite) brokerOutage(t *testing.T) row {
	p := s.newPhase(t, "broker-outage", s.env.Config, s.kubeconfig)
	p.startDriving("broker-0")
	outages := []struct {
		broker string
		stop   func()
		start  func() error
	}{
		{"nats", s.nats.Stop, s.nats.Start},
		{"kafka", s.kafka.Stop, s.kafka.Start},
	}
	for _, o := range outages {
		t.Logf("stopping %s for %s", o.broker, brokerOutage)
		o.stop()
		p.sleep(brokerOutage)
		if err := o.start(); err != nil {
			t.Fatalf("start %s again: %v", o.broker, err)
		}
		p.faultEnded(time.Now())
		p.settle(settleTimeout)
	}
	return p.finish(len(outages))
}

// apiserverRestart: stop kube-apiserver (etcd keeps running), leave it down
// for 2 s, start it again; twice (each run after the first waits longer:
// a source's Reflector backs off more after failures in a row, up to 4 s
// plus jitter before it watches and again before it relists, and forgets
// only after 2 quiet minutes). A fault ends when it has started. Blind from
// just before kube-apiserver stops until the bridge is seen to have
// relisted (waitRelisted).
func (s *suite) apiserverRestart(t *testing.T) row {
	const runs = 2
	p := s.newPhase(t, "apiserver-restart", s.env.Config, s.kubeconfig)
	b := p.startDriving("apiserver-0")
	for range runs {
		before, err := b.metricSum(context.Background(), "depbridge_source_lists")
		if err != nil {
			t.Fatal(err)
		}
		stopping := time.Now()
		p.blindStart(stopping)
		if err := s.env.StopAPIServer(); err != nil {
			t.Fatalf("stop kube-apiserver: %v", err)
		}
		t.Logf("kube-apiserver stopping %s, stopped %s", stopping.Format("15:04:05.000"), time.Now().Format("15:04:05.000"))
		p.sleep(2 * time.Second)
		if err := s.env.StartAPIServer(); err != nil {
			t.Fatalf("start kube-apiserver: %v", err)
		}
		p.faultEnded(time.Now())
		p.waitRelisted(b, before)
		p.settle(settleTimeout)
	}
	return p.finish(runs)
}

// compaction: a control plane of its own, whose kube-apiserver has no
// watch cache and compacts etcd every 5 s, reached by the bridge through a
// TCP proxy. Each run takes the proxy down (every connection cut, new ones
// refused) for 12 s while changes go on, so that the bridge's watches
// resume from a compacted resourceVersion, get 410 Gone and must relist;
// depbridge_source_lists must grow each time. A fault ends when the proxy
// is up again. Twice, for the same reason as apiserverRestart. Blind from
// just before the proxy goes down until the bridge is seen to have relisted
// (waitRelisted).
func (s *suite) compaction(t *testing.T) row {
	const runs = 2
	env, err := testenv.StartWith(testenv.Options{APIServerFlags: map[string]string{
		"watch-cache": "false", "etcd-compaction-interval": compactionInterval}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stop the second control plane: %v", err)
		}
	})
	u, err := url.Parse(env.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := testenv.StartProxy(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	viaProxy := rest.CopyConfig(env.Config)
	viaProxy.Host = "https://" + proxy.Addr()
	kubeconfig := filepath.Join(s.dir, "kubeconfig-proxy")
	if err := testenv.WriteKubeconfig(viaProxy, kubeconfig); err != nil {
		t.Fatal(err)
	}
	p := s.newPhase(t, "compaction-410", env.Config, kubeconfig)
	b := p.startDriving("compaction-0")
	ctx := context.Background()
	for i := range runs {
		before, err := b.metricSum(ctx, "depbridge_source_lists")
		if err != nil {
			t.Fatal(err)
		}
		p.blindStart(time.Now())
		proxy.Down()
		p.sleep(partition)
		if err := proxy.Up(); err != nil {
			t.Fatal(err)
		}
		p.faultEnded(time.Now())
		p.waitRelisted(b, before)
		p.settle(settleTimeout)
		after, err := b.metricSum(ctx, "depbridge_source_lists")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("run %d: depbridge_source_lists %v -> %v", i, before, after)
		if after <= before {
			t.Errorf("run %d: depbridge_source_lists went from %v to %v: the bridge did not relist after its resourceVersion was compacted", i, before, after)
		}
	}
	return p.finish(runs)
}

// leaderKill: two replicas with leader election on a short lease (3 s
// lease, 2 s renew deadline, 0.5 s retry); SIGKILL the leader (the one
// whose /readyz answers 200), check the standby takes over, start a new
// standby; three times. A fault ends at the kill. Blind from just before the
// kill until the standby is seen ready (leading, its lists stored).
func (s *suite) leaderKill(t *testing.T) row {
	const runs = 3
	p := s.newPhase(t, "leader-kill", s.env.Config, s.kubeconfig)
	flags := []string{"--leader-elect", "--leader-elect-namespace", p.ns, "--leader-elect-lease-duration", "3s",
		"--leader-elect-renew-deadline", "2s", "--leader-elect-retry-period", "500ms"}
	n := 0
	start := func() *bridge {
		b := p.startBridge(fmt.Sprintf("replica-%d", n), flags...)
		n++
		return b
	}
	replicas := []*bridge{start(), start()}
	leader, err := waitLeader(replicas, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	p.drv.start()
	p.sleep(2 * time.Second)
	for i := range runs {
		standby := replicas[0]
		if standby == leader {
			standby = replicas[1]
		}
		if got := standby.ready(); got != http.StatusServiceUnavailable {
			t.Fatalf("run %d: standby %s /readyz = %d, want 503", i, standby.name, got)
		}
		p.blindStart(time.Now())
		if err := leader.kill(); err != nil {
			t.Fatal(err)
		}
		p.faultEnded(time.Now())
		killedAt := time.Now()
		if err := waitStatus(standby, http.StatusOK, 30*time.Second); err != nil {
			t.Fatalf("run %d: the standby did not take over: %v", i, err)
		}
		p.blindEnd(time.Now())
		t.Logf("run %d: %s killed, %s leads after %s", i, leader.name, standby.name, time.Since(killedAt).Round(time.Millisecond))
		fresh := start()
		if err := waitStatus(fresh, http.StatusServiceUnavailable, 60*time.Second); err != nil {
			t.Fatalf("run %d: new standby: %v", i, err)
		}
		replicas, leader = []*bridge{standby, fresh}, standby
		p.settle(settleTimeout)
		p.sleep(time.Second + time.Duration(s.rnd.Int64N(int64(2*time.Second)))) // the new leader at work
		if standby.ready() != http.StatusOK || fresh.ready() == http.StatusOK {
			t.Errorf("run %d: after recovery %s /readyz %d, %s /readyz %d; want one leader, the survivor", i,
				standby.name, standby.ready(), fresh.name, fresh.ready())
		}
	}
	return p.finish(runs)
}

// waitLeader waits until exactly one replica answers /readyz with 200.
func waitLeader(replicas []*bridge, timeout time.Duration) (*bridge, error) {
	deadline := time.Now().Add(timeout)
	for {
		var leaders []*bridge
		for _, b := range replicas {
			if b.ready() == http.StatusOK {
				leaders = append(leaders, b)
			}
		}
		if len(leaders) == 1 {
			return leaders[0], nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d of %d replicas ready after %s, want exactly one leader", len(leaders), len(replicas), timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// row is one fault's line in the results table.
type row struct {
	fault                               string
	runs, changes, expectations, events int
	lost, duplicates, reannounced       int
	resync, lostCauses, truncated       int
	driverErrors, unrecovered           int
	transients                          int
	maxRecovery                         time.Duration
}

func formatTable(rows []row) string {
	var b strings.Builder
	b.WriteString("| fault | runs | changes | watcher changes | events | lost | duplicates | re-announced (new id) | unseen transients | max recovery |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %d | %d | %d | %s |\n", r.fault, r.runs, r.changes, r.expectations, r.events,
			r.lost, r.duplicates, r.reannounced, r.transients, r.maxRecovery.Round(10*time.Millisecond))
	}
	return b.String()
}

func writeResults(path, table string, took time.Duration, seed uint64, failed bool) error {
	status := "passed"
	if failed {
		status = "FAILED"
	}
	text := fmt.Sprintf(`# Fault suite results

Written by `+"`make test-faults`"+` (TestFaults in test/faults): %s, %s/%s, %s, %d CPUs;
the suite took %s and %s (seed %d).

%s
- **changes**: writes of the driver that some watcher depends on; **watcher
  changes**: (change, watcher) pairs, each of which must be covered.
- **lost**: watcher changes not covered when the phase ended (the driver
  stopped, then up to %s of waiting). Must be 0.
- **duplicates**: events whose id had already been received; each must carry
  exactly the request (watcher and causes) of the first event with that id
  (the suite fails otherwise). JetStream drops a repeated id within its
  duplicate window, so most duplicates are on Kafka.
- **re-announced (new id)**: events with a new id all of whose object causes
  repeat versions the watcher had already received (a restarted bridge
  telling again what it was not sure had been told, batched differently).
- **unseen transients**: watcher changes of objects the watcher was never
  told of at all, whose whole stay in its set (from the create or enter to
  the delete or leave) lay within a blind window of the fault: created and
  gone while the bridge could not watch, they are in no snapshot, and the
  watcher's view (nothing) is the object's state. Counted, not lost (see
  the coverage rule); an untold object that was in the set at any moment
  outside every blind window is lost.
- **max recovery**: the longest time, over the runs, from the end of a fault
  (restart, broker or API server started again, proxy up, leader killed)
  until every change made before it was covered.

Coverage rule: a change of object O (uid U) at resourceVersion R, for watcher
W, is covered when W received an event with a cause on O (uid U) whose
resourceVersion is ≥ R (numerically); or a cause saying O is gone from W's
set (deleted, or relisted with no resourceVersion), which the driver makes
final (it never re-adds an object to a selector it left, nor reuses a name);
or a resync cause recorded (event time) after the change; or, when W was
never told of O at all, once O has left W's set, if its whole stay there
(from the create or enter to the delete or leave, as the writes returned)
lay within one blind window of the phase (an unseen transient). A
deletion is otherwise covered only by a gone cause.

Blind windows, when the bridge could not watch, recorded by each fault as
it is injected (overlapping windows merge), each opening %s before its
fault (a change made just before may not have reached the bridge's watch,
or been published, when the fault struck): sigkill: from the
kill until a restarted bridge answers /readyz 200 (lists stored; a bridge
killed before it was ready extends the window to the next one's
readiness). broker-outage: none (the API watch is not blinded).
apiserver-restart and compaction-410: from kube-apiserver's stop (the
proxy going down) until the bridge's depbridge_source_lists has
grown by one list per source (its relist stored), polled every 100 ms.
leader-kill: from the leader's kill until the standby
answers /readyz 200 (leading, lists stored). lost causes and
truncated requests cover nothing. At the end of each fault the suite also
requires events through both sinks, no event id carrying two different
requests, and every fault run recovered.

Faults: sigkill: SIGKILL after 0.5-3 s of uptime, restart at once, 20 times.
broker-outage: NATS (JetStream route and checkpoint bucket) stopped for 30 s,
then Kafka stopped for 30 s. apiserver-restart: kube-apiserver stopped for
2 s and started, twice. compaction-410: kube-apiserver with no watch cache
and etcd compaction every %s; the bridge's connections through a TCP proxy
cut and refused for %s, twice; depbridge_source_lists must grow each time.
leader-kill: two replicas with leader election (3 s lease), the leader
SIGKILLed and a new standby started, 3 times.

Reading the recovery times: after an API server restart or a 410, the
bridge's watches back off before they watch again and again before they
relist (250 ms doubling to 4 s, plus up to half again of jitter, reset
after 2 quiet minutes; client-go's default of 0.8 s doubling to 30 s made
recovery take over a minute); the driver's objects created and gone
meanwhile (within the blind window, which ends at the relist) are the
unseen transients. Nothing is lost: the relist finds
every object that is still there. During the NATS outage, events of the Kafka route
that name an object new to a watcher wait too, for the checkpoint write
(the bucket is on NATS).
`, time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.GOOS, runtime.GOARCH, runtime.Version(), runtime.NumCPU(),
		took, status, seed, table, finalTimeout, blindLead, compactionInterval, partition)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}
