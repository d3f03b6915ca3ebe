package checkpoint

import (
	"context"
	"maps"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/testenv"
)

// Every backend keeps what is written, forgets what is deleted, and gives
// both back to a new instance (another process, after a restart); the bus
// backends also across a restart of their broker.
func TestBackends(t *testing.T) {
	broker, err := testenv.StartNATS()
	if err != nil {
		t.Fatal(err)
	}
	defer broker.Close()
	kafkaBroker, err := testenv.StartKafka()
	if err != nil {
		t.Fatal(err)
	}
	defer kafkaBroker.Close()
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
