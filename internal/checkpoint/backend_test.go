package checkpoint

import (
	"context"
	"encoding/json"
	"maps"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/segmentio/kafka-go"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/testenv"
	"github.com/depbridge/depbridge/internal/watch"
)

// startBrokers starts an in-process NATS server with JetStream and a Kafka
// broker, stopped when the test ends.
func startBrokers(t *testing.T) (*testenv.NATS, *testenv.Kafka) {
	t.Helper()
	broker, err := testenv.StartNATS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(broker.Close)
	kafkaBroker, err := testenv.StartKafka()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kafkaBroker.Close)
	return broker, kafkaBroker
}

// Every backend keeps what is written, forgets what is deleted, and gives
// both back to a new instance (another process, after a restart); the bus
// backends also across a restart of their broker.
func TestBackends(t *testing.T) {
	broker, kafkaBroker := startBrokers(t)
	dir := t.TempDir()
	type backend struct {
		open    func(t *testing.T) Backend
		restart func(t *testing.T) // the broker, or nothing
	}
	backends := map[string]backend{
		"file": {open: func(t *testing.T) Backend { return &File{Path: filepath.Join(dir, "cp.json")} }},
		"jetstream": {
			open: func(t *testing.T) Backend {
				nc, err := nats.Connect(broker.URL(), nats.MaxReconnects(-1))
				if err != nil {
					t.Fatal(err)
				}
				return NewKV(nc, "cp_test")
			},
			restart: func(t *testing.T) {
				broker.Stop()
				if err := broker.Start(); err != nil {
					t.Fatal(err)
				}
			},
		},
		"kafka": {
			open: func(t *testing.T) Backend {
				b, err := NewKafka(config.Kafka{Brokers: []string{kafkaBroker.Addr()}}, "cp.test", nil)
				if err != nil {
					t.Fatal(err)
				}
				return b
			},
			restart: func(t *testing.T) {
				kafkaBroker.Stop()
				if err := kafkaBroker.Start(); err != nil {
					t.Fatal(err)
				}
			},
		},
	}
	for name, bk := range backends {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			b := bk.open(t)
			got, err := b.Load(ctx)
			if err != nil || len(got) != 0 {
				t.Fatalf("first load = %v, %v; want empty", got, err)
			}
			want := map[string][]byte{
				"v1/ConfigMap/ns/a":          []byte(`{"v1/ConfigMap/ns/x":[{"name":"x","uid":"u","rv":"1"}]}`),
				"apps/v1/Deployment/ns/b":    []byte(`{}`),
				"v1/ConfigMap/ns/?app=web,x": []byte(`{"k":[]}`),
			}
			if err := b.Write(ctx, want, nil); err != nil {
				t.Fatal(err)
			}
			if err := b.Write(ctx, map[string][]byte{"v1/ConfigMap/ns/a": []byte(`{"v":2}`)}, []string{"apps/v1/Deployment/ns/b"}); err != nil {
				t.Fatal(err)
			}
			want["v1/ConfigMap/ns/a"] = []byte(`{"v":2}`)
			delete(want, "apps/v1/Deployment/ns/b")
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			if bk.restart != nil {
				bk.restart(t)
			}
			again := bk.open(t)
			defer again.Close()
			got, err = again.Load(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !maps.EqualFunc(got, want, func(a, b []byte) bool { return string(a) == string(b) }) {
				t.Fatalf("reloaded %q, want %q", got, want)
			}
		})
	}
}

// A watcher whose record is over the bus's 1 MiB (10,000 objects) blocks
// neither its own delivery nor the records of the others, which a restart
// (a new Store on the same bucket or topic) loads; its last record written
// stays.
func TestOversizedRecordOnBus(t *testing.T) {
	broker, kafkaBroker := startBrokers(t)
	backends := map[string]func(t *testing.T) Backend{
		"jetstream": func(t *testing.T) Backend {
			nc, err := nats.Connect(broker.URL())
			if err != nil {
				t.Fatal(err)
			}
			return NewKV(nc, "cp_big")
		},
		"kafka": func(t *testing.T) Backend {
			b, err := NewKafka(config.Kafka{Brokers: []string{kafkaBroker.Addr()}}, "cp.big", nil)
			if err != nil {
				t.Fatal(err)
			}
			return b
		},
	}
	for name, open := range backends {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			b := open(t)
			s := New(b, Options{})
			if err := s.Load(ctx); err != nil {
				t.Fatal(err)
			}
			big, small := watcher("big"), watcher("small")
			sel := cache.Ref{Version: "v1", Kind: "ConfigMap", Selector: "*"}
			s.Acked(big, objects(sel.Key(), 10))
			if err := s.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			all := objects(sel.Key(), 10000)
			if enc, _ := json.Marshal(all); len(enc) <= 1<<20 {
				t.Fatalf("10,000 objects encode to %d bytes, not over 1 MiB", len(enc))
			}
			s.Acked(big, all)
			if err := s.Telling(ctx, small, []watch.Cause{newObject(sel, "a")}); err != nil {
				t.Fatalf("Telling for a small watcher: %v", err)
			}
			if err := s.Telling(ctx, big, []watch.Cause{newObject(sel, "b")}); err != nil {
				t.Fatalf("Telling for the oversized watcher: %v", err)
			}
			s.Acked(small, watch.View{sel.Key(): {{Namespace: "ns", Name: "c", UID: "uid-c", ResourceVersion: "2"}}})
			if err := s.Flush(ctx); err != nil {
				t.Fatalf("flush: %v", err)
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}

			b = open(t)
			defer b.Close()
			again := New(b, Options{})
			if err := again.Load(ctx); err != nil {
				t.Fatal(err)
			}
			if v, _ := again.Told(small); len(v[sel.Key()]) != 1 || v[sel.Key()][0].Name != "c" {
				t.Errorf("small's record after a restart: %+v", v)
			}
			if v, _ := again.Told(big); len(v[sel.Key()]) != 10 {
				t.Errorf("big's record after a restart holds %d objects, want the 10 last written", len(v[sel.Key()]))
			}
		})
	}
}

// A bucket an operator created keeps its settings (here history and
// memory storage, which an update could not even change) and is used.
func TestKVKeepsExistingBucket(t *testing.T) {
	broker, js := testenv.StartJetStream(t)
	ctx := context.Background()
	want := jetstream.KeyValueConfig{Bucket: "cp_ops", History: 5, Storage: jetstream.MemoryStorage, Description: "made by ops"}
	if _, err := js.CreateKeyValue(ctx, want); err != nil {
		t.Fatal(err)
	}
	open := func() Backend {
		c, err := nats.Connect(broker.URL())
		if err != nil {
			t.Fatal(err)
		}
		return NewKV(c, "cp_ops")
	}
	b := open()
	if _, err := b.Load(ctx); err != nil {
		t.Fatalf("load: %v", err)
	}
	if err := b.Write(ctx, map[string][]byte{"v1/ConfigMap/ns/a": []byte(`{}`)}, nil); err != nil {
		t.Fatalf("write: %v", err)
	}
	b.Close()
	b = open()
	defer b.Close()
	if got, err := b.Load(ctx); err != nil || string(got["v1/ConfigMap/ns/a"]) != `{}` {
		t.Fatalf("reloaded %q, %v", got, err)
	}
	kv, err := js.KeyValue(ctx, "cp_ops")
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.(*jetstream.KeyValueBucketStatus).Config()
	if cfg.History != want.History || cfg.Storage != want.Storage || cfg.Description != want.Description {
		t.Fatalf("bucket settings now history %d, storage %s, description %q; want %d, %s, %q",
			cfg.History, cfg.Storage, cfg.Description, want.History, want.Storage, want.Description)
	}
}

// A sealed bucket takes no writes: opening it fails, naming the bucket and
// the setting.
func TestKVSealedBucket(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	ctx := context.Background()
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "cp_sealed"}); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, "KV_cp_sealed")
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.Sealed = true
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	b := NewKV(js.Conn(), "cp_sealed")
	defer b.Close()
	if _, err := b.Load(ctx); err == nil || !strings.Contains(err.Error(), `"cp_sealed" is sealed`) {
		t.Fatalf("load of a sealed bucket: %v", err)
	}
}

// A Kafka topic whose max.message.bytes is below the writer's 1 MiB sets
// the limit: a record over it is not written, as over 1 MiB, and records
// that fit each but not together (the broker measures a whole record
// batch) are all written.
func TestKafkaTopicMessageLimit(t *testing.T) {
	const limit = 20000
	kafkaBroker, err := testenv.StartKafka()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kafkaBroker.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client := &kafka.Client{Addr: kafka.TCP(kafkaBroker.Addr())}
	resp, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: "cp.small", NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: []kafka.ConfigEntry{
			{ConfigName: "cleanup.policy", ConfigValue: "compact"},
			{ConfigName: "max.message.bytes", ConfigValue: strconv.Itoa(limit)},
		}}}})
	if err != nil || resp.Errors["cp.small"] != nil {
		t.Fatalf("create topic: %v %v", err, resp.Errors)
	}
	open := func() Backend {
		b, err := NewKafka(config.Kafka{Brokers: []string{kafkaBroker.Addr()}}, "cp.small", nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	sel := cache.Ref{Version: "v1", Kind: "ConfigMap", Selector: "*"}
	if enc, _ := json.Marshal(objects(sel.Key(), 200)); len(enc) <= limit {
		t.Fatalf("200 objects encode to %d bytes, not over %d", len(enc), limit)
	}
	if enc, _ := json.Marshal(objects(sel.Key(), 60)); 3*len(enc) <= limit || len(enc) > limit/2 {
		t.Fatalf("60 objects encode to %d bytes: not three over %d together, or not far under it alone", len(enc), limit)
	}

	b := open()
	s := New(b, Options{})
	if err := s.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if n := b.MaxRecordBytes(); n <= 0 || n >= limit {
		t.Errorf("MaxRecordBytes = %d, want under the topic's %d", n, limit)
	}
	big := watcher("big")
	s.Acked(big, objects(sel.Key(), 10))
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	s.Acked(big, objects(sel.Key(), 200))
	mediums := []cache.Ref{watcher("m1"), watcher("m2"), watcher("m3")}
	for _, w := range mediums {
		s.Acked(w, objects(sel.Key(), 60))
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	b = open()
	defer b.Close()
	again := New(b, Options{})
	if err := again.Load(ctx); err != nil {
		t.Fatal(err)
	}
	for _, w := range mediums {
		if v, _ := again.Told(w); len(v[sel.Key()]) != 60 {
			t.Errorf("%s's record after a restart holds %d objects, want 60", w.Name, len(v[sel.Key()]))
		}
	}
	if v, _ := again.Told(big); len(v[sel.Key()]) != 10 {
		t.Errorf("big's record after a restart holds %d objects, want the 10 last written", len(v[sel.Key()]))
	}
}

// A bucket with a TTL would expire what the bridge keeps: opening it
// fails, naming the bucket, the TTL and what to do.
func TestKVBucketWithTTL(t *testing.T) {
	_, js := testenv.StartJetStream(t)
	ctx := context.Background()
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "cp_ttl", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	b := NewKV(js.Conn(), "cp_ttl")
	defer b.Close()
	_, err := b.Load(ctx)
	if err == nil {
		t.Fatal("load of a bucket with a TTL succeeded")
	}
	for _, want := range []string{`"cp_ttl"`, "TTL of 1h0m0s", `"KV_cp_ttl"`, "max age 0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("load of a bucket with a TTL: %v; want it to say %s", err, want)
		}
	}
	if err := b.Write(ctx, map[string][]byte{"v1/ConfigMap/ns/a": []byte(`{}`)}, nil); err == nil {
		t.Error("write to a bucket with a TTL succeeded")
	}
}
