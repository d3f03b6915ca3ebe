package main

import (
	"context"
	"encoding/json"
	"net"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2/event"
	"github.com/twmb/franz-go/pkg/kfake"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/event"
	"github.com/depbridge/depbridge/internal/sink"
	"github.com/depbridge/depbridge/internal/watch"
)

// The consumer decodes what the bridge's Kafka sink publishes, in both
// content modes, into the very events the bridge built, retries a failed
// reconcile, and commits.
func TestConsumer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	c, err := kfake.NewCluster(kfake.Ports(port), kfake.NumBrokers(1), kfake.SeedTopics(3, "depbridge.reconcile"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	brokers := c.ListenAddrs()
	bus, err := sink.NewKafka("kafka", config.Kafka{Brokers: brokers, WriteTimeout: metav1.Duration{Duration: 5 * time.Second}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close(ctx)

	sent := map[string]cloudevents.Event{}
	var order []string
	for i, mode := range []sink.Mode{sink.Binary, sink.Structured, sink.Binary} {
		req := watch.Request{
			Watcher: cache.Ref{Group: "apps", Version: "v1", Kind: "Deployment", Namespace: "shop", Name: "web"},
			Causes: []watch.Cause{{Watched: cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "shop", Name: "settings"},
				Namespace: "shop", Name: "settings", UID: "uid-1", ResourceVersion: string(rune('1' + i)), Op: watch.OpModified}},
			Enqueued: time.Unix(1700000000, 0),
		}
		e, err := event.New(req, event.Options{Cluster: "test", Instance: "bridge-0"})
		if err != nil {
			t.Fatal(err)
		}
		if err := bus.Send(ctx, sink.Target{Subject: "depbridge.reconcile", Mode: mode}, e); err != nil {
			t.Fatal(err)
		}
		sent[e.ID()] = e
		order = append(order, e.ID())
	}

	retryDelay = 10 * time.Millisecond
	got := make(chan *cloudevents.Event, 10)
	calls := 0
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, brokers, "depbridge.reconcile", "test", func(_ context.Context, e *cloudevents.Event) error {
			calls++
			if calls == 1 {
				return context.DeadlineExceeded // the first reconcile fails and is retried in place
			}
			got <- e
			return nil
		})
	}()
	// One watcher, one partition: in order, each once.
	for i := range len(sent) {
		select {
		case e := <-got:
			if e.ID() != order[i] {
				t.Fatalf("event %d is %s, want %s (order)", i, e.ID(), order[i])
			}
			if w, g := mustJSON(t, sent[e.ID()]), mustJSON(t, *e); w != g {
				t.Errorf("decoded event\n%s\nwant\n%s", g, w)
			}
			if err := reconcile(ctx, e); err != nil {
				t.Errorf("reconcile: %v", err)
			}
		case <-ctx.Done():
			t.Fatal("events not consumed")
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func mustJSON(t *testing.T, e cloudevents.Event) string {
	t.Helper()
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
