package main

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/event"
	"github.com/depbridge/depbridge/internal/sink"
	"github.com/depbridge/depbridge/internal/watch"
)

// The consumer decodes what the bridge's JetStream sink publishes, in both
// content modes, into the very events the bridge built.
func TestConsumer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
		StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()

	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "DEPBRIDGE", Subjects: []string{"depbridge.reconcile.>"}}); err != nil {
		t.Fatal(err)
	}
	bus, err := sink.NewJetStream("bus", config.JetStream{NATSConn: config.NATSConn{URL: srv.ClientURL()}, Stream: "DEPBRIDGE"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close(ctx)

	// A selector watcher: its subject has spaces, percent-encoded in
	// binary mode.
	sent := map[string]cloudevents.Event{}
	for i, mode := range []sink.Mode{sink.Binary, sink.Structured} {
		req := watch.Request{
			Watcher: cache.Ref{Group: "apps", Version: "v1", Kind: "Deployment", Namespace: "shop", Selector: "tier in (api,web)"},
			Causes: []watch.Cause{{Watched: cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "shop", Name: "settings"},
				Namespace: "shop", Name: "settings", UID: "uid-1", ResourceVersion: string(rune('1' + i)), Op: watch.OpModified}},
			Enqueued: time.Unix(1700000000, 0),
		}
		e, err := event.New(req, event.Options{Cluster: "test", Instance: "bridge-0"})
		if err != nil {
			t.Fatal(err)
		}
		if err := bus.Send(ctx, sink.Target{Subject: "depbridge.reconcile.Deployment.shop._", Mode: mode}, e); err != nil {
			t.Fatal(err)
		}
		sent[e.ID()] = e
	}

	stream, err := js.Stream(ctx, "DEPBRIDGE")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := stream.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if h := raw.Header.Get("ce-subject"); h != "apps/v1/Deployment/shop/?tier%20in%20(api,web)" {
		t.Fatalf("binary mode ce-subject = %q, want it percent-encoded", h)
	}

	got := make(chan *cloudevents.Event, 10)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, srv.ClientURL(), "DEPBRIDGE", "test", "depbridge.reconcile.>", func(_ context.Context, e *cloudevents.Event) error {
			got <- e
			return nil
		})
	}()
	for range len(sent) {
		select {
		case e := <-got:
			want, ok := sent[e.ID()]
			if !ok {
				t.Fatalf("unexpected event %s", e)
			}
			if w, g := mustJSON(t, want), mustJSON(t, *e); w != g {
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
