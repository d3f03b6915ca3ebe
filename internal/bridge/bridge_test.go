package bridge

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/event"
	"github.com/depbridge/depbridge/internal/sink"
	"github.com/depbridge/depbridge/internal/testenv"
	"github.com/depbridge/depbridge/internal/watch"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

const wait = 60 * time.Second

func logger() *slog.Logger {
	if os.Getenv("DEPBRIDGE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// running is a bridge started by a test.
type running struct {
	b    *Bridge
	path string
	base string // http://addr
	stop context.CancelFunc
	done chan error
}

// start writes cfg to a file and runs a bridge on it until the test ends.
func start(t *testing.T, cfg string) *running {
	t.Helper()
	return startWith(t, cfg, nil)
}

// startWith is start with options changed by opt; it returns before the
// bridge has started (a standby never does).
func startWith(t *testing.T, cfg string, opt func(*Options)) *running {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(path)
	if err == nil {
		err = c.Validate()
	}
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	opts := Options{Config: c, ConfigPath: path, REST: env.Config, Logger: logger(), Listen: "127.0.0.1:0",
		EmbeddedNATS: "127.0.0.1:0"}
	if opt != nil {
		opt(&opts)
	}
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Start(ctx) }()
	r := &running{b: b, path: path, stop: cancel, done: done}
	if opts.LeaderElection == nil {
		select {
		case <-b.Started():
		case err := <-done:
			cancel()
			t.Fatalf("bridge stopped at start: %v", err)
		case <-time.After(wait):
			cancel()
			t.Fatal("bridge did not start")
		}
	}
	eventually(t, "health server listening", func() bool { return b.Addr() != nil })
	r.base = "http://" + b.Addr().String()
	t.Cleanup(func() {
		if err := r.shutdown(); err != nil {
			t.Errorf("bridge: %v", err)
		}
	})
	return r
}

// shutdown stops the bridge and returns what Start returned.
func (r *running) shutdown() error {
	r.stop()
	select {
	case err, ok := <-r.done:
		if !ok {
			return nil
		}
		close(r.done)
		return err
	case <-time.After(wait):
		return fmt.Errorf("bridge did not stop within %s", wait)
	}
}

func (r *running) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(r.base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// metric returns the value of a metric line "name value" (first match).
func (r *running) metric(t *testing.T, name string) float64 {
	t.Helper()
	_, body := r.get(t, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("metric %s not exported", name)
	return 0
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", wait, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func namespace(t *testing.T) string {
	t.Helper()
	ns := fmt.Sprintf("b-%d", time.Now().UnixNano()%1e9)
	cs := kubernetes.NewForConfigOrDie(env.Config)
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return ns
}

// received reads every event stored in a JetStream stream.
func received(t *testing.T, url, stream string) []event.Data {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out []event.Data
	for {
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumPending == 0 {
			return out
		}
		batch, err := c.FetchNoWait(int(info.NumPending))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			e, err := sink.DecodeNATS(ctx, &nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
			if err != nil {
				t.Fatal(err)
			}
			var d event.Data
			if err := json.Unmarshal(e.Data(), &d); err != nil {
				t.Fatal(err)
			}
			out = append(out, d)
		}
	}
}

// The at-least-once contract, end to end: changes keep coming while the
// broker is down for several seconds mid-stream; once it is back, every
// change of every watched object is covered, for each of its watchers, by
// at least one event stored in the stream (one whose causes name the object
// at that resourceVersion or a later one).
func TestNothingLostWhileBrokerIsDown(t *testing.T) {
	broker, _, _ := testenv.StartNATSStream(t, jetstream.StreamConfig{Name: "EVENTS", Subjects: []string{"reconcile.>"}})

	ns := namespace(t)
	cs := kubernetes.NewForConfigOrDie(env.Config)
	const objects, watchers = 12, 6
	var subs strings.Builder
	for w := range watchers {
		fmt.Fprintf(&subs, "  - watcher: {version: v1, kind: ConfigMap, namespace: fn, name: w%d}\n    initialReconcile: false\n    watched:\n", w)
		for i := range objects {
			if i%watchers == w || (i+1)%watchers == w {
				fmt.Fprintf(&subs, "      - {version: v1, kind: ConfigMap, namespace: %s, name: cm%d}\n", ns, i)
			}
		}
	}
	for i := range objects {
		if _, err := cs.CoreV1().ConfigMaps(ns).Create(context.Background(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint("cm", i)}, Data: map[string]string{"n": "0"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	start(t, fmt.Sprintf(`
sinks:
  - name: js
    jetstream: {url: %q, ackTimeout: 1s}
routes:
  - {name: default, sink: js, subject: "reconcile.{{.Name}}"}
subscriptions:
%s`, broker.URL(), subs.String()))

	type change struct {
		obj int
		rv  int
	}
	var changes []change
	write := func(n int) {
		for range n {
			i := len(changes) % objects
			cm, err := cs.CoreV1().ConfigMaps(ns).Get(context.Background(), fmt.Sprint("cm", i), metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			cm.Data["n"] = strconv.Itoa(len(changes))
			if cm, err = cs.CoreV1().ConfigMaps(ns).Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			rv, _ := strconv.Atoi(cm.ResourceVersion)
			changes = append(changes, change{i, rv})
			time.Sleep(50 * time.Millisecond) // a steady stream of changes
		}
	}
	write(24)
	broker.Stop()
	outage := time.Now()
	write(60) // about 3 s of changes, and the broker stays down 5 s
	time.Sleep(time.Until(outage.Add(5 * time.Second)))
	if err := broker.Start(); err != nil {
		t.Fatal(err)
	}
	write(24)

	// covered[watcher][object] is the highest resourceVersion delivered.
	var lost []string
	var events int
	eventually(t, "every change delivered to each of its watchers", func() bool {
		got := received(t, broker.URL(), "EVENTS")
		events = len(got)
		covered := map[string]map[string]int{}
		for _, d := range got {
			for _, c := range d.Causes {
				rv, _ := strconv.Atoi(c.ResourceVersion)
				m := covered[d.Watcher.Name]
				if m == nil {
					m = map[string]int{}
					covered[d.Watcher.Name] = m
				}
				m[c.Name] = max(m[c.Name], rv)
			}
		}
		lost = lost[:0]
		for _, ch := range changes {
			for _, w := range []int{ch.obj % watchers, (ch.obj + 1) % watchers} { // as in the subscriptions above
				if covered[fmt.Sprint("w", w)][fmt.Sprint("cm", ch.obj)] < ch.rv {
					lost = append(lost, fmt.Sprintf("w%d/cm%d@%d", w, ch.obj, ch.rv))
				}
			}
		}
		if len(lost) > 0 && os.Getenv("DEPBRIDGE_TEST_LOG") != "" {
			t.Logf("%d events, lost so far: %v", events, lost)
		}
		return len(lost) == 0
	})
	t.Logf("%d changes (%d during a 5s outage), %d events stored, 0 lost", len(changes), 60, events)
}

// Subscriptions follow the file: added, changed and removed without a
// restart; a bad version is rejected and the running one stays.
func TestReload(t *testing.T) {
	ns := namespace(t)
	cs := kubernetes.NewForConfigOrDie(env.Config)
	for _, n := range []string{"a", "b"} {
		if _, err := cs.CoreV1().ConfigMaps(ns).Create(context.Background(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	sub := func(w, cm string) string {
		return fmt.Sprintf("  - watcher: {version: v1, kind: ConfigMap, namespace: fn, name: %s}\n    watched: [{version: v1, kind: ConfigMap, namespace: %s, name: %s}]\n", w, ns, cm)
	}
	r := start(t, "routes: [{name: default, sink: default}]\nsubscriptions:\n"+sub("one", "a"))
	eventually(t, "one watcher", func() bool { return r.metric(t, "depbridge_watchers") == 1 })
	if code, body := r.get(t, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz = %d %s", code, body)
	}

	write := func(s string) {
		if err := os.WriteFile(r.path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("routes: [{name: default, sink: default}]\nsubscriptions:\n" + sub("two", "a") + sub("three", "b"))
	eventually(t, "two watchers, one gone", func() bool {
		return r.metric(t, "depbridge_watchers") == 2 && r.metric(t, "depbridge_watched_refs") == 2
	})
	write("routes: [{name: default, sink: default}]\nsubscriptions:\n  - watcher: {kind: ConfigMap}\n") // invalid
	time.Sleep(3 * time.Second)                                                                         // the reloader polls every second and reports after two polls
	if w := r.metric(t, "depbridge_watchers"); w != 2 {
		t.Fatalf("watchers = %v after a bad file, want the running 2", w)
	}
	if code, _ := r.get(t, "/readyz"); code != http.StatusOK {
		t.Fatalf("not ready after a rejected file: %d", code)
	}
}

// One of two replicas leads and publishes; the other is a standby, not
// ready. When the leader stops, the standby takes over and events keep
// coming.
func TestLeaderElection(t *testing.T) {
	broker, _, stream := testenv.StartNATSStream(t, jetstream.StreamConfig{Name: "LE", Subjects: []string{"le.>"}})
	ctx := context.Background()
	ns := namespace(t)
	cs := kubernetes.NewForConfigOrDie(env.Config)
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`
sinks: [{name: js, jetstream: {url: %q}}]
routes: [{name: default, sink: js, subject: "le.{{.Name}}"}]
subscriptions:
  - watcher: {version: v1, kind: ConfigMap, namespace: fn, name: w}
    watched: [{version: v1, kind: ConfigMap, namespace: %s, name: cm}]
    initialReconcile: false
`, broker.URL(), ns)
	replica := func(id string) *running {
		return startWith(t, cfg, func(o *Options) {
			o.Instance = id
			o.LeaderElection = &LeaderElection{Name: "le-" + ns, Namespace: ns, LeaseDuration: 2 * time.Second,
				RenewDeadline: time.Second, RetryPeriod: 200 * time.Millisecond}
		})
	}
	a, b := replica("a"), replica("b")
	ready := func(r *running) bool { code, _ := r.get(t, "/readyz"); return code == http.StatusOK }
	eventually(t, "one replica ready", func() bool { return ready(a) != ready(b) })
	leader, standby := a, b
	if ready(b) {
		leader, standby = b, a
	}
	if _, body := standby.get(t, "/readyz"); !strings.Contains(body, "standby") {
		t.Fatalf("standby's /readyz says %q", body)
	}
	if v := leader.metric(t, "depbridge_leader"); v != 1 {
		t.Fatalf("depbridge_leader = %v on the leader", v)
	}
	// update changes the ConfigMap and returns its resourceVersion.
	update := func(n string) string {
		cm, _ := cs.CoreV1().ConfigMaps(ns).Get(ctx, "cm", metav1.GetOptions{})
		cm.Data = map[string]string{"n": n}
		cm, err := cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return cm.ResourceVersion
	}
	// published says whether an event carries the change at rv.
	published := func(rv string) bool {
		info, _ := stream.Info(ctx)
		for seq := uint64(1); seq <= info.State.Msgs; seq++ {
			m, err := stream.GetMsg(ctx, seq)
			if err == nil && strings.Contains(string(m.Data), `"resourceVersion":"`+rv+`"`) {
				return true
			}
		}
		return false
	}
	rv := update("1")
	eventually(t, "the leader publishes", func() bool { return published(rv) })

	stopped := time.Now()
	if err := leader.shutdown(); err != nil {
		t.Fatalf("leader stopped with %v", err)
	}
	eventually(t, "the standby takes over", func() bool { return ready(standby) })
	t.Logf("standby ready %s after the leader stopped", time.Since(stopped).Round(10*time.Millisecond))
	rv = update("2")
	eventually(t, "the new leader publishes", func() bool { return published(rv) })
}

// A leader that is told to stop keeps the lease until its bridge has
// stopped: a reconcile in flight at shutdown (here an HTTP send the
// receiver holds) finishes under the lease, and only then is the lease
// released, so no standby publishes alongside it.
func TestLeaderKeepsLeaseUntilStopped(t *testing.T) {
	got, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(got) })
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer receiver.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	ns := namespace(t)
	cfg := fmt.Sprintf(`
sinks: [{name: hook, http: {url: %q}}]
routes: [{name: default, sink: hook}]
subscriptions:
  - watcher: {version: v1, kind: ConfigMap, namespace: fn, name: w}
    watched: [{version: v1, kind: ConfigMap, namespace: %s, name: cm}]
`, receiver.URL, ns)
	r := startWith(t, cfg, func(o *Options) {
		o.Instance = "a"
		o.LeaderElection = &LeaderElection{Name: "le-" + ns, Namespace: ns, LeaseDuration: 2 * time.Second,
			RenewDeadline: time.Second, RetryPeriod: 200 * time.Millisecond}
	})
	leases := kubernetes.NewForConfigOrDie(env.Config).CoordinationV1().Leases(ns)
	holder := func() string {
		l, err := leases.Get(context.Background(), "le-"+ns, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	select {
	case <-got: // the initial reconcile's event, held by the receiver
	case <-time.After(wait):
		t.Fatal("the leader sent nothing")
	}
	if h := holder(); h != "a" {
		t.Fatalf("lease held by %q while leading, want a", h)
	}
	r.stop()
	// Released on stop, the lease was free again within a RetryPeriod; the
	// bridge's grace for the held send is 10s. Watch it for 2s (10
	// RetryPeriods) of that grace.
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if h := holder(); h != "a" {
			t.Fatalf("lease held by %q while the stopping leader's send was in flight, want a", h)
		}
	}
	close(release)
	if err := r.shutdown(); err != nil {
		t.Fatalf("leader stopped with %v", err)
	}
	if h := holder(); h != "" {
		t.Fatalf("lease held by %q after the leader stopped, want it released", h)
	}
}

// A bridge that fails while leading makes Start return its error and
// gives the lease up, rather than holding the lease with nothing running.
func TestLeaderFailsAndReleases(t *testing.T) {
	ns := namespace(t)
	r := startWith(t, "subscriptions: []\n", func(o *Options) {
		o.EmbeddedNATS = "127.0.0.1:bad" // no sinks: the bridge fails starting its embedded NATS
		o.Instance = "a"
		o.LeaderElection = &LeaderElection{Name: "le-" + ns, Namespace: ns, LeaseDuration: 2 * time.Second,
			RenewDeadline: time.Second, RetryPeriod: 200 * time.Millisecond}
	})
	select {
	case err := <-r.done:
		close(r.done)
		if err == nil || !strings.Contains(err.Error(), "embedded NATS") {
			t.Fatalf("Start returned %v, want the bridge's error about its embedded NATS", err)
		}
	case <-time.After(wait):
		t.Fatal("Start did not return after the bridge failed while leading")
	}
	l, err := kubernetes.NewForConfigOrDie(env.Config).CoordinationV1().Leases(ns).Get(context.Background(), "le-"+ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if h := l.Spec.HolderIdentity; h != nil && *h != "" {
		t.Fatalf("lease held by %q after the bridge failed, want it released", *h)
	}
}

// A subscription registered without an initial reconcile starts from a
// baseline: its record is written before the bridge reports it registered
// (ready at start, or an accepted control message), not only at the
// checkpoint store's next interval (an hour here), or a bridge stopped
// meanwhile would lose what changed before it restarted.
func TestBaselineWrittenBeforeReady(t *testing.T) {
	broker, _, _ := testenv.StartNATSStream(t, jetstream.StreamConfig{Name: "BL", Subjects: []string{"bl.>"}})
	ns := namespace(t)
	cs := kubernetes.NewForConfigOrDie(env.Config)
	for _, name := range []string{"a", "b"} {
		if _, err := cs.CoreV1().ConfigMaps(ns).Create(context.Background(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	cpPath := filepath.Join(t.TempDir(), "cp.json")
	r := start(t, fmt.Sprintf(`
sinks: [{name: js, jetstream: {url: %q}}]
routes: [{name: default, sink: js, subject: "bl.{{.Name}}"}]
checkpoint: {file: {path: %q}, interval: 1h}
subscriptions:
  - watcher: {version: v1, kind: ConfigMap, namespace: fn, name: from-file}
    watched: [{version: v1, kind: ConfigMap, namespace: %s, name: a}]
    initialReconcile: false
`, broker.URL(), cpPath, ns))
	recorded := func(w string) bool {
		b, err := os.ReadFile(cpPath)
		return err == nil && strings.Contains(string(b), `"v1/ConfigMap/fn/`+w+`"`)
	}
	if !recorded("from-file") {
		t.Error("the file's subscription has no record once the bridge started")
	}
	no := false
	err := r.b.subs.Apply(context.Background(), config.Subscription{
		Watcher:          cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "fn", Name: "from-control"},
		Watched:          []cache.Ref{{Version: "v1", Kind: "ConfigMap", Namespace: ns, Name: "b"}},
		Route:            "default",
		InitialReconcile: &no,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !recorded("from-control") {
		t.Error("the control channel's subscription has no record once applied")
	}
}

// A restart with nothing changed sends nothing with a checkpoint store, and
// one resync request per watcher without one.
func TestRestartWithAndWithoutCheckpoint(t *testing.T) {
	broker, js, stream := testenv.StartNATSStream(t, jetstream.StreamConfig{Name: "RS", Subjects: []string{"rs.>"}})
	ctx := context.Background()
	ns := namespace(t)
	cs := kubernetes.NewForConfigOrDie(env.Config)
	const watchers = 20
	var subs strings.Builder
	for i := range watchers {
		if i < 10 {
			if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint("cm", i)}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		// Half the watchers depend on objects that exist.
		fmt.Fprintf(&subs, "  - watcher: {version: v1, kind: ConfigMap, namespace: fn, name: w%d}\n    watched: [{version: v1, kind: ConfigMap, namespace: %s, name: cm%d}]\n", i, ns, i)
	}
	msgs := func() uint64 { info, _ := stream.Info(ctx); return info.State.Msgs }
	cpPath := filepath.Join(t.TempDir(), "cp.json")
	cfg := func(checkpoint string) string {
		return fmt.Sprintf("sinks: [{name: js, jetstream: {url: %q}}]\nroutes: [{name: default, sink: js, subject: \"rs.{{.Name}}\"}]\n%ssubscriptions:\n%s",
			broker.URL(), checkpoint, subs.String())
	}
	first := start(t, cfg(fmt.Sprintf("checkpoint: {file: {path: %q}, interval: 50ms}\n", cpPath)))
	eventually(t, "initial requests of the 10 watchers whose objects exist", func() bool { return msgs() == 10 })
	eventually(t, "all 20 watchers recorded, reconciled or not", func() bool {
		b, _ := os.ReadFile(cpPath)
		return strings.Count(string(b), `"v1/ConfigMap/fn/w`) == watchers
	})
	if err := first.shutdown(); err != nil {
		t.Fatal(err)
	}

	// A restart with the record and one change after it: that change
	// arrives, and nothing else does.
	want := msgs()
	restart := func(checkpoint string, change string) {
		t.Helper()
		r := start(t, cfg(checkpoint))
		eventually(t, "ready", func() bool { code, _ := r.get(t, "/readyz"); return code == http.StatusOK })
		cm, _ := cs.CoreV1().ConfigMaps(ns).Get(ctx, change, metav1.GetOptions{})
		cm.Data = map[string]string{"k": fmt.Sprint(time.Now().UnixNano())}
		if _, err := cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		want++
		eventually(t, "the change after the restart", func() bool { return msgs() >= want })
		time.Sleep(time.Second)
		if n := msgs(); n != want {
			t.Fatalf("%d events after a restart with a checkpoint and one change, want %d", n, want)
		}
		if err := r.shutdown(); err != nil {
			t.Fatal(err)
		}
	}
	restart(fmt.Sprintf("checkpoint: {file: {path: %q}, interval: 50ms}\n", cpPath), "cm3")
	// The same with the record in a JetStream key-value bucket: first a run
	// that records, then the restart.
	kv := "checkpoint: {jetstream: {sink: js, bucket: rs_test}, interval: 50ms}\n"
	// An empty bucket: the initial requests again (JetStream drops those
	// identical to the first run's: same watcher and causes, same id), and
	// every watcher recorded.
	recording := start(t, cfg(kv))
	eventually(t, "all 20 watchers recorded in the bucket", func() bool {
		b, err := js.KeyValue(ctx, "rs_test")
		if err != nil {
			return false
		}
		st, err := b.Status(ctx)
		return err == nil && st.Values() == watchers
	})
	if err := recording.shutdown(); err != nil {
		t.Fatal(err)
	}
	want = msgs()
	restart(kv, "cm5")

	// Without a checkpoint store: one resync for every watcher, at every
	// start. The second start is within JetStream's duplicate window (2
	// minutes): a resync is an occurrence, not a set of object versions,
	// so its id differs from the first start's and JetStream keeps it.
	resyncs := func(base uint64) map[string]int {
		out := map[string]int{}
		for seq := base + 1; seq <= msgs(); seq++ {
			m, err := stream.GetMsg(ctx, seq)
			if err != nil {
				t.Fatal(err)
			}
			var d event.Data
			e, err := sink.DecodeNATS(ctx, &nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data})
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(e.Data(), &d); err != nil {
				t.Fatal(err)
			}
			for _, c := range d.Causes {
				if c.Op == watch.OpResync {
					out[d.Watcher.Name]++
				}
			}
		}
		return out
	}
	for _, run := range []string{"first", "second"} {
		base := msgs()
		r := start(t, cfg(""))
		eventually(t, "one resync per watcher at the "+run+" start without a checkpoint",
			func() bool { return len(resyncs(base)) == watchers })
		for w, n := range resyncs(base) {
			if n != 1 {
				t.Errorf("%s got %d resyncs at the %s start without a checkpoint", w, n, run)
			}
		}
		if err := r.shutdown(); err != nil {
			t.Fatal(err)
		}
	}
}
