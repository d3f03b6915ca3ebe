package sink

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/event"
)

// startKafka runs an in-process one-broker Kafka (kfake) on 127.0.0.1.
// port 0 picks a free port; dataDir, when set, persists the log across a
// restart. Extra options (topics) are passed on.
func startKafka(t testing.TB, port int, dataDir string, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	if port == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	opts = append(opts, kfake.Ports(port))
	if dataDir != "" {
		opts = append(opts, kfake.DataDir(dataDir))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func newKafkaSink(t testing.TB, addr string) *Kafka {
	t.Helper()
	s, err := NewKafka("kafka", config.Kafka{Brokers: []string{addr}, WriteTimeout: durationOf(2 * time.Second)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

// record is what the consumer side sees of one Kafka record.
type record struct {
	partition int
	offset    int64
	key       string
	id        string
	seq       int
	msg       kafka.Message
}

// readTopic reads every record of topic up to the partitions' end offsets
// at the time of the call, in offset order per partition.
func readTopic(t testing.TB, addr, topic string, partitions int) []record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := &kafka.Client{Addr: kafka.TCP(addr)}
	var reqs []kafka.OffsetRequest
	for p := range partitions {
		reqs = append(reqs, kafka.LastOffsetOf(p))
	}
	offs, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		out []record
		wg  sync.WaitGroup
	)
	for _, po := range offs.Topics[topic] {
		if po.Error != nil {
			t.Fatalf("partition %d: %v", po.Partition, po.Error)
		}
		if po.LastOffset == 0 {
			continue
		}
		wg.Go(func() {
			r := kafka.NewReader(kafka.ReaderConfig{
				Brokers: []string{addr}, Topic: topic, Partition: po.Partition,
				MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 100 * time.Millisecond,
			})
			defer r.Close()
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					t.Errorf("read partition %d: %v", po.Partition, err)
					return
				}
				rec := record{partition: m.Partition, offset: m.Offset, key: string(m.Key), msg: m}
				for _, h := range m.Headers {
					if h.Key == "ce_id" {
						rec.id = string(h.Value)
					}
				}
				var d event.Data
				if err := json.Unmarshal(m.Value, &d); err == nil && len(d.Causes) > 0 {
					rec.seq, _ = strconv.Atoi(d.Causes[0].ResourceVersion)
				}
				mu.Lock()
				out = append(out, rec)
				mu.Unlock()
				if m.Offset+1 >= po.LastOffset {
					return
				}
			}
		})
	}
	wg.Wait()
	return out
}

func TestKafkaSendBothModes(t *testing.T) {
	c := startKafka(t, 0, "", kfake.NumBrokers(1), kfake.SeedTopics(1, "events"))
	addr := c.ListenAddrs()[0]
	s := newKafkaSink(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Check(ctx, []string{"events"}); err != nil {
		t.Fatal(err)
	}
	err := s.Check(ctx, []string{"missing-topic", "per-watcher.*"})
	if err == nil || !strings.Contains(err.Error(), `topic "missing-topic"`) {
		t.Errorf("Check of a missing topic: %v", err)
	}
	sent := []Mode{Binary, Structured}
	for _, mode := range sent {
		e := trickyEvent(t)
		e.SetID("event-" + mode.String())
		if err := s.Send(ctx, Target{Subject: "events", Mode: mode}, e); err != nil {
			t.Fatal(err)
		}
	}
	recs := readTopic(t, addr, "events", 1)
	if len(recs) != 2 {
		t.Fatalf("read %d records, want 2", len(recs))
	}
	for i, r := range recs {
		if r.key != "v1/ConfigMap/ns/name" {
			t.Errorf("key = %q, want the partitionkey", r.key)
		}
		e := trickyEvent(t)
		e.SetID("event-" + sent[i].String())
		assertSameEvent(t, decodeKafka(t, r.msg), e)
	}
}

// TestKafkaKeepsWatcherOrder sends the events of several watchers
// concurrently (each watcher's in sequence, as the engine does) to a topic
// with several partitions, and checks on the consumer side that each
// watcher's events are on one partition, in order.
func TestKafkaKeepsWatcherOrder(t *testing.T) {
	const partitions, watchers, perWatcher = 4, 12, 40
	c := startKafka(t, 0, "", kfake.NumBrokers(1), kfake.SeedTopics(partitions, "ordered"))
	addr := c.ListenAddrs()[0]
	s := newKafkaSink(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for w := range watchers {
		wg.Go(func() {
			for seq := range perWatcher {
				if err := s.Send(ctx, Target{Subject: "ordered"}, testEvent(t, w, seq)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	recs := readTopic(t, addr, "ordered", partitions)
	if len(recs) != watchers*perWatcher {
		t.Fatalf("read %d records, want %d", len(recs), watchers*perWatcher)
	}
	partitionOf := map[string]int{}
	last := map[string]int{}
	used := map[int]bool{}
	// readTopic returns each partition's records in offset order.
	for _, r := range recs {
		if p, ok := partitionOf[r.key]; ok && p != r.partition {
			t.Errorf("watcher %s on partitions %d and %d", r.key, p, r.partition)
		}
		partitionOf[r.key] = r.partition
		used[r.partition] = true
		if prev, ok := last[r.key]; ok && r.seq != prev+1 {
			t.Errorf("watcher %s: event %d after %d", r.key, r.seq, prev)
		}
		last[r.key] = r.seq
	}
	if len(partitionOf) != watchers {
		t.Errorf("%d keys, want %d", len(partitionOf), watchers)
	}
	if len(used) < 2 {
		t.Errorf("all watchers on one partition: the test shows nothing about per-key ordering")
	}
}

// TestKafkaSurvivesBrokerRestart stops the broker for several seconds while
// events are being sent, starts it again on the same port and data
// directory, and checks that every event is in the topic.
func TestKafkaSurvivesBrokerRestart(t *testing.T) {
	dir := t.TempDir()
	c := startKafka(t, 0, dir, kfake.SeedTopics(3, "outage"))
	addr := c.ListenAddrs()[0]
	_, portText, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portText)
	s := newKafkaSink(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	const outage = 3 * time.Second
	var restarted bool
	sent, failures := outageRun(t, ctx, s, Target{Subject: "outage"}, 20, 30,
		c.Close,
		outage,
		func() { startKafka(t, port, dir); restarted = true })
	if !restarted {
		t.Fatal("broker was not restarted")
	}
	if failures == 0 {
		t.Error("no send failed: the outage did not happen mid-stream, so this test showed nothing")
	}
	got := map[string]int{}
	for _, r := range readTopic(t, addr, "outage", 3) {
		got[r.id]++
	}
	lost, dups := 0, 0
	for id := range sent {
		if got[id] == 0 {
			lost++
		}
	}
	for _, n := range got {
		dups += n - 1
	}
	t.Logf("sent %d events, %d failed attempts during a %s outage, topic holds %d distinct (%d duplicates), lost %d",
		len(sent), failures, outage, len(got), dups, lost)
	if len(sent) != 600 || lost != 0 {
		t.Errorf("sent %d of 600, lost %d", len(sent), lost)
	}
}

func TestKafkaConfigErrors(t *testing.T) {
	tests := map[string]struct {
		cfg  config.Kafka
		want string
	}{
		"no brokers":     {config.Kafka{}, "brokers is required"},
		"bad mechanism":  {config.Kafka{Brokers: []string{"x:1"}, SASL: &config.SASL{Mechanism: "GSSAPI"}}, `unsupported mechanism "GSSAPI"`},
		"half a keypair": {config.Kafka{Brokers: []string{"x:1"}, TLS: &config.TLS{CertFile: "c.pem"}}, "certFile and keyFile go together"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := NewKafka("k", tt.cfg, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
	for _, m := range []string{"PLAIN", "SCRAM-SHA-256", "scram-sha-512"} {
		if _, err := NewKafka("k", config.Kafka{Brokers: []string{"x:1"}, SASL: &config.SASL{Mechanism: m, Username: "u", Password: "p"}}, nil); err != nil {
			t.Errorf("mechanism %s: %v", m, err)
		}
	}
}

func TestKafkaSendAfterClose(t *testing.T) {
	s := newKafkaSink(t, "127.0.0.1:1")
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), Target{Subject: "x"}, trickyEvent(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close = %v, want ErrClosed", err)
	}
}

// TestKafkaSASL checks each SASL mechanism against a broker that requires
// it, and that a wrong password fails without leaking into the error.
func TestKafkaSASL(t *testing.T) {
	for _, mech := range []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"} {
		t.Run(mech, func(t *testing.T) {
			c := startKafka(t, 0, "", kfake.NumBrokers(1), kfake.EnableSASL(), kfake.Superuser(mech, "bridge", "s3cret-pw"), kfake.SeedTopics(1, "secure"))
			addr := c.ListenAddrs()[0]
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			for _, pw := range []string{"s3cret-pw", "wrong-pw"} {
				s, err := NewKafka("k", config.Kafka{Brokers: []string{addr}, WriteTimeout: durationOf(2 * time.Second),
					SASL: &config.SASL{Mechanism: mech, Username: "bridge", Password: pw}}, nil)
				if err != nil {
					t.Fatal(err)
				}
				err = s.Send(ctx, Target{Subject: "secure"}, testEvent(t, 1, 1))
				if (pw == "s3cret-pw") != (err == nil) {
					t.Errorf("password %s: err = %v", pw, err)
				}
				if err != nil && strings.Contains(err.Error(), pw) {
					t.Errorf("error leaks the password: %v", err)
				}
				s.Close(ctx)
			}
		})
	}
}
