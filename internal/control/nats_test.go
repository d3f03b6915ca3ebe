package control

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/sink"
	"github.com/depbridge/depbridge/internal/watch"
)

const prefix = "depbridge.control"

// clientInbox is the inbox prefix of test clients, apart from the
// bridge's own (_INBOX).
const clientInbox = "_CLIENT"

// startNATS runs an in-process nats-server with JetStream whose data lives
// in storeDir.
func startNATS(t testing.TB, storeDir string) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: storeDir,
		NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start within 10s")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

func natsURL(s *server.Server) string {
	return fmt.Sprintf("nats://127.0.0.1:%d", s.Addr().(*net.TCPAddr).Port)
}

// natsClient is a user of the control channel.
type natsClient struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	status chan *nats.Msg
}

func newNATSClient(t testing.TB, s *server.Server) *natsClient {
	t.Helper()
	nc, err := nats.Connect(natsURL(s), nats.CustomInboxPrefix(clientInbox))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	c := &natsClient{nc: nc, js: js, status: make(chan *nats.Msg, 256)}
	if _, err := nc.ChanSubscribe(prefix+".status.>", c.status); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return c
}

// publish stores a control message in the stream on subject.
func (c *natsClient) publish(t testing.TB, subject string, e ce.Event, mode sink.Mode) {
	t.Helper()
	m, err := sink.EncodeNATS(context.Background(), subject, mode, &e)
	if err != nil {
		t.Fatal(err)
	}
	c.publishMsg(t, m)
}

func (c *natsClient) publishMsg(t testing.TB, m *nats.Msg) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.js.PublishMsg(ctx, m); err != nil {
		t.Fatalf("publish to %s: %v", m.Subject, err)
	}
}

// waitStatus returns the status event answering request id.
func (c *natsClient) waitStatus(t testing.TB, id string) (*nats.Msg, StatusData) {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case m := <-c.status:
			e := natsEvent(t, m)
			if e.Extensions()[ExtCorrelationID] == id {
				return m, statusOf(t, e)
			}
		case <-deadline:
			t.Fatalf("no status for request %q within %s", id, wait)
		}
	}
}

// noStatus checks that no status event comes within d.
func (c *natsClient) noStatus(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case m := <-c.status:
		t.Fatalf("unexpected status event on %s: %s", m.Subject, m.Data)
	case <-time.After(d):
	}
}

// natsEvent decodes a CloudEvent from a NATS message, independently of the
// package's decoder: structured iff Content-Type says so, else binary with
// percent-encoded ce- headers.
func natsEvent(t testing.TB, m *nats.Msg) ce.Event {
	t.Helper()
	e := ce.New()
	if strings.HasPrefix(m.Header.Get("Content-Type"), "application/cloudevents") {
		if err := json.Unmarshal(m.Data, &e); err != nil {
			t.Fatalf("structured event: %v", err)
		}
		return e
	}
	for k, vs := range m.Header {
		name, ok := strings.CutPrefix(k, "ce-")
		if !ok {
			continue
		}
		v, err := sink.DecodeHeaderValue(vs[0])
		if err != nil {
			t.Fatalf("header %s: %v", k, err)
		}
		setAttr(t, &e, name, v)
	}
	e.DataEncoded = m.Data
	if err := e.Validate(); err != nil {
		t.Fatalf("status event: %v", err)
	}
	return e
}

func setAttr(t testing.TB, e *ce.Event, name, v string) {
	t.Helper()
	switch name {
	case "specversion":
		if v != "1.0" {
			t.Fatalf("specversion %q", v)
		}
	case "id":
		e.SetID(v)
	case "source":
		e.SetSource(v)
	case "type":
		e.SetType(v)
	case "subject":
		e.SetSubject(v)
	case "time":
		ts, err := types.ParseTime(v)
		if err != nil {
			t.Fatal(err)
		}
		e.SetTime(ts)
	case "datacontenttype":
		e.SetDataContentType(v)
	default:
		e.SetExtension(name, v)
	}
}

// runTransport starts tr until the returned stop is called (or the test
// ends) and waits for Synced.
func runTransport(t testing.TB, tr interface {
	Start(context.Context) error
	Synced() <-chan struct{}
}) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Start(ctx) }()
	select {
	case <-tr.Synced():
	case err := <-done:
		cancel()
		t.Fatalf("Start returned before Synced: %v", err)
	case <-time.After(wait):
		cancel()
		t.Fatalf("not synced within %s", wait)
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Start: %v", err)
			}
		case <-time.After(wait):
			t.Errorf("Start did not return within %s of cancel", wait)
		}
	}
	t.Cleanup(stop)
	return stop
}

func newNATSTransport(t testing.TB, s *server.Server, h *harness, policy config.Policy) *NATS {
	t.Helper()
	tr, err := NewNATS(config.Control{Sink: "bus", Subject: prefix, Policy: policy},
		config.NATSConn{URL: natsURL(s)}, h.subs,
		Options{Logger: testLogger(t), Metrics: h.m, MessageTimeout: 20 * time.Second, Cluster: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// request sends a core-NATS query request and returns the answer.
func (c *natsClient) request(t testing.TB, e ce.Event, mode sink.Mode) (ce.Event, StatusData) {
	t.Helper()
	m, err := sink.EncodeNATS(context.Background(), prefix+".query", mode, &e)
	if err != nil {
		t.Fatal(err)
	}
	reply, err := c.nc.RequestMsg(m, wait)
	if err != nil {
		t.Fatalf("query request %s: %v", e.ID(), err)
	}
	re := natsEvent(t, reply)
	if got := re.Extensions()[ExtCorrelationID]; got != e.ID() {
		t.Fatalf("reply correlationid %v, want %s", got, e.ID())
	}
	return re, statusOf(t, re)
}

func TestNATSApplyQueryDelete(t *testing.T) {
	k := kube(t)
	ns := namespace(t, k)
	configMap(t, k, ns, "a", map[string]string{"v": "1"})
	configMap(t, k, ns, "b", map[string]string{"v": "1"})
	secret(t, k, ns, "db")
	srv := startNATS(t, t.TempDir())
	h := startEngine(t)
	tr := newNATSTransport(t, srv, h, testPolicy(true))
	runTransport(t, tr)
	c := newNATSClient(t, srv)
	w := fnRef(ns, "fn")
	subject := WatcherSubject(prefix, w)

	// Apply: the watcher depends on a; a change of a reconciles it.
	c.publish(t, subject, newEvent(t, "apply-1", TypeApply, applyData(w, cmRef(ns, "a"))), sink.Binary)
	m, st := c.waitStatus(t, "apply-1")
	if !st.Accepted || st.RequestType != TypeApply || st.Watcher == nil || *st.Watcher != w {
		t.Fatalf("apply status: %+v", st)
	}
	if m.Subject != StatusSubject(prefix, w) {
		t.Errorf("status on %s, want %s", m.Subject, StatusSubject(prefix, w))
	}
	e := natsEvent(t, m)
	if e.Subject() != w.Key() || e.Extensions()["partitionkey"] != w.Key() || e.Source() != "depbridge://test/depbridge" {
		t.Errorf("status attributes: %s", e.Context)
	}
	h.rec.waitFor(t, w, "initial of a", func(c watch.Cause) bool { return c.Op == watch.OpInitial && c.Name == "a" })
	updateConfigMap(t, k, ns, "a", map[string]string{"v": "2"})
	h.rec.waitFor(t, w, "modified a", func(c watch.Cause) bool { return c.Op == watch.OpModified && c.Name == "a" })
	if got := h.subs.routeOf(w); got != "default" {
		t.Errorf("route %q, want the control route default", got)
	}

	// Query (request/reply, structured): the reply carries the objects,
	// Secret data included since the policy allows Secrets, and the
	// watched set becomes exactly the queries.
	q := QueryData{Watcher: w, Route: "fast", Queries: []cache.Ref{
		{Version: "v1", Kind: "ConfigMap", Namespace: ns, Selector: "app=web"},
		{Version: "v1", Kind: "Secret", Namespace: ns, Name: "db"},
	}}
	_, qs := c.request(t, newEvent(t, "query-1", TypeQuery, q), sink.Structured)
	if !qs.Accepted || len(qs.Results) != 2 {
		t.Fatalf("query status: %+v", qs)
	}
	if n := len(qs.Results[0].Objects); n != 2 {
		t.Errorf("selector query found %d ConfigMaps, want 2", n)
	}
	if sec := qs.Results[1].Objects; len(sec) != 1 || sec[0]["data"] == nil {
		t.Errorf("Secret query: %v (data must be kept when Secrets are allowed)", sec)
	}
	if got, want := watchedNames(t, h.e, w), []string{"ConfigMap/a", "ConfigMap/b", "Secret/db"}; !slices.Equal(got, want) {
		t.Errorf("watched after query: %v, want %v", got, want)
	}
	// The stored copy of the query is the watcher's last message, and the
	// status went to the status subject too, once.
	if _, st := c.waitStatus(t, "query-1"); !st.Accepted {
		t.Errorf("status subject: %+v", st)
	}
	last, err := tr.stream.GetLastMsgForSubject(context.Background(), subject)
	if err != nil {
		t.Fatal(err)
	}
	if last.Header.Get("ce-id") != "" || !strings.Contains(string(last.Data), "query-1") {
		t.Errorf("last message of %s: %v %s", subject, last.Header, last.Data)
	}
	// A second query narrows the set: end-of-batch semantics.
	q.Queries = q.Queries[:1]
	q.Queries[0] = cmRef(ns, "b")
	if _, qs := c.request(t, newEvent(t, "query-2", TypeQuery, q), sink.Binary); !qs.Accepted {
		t.Fatalf("query-2: %+v", qs)
	}
	if got, want := watchedNames(t, h.e, w), []string{"ConfigMap/b"}; !slices.Equal(got, want) {
		t.Errorf("watched after query-2: %v, want %v", got, want)
	}

	// Delete: gone.
	c.publish(t, subject, newEvent(t, "delete-1", TypeDelete, DeleteData{Watcher: w}), sink.Binary)
	if _, st := c.waitStatus(t, "delete-1"); !st.Accepted {
		t.Fatalf("delete status: %+v", st)
	}
	if n := h.e.Stats().Watchers; n != 0 {
		t.Errorf("%d watchers after delete, want 0", n)
	}
	if got := h.messageCount("apply", "accepted") + h.messageCount("query", "accepted") + h.messageCount("delete", "accepted"); got != 4 {
		t.Errorf("accepted messages counted: %v, want 4", got)
	}
}

func TestNATSReplyTo(t *testing.T) {
	k := kube(t)
	ns := namespace(t, k)
	configMap(t, k, ns, "a", nil)
	configMap(t, k, ns, "b", nil)
	srv := startNATS(t, t.TempDir())
	h := startEngine(t)
	runTransport(t, newNATSTransport(t, srv, h, testPolicy(false)))
	c := newNATSClient(t, srv)
	inbox := make(chan *nats.Msg, 4)
	if _, err := c.nc.ChanSubscribe("team.replies", inbox); err != nil {
		t.Fatal(err)
	}
	w := fnRef(ns, "fn")
	e := newEvent(t, "apply-r", TypeApply, applyData(w, cmRef(ns, "a")))
	e.SetExtension(ExtReplyTo, "team.replies")
	c.publish(t, WatcherSubject(prefix, w), e, sink.Structured)
	select {
	case m := <-inbox:
		if st := statusOf(t, natsEvent(t, m)); !st.Accepted || st.RequestID != "apply-r" {
			t.Errorf("reply: %+v", st)
		}
		if ct := m.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/cloudevents+json") {
			t.Errorf("a structured request gets a structured status; Content-Type %q", ct)
		}
	case <-time.After(wait):
		t.Fatal("no status on the replyto subject")
	}
	// A replyto into the JetStream API is refused.
	e = newEvent(t, "apply-js", TypeApply, applyData(w, cmRef(ns, "b")))
	e.SetExtension(ExtReplyTo, "$JS.API.STREAM.DELETE."+DefaultStream)
	c.publish(t, WatcherSubject(prefix, w), e, sink.Binary)
	if _, st := c.waitStatus(t, "apply-js"); st.Accepted || !strings.Contains(st.Reason, "replyto") {
		t.Errorf("replyto $JS: %+v", st)
	}
	if got, want := watchedNames(t, h.e, w), []string{"ConfigMap/a"}; !slices.Equal(got, want) {
		t.Errorf("watched after the refused replyto: %v, want %v", got, want)
	}
}

// TestNATSRejected sends bad messages: each is rejected with a clear
// reason, changes nothing (the watcher keeps its subscription, and the
// stream keeps its last accepted message), and is counted.
func TestNATSRejected(t *testing.T) {
	k := kube(t)
	ns := namespace(t, k)
	configMap(t, k, ns, "a", nil)
	secret(t, k, ns, "db")
	srv := startNATS(t, t.TempDir())
	owned := fnRef(ns, "from-file")
	h := startEngine(t, owned)
	tr := newNATSTransport(t, srv, h, testPolicy(false))
	runTransport(t, tr)
	c := newNATSClient(t, srv)
	w := fnRef(ns, "fn")
	subject := WatcherSubject(prefix, w)
	c.publish(t, subject, newEvent(t, "good", TypeApply, applyData(w, cmRef(ns, "a"))), sink.Binary)
	if _, st := c.waitStatus(t, "good"); !st.Accepted {
		t.Fatalf("good apply: %+v", st)
	}
	other := fnRef(ns, "other")

	raw := func(data string, hdr ...string) *nats.Msg {
		m := nats.NewMsg(subject)
		m.Data = []byte(data)
		for i := 0; i+1 < len(hdr); i += 2 {
			m.Header.Set(hdr[i], hdr[i+1])
		}
		return m
	}
	ceHeaders := func(id, typ string) []string {
		return []string{"ce-specversion", "1.0", "ce-id", id, "ce-source", "test", "ce-type", typ, "ce-datacontenttype", "application/json"}
	}
	big := make([]cache.Ref, 0, 1200)
	for i := range 1200 {
		big = append(big, cmRef(ns, fmt.Sprintf("object-with-a-long-name-%04d", i)))
	}
	tests := []struct {
		name   string
		msg    *nats.Msg
		id     string
		reason string // metric label
		want   string // in the status reason
	}{
		{"malformed JSON", raw(`{"watcher": `, ceHeaders("bad-json", TypeApply)...), "bad-json", "invalid", "unexpected end of JSON"},
		{"unknown field", raw(`{"watcher":{"version":"v1","kind":"Function","group":"example.com","namespace":"`+ns+`","name":"fn"},"watched":[{"version":"v1","kind":"ConfigMap","namespace":"`+ns+`","name":"a"}],"bogus":1}`,
			ceHeaders("unknown-field", TypeApply)...), "unknown-field", "invalid", `unknown field "bogus"`},
		{"wrong type", raw(`{}`, ceHeaders("wrong-type", "io.depbridge.control.frobnicate.v1")...), "wrong-type", "unsupported", "frobnicate"},
		{"wrong datacontenttype", raw(`{}`, "ce-specversion", "1.0", "ce-id", "xml", "ce-source", "test", "ce-type", TypeApply, "ce-datacontenttype", "application/xml"),
			"xml", "unsupported", "application/xml"},
		{"oversized", encodeNATS(t, subject, newEvent(t, "big", TypeApply, applyData(w, big...))), "big", "too_large", "more than the 65536 allowed"},
		{"policy denies the kind", encodeNATS(t, subject, newEvent(t, "svc", TypeApply, applyData(w,
			cache.Ref{Version: "v1", Kind: "Service", Namespace: ns, Name: "a"}))), "svc", "denied", "no rule allows group \"\" (core), kind Service"},
		{"Secret without allowSecrets", encodeNATS(t, subject, newEvent(t, "sec", TypeApply, applyData(w,
			cache.Ref{Version: "v1", Kind: "Secret", Namespace: ns, Name: "db"}))), "sec", "denied", "Secrets are denied"},
		{"wrong subject", encodeNATS(t, subject, newEvent(t, "subj", TypeApply, applyData(other, cmRef(ns, "a")))), "subj", "invalid",
			"but the subject of watcher " + other.Key() + " is " + WatcherSubject(prefix, other)},
		{"unknown route", encodeNATS(t, subject, newEvent(t, "route", TypeApply, ApplyData{Watcher: w, Watched: []cache.Ref{cmRef(ns, "a")}, Route: "nope"})),
			"route", "invalid", `route "nope" does not exist`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := h.rejectedCount(tc.reason)
			c.publishMsg(t, tc.msg)
			m, st := c.waitStatus(t, tc.id)
			if st.Accepted || !strings.Contains(st.Reason, tc.want) {
				t.Errorf("status: accepted %v, reason %q; want a rejection saying %q", st.Accepted, st.Reason, tc.want)
			}
			if m.Subject != StatusSubject(prefix, w) {
				t.Errorf("status on %s", m.Subject)
			}
			if got := h.rejectedCount(tc.reason); got != before+1 {
				t.Errorf("rejected_total{reason=%q} = %v, want %v", tc.reason, got, before+1)
			}
			if got, want := watchedNames(t, h.e, w), []string{"ConfigMap/a"}; !slices.Equal(got, want) {
				t.Errorf("watched after the rejection: %v, want %v", got, want)
			}
			eventually(t, "stream restored", func() bool {
				last, err := tr.stream.GetLastMsgForSubject(context.Background(), subject)
				return err == nil && last.Header.Get(hdrRestored) != "" && strings.Contains(string(last.Data), `"name":"a"`) &&
					last.Header.Get("ce-id") == "good"
			})
		})
	}

	// Config-file watchers are refused, and their subject is purged (no
	// accepted message to restore).
	t.Run("owned watcher", func(t *testing.T) {
		before := h.rejectedCount("owned")
		osub := WatcherSubject(prefix, owned)
		c.publish(t, osub, newEvent(t, "owned", TypeApply, applyData(owned, cmRef(ns, "a"))), sink.Binary)
		_, st := c.waitStatus(t, "owned")
		if st.Accepted || !strings.Contains(st.Reason, "configuration file") {
			t.Errorf("status: %+v", st)
		}
		if got := h.rejectedCount("owned"); got != before+1 {
			t.Errorf("rejected_total{owned} = %v", got)
		}
		eventually(t, "purged", func() bool {
			_, err := tr.stream.GetLastMsgForSubject(context.Background(), osub)
			return err != nil
		})
	})

	// Query requests: an early rejection (policy) never reaches the stream.
	t.Run("query denied", func(t *testing.T) {
		before := h.rejectedCount("denied")
		_, st := c.request(t, newEvent(t, "q-sec", TypeQuery, QueryData{Watcher: w, Queries: []cache.Ref{
			{Version: "v1", Kind: "Secret", Namespace: ns, Name: "db"}}}), sink.Binary)
		if st.Accepted || !strings.Contains(st.Reason, "Secrets are denied") {
			t.Errorf("status: %+v", st)
		}
		if got := h.rejectedCount("denied"); got != before+1 {
			t.Errorf("rejected_total{denied} = %v", got)
		}
		last, err := tr.stream.GetLastMsgForSubject(context.Background(), subject)
		if err != nil || last.Header.Get("ce-id") != "good" {
			t.Errorf("the denied query reached the stream: %v %v", last, err)
		}
		_, st = c.request(t, newEvent(t, "q-apply", TypeApply, applyData(w, cmRef(ns, "a"))), sink.Binary)
		if st.Accepted || !strings.Contains(st.Reason, "takes only "+TypeQuery) {
			t.Errorf("apply on the query subject: %+v", st)
		}
		// A request that cannot be read is still answered, by its id.
		m := nats.NewMsg(prefix + ".query")
		for k, v := range map[string]string{"ce-specversion": "1.0", "ce-id": "q-bad", "ce-source": "test", "ce-type": TypeQuery} {
			m.Header.Set(k, v)
		}
		m.Data = []byte(`{"watcher":`)
		reply, err := c.nc.RequestMsg(m, wait)
		if err != nil {
			t.Fatal(err)
		}
		re := natsEvent(t, reply)
		if st := statusOf(t, re); st.Accepted || st.RequestID != "q-bad" || st.Watcher != nil || !strings.Contains(st.Reason, "data:") {
			t.Errorf("malformed query: %+v", st)
		}
		if re.Subject() != "" {
			t.Errorf("a status without a watcher has subject %q", re.Subject())
		}
	})
	if got, want := watchedNames(t, h.e, w), []string{"ConfigMap/a"}; !slices.Equal(got, want) {
		t.Errorf("watched at the end: %v, want %v", got, want)
	}
}

// TestNATSPolicyClusterScoped: a client restricted to one namespace
// cannot watch objects of cluster-scoped kinds (whose namespace the engine
// ignores) by giving that namespace.
func TestNATSPolicyClusterScoped(t *testing.T) {
	k := kube(t)
	ns := namespace(t, k)
	configMap(t, k, ns, "a", nil)
	srv := startNATS(t, t.TempDir())
	h := startEngine(t)
	tr := newNATSTransport(t, srv, h, config.Policy{Allow: []config.PolicyRule{{Groups: []string{""}, Namespaces: []string{ns}}}})
	runTransport(t, tr)
	c := newNATSClient(t, srv)
	w := fnRef(ns, "fn")
	subject := WatcherSubject(prefix, w)
	for id, ref := range map[string]cache.Ref{
		"nodes": {Version: "v1", Kind: "Node", Namespace: ns, Selector: "*"},
		"pv":    {Version: "v1", Kind: "PersistentVolume", Namespace: ns, Name: "pv1"},
	} {
		before := h.rejectedCount("denied")
		c.publish(t, subject, newEvent(t, id, TypeApply, applyData(w, ref)), sink.Binary)
		if _, st := c.waitStatus(t, id); st.Accepted || !strings.Contains(st.Reason, ref.Kind+" is cluster-scoped") {
			t.Errorf("%s: accepted %v, reason %q; want a denial", ref.Key(), st.Accepted, st.Reason)
		}
		if got := h.rejectedCount("denied"); got != before+1 {
			t.Errorf("%s: rejected_total{denied} = %v, want %v", ref.Key(), got, before+1)
		}
	}
	if n := h.e.Stats().Watchers; n != 0 {
		t.Errorf("%d watchers after the denials, want 0", n)
	}
	c.publish(t, subject, newEvent(t, "cm", TypeApply, applyData(w, cmRef(ns, "a"))), sink.Binary)
	if _, st := c.waitStatus(t, "cm"); !st.Accepted {
		t.Errorf("a ConfigMap of the namespace: %+v", st)
	}
	if got, want := watchedNames(t, h.e, w), []string{"ConfigMap/a"}; !slices.Equal(got, want) {
		t.Errorf("watched: %v, want %v", got, want)
	}
}

func encodeNATS(t testing.TB, subject string, e ce.Event) *nats.Msg {
	t.Helper()
	m, err := sink.EncodeNATS(context.Background(), subject, sink.Binary, &e)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestNATSRestart stops the bridge and starts a new one, with a fresh
// engine, over the same stream: subscriptions and query dependencies are
// back before Synced, and nothing is answered again.
func TestNATSRestart(t *testing.T) {
	k := kube(t)
	ns := namespace(t, k)
	configMap(t, k, ns, "a", nil)
	configMap(t, k, ns, "b", nil)
	configMap(t, k, ns, "c", nil)
	srv := startNATS(t, t.TempDir())
	h1 := startEngine(t)
	stop1 := runTransport(t, newNATSTransport(t, srv, h1, testPolicy(false)))
	c := newNATSClient(t, srv)

	applied, queried, deleted := fnRef(ns, "applied"), fnRef(ns, "queried"), fnRef(ns, "deleted")
	c.publish(t, WatcherSubject(prefix, applied), newEvent(t, "a1", TypeApply, ApplyData{
		Watcher: applied, Watched: []cache.Ref{cmRef(ns, "a")}, Debounce: metav1.Duration{Duration: time.Millisecond},
	}), sink.Binary)
	c.waitStatus(t, "a1")
	if _, st := c.request(t, newEvent(t, "q1", TypeQuery, QueryData{Watcher: queried, Queries: []cache.Ref{cmRef(ns, "b"), cmRef(ns, "c")}}), sink.Binary); !st.Accepted {
		t.Fatalf("query: %+v", st)
	}
	c.publish(t, WatcherSubject(prefix, deleted), newEvent(t, "d0", TypeApply, applyData(deleted, cmRef(ns, "a"))), sink.Binary)
	c.waitStatus(t, "d0")
	c.publish(t, WatcherSubject(prefix, deleted), newEvent(t, "d1", TypeDelete, DeleteData{Watcher: deleted}), sink.Binary)
	c.waitStatus(t, "d1")
	stop1()
	h1.stop()
	// Drain what the first bridge said.
	for len(c.status) > 0 {
		<-c.status
	}
	inbox := make(chan *nats.Msg, 16)
	if _, err := c.nc.ChanSubscribe(clientInbox+".>", inbox); err != nil {
		t.Fatal(err)
	}

	h2 := startEngine(t)
	runTransport(t, newNATSTransport(t, srv, h2, testPolicy(false)))
	// Synced: everything is back, at once.
	if got, want := watchedNames(t, h2.e, applied), []string{"ConfigMap/a"}; !slices.Equal(got, want) {
		t.Errorf("applied watcher after restart: %v, want %v", got, want)
	}
	if got, want := watchedNames(t, h2.e, queried), []string{"ConfigMap/b", "ConfigMap/c"}; !slices.Equal(got, want) {
		t.Errorf("queried watcher after restart: %v, want %v", got, want)
	}
	if n := h2.e.Stats().Watchers; n != 2 {
		t.Errorf("%d watchers after restart, want 2", n)
	}
	calls := h2.subs.callLog()
	slices.Sort(calls)
	want := []string{"apply " + applied.Key(), "delete " + deleted.Key(), "query " + queried.Key()}
	if !slices.Equal(calls, want) {
		t.Errorf("Subscriptions calls at replay: %v, want %v", calls, want)
	}
	// No status and no reply is sent again.
	c.noStatus(t, 300*time.Millisecond)
	select {
	case m := <-inbox:
		t.Errorf("a reply was sent again: %s %s", m.Subject, m.Data)
	default:
	}
	// And the restored watchers work.
	updateConfigMap(t, k, ns, "c", map[string]string{"v": "2"})
	h2.rec.waitFor(t, queried, "modified c", func(c watch.Cause) bool { return c.Op == watch.OpModified && c.Name == "c" })
}

func TestNATSStreamSetup(t *testing.T) {
	srv := startNATS(t, t.TempDir())
	c := newNATSClient(t, srv)
	h := &harness{subs: &engineSubs{}}
	start := func(opts Options) error {
		tr, err := NewNATS(config.Control{Sink: "bus", Subject: prefix}, config.NATSConn{URL: natsURL(srv)}, h.subs, opts)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		errc := make(chan error, 1)
		go func() { errc <- tr.Start(ctx) }()
		select {
		case err := <-errc:
			return err
		case <-tr.Synced():
			cancel()
			return <-errc
		}
	}
	ctx := context.Background()
	if err := start(Options{NoCreate: true}); err == nil || !strings.Contains(err.Error(), `stream "DEPBRIDGE_CONTROL" does not exist`) {
		t.Errorf("NoCreate, no stream: %v", err)
	}
	// An existing stream keeps its settings and gains what it lacks.
	if _, err := c.js.CreateStream(ctx, jetstream.StreamConfig{Name: DefaultStream, Subjects: []string{"other.>"}, MaxAge: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if err := start(Options{NoCreate: true}); err == nil || !strings.Contains(err.Error(), "must capture") {
		t.Errorf("NoCreate, stream without the subjects: %v", err)
	}
	if err := start(Options{}); err != nil {
		t.Fatalf("update the stream: %v", err)
	}
	s, err := c.js.Stream(ctx, DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if !slices.Equal(cfg.Subjects, []string{"other.>", prefix + ".watcher.>"}) || cfg.MaxMsgsPerSubject != 1 || cfg.MaxAge != time.Hour {
		t.Errorf("stream after update: subjects %v, max per subject %d, max age %s", cfg.Subjects, cfg.MaxMsgsPerSubject, cfg.MaxAge)
	}
	// A stream capturing the query subject would answer every request.
	if _, err := c.js.CreateStream(ctx, jetstream.StreamConfig{Name: "EVERYTHING", Subjects: []string{prefix + ".query"}}); err != nil {
		t.Fatal(err)
	}
	if err := start(Options{}); err == nil || !strings.Contains(err.Error(), `stream "EVERYTHING" captures the query subject`) {
		t.Errorf("query subject captured: %v", err)
	}
}

// TestNATSLargeStatus: a query answer larger than the server's maximum
// payload goes without its objects, saying so.
func TestNATSLargeStatus(t *testing.T) {
	k := kube(t)
	ns := namespace(t, k)
	for _, n := range []string{"a", "b", "c"} {
		configMap(t, k, ns, n, map[string]string{"blob": strings.Repeat("x", 3000)})
	}
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(), MaxPayload: 8 << 10,
		NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	h := startEngine(t)
	runTransport(t, newNATSTransport(t, s, h, testPolicy(false)))
	c := newNATSClient(t, s)
	w := fnRef(ns, "fn")
	_, st := c.request(t, newEvent(t, "big-answer", TypeQuery, QueryData{Watcher: w, Queries: []cache.Ref{
		{Version: "v1", Kind: "ConfigMap", Namespace: ns, Selector: "app=web"},
	}}), sink.Binary)
	if !st.Accepted || !st.ObjectsOmitted || len(st.Results) != 1 || len(st.Results[0].Objects) != 0 {
		t.Errorf("status: %+v", st)
	}
	if got := watchedNames(t, h.e, w); len(got) != 3 {
		t.Errorf("the query took effect anyway: watched %v", got)
	}
}

// TestNATSServerRestart: the channel outlives a restart of the NATS
// server, and handles what comes after it.
func TestNATSServerRestart(t *testing.T) {
	k := kube(t)
	ns := namespace(t, k)
	configMap(t, k, ns, "a", nil)
	configMap(t, k, ns, "b", nil)
	dir := t.TempDir()
	srv := startNATS(t, dir)
	port := srv.Addr().(*net.TCPAddr).Port
	h := startEngine(t)
	tr := newNATSTransport(t, srv, h, testPolicy(false))
	runTransport(t, tr)
	c := newNATSClient(t, srv)
	w := fnRef(ns, "fn")
	c.publish(t, WatcherSubject(prefix, w), newEvent(t, "before", TypeApply, applyData(w, cmRef(ns, "a"))), sink.Binary)
	c.waitStatus(t, "before")

	srv.Shutdown()
	srv.WaitForShutdown()
	s2, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s2.Start()
	if !s2.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not restart")
	}
	t.Cleanup(func() { s2.Shutdown(); s2.WaitForShutdown() })

	// The client reconnects too; retry the publish until the stream takes it.
	e := newEvent(t, "after", TypeApply, applyData(w, cmRef(ns, "b")))
	m := encodeNATS(t, WatcherSubject(prefix, w), e)
	eventually(t, "publish after the restart", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := c.js.PublishMsg(ctx, m)
		return err == nil
	})
	if _, st := c.waitStatus(t, "after"); !st.Accepted {
		t.Fatalf("after the restart: %+v", st)
	}
	if got, want := watchedNames(t, h.e, w), []string{"ConfigMap/b"}; !slices.Equal(got, want) {
		t.Errorf("watched: %v, want %v", got, want)
	}
	// Queries are served again too.
	if _, st := c.request(t, newEvent(t, "q-after", TypeQuery, QueryData{Watcher: w, Queries: []cache.Ref{cmRef(ns, "a")}}), sink.Binary); !st.Accepted {
		t.Errorf("query after the restart: %+v", st)
	}
}
