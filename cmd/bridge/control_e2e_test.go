package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/control"
	"github.com/depbridge/depbridge/internal/event"
	"github.com/depbridge/depbridge/internal/sink"
	"github.com/depbridge/depbridge/internal/testenv"
)

// process is a running bridge binary.
type process struct {
	cmd    *exec.Cmd
	addr   string
	logs   *syncBuffer
	exited chan error
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer = testenv.SyncBuffer

// startProcess starts the binary on cfg and waits until it is ready.
func startProcess(t *testing.T, cfg string) *process {
	t.Helper()
	p := &process{addr: freePort(t), logs: &syncBuffer{}, exited: make(chan error, 1)}
	p.cmd = exec.Command(binary, "run", "--config", cfg, "--kubeconfig", kubeconfig, "--listen", p.addr)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("bridge output:\n%s", p.logs.String())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + p.addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case err := <-p.exited:
			t.Fatalf("bridge exited before ready: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("bridge not ready within 60s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (p *process) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("bridge exit: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("bridge did not stop within 30s of SIGTERM")
	}
}

func controlEvent(t *testing.T, id, typ string, data any) ce.Event {
	t.Helper()
	e := ce.New()
	e.SetID(id)
	e.SetSource("test://e2e")
	e.SetType(typ)
	if err := e.SetData("application/json", data); err != nil {
		t.Fatal(err)
	}
	return e
}

// events reads the reconcile requests stored in a stream.
func events(t *testing.T, js jetstream.JetStream, streamName string) []event.Data {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := js.OrderedConsumer(ctx, streamName, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []event.Data
	if info.NumPending == 0 {
		return nil
	}
	batch, err := c.Fetch(int(info.NumPending), jetstream.FetchMaxWait(5*time.Second))
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
	return out
}

// The control channel on NATS, through the binary: apply, query (request
// and reply), a refused message, delete, and a restart that restores the
// run-time subscriptions from the stream.
func TestControlChannelNATS(t *testing.T) {
	broker, js, _ := testenv.StartNATSStream(t, jetstream.StreamConfig{Name: "CTL_E2E", Subjects: []string{"reconcile.>"}})
	nc := js.Conn()
	ctx := context.Background()
	cs := kubernetes.NewForConfigOrDie(env.Config)
	ns := fmt.Sprintf("ctl-%d", time.Now().UnixNano()%1e9)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: map[string]string{"app": "q"}}, Data: map[string]string{"k": n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := writeFile(t, "bridge.yaml", fmt.Sprintf(`
sinks: [{name: js, jetstream: {url: %q}}]
routes: [{name: default, sink: js, subject: "reconcile.{{.Name}}"}]
control:
  sink: js
  subject: ctl
  policy:
    allow: [{kinds: [ConfigMap], namespaces: [%s]}]
`, broker.URL(), ns))
	p := startProcess(t, cfg)

	statuses := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe("ctl.status.>", statuses)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	status := func(id string) control.StatusData {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case m := <-statuses:
				e, err := sink.DecodeNATS(ctx, m)
				if err != nil {
					t.Fatal(err)
				}
				var d control.StatusData
				if err := json.Unmarshal(e.Data(), &d); err != nil {
					t.Fatal(err)
				}
				if d.RequestID == id {
					return d
				}
			case <-timeout:
				t.Fatalf("no status for %s", id)
			}
		}
	}
	publish := func(w cache.Ref, e ce.Event) {
		t.Helper()
		m, err := sink.EncodeNATS(ctx, control.WatcherSubject("ctl", w), sink.Structured, &e)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	applied := cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "fn", Name: "applied"}
	queried := cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "fn", Name: "queried"}
	cm := func(name string) cache.Ref {
		return cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: ns, Name: name}
	}
	no := false

	publish(applied, controlEvent(t, "apply-1", control.TypeApply, control.ApplyData{Watcher: applied, Watched: []cache.Ref{cm("a")}, InitialReconcile: &no}))
	if st := status("apply-1"); !st.Accepted {
		t.Fatalf("apply refused: %s", st.Reason)
	}
	q := controlEvent(t, "query-1", control.TypeQuery, control.QueryData{Watcher: queried, InitialReconcile: &no,
		Queries: []cache.Ref{{Version: "v1", Kind: "ConfigMap", Namespace: ns, Selector: "app=q"}}})
	qm, err := sink.EncodeNATS(ctx, control.QuerySubject("ctl"), sink.Structured, &q)
	if err != nil {
		t.Fatal(err)
	}
	reply, err := nc.RequestMsg(qm, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	re, err := sink.DecodeNATS(ctx, reply)
	if err != nil {
		t.Fatal(err)
	}
	var qs control.StatusData
	if err := json.Unmarshal(re.Data(), &qs); err != nil {
		t.Fatal(err)
	}
	if !qs.Accepted || len(qs.Results) != 1 || len(qs.Results[0].Objects) != 2 {
		t.Fatalf("query answer = %+v", qs)
	}
	denied := cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "fn", Name: "denied"}
	publish(denied, controlEvent(t, "apply-2", control.TypeApply, control.ApplyData{Watcher: denied,
		Watched: []cache.Ref{{Version: "v1", Kind: "Secret", Namespace: ns, Name: "s"}}}))
	if st := status("apply-2"); st.Accepted || !strings.Contains(st.Reason, "Secret") {
		t.Fatalf("a Secret without allowSecrets: %+v", st)
	}

	update := func(name string) {
		t.Helper()
		c, _ := cs.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
		c.Data["n"] = fmt.Sprint(time.Now().UnixNano())
		if _, err := cs.CoreV1().ConfigMaps(ns).Update(ctx, c, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// seen counts events per watcher name.
	seen := func() map[string]int {
		out := map[string]int{}
		for _, d := range events(t, js, "CTL_E2E") {
			out[d.Watcher.Name]++
		}
		return out
	}
	waitSeen := func(what string, ok func(map[string]int) bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !ok(seen()) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: events per watcher %v", what, seen())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	update("a")
	waitSeen("a's update reaches both run-time watchers", func(m map[string]int) bool { return m["applied"] == 1 && m["queried"] == 1 })

	// Restart: the run-time subscriptions come back from the stream, and
	// with no checkpoint store each watcher gets one resync.
	p.stop(t)
	p = startProcess(t, cfg)
	waitSeen("a resync for each restored watcher", func(m map[string]int) bool { return m["applied"] == 2 && m["queried"] == 2 })
	update("b") // only the query watches b
	waitSeen("b's update after the restart", func(m map[string]int) bool { return m["queried"] == 3 })
	update("a")
	waitSeen("a's update after the restart", func(m map[string]int) bool { return m["applied"] == 3 && m["queried"] == 4 })

	publish(applied, controlEvent(t, "delete-1", control.TypeDelete, control.DeleteData{Watcher: applied}))
	if st := status("delete-1"); !st.Accepted {
		t.Fatalf("delete refused: %s", st.Reason)
	}
	update("a")
	waitSeen("after the delete, only the query watcher", func(m map[string]int) bool { return m["queried"] == 5 })
	if got := seen()["applied"]; got != 3 {
		t.Fatalf("deleted watcher reconciled: %d events", got)
	}
	resp, err := http.Get("http://" + p.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	resp.Body.Close()
	if !strings.Contains(body.String(), "depbridge_control_") {
		t.Error("/metrics has no control channel metrics")
	}
	_ = os.Remove(cfg)
}

// The control channel on Kafka, through the binary: apply and query
// records on the compacted topic, statuses on the status topic, a refused
// record, a tombstone delete, and a restart that restores the run-time
// subscriptions from the topic.
func TestControlChannelKafka(t *testing.T) {
	broker, err := testenv.StartKafka(kfake.SeedTopics(1, "events"))
	if err != nil {
		t.Fatal(err)
	}
	defer broker.Close()
	ctx := context.Background()
	cs := kubernetes.NewForConfigOrDie(env.Config)
	ns := fmt.Sprintf("kctl-%d", time.Now().UnixNano()%1e9)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: map[string]string{"app": "q"}}, Data: map[string]string{"k": n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := writeFile(t, "bridge.yaml", fmt.Sprintf(`
sinks: [{name: k, kafka: {brokers: [%q]}}]
routes: [{name: default, sink: k, subject: events}]
control:
  sink: k
  subject: ctl
  policy:
    allow: [{kinds: [ConfigMap], namespaces: [%s]}]
`, broker.Addr(), ns))
	p := startProcess(t, cfg)

	w := &kafka.Writer{Addr: kafka.TCP(broker.Addr()), RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond, Balancer: &kafka.Hash{}}
	defer w.Close()
	send := func(watcher cache.Ref, e *ce.Event) {
		t.Helper()
		var m kafka.Message
		if e != nil {
			var err error
			if m, err = sink.EncodeKafka(ctx, "ctl", sink.Structured, e); err != nil {
				t.Fatal(err)
			}
			m.Topic = ""
		}
		m.Key = []byte(watcher.Key())
		if err := w.WriteMessages(ctx, kafka.Message{Topic: "ctl", Key: m.Key, Value: m.Value, Headers: m.Headers}); err != nil {
			t.Fatal(err)
		}
	}
	// read returns every record of a topic (one partition).
	read := func(topic string) []kafka.Message {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		conn, err := kafka.DialLeader(rctx, "tcp", broker.Addr(), topic, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		last, err := conn.ReadLastOffset()
		if err != nil {
			t.Fatal(err)
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker.Addr()}, Topic: topic, Partition: 0, MinBytes: 1, MaxBytes: 10 << 20,
			MaxWait: 100 * time.Millisecond}) // kfake holds a fetch until MaxWait (10s by default)
		defer r.Close()
		var out []kafka.Message
		for int64(len(out)) < last {
			m, err := r.ReadMessage(rctx)
			if err != nil {
				t.Fatalf("read %s: %v", topic, err)
			}
			out = append(out, m)
		}
		return out
	}
	status := func(id string) control.StatusData {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			for _, m := range read(control.StatusTopic("ctl")) {
				e, err := sink.DecodeKafka(ctx, m)
				if err != nil {
					t.Fatal(err)
				}
				var d control.StatusData
				if err := json.Unmarshal(e.Data(), &d); err != nil {
					t.Fatal(err)
				}
				if d.RequestID == id {
					return d
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("no status for %s", id)
		return control.StatusData{}
	}
	seen := func() map[string]int {
		out := map[string]int{}
		for _, m := range read("events") {
			e, err := sink.DecodeKafka(ctx, m)
			if err != nil {
				t.Fatal(err)
			}
			var d event.Data
			if err := json.Unmarshal(e.Data(), &d); err != nil {
				t.Fatal(err)
			}
			out[d.Watcher.Name]++
		}
		return out
	}
	waitSeen := func(what string, ok func(map[string]int) bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !ok(seen()) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: events per watcher %v", what, seen())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	update := func(name string) {
		t.Helper()
		c, _ := cs.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
		c.Data["n"] = fmt.Sprint(time.Now().UnixNano())
		if _, err := cs.CoreV1().ConfigMaps(ns).Update(ctx, c, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	applied := cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "fn", Name: "applied"}
	queried := cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "fn", Name: "queried"}
	denied := cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "fn", Name: "denied"}
	no := false

	e := controlEvent(t, "k-apply", control.TypeApply, control.ApplyData{Watcher: applied, InitialReconcile: &no,
		Watched: []cache.Ref{{Version: "v1", Kind: "ConfigMap", Namespace: ns, Name: "a"}}})
	send(applied, &e)
	if st := status("k-apply"); !st.Accepted {
		t.Fatalf("apply refused: %s", st.Reason)
	}
	e = controlEvent(t, "k-query", control.TypeQuery, control.QueryData{Watcher: queried, InitialReconcile: &no,
		Queries: []cache.Ref{{Version: "v1", Kind: "ConfigMap", Namespace: ns, Selector: "app=q"}}})
	send(queried, &e)
	if st := status("k-query"); !st.Accepted || len(st.Results) != 1 || len(st.Results[0].Objects) != 2 {
		t.Fatalf("query status = %+v", st)
	}
	e = controlEvent(t, "k-denied", control.TypeApply, control.ApplyData{Watcher: denied,
		Watched: []cache.Ref{{Version: "apps", Kind: "Deployment", Namespace: ns, Name: "x"}}})
	send(denied, &e)
	if st := status("k-denied"); st.Accepted || st.Reason == "" {
		t.Fatalf("a kind outside the policy: %+v", st)
	}
	update("a")
	waitSeen("a's update reaches both run-time watchers", func(m map[string]int) bool { return m["applied"] == 1 && m["queried"] == 1 })

	p.stop(t)
	startProcess(t, cfg)
	waitSeen("a resync for each restored watcher", func(m map[string]int) bool { return m["applied"] == 2 && m["queried"] == 2 })
	update("b")
	waitSeen("b's update after the restart", func(m map[string]int) bool { return m["queried"] == 3 })

	send(applied, nil) // a tombstone deletes
	deadline := time.Now().Add(30 * time.Second)
	for {
		update("a")
		time.Sleep(500 * time.Millisecond)
		m := seen()
		if m["queried"] >= 4 && m["applied"] == 2 {
			break // the delete took effect before this update
		}
		if time.Now().After(deadline) {
			t.Fatalf("the tombstone did not delete the subscription: %v", m)
		}
	}
	if _, ok := seen()["denied"]; ok {
		t.Error("a refused subscription sent events")
	}
}
