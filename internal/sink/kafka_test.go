package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

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
// directory, and checks that every event is in the topic. Sixty watchers
// send at once, so the records of each partition share produce requests
// when the broker goes away and when it comes back.
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
	sent, failures := outageRun(t, ctx, s, Target{Subject: "outage"}, 60, 10,
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

// produceCounter counts the produce requests a kfake cluster handles and
// the records in them.
type produceCounter struct {
	mu       sync.Mutex
	requests int
	records  int
	largest  int
	// largestBytes is the size of the largest record batch, as the broker
	// measures it against max.message.bytes.
	largestBytes int
	// over counts the record batches larger than limit, when limit is set.
	limit, over int
}

func countProduce(t testing.TB, c *kfake.Cluster) *produceCounter {
	t.Helper()
	pc := &produceCounter{}
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		n, size := 0, 0
		for _, topic := range req.(*kmsg.ProduceRequest).Topics {
			for _, p := range topic.Partitions {
				var batch kmsg.RecordBatch
				if err := batch.ReadFrom(p.Records); err != nil {
					t.Errorf("produce request with an unreadable record batch: %v", err)
				}
				n += int(batch.NumRecords)
				size = max(size, len(p.Records))
			}
		}
		pc.mu.Lock()
		pc.requests++
		pc.records += n
		pc.largest = max(pc.largest, n)
		pc.largestBytes = max(pc.largestBytes, size)
		if pc.limit > 0 && size > pc.limit {
			pc.over++
		}
		pc.mu.Unlock()
		return nil, nil, false // let the cluster handle it
	})
	return pc
}

func (pc *produceCounter) get() (requests, records, largest int) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.requests, pc.records, pc.largest
}

// TestKafkaBatchesConcurrentSends sends from many goroutines at once, each
// a watcher sending its events in sequence (as the engine does), to a
// topic with several partitions. Every Send must be acknowledged, records
// must share produce requests (no timer is involved: the default
// batchTimeout is 0), and each watcher's records must be on one
// partition, in the order they were sent.
func TestKafkaBatchesConcurrentSends(t *testing.T) {
	const partitions, watchers, perWatcher = 4, 64, 25
	c := startKafka(t, 0, "", kfake.NumBrokers(1), kfake.SeedTopics(partitions, "batched"))
	addr := c.ListenAddrs()[0]
	pc := countProduce(t, c)
	s := newKafkaSink(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for w := range watchers {
		wg.Go(func() {
			for seq := range perWatcher {
				if err := s.Send(ctx, Target{Subject: "batched"}, testEvent(t, w, seq)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	requests, records, largest := pc.get()
	t.Logf("%d records in %d produce requests (largest %d)", records, requests, largest)
	if records != watchers*perWatcher {
		t.Errorf("broker received %d records, want %d", records, watchers*perWatcher)
	}
	if largest < 2 || requests >= records {
		t.Errorf("%d records in %d requests, the largest with %d: concurrent Sends did not share requests", records, requests, largest)
	}
	recs := readTopic(t, addr, "batched", partitions)
	if len(recs) != watchers*perWatcher {
		t.Fatalf("read %d records, want %d", len(recs), watchers*perWatcher)
	}
	partitionOf := map[string]int{}
	next := map[string]int{}
	for _, r := range recs { // in offset order per partition
		// The records of a request share the buffers their headers are
		// written into: each must still decode to the very event sent.
		w, err := strconv.Atoi(strings.TrimPrefix(r.key, "v1/ConfigMap/ns/watcher-"))
		if err != nil {
			t.Fatalf("record key %q is not a test watcher's", r.key)
		}
		assertSameEvent(t, decodeKafka(t, r.msg), testEvent(t, w, r.seq))
		if p, ok := partitionOf[r.key]; ok && p != r.partition {
			t.Errorf("watcher %s on partitions %d and %d", r.key, p, r.partition)
		}
		partitionOf[r.key] = r.partition
		if r.seq != next[r.key] {
			t.Errorf("watcher %s: event %d where %d was due", r.key, r.seq, next[r.key])
		}
		next[r.key] = r.seq + 1
	}
	used := map[int]bool{}
	for _, p := range partitionOf {
		used[p] = true
	}
	if len(used) != partitions {
		t.Errorf("watchers on %d of %d partitions", len(used), partitions)
	}
}

// TestKafkaPartitionsLikeHashBalancer checks that records land on the
// partition kafka-go's Hash balancer (and sarama's) picks for their key.
func TestKafkaPartitionsLikeHashBalancer(t *testing.T) {
	const partitions = 5
	c := startKafka(t, 0, "", kfake.NumBrokers(1), kfake.SeedTopics(partitions, "hashed"))
	addr := c.ListenAddrs()[0]
	s := newKafkaSink(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for w := range 20 {
		if err := s.Send(ctx, Target{Subject: "hashed"}, testEvent(t, w, 0)); err != nil {
			t.Fatal(err)
		}
	}
	ids := []int{0, 1, 2, 3, 4}
	for _, r := range readTopic(t, addr, "hashed", partitions) {
		if want := (&kafka.Hash{}).Balance(kafka.Message{Key: []byte(r.key)}, ids...); r.partition != want {
			t.Errorf("key %s on partition %d, kafka.Hash picks %d", r.key, r.partition, want)
		}
	}
}

// holdProduce makes the cluster hold every produce request until release
// is called; held receives a value as each one is held, and records counts
// the records in them.
func holdProduce(c *kfake.Cluster) (held <-chan struct{}, records *atomic.Int64, release func()) {
	h := make(chan struct{}, 1000)
	r := make(chan struct{})
	records = &atomic.Int64{}
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		for _, topic := range req.(*kmsg.ProduceRequest).Topics {
			for _, p := range topic.Partitions {
				var batch kmsg.RecordBatch
				if batch.ReadFrom(p.Records) == nil {
					records.Add(int64(batch.NumRecords))
				}
			}
		}
		select {
		case h <- struct{}{}:
		default:
		}
		c.SleepControl(func() { <-r })
		return nil, nil, false
	})
	var once sync.Once
	return h, records, func() { once.Do(func() { close(r) }) }
}

// queued is how many records s holds that are not yet in a request.
func (s *Kafka) queued() int {
	s.p.mu.RLock()
	defer s.p.mu.RUnlock()
	n := 0
	for _, q := range s.p.queues {
		q.mu.Lock()
		n += len(q.pending)
		q.mu.Unlock()
	}
	return n
}

// waitFor polls cond until it holds or ctx is done.
func waitFor(t testing.TB, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

// TestKafkaCloseWaitsForInFlightSends closes the sink while produce
// requests are held by the broker: Close must wait for them, every Send
// must then be acknowledged and its record in the topic.
func TestKafkaCloseWaitsForInFlightSends(t *testing.T) {
	const partitions, senders = 3, 30
	c := startKafka(t, 0, "", kfake.NumBrokers(1), kfake.SeedTopics(partitions, "closing"))
	addr := c.ListenAddrs()[0]
	s := newKafkaSink(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Reach the broker first, so that the partitions are known.
	if err := s.Check(ctx, []string{"closing"}); err != nil {
		t.Fatal(err)
	}
	_, held, release := holdProduce(c)
	defer release()

	sent := make(chan error, senders)
	for w := range senders {
		go func() { sent <- s.Send(ctx, Target{Subject: "closing"}, testEvent(t, w, 0)) }()
	}
	// Every Send is under way: its record held by the broker or queued
	// behind a held request.
	waitFor(t, ctx, "every record is held or queued", func() bool { return int(held.Load())+s.queued() == senders })
	closed := make(chan error, 1)
	go func() { closed <- s.Close(ctx) }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while produce requests were held", err)
	case err := <-sent:
		t.Fatalf("a Send returned (%v) while produce requests were held", err)
	default:
	}
	release()
	for range senders {
		if err := <-sent; err != nil {
			t.Errorf("Send during Close: %v", err)
		}
	}
	if err := <-closed; err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := s.Send(ctx, Target{Subject: "closing"}, testEvent(t, 0, 1)); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close = %v, want ErrClosed", err)
	}
	if got := len(readTopic(t, addr, "closing", partitions)); got != senders {
		t.Errorf("topic holds %d records, want %d", got, senders)
	}
}

// TestKafkaCloseBoundedByContext closes the sink while the broker holds
// its produce requests and never answers: Close must return when its ctx
// is done, with an error, and the Sends must fail rather than hang.
func TestKafkaCloseBoundedByContext(t *testing.T) {
	c := startKafka(t, 0, "", kfake.NumBrokers(1), kfake.SeedTopics(2, "stuck"))
	addr := c.ListenAddrs()[0]
	s := newKafkaSink(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Check(ctx, []string{"stuck"}); err != nil {
		t.Fatal(err)
	}
	held, _, release := holdProduce(c)
	defer release()
	const senders = 10
	sent := make(chan error, senders)
	for w := range senders {
		go func() { sent <- s.Send(ctx, Target{Subject: "stuck"}, testEvent(t, w, 0)) }()
	}
	<-held
	closeCtx, closeCancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer closeCancel()
	if err := s.Close(closeCtx); err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close with produce requests held = %v, want the deadline", err)
	}
	for range senders {
		select {
		case err := <-sent:
			if !errors.Is(err, ErrClosed) {
				t.Errorf("Send aborted by Close = %v, want ErrClosed", err)
			}
		case <-ctx.Done():
			t.Fatal("Sends still blocked after Close returned")
		}
	}
}

// TestKafkaFollowsLeaderMove moves a partition's leader to another broker
// between two Sends: the second gets NOT_LEADER_FOR_PARTITION from the old
// leader, refreshes the metadata and succeeds on the new leader within the
// same Send.
func TestKafkaFollowsLeaderMove(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.SeedTopics(1, "moving"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addr := c.ListenAddrs()[0]
	s := newKafkaSink(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Send(ctx, Target{Subject: "moving"}, testEvent(t, 1, 0)); err != nil {
		t.Fatal(err)
	}
	old := c.LeaderFor("moving", 0)
	if err := c.MoveTopicPartition("moving", 0, (old+1)%3); err != nil {
		t.Fatal(err)
	}
	pc := countProduce(t, c)
	if err := s.Send(ctx, Target{Subject: "moving"}, testEvent(t, 1, 1)); err != nil {
		t.Fatalf("Send after the leader moved: %v", err)
	}
	if requests, _, _ := pc.get(); requests < 2 {
		t.Errorf("%d produce requests: the old leader was not asked first, so the test showed nothing", requests)
	}
	if got := len(readTopic(t, addr, "moving", 1)); got != 2 {
		t.Errorf("topic holds %d records, want 2", got)
	}
}

// TestKafkaFindsTopicCreatedLater sends to a topic that does not exist,
// then creates it: a retry must find it without waiting for the metadata
// to expire.
func TestKafkaFindsTopicCreatedLater(t *testing.T) {
	c := startKafka(t, 0, "", kfake.NumBrokers(1))
	addr := c.ListenAddrs()[0]
	s := newKafkaSink(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := testEvent(t, 1, 0)
	err := s.Send(ctx, Target{Subject: "later"}, e)
	if err == nil || !strings.Contains(err.Error(), `topic "later"`) {
		t.Fatalf("Send to a missing topic = %v", err)
	}
	resp, err := (&kafka.Client{Addr: kafka.TCP(addr)}).CreateTopics(ctx, &kafka.CreateTopicsRequest{
		Topics: []kafka.TopicConfig{{Topic: "later", NumPartitions: 1, ReplicationFactor: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := resp.Errors["later"]; err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	retryCtx, retryCancel := context.WithTimeout(ctx, 4*time.Second)
	defer retryCancel()
	if _, err := sendUntilAcked(retryCtx, s, Target{Subject: "later"}, e, time.Second, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	t.Logf("found the new topic after %s", time.Since(start).Round(time.Millisecond))
}

// TestKafkaLinger checks batchTimeout: a Send waits for it, and concurrent
// Sends within it share a request.
func TestKafkaLinger(t *testing.T) {
	const linger, senders = 300 * time.Millisecond, 20
	c := startKafka(t, 0, "", kfake.NumBrokers(1), kfake.SeedTopics(1, "lingering"))
	addr := c.ListenAddrs()[0]
	s, err := NewKafka("kafka", config.Kafka{Brokers: []string{addr}, BatchTimeout: durationOf(linger)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Check(ctx, []string{"lingering"}); err != nil {
		t.Fatal(err)
	}
	pc := countProduce(t, c)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range senders {
		wg.Go(func() {
			if err := s.Send(ctx, Target{Subject: "lingering"}, testEvent(t, w, 0)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if d := time.Since(start); d < linger {
		t.Errorf("Sends returned after %s, before the %s linger", d, linger)
	}
	if requests, records, _ := pc.get(); records != senders || requests >= senders {
		t.Errorf("%d records in %d requests: the linger did not batch them", records, requests)
	}
}

// TestKafkaSeesNewPartitions adds partitions to a topic while events are
// sent: once the metadata expires, keys spread over the new partitions
// too, as kafka-go's Writer would place them.
func TestKafkaSeesNewPartitions(t *testing.T) {
	c := startKafka(t, 0, "", kfake.NumBrokers(1), kfake.SeedTopics(2, "growing"))
	addr := c.ListenAddrs()[0]
	s := newKafkaSink(t, addr)
	s.transport.MetadataTTL = 50 * time.Millisecond // before its first use
	s.p.metadataTTL = 50 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Send(ctx, Target{Subject: "growing"}, testEvent(t, 0, 0)); err != nil {
		t.Fatal(err)
	}
	resp, err := (&kafka.Client{Addr: kafka.TCP(addr)}).CreatePartitions(ctx, &kafka.CreatePartitionsRequest{
		Topics: []kafka.TopicPartitionsConfig{{Name: "growing", Count: 4}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := resp.Errors["growing"]; err != nil {
		t.Fatal(err)
	}
	// Send the events of 40 watchers (which kafka.Hash spreads over all
	// four partitions) until the new partitions receive some.
	client := &kafka.Client{Addr: kafka.TCP(addr)}
	newPartitionsUsed := func() bool {
		offs, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{
			"growing": {kafka.LastOffsetOf(2), kafka.LastOffsetOf(3)}}})
		if err != nil {
			return false
		}
		for _, po := range offs.Topics["growing"] {
			if po.Error != nil || po.LastOffset == 0 {
				return false
			}
		}
		return true
	}
	for seq := 1; !newPartitionsUsed(); seq++ {
		for w := range 40 {
			if err := s.Send(ctx, Target{Subject: "growing"}, testEvent(t, w, seq)); err != nil {
				t.Fatal(err)
			}
		}
	}
	ids := []int{0, 1, 2, 3}
	for _, r := range readTopic(t, addr, "growing", 4) {
		if r.partition < 2 {
			continue // sent before or after the change
		}
		if p := (&kafka.Hash{}).Balance(kafka.Message{Key: []byte(r.key)}, ids...); r.partition != p {
			t.Errorf("key %s on new partition %d, kafka.Hash over 4 partitions picks %d", r.key, r.partition, p)
		}
	}
}

// createTopic creates topic with partitions and the given topic configs.
func createTopic(t testing.TB, addr, topic string, partitions int, configs map[string]string) {
	t.Helper()
	var entries []kafka.ConfigEntry
	for k, v := range configs {
		entries = append(entries, kafka.ConfigEntry{ConfigName: k, ConfigValue: v})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := (&kafka.Client{Addr: kafka.TCP(addr)}).CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: partitions, ReplicationFactor: 1, ConfigEntries: entries}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := resp.Errors[topic]; err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
}

// paddedEvent is testEvent(w, seq) with an extension of n bytes, set on
// a clone: events of one watcher share their extensions (see event.New).
func paddedEvent(t testing.TB, w, seq, n int) ce.Event {
	e := testEvent(t, w, seq).Clone()
	e.SetExtension("padding", strings.Repeat("p", n))
	return e
}

// sendAsyncAndWait is one SendAsync, waited for.
func sendAsyncAndWait(ctx context.Context, s *Kafka, tgt Target, e ce.Event) error {
	result := make(chan error, 1)
	s.SendAsync(tgt, e, func(err error) { result <- err })
	select {
	case err := <-result:
		return err
	case <-ctx.Done():
		return fmt.Errorf("event %s: no answer: %w", e.ID(), ctx.Err())
	}
}

// TestKafkaSplitsBatchesOverTopicLimit sends many events of about 2 KB at
// once to a topic whose max.message.bytes (20000) is far below the
// producer's batch bytes: the broker refuses the batches that concurrent
// sends make, and the producer must split them, so that every event is
// acknowledged and written once, each watcher's in order.
func TestKafkaSplitsBatchesOverTopicLimit(t *testing.T) {
	const partitions, watchers, perWatcher, limit = 2, 64, 8, 20000
	// With the bound dropped at once (a TTL of 0), large batches are
	// refused again and again: the learned bound is what keeps refusals
	// few, and it does expire.
	for name, expire := range map[string]bool{"bound kept": false, "bound expired": true} {
		t.Run(name, func(t *testing.T) {
			c := startKafka(t, 0, "", kfake.NumBrokers(1))
			addr := c.ListenAddrs()[0]
			createTopic(t, addr, "small", partitions, map[string]string{"max.message.bytes": strconv.Itoa(limit)})
			pc := countProduce(t, c)
			pc.mu.Lock()
			pc.limit = limit
			pc.mu.Unlock()
			s := newKafkaSink(t, addr)
			if expire {
				s.p.sizeBoundTTL = 0
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			tgt := Target{Subject: "small"}
			var wg sync.WaitGroup
			for w := range watchers {
				wg.Go(func() {
					for seq := range perWatcher {
						if err := sendAsyncAndWait(ctx, s, tgt, paddedEvent(t, w, seq, 1500)); err != nil {
							t.Errorf("watcher %d event %d: %v", w, seq, err)
							return
						}
					}
				})
			}
			wg.Wait()
			requests, records, largest := pc.get()
			pc.mu.Lock()
			largestBytes, over := pc.largestBytes, pc.over
			pc.mu.Unlock()
			t.Logf("%d records in %d produce requests (largest %d records, %d bytes; %d over the limit)", records, requests, largest, largestBytes, over)
			if largestBytes <= limit {
				t.Errorf("no record batch over the topic's %d bytes: the test showed nothing", limit)
			}
			// Each partition learns from its refusals: its batches then stay
			// under half the last refused one. From 960KiB down to 20000 bytes
			// that is a handful of halvings per partition, not a refusal for
			// every large batch.
			switch {
			case !expire && over > 4*partitions:
				t.Errorf("%d batches over the topic's limit, want at most %d: the partitions do not learn the limit", over, 4*partitions)
			case expire && over <= 4*partitions:
				t.Errorf("%d batches over the topic's limit with the bound dropped at once, want more than %d: the test shows nothing", over, 4*partitions)
			}
			recs := readTopic(t, addr, "small", partitions)
			if len(recs) != watchers*perWatcher {
				t.Fatalf("read %d records, want %d", len(recs), watchers*perWatcher)
			}
			next := map[string]int{}
			for _, r := range recs { // in offset order per partition
				if r.seq != next[r.key] {
					t.Errorf("watcher %s: event %d where %d was due", r.key, r.seq, next[r.key])
				}
				next[r.key] = r.seq + 1
			}
		})
	}
}

// smallLimit is the max.message.bytes of smallTopic's topic.
const smallLimit = 20000

// smallTopic starts a broker with a one-partition topic "small" whose
// max.message.bytes is smallLimit, and a Kafka sink that checked it; it
// returns them, with the target of the topic and a context bounding the
// test.
func smallTopic(t *testing.T) (*kfake.Cluster, string, *Kafka, context.Context, Target) {
	t.Helper()
	c := startKafka(t, 0, "", kfake.NumBrokers(1))
	addr := c.ListenAddrs()[0]
	createTopic(t, addr, "small", 1, map[string]string{"max.message.bytes": strconv.Itoa(smallLimit)})
	s := newKafkaSink(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	if err := s.Check(ctx, []string{"small"}); err != nil {
		t.Fatal(err)
	}
	return c, addr, s, ctx, Target{Subject: "small"}
}

// TestKafkaRecordOverTopicLimit sends an event over the topic's
// max.message.bytes in one batch with others: it alone fails, with
// ErrTooLarge, and the others are acknowledged and written.
func TestKafkaRecordOverTopicLimit(t *testing.T) {
	const limit, others = smallLimit, 10
	c, addr, s, ctx, tgt := smallTopic(t)
	// The first event's request is held by the broker; the others queue
	// behind it and go in one batch once it is released.
	held, _, release := holdProduce(c)
	defer release()
	results := make(chan error, others+2)
	s.SendAsync(tgt, testEvent(t, 0, 0), func(err error) { results <- err })
	<-held
	big := paddedEvent(t, 1, 0, 2*limit)
	bigErr := make(chan error, 1)
	for w := range others {
		if w == others/2 {
			s.SendAsync(tgt, big, func(err error) { bigErr <- err })
		}
		s.SendAsync(tgt, testEvent(t, 2+w, 0), func(err error) { results <- err })
	}
	waitFor(t, ctx, "every record is queued", func() bool { return s.queued() == others+1 })
	release()
	for range others + 1 {
		select {
		case err := <-results:
			if err != nil {
				t.Errorf("an event under the limit failed: %v", err)
			}
		case <-ctx.Done():
			t.Fatal("no answer")
		}
	}
	select {
	case err := <-bigErr:
		if !errors.Is(err, ErrTooLarge) || !errors.Is(err, kafka.MessageSizeTooLarge) {
			t.Errorf("event over the limit: %v, want ErrTooLarge", err)
		}
	case <-ctx.Done():
		t.Fatal("no answer for the event over the limit")
	}
	if got := len(readTopic(t, addr, "small", 1)); got != others+1 {
		t.Errorf("topic holds %d records, want %d", got, others+1)
	}
}

// TestKafkaRecordOverBatchBytes sends an event larger than the producer's
// batch bytes: the broker decides. A topic whose max.message.bytes allows
// it takes it; one whose does not refuses it with ErrTooLarge.
func TestKafkaRecordOverBatchBytes(t *testing.T) {
	c := startKafka(t, 0, "", kfake.NumBrokers(1))
	addr := c.ListenAddrs()[0]
	createTopic(t, addr, "roomy", 1, map[string]string{"max.message.bytes": strconv.Itoa(4 << 20)})
	createTopic(t, addr, "default", 1, nil)
	s := newKafkaSink(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := paddedEvent(t, 0, 0, 3*kafkaMaxBatchBytes/2)
	if err := s.Send(ctx, Target{Subject: "roomy"}, e); err != nil {
		t.Errorf("to a topic with max.message.bytes 4 MiB: %v", err)
	}
	if err := s.Send(ctx, Target{Subject: "default"}, e); !errors.Is(err, ErrTooLarge) {
		t.Errorf("to a topic with the default max.message.bytes: %v, want ErrTooLarge", err)
	}
}

func TestKafkaRefusedForSize(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{kafka.MessageSizeTooLarge, true},
		{fmt.Errorf("produce: %w", kafka.RecordListTooLarge), true},
		{kafka.WriteErrors{nil, kafka.MessageSizeTooLarge}, true},
		{fmt.Errorf("write: %w", kafka.WriteErrors{kafka.MessageSizeTooLarge}), true},
		{kafka.WriteErrors{nil, kafka.LeaderNotAvailable}, false},
		{kafka.NotLeaderForPartition, false},
		{nil, false},
	} {
		if got := KafkaRefusedForSize(tt.err); got != tt.want {
			t.Errorf("KafkaRefusedForSize(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// A record whose caller gave up while its batch was being split is left
// out of the part that would have carried it, as next leaves it out of a
// batch: Send returned the context's error, so the record must not be
// written after all.
func TestKafkaSplitLeavesOutAbandonedRecords(t *testing.T) {
	c, addr, s, ctx, tgt := smallTopic(t)
	// Request 1 is held until three records queue behind it; request 2
	// carries them (24 KB) and is refused; request 3 is the first half,
	// and while it is in flight the third record's caller gives up.
	abandonCtx, abandon := context.WithCancel(ctx)
	defer abandon()
	held, release := make(chan struct{}), make(chan struct{})
	var requests atomic.Int32
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		switch requests.Add(1) {
		case 1:
			close(held)
			c.SleepControl(func() { <-release })
		case 3:
			abandon()
		}
		return nil, nil, false
	})
	results := make(chan error, 3)
	s.SendAsync(tgt, testEvent(t, 0, 0), func(err error) { results <- err })
	<-held
	for w := 1; w <= 2; w++ {
		s.SendAsync(tgt, paddedEvent(t, w, 0, 8000), func(err error) { results <- err })
	}
	abandoned := make(chan error, 1)
	go func() { abandoned <- s.Send(abandonCtx, tgt, paddedEvent(t, 3, 0, 8000)) }()
	waitFor(t, ctx, "three records queued", func() bool { return s.queued() == 3 })
	close(release)
	for range 3 {
		if err := <-results; err != nil {
			t.Errorf("a record that fits failed: %v", err)
		}
	}
	if err := <-abandoned; !errors.Is(err, context.Canceled) {
		t.Errorf("Send of the abandoned record = %v, want context.Canceled", err)
	}
	if n := requests.Load(); n != 4 {
		t.Errorf("%d produce requests, want 4 (held, refused, first half, second half)", n)
	}
	if got := len(readTopic(t, addr, "small", 1)); got != 3 {
		t.Errorf("topic holds %d records, want 3: the abandoned one was written", got)
	}
}
