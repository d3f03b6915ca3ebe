package control

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/sink"
	"github.com/depbridge/depbridge/internal/watch"
)

const topic = "depbridge.control"

// startKafka runs an in-process one-broker Kafka (kfake) on 127.0.0.1.
func startKafka(t testing.TB, opts ...kfake.Opt) string {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1)}, opts...)...)
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()[0]
}

func newKafkaTransport(t testing.TB, addr string, h *harness, policy config.Policy, opts Options) *Kafka {
	t.Helper()
	opts.Logger, opts.Metrics, opts.MessageTimeout, opts.Cluster = testLogger(t), h.m, 20*time.Second, "test"
	tr, err := NewKafka(config.Control{Sink: "bus", Subject: topic, Policy: policy},
		config.Kafka{Brokers: []string{addr}, WriteTimeout: metav1.Duration{Duration: 5 * time.Second}}, h.subs, opts)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// kafkaClient is a user of the control channel: it produces control
// records and reads status records.
type kafkaClient struct {
	addr   string
	w      *kafka.Writer
	status chan kafka.Message
}

func newKafkaClient(t testing.TB, addr string) *kafkaClient {
	t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(addr), Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	t.Cleanup(func() { _ = w.Close() })
	c := &kafkaClient{addr: addr, w: w, status: make(chan kafka.Message, 256)}
	ctx, cancel := context.WithCancel(context.Background())
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: StatusTopic(topic), Partition: 0,
		MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 50 * time.Millisecond})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				return
			}
			c.status <- m
		}
	}()
	t.Cleanup(func() { cancel(); <-done; _ = r.Close() })
	return c
}

// produce writes a control record keyed by key (nil event: a tombstone).
func (c *kafkaClient) produce(t testing.TB, key string, e *ce.Event, mode sink.Mode) {
	t.Helper()
	m := kafka.Message{Topic: topic, Key: []byte(key)}
	if e != nil {
		var err error
		if m, err = sink.EncodeKafka(context.Background(), topic, mode, e); err != nil {
			t.Fatal(err)
		}
		m.Key = []byte(key)
	}
	c.produceMsg(t, m)
}

func (c *kafkaClient) produceMsg(t testing.TB, m kafka.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.w.WriteMessages(ctx, m); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

// waitStatus returns the status record answering request id.
func (c *kafkaClient) waitStatus(t testing.TB, id string) (kafka.Message, StatusData) {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case m := <-c.status:
			e := kafkaEvent(t, m)
			if e.Extensions()[ExtCorrelationID] == id {
				return m, statusOf(t, e)
			}
		case <-deadline:
			t.Fatalf("no status for request %q within %s", id, wait)
		}
	}
}

// kafkaEvent decodes a CloudEvent from a Kafka record, independently of
// the package's decoder.
func kafkaEvent(t testing.TB, m kafka.Message) ce.Event {
	t.Helper()
	e := ce.New()
	ct := ""
	for _, h := range m.Headers {
		if h.Key == "content-type" {
			ct = string(h.Value)
		}
	}
	if strings.HasPrefix(ct, "application/cloudevents") {
		if err := json.Unmarshal(m.Value, &e); err != nil {
			t.Fatalf("structured event: %v", err)
		}
		return e
	}
	for _, h := range m.Headers {
		if name, ok := strings.CutPrefix(h.Key, "ce_"); ok {
			setAttr(t, &e, name, string(h.Value))
		}
	}
	e.SetDataContentType(ct)
	e.DataEncoded = m.Value
	if err := e.Validate(); err != nil {
		t.Fatalf("status event: %v", err)
	}
	return e
}

// lastRecord returns the newest record of key in the control topic.
func lastRecord(t testing.TB, addr, key string) (kafka.Message, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	client := &kafka.Client{Addr: kafka.TCP(addr)}
	offs, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: {kafka.LastOffsetOf(0)}}})
	if err != nil {
		t.Fatal(err)
	}
	hwm := offs.Topics[topic][0].LastOffset
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: topic, Partition: 0, MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 50 * time.Millisecond})
	defer r.Close()
	var (
		last  kafka.Message
		found bool
	)
	for hwm > 0 {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Key) == key {
			last, found = m, true
		}
		if m.Offset+1 >= hwm {
			break
		}
	}
	return last, found
}

func TestKafkaApplyQueryDelete(t *testing.T) {
	k := kube(t)
	ns := namespace(t, k)
	configMap(t, k, ns, "a", map[string]string{"v": "1"})
	configMap(t, k, ns, "b", nil)
	secret(t, k, ns, "db")
	addr := startKafka(t)
	h := startEngine(t)
	runTransport(t, newKafkaTransport(t, addr, h, testPolicy(true), Options{}))
	c := newKafkaClient(t, addr)
	w := fnRef(ns, "fn")

	e := newEvent(t, "apply-1", TypeApply, applyData(w, cmRef(ns, "a")))
	c.produce(t, w.Key(), &e, sink.Binary)
	m, st := c.waitStatus(t, "apply-1")
	if !st.Accepted || st.Watcher == nil || *st.Watcher != w {
		t.Fatalf("apply status: %+v", st)
	}
	if string(m.Key) != w.Key() {
		t.Errorf("status key %q, want %q", m.Key, w.Key())
	}
	h.rec.waitFor(t, w, "initial of a", func(c watch.Cause) bool { return c.Op == watch.OpInitial && c.Name == "a" })
	updateConfigMap(t, k, ns, "a", map[string]string{"v": "2"})
	h.rec.waitFor(t, w, "modified a", func(c watch.Cause) bool { return c.Op == watch.OpModified && c.Name == "a" })

	// A query is a record of the topic; its status carries the results.
	e = newEvent(t, "query-1", TypeQuery, QueryData{Watcher: w, Queries: []cache.Ref{
		cmRef(ns, "b"), {Version: "v1", Kind: "Secret", Namespace: ns, Name: "db"},
	}})
	c.produce(t, w.Key(), &e, sink.Structured)
	m, st = c.waitStatus(t, "query-1")
	if !st.Accepted || len(st.Results) != 2 || len(st.Results[0].Objects) != 1 || st.Results[1].Objects[0]["data"] == nil {
		t.Fatalf("query status: %+v", st)
	}
	if ct := kafkaHeader(m, "content-type"); !strings.HasPrefix(ct, "application/cloudevents+json") {
		t.Errorf("a structured query gets a structured status; content-type %q", ct)
	}
	if got, want := watchedNames(t, h.e, w), []string{"ConfigMap/b", "Secret/db"}; !slices.Equal(got, want) {
		t.Errorf("watched after query: %v, want %v", got, want)
	}

	// Delete by tombstone.
	c.produce(t, w.Key(), nil, sink.Binary)
	if _, st := c.waitStatus(t, fmt.Sprintf("%s/0@2", topic)); !st.Accepted || st.RequestType != TypeDelete || st.Watcher == nil {
		t.Fatalf("tombstone status: %+v", st)
	}
	if n := h.e.Stats().Watchers; n != 0 {
		t.Errorf("%d watchers after the tombstone, want 0", n)
	}
	// Delete by event.
	e = newEvent(t, "apply-2", TypeApply, applyData(w, cmRef(ns, "a")))
	c.produce(t, w.Key(), &e, sink.Binary)
	c.waitStatus(t, "apply-2")
	e = newEvent(t, "delete-2", TypeDelete, DeleteData{Watcher: w})
	c.produce(t, w.Key(), &e, sink.Binary)
	if _, st := c.waitStatus(t, "delete-2"); !st.Accepted {
		t.Fatalf("delete status: %+v", st)
	}
	if n := h.e.Stats().Watchers; n != 0 {
		t.Errorf("%d watchers after the delete, want 0", n)
	}
}

func TestKafkaRejected(t *testing.T) {
	k := kube(t)
	ns := namespace(t, k)
	configMap(t, k, ns, "a", nil)
	addr := startKafka(t)
	owned := fnRef(ns, "from-file")
	h := startEngine(t, owned)
	runTransport(t, newKafkaTransport(t, addr, h, testPolicy(false), Options{}))
	c := newKafkaClient(t, addr)
	w := fnRef(ns, "fn")
	good := newEvent(t, "good", TypeApply, applyData(w, cmRef(ns, "a")))
	c.produce(t, w.Key(), &good, sink.Binary)
	if _, st := c.waitStatus(t, "good"); !st.Accepted {
		t.Fatalf("good apply: %+v", st)
	}
	rec := func(value string, hdr ...string) kafka.Message {
		m := kafka.Message{Topic: topic, Key: []byte(w.Key()), Value: []byte(value)}
		for i := 0; i+1 < len(hdr); i += 2 {
			m.Headers = append(m.Headers, kafka.Header{Key: hdr[i], Value: []byte(hdr[i+1])})
		}
		return m
	}
	ceHeaders := func(id, typ string) []string {
		return []string{"ce_specversion", "1.0", "ce_id", id, "ce_source", "test", "ce_type", typ, "content-type", "application/json"}
	}
	encode := func(key string, e ce.Event) kafka.Message {
		m, err := sink.EncodeKafka(context.Background(), topic, sink.Binary, &e)
		if err != nil {
			t.Fatal(err)
		}
		m.Key = []byte(key)
		return m
	}
	big := make([]cache.Ref, 0, 1200)
	for i := range 1200 {
		big = append(big, cmRef(ns, fmt.Sprintf("object-with-a-long-name-%04d", i)))
	}
	tests := []struct {
		name   string
		msg    kafka.Message
		id     string
		reason string
		want   string
	}{
		{"malformed JSON", rec(`{"watcher": `, ceHeaders("bad-json", TypeApply)...), "bad-json", "invalid", "unexpected end of JSON"},
		{"unknown field", rec(`{"watcher":{"group":"example.com","version":"v1","kind":"Function","namespace":"`+ns+`","name":"fn"},"queries":[{"version":"v1","kind":"ConfigMap","namespace":"`+ns+`","name":"a"}],"extra":true}`,
			ceHeaders("unknown-field", TypeQuery)...), "unknown-field", "invalid", `unknown field "extra"`},
		{"wrong type", rec(`{}`, ceHeaders("wrong-type", "io.depbridge.control.frobnicate.v1")...), "wrong-type", "unsupported", "frobnicate"},
		{"oversized", encode(w.Key(), newEvent(t, "big", TypeApply, applyData(w, big...))), "big", "too_large", "more than the 65536 allowed"},
		{"policy denies the kind", encode(w.Key(), newEvent(t, "svc", TypeApply, applyData(w, cache.Ref{Version: "v1", Kind: "Service", Namespace: ns, Name: "a"}))),
			"svc", "denied", "kind Service"},
		{"Secret without allowSecrets", encode(w.Key(), newEvent(t, "sec", TypeQuery, QueryData{Watcher: w, Queries: []cache.Ref{{Version: "v1", Kind: "Secret", Namespace: ns, Name: "db"}}})),
			"sec", "denied", "Secrets are denied"},
		{"key of another watcher", encode(w.Key(), newEvent(t, "key", TypeApply, applyData(fnRef(ns, "other"), cmRef(ns, "a")))), "key", "invalid",
			"record key \"" + w.Key() + "\", but the key of watcher"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := h.rejectedCount(tc.reason)
			c.produceMsg(t, tc.msg)
			m, st := c.waitStatus(t, tc.id)
			if st.Accepted || !strings.Contains(st.Reason, tc.want) {
				t.Errorf("status: accepted %v, reason %q; want a rejection saying %q", st.Accepted, st.Reason, tc.want)
			}
			if string(m.Key) != w.Key() {
				t.Errorf("status key %q", m.Key)
			}
			if got := h.rejectedCount(tc.reason); got != before+1 {
				t.Errorf("rejected_total{reason=%q} = %v, want %v", tc.reason, got, before+1)
			}
			if got, want := watchedNames(t, h.e, w), []string{"ConfigMap/a"}; !slices.Equal(got, want) {
				t.Errorf("watched after the rejection: %v, want %v", got, want)
			}
			last, ok := lastRecord(t, addr, w.Key())
			if !ok || kafkaHeader(last, hdrRestoredKafka) == "" || kafkaHeader(last, "ce_id") != "good" {
				t.Errorf("the topic was not put back: last record %v %s", last.Headers, last.Value)
			}
		})
	}
	t.Run("owned watcher", func(t *testing.T) {
		before := h.rejectedCount("owned")
		e := newEvent(t, "owned", TypeApply, applyData(owned, cmRef(ns, "a")))
		c.produce(t, owned.Key(), &e, sink.Binary)
		if _, st := c.waitStatus(t, "owned"); st.Accepted || !strings.Contains(st.Reason, "configuration file") {
			t.Errorf("status: %+v", st)
		}
		if got := h.rejectedCount("owned"); got != before+1 {
			t.Errorf("rejected_total{owned} = %v", got)
		}
		// Nothing accepted to restore: a tombstone follows.
		eventually(t, "tombstone", func() bool {
			last, ok := lastRecord(t, addr, owned.Key())
			return ok && last.Value == nil
		})
	})
	// Restores are the bridge's own records: not counted as requests.
	if got := h.messageCount("apply", "accepted"); got != 1 {
		t.Errorf("accepted applies counted: %v, want 1", got)
	}
}

func TestKafkaRestart(t *testing.T) {
	k := kube(t)
	ns := namespace(t, k)
	configMap(t, k, ns, "a", nil)
	configMap(t, k, ns, "b", nil)
	addr := startKafka(t)
	h1 := startEngine(t)
	stop1 := runTransport(t, newKafkaTransport(t, addr, h1, testPolicy(false), Options{}))
	c := newKafkaClient(t, addr)
	applied, queried, deleted := fnRef(ns, "applied"), fnRef(ns, "queried"), fnRef(ns, "deleted")
	send := func(key string, e ce.Event) {
		c.produce(t, key, &e, sink.Binary)
		c.waitStatus(t, e.ID())
	}
	send(applied.Key(), newEvent(t, "a1", TypeApply, applyData(applied, cmRef(ns, "b"))))
	send(applied.Key(), newEvent(t, "a2", TypeApply, applyData(applied, cmRef(ns, "a"))))
	send(queried.Key(), newEvent(t, "q1", TypeQuery, QueryData{Watcher: queried, Queries: []cache.Ref{cmRef(ns, "a"), cmRef(ns, "b")}}))
	send(deleted.Key(), newEvent(t, "d0", TypeApply, applyData(deleted, cmRef(ns, "a"))))
	c.produce(t, deleted.Key(), nil, sink.Binary)
	// A rejected record is answered by a restore of a2.
	send(applied.Key(), newEvent(t, "bad", TypeApply, applyData(applied, cache.Ref{Version: "v1", Kind: "Pod", Namespace: ns, Name: "p"})))
	eventually(t, "restore", func() bool {
		last, ok := lastRecord(t, addr, applied.Key())
		return ok && kafkaHeader(last, hdrRestoredKafka) != ""
	})
	stop1()
	h1.stop()
	statusHWM := func() int64 {
		client := &kafka.Client{Addr: kafka.TCP(addr)}
		offs, err := client.ListOffsets(context.Background(), &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{StatusTopic(topic): {kafka.LastOffsetOf(0)}}})
		if err != nil {
			t.Fatal(err)
		}
		return offs.Topics[StatusTopic(topic)][0].LastOffset
	}
	before := statusHWM()

	h2 := startEngine(t)
	runTransport(t, newKafkaTransport(t, addr, h2, testPolicy(false), Options{}))
	if got, want := watchedNames(t, h2.e, applied), []string{"ConfigMap/a"}; !slices.Equal(got, want) {
		t.Errorf("applied watcher after restart: %v, want %v", got, want)
	}
	if got, want := watchedNames(t, h2.e, queried), []string{"ConfigMap/a", "ConfigMap/b"}; !slices.Equal(got, want) {
		t.Errorf("queried watcher after restart: %v, want %v", got, want)
	}
	if n := h2.e.Stats().Watchers; n != 2 {
		t.Errorf("%d watchers after restart, want 2", n)
	}
	// Only the last record of each key was handled.
	calls := h2.subs.callLog()
	slices.Sort(calls)
	if want := []string{"apply " + applied.Key(), "query " + queried.Key()}; !slices.Equal(calls, want) {
		t.Errorf("Subscriptions calls at replay: %v, want %v", calls, want)
	}
	time.Sleep(300 * time.Millisecond)
	if after := statusHWM(); after != before {
		t.Errorf("the replay produced %d status records", after-before)
	}
	updateConfigMap(t, k, ns, "b", map[string]string{"v": "2"})
	h2.rec.waitFor(t, queried, "modified b", func(c watch.Cause) bool { return c.Op == watch.OpModified && c.Name == "b" })
}

func TestKafkaTopics(t *testing.T) {
	addr := startKafka(t, kfake.SeedTopics(1, "plain"))
	h := &harness{subs: &engineSubs{}}
	start := func(opts Options, subject string) error {
		tr, err := NewKafka(config.Control{Sink: "bus", Subject: subject}, config.Kafka{Brokers: []string{addr}}, h.subs, opts)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		return tr.Start(ctx)
	}
	if err := start(Options{NoCreate: true}, "missing"); err == nil || !strings.Contains(err.Error(), `topic "missing" does not exist; create it with cleanup.policy=compact`) {
		t.Errorf("NoCreate, missing topic: %v", err)
	}
	if err := start(Options{}, "plain"); err == nil || !strings.Contains(err.Error(), "must be compacted") {
		t.Errorf("topic without compaction: %v", err)
	}
}

// A query's status that the status topic refuses for its size (its
// max.message.bytes under kafkaMaxStatusBytes) is produced again without
// the objects, so the client still gets its answer.
func TestKafkaStatusOverTopicLimit(t *testing.T) {
	k := kube(t)
	ns := namespace(t, k)
	for _, n := range []string{"a", "b", "c"} {
		configMap(t, k, ns, n, map[string]string{"blob": strings.Repeat("x", 3000)})
	}
	addr := startKafka(t)
	// Its own transport: kafka-go's default one would cache metadata
	// without the control topic, which the client below then would not
	// find.
	transport := &kafka.Transport{}
	defer transport.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(addr), Timeout: 10 * time.Second, Transport: transport}
	res, err := client.CreateTopics(context.Background(), &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: StatusTopic(topic), NumPartitions: 1, ReplicationFactor: 1,
		ConfigEntries: []kafka.ConfigEntry{{ConfigName: "max.message.bytes", ConfigValue: "8192"}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	for name, err := range res.Errors {
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
	}
	h := startEngine(t)
	runTransport(t, newKafkaTransport(t, addr, h, testPolicy(false), Options{}))
	c := newKafkaClient(t, addr)
	w := fnRef(ns, "fn")
	e := newEvent(t, "big-answer", TypeQuery, QueryData{Watcher: w, Queries: []cache.Ref{
		{Version: "v1", Kind: "ConfigMap", Namespace: ns, Selector: "app=web"},
	}})
	c.produce(t, w.Key(), &e, sink.Binary)
	if _, st := c.waitStatus(t, "big-answer"); !st.Accepted || !st.ObjectsOmitted || len(st.Results) != 1 || len(st.Results[0].Objects) != 0 {
		t.Errorf("status: %+v", st)
	}
	if got := watchedNames(t, h.e, w); len(got) != 3 {
		t.Errorf("watched %v, want the 3 ConfigMaps", got)
	}
}
