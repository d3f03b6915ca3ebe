package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/depbridge/depbridge/internal/testenv"
)

// These tests run the bridge binary, built once for the package, against a
// real kube-apiserver and an in-process NATS server.
var (
	binary     string
	env        *testenv.Env
	kubeconfig string
)

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "depbridge-e2e-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binary = filepath.Join(dir, "bridge")
		if out, err := exec.Command("go", "build", "-race", "-o", binary, ".").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build the bridge: %v\n%s", err, out)
			return 1
		}
		if env, err = testenv.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e tests:", err)
			return 1
		}
		defer func() { _ = env.Stop() }()
		kubeconfig = filepath.Join(dir, "kubeconfig")
		if err := env.WriteKubeconfig(kubeconfig); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestValidate(t *testing.T) {
	good := writeFile(t, "good.yaml", "routes: [{name: default, sink: default}]\n")
	bad := writeFile(t, "bad.yaml", "routes: [{name: default, sink: nowhere}]\nsubscriptions:\n  - watcher: {version: v1, kind: ConfigMap, name: w}\n    watched: [{version: v1, kind: ConfigMap, selector: 'a in (b'}]\n    colour: blue\n")
	tests := map[string]struct {
		args     []string
		code     int
		out, err []string
	}{
		"good":     {args: []string{good}, code: 0, out: []string{good + ": ok"}},
		"bad":      {args: []string{bad}, code: 1, err: []string{bad + ":5:5: subscriptions[0].colour: unknown field"}},
		"both":     {args: []string{good, bad}, code: 1, out: []string{": ok"}, err: []string{"colour"}},
		"no args":  {args: nil, code: 2, err: []string{"usage: bridge validate"}},
		"missing":  {args: []string{"/no/such/file.yaml"}, code: 1, err: []string{"/no/such/file.yaml"}},
		"examples": {args: []string{"../../config/examples/demo.yaml", "../../config/examples/nats.yaml"}, code: 0, out: []string{"demo.yaml: ok", "nats.yaml: ok"}},
	}
	for name, tc := range tests {
		cmd := exec.Command(binary, append([]string{"validate"}, tc.args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code {
			t.Errorf("%s: exit %d, want %d; stderr: %s", name, code, tc.code, stderr.String())
		}
		for _, want := range tc.out {
			if !strings.Contains(stdout.String(), want) {
				t.Errorf("%s: stdout %q lacks %q", name, stdout.String(), want)
			}
		}
		for _, want := range tc.err {
			if !strings.Contains(stderr.String(), want) {
				t.Errorf("%s: stderr %q lacks %q", name, stderr.String(), want)
			}
		}
	}
	// Every validation problem is reported, each with its position.
	invalid := writeFile(t, "invalid.yaml", "routes: [{name: default, sink: nowhere}]\nsubscriptions:\n  - watcher: {version: v1, kind: ConfigMap, name: w}\n    watched: [{version: v1, kind: ConfigMap, selector: 'a in (b'}]\n")
	out, _ := exec.Command(binary, "validate", invalid).CombinedOutput()
	for _, want := range []string{invalid + ":1:", "nowhere", invalid + ":4:", "selector"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("validate output lacks %q:\n%s", want, out)
		}
	}
}

// The binary, configured from the environment, publishes a reconcile
// request for a ConfigMap change to JetStream, serves /readyz and /metrics,
// and exits 0 on SIGTERM.
func TestRun(t *testing.T) {
	broker, _, stream := testenv.StartNATSStream(t, jetstream.StreamConfig{Name: "E2E", Subjects: []string{"e2e.>"}})
	ctx := context.Background()
	cs := kubernetes.NewForConfigOrDie(env.Config)
	if _, err := cs.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "e2e"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := writeFile(t, "bridge.yaml", fmt.Sprintf(`
cluster: e2e
sinks: [{name: js, jetstream: {url: %q}}]
routes: [{name: default, sink: js, subject: "e2e.{{.Name}}", mode: structured}]
subscriptions:
  - watcher: {group: apps, version: v1, kind: Deployment, namespace: default, name: app}
    watched: [{version: v1, kind: ConfigMap, namespace: default, name: e2e}]
`, broker.URL()))
	addr := freePort(t)
	cmd := exec.Command(binary, "run")
	cmd.Env = append(os.Environ(), "DEPBRIDGE_CONFIG="+cfg, "DEPBRIDGE_KUBECONFIG="+kubeconfig,
		"DEPBRIDGE_LISTEN="+addr, "DEPBRIDGE_LOG_FORMAT=json")
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			t.Logf("bridge output:\n%s", logs.String())
		}
	}()

	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("bridge not ready: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The initial reconcile, then one for an update.
	waitMsgs := func(n uint64) {
		t.Helper()
		for {
			info, err := stream.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.State.Msgs >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d events in the stream, want %d", info.State.Msgs, n)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitMsgs(1)
	cm, _ := cs.CoreV1().ConfigMaps("default").Get(ctx, "e2e", metav1.GetOptions{})
	cm.Data = map[string]string{"k": "v"}
	if _, err := cs.CoreV1().ConfigMaps("default").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The update's event (the start-up resync may be an event of its own).
	var msg *jetstream.RawStreamMsg
	for seq := uint64(1); msg == nil; seq++ {
		waitMsgs(seq)
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(m.Data), `"op":"modified"`) {
			msg = m
		}
	}
	for _, want := range []string{`"type":"io.depbridge.reconcile.v1"`, `"subject":"apps/v1/Deployment/default/app"`, `"op":"modified"`, `"source":"depbridge://e2e/`} {
		if !strings.Contains(string(msg.Data), want) {
			t.Errorf("event %s lacks %s", msg.Data, want)
		}
	}
	if msg.Subject != "e2e.app" {
		t.Errorf("subject %q, want e2e.app", msg.Subject)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"depbridge_api_streams 1", "depbridge_watchers 1", "workqueue_adds_total", "go_goroutines"} {
		if !strings.Contains(body.String(), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("bridge did not exit within 30s of SIGTERM")
	}
	if !strings.Contains(logs.String(), `"msg":"stopped"`) {
		t.Errorf("no stop log line in JSON logs")
	}
}

// A configuration error stops the program at once with its position.
func TestRunInvalidConfig(t *testing.T) {
	cfg := writeFile(t, "bad.yaml", "listen: [not, a, string]\n")
	out, err := exec.Command(binary, "run", "--config", cfg, "--kubeconfig", kubeconfig).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit = %v, want 1", err)
	}
	if !strings.Contains(string(out), cfg+":1:9: listen") {
		t.Errorf("output lacks the error's position: %s", out)
	}
	out, err = exec.Command(binary, "run").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "--config is required") {
		t.Errorf("run without --config: %v %s", err, out)
	}
}

// bridge rbac prints, from the cluster's discovery, RBAC for exactly what
// the configuration watches, bound to the ServiceAccount, with the Lease
// for leader election.
func TestRBACCommand(t *testing.T) {
	cfg := writeFile(t, "bridge.yaml", `
routes: [{name: default, sink: default}]
subscriptions:
  - watcher: {version: v1, kind: ConfigMap, namespace: apps, name: w}
    watched:
      - {version: v1, kind: ConfigMap, namespace: apps, name: settings}
      - {version: v1, kind: Secret, namespace: apps, selector: "app=web"}
`)
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(binary, "rbac", "--config", cfg, "--kubeconfig", kubeconfig, "--namespace", "bridge-ns", "--leader-elect")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bridge rbac: %v\n%s", err, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"kind: Role", "namespace: apps", "configmaps", "secrets", "- watch", "kind: RoleBinding",
		"- kind: ServiceAccount\n  name: depbridge\n  namespace: bridge-ns", "leases", "coordination.k8s.io"} {
		if !strings.Contains(out, want) {
			t.Errorf("rbac output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "ClusterRole\n") {
		t.Errorf("namespaced watches should not need a ClusterRole:\n%s", out)
	}
}

// metricValue reads one unlabelled metric from a running binary.
func metricValue(t *testing.T, addr, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	for _, line := range strings.Split(body.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

// The binary follows its configuration file: subscriptions added and
// removed without a restart; a broken file is rejected and the running
// configuration stays.
func TestReloadThroughTheBinary(t *testing.T) {
	sub := func(name string) string {
		return fmt.Sprintf("  - {watcher: {version: v1, kind: ConfigMap, namespace: fn, name: %s}, watched: [{version: v1, kind: ConfigMap, namespace: default, name: %s}]}\n", name, name)
	}
	cfg := writeFile(t, "bridge.yaml", "routes: [{name: default, sink: default}]\nsubscriptions:\n"+sub("one"))
	p := startProcess(t, cfg)
	waitMetric := func(name, want string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for metricValue(t, p.addr, name) != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s = %q, want %s", name, metricValue(t, p.addr, name), want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitMetric("depbridge_watchers", "1")
	if err := os.WriteFile(cfg, []byte("routes: [{name: default, sink: default}]\nsubscriptions:\n"+sub("two")+sub("three")), 0o600); err != nil {
		t.Fatal(err)
	}
	waitMetric("depbridge_watchers", "2")
	waitMetric("depbridge_watched_refs", "2")
	if err := os.WriteFile(cfg, []byte("routes: [{name: default, sink: default}]\nsubscriptions:\n  - watcher: {kind: ConfigMap}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(p.logs.String(), "configuration file rejected") {
		if time.Now().After(deadline) {
			t.Fatal("a broken file was not reported")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := metricValue(t, p.addr, "depbridge_watchers"); got != "2" {
		t.Fatalf("watchers = %s after a broken file, want the running 2", got)
	}
	if !strings.Contains(p.logs.String(), ":3:") {
		t.Errorf("the rejection does not say where the problem is:\n%s", p.logs.String())
	}
	p.stop(t)
}
