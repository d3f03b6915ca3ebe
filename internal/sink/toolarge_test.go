package sink

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/event"
)

// eventOfSize is watcher w's event carrying a watched object of about n
// bytes, as a route with includeObjects builds it.
func eventOfSize(t testing.TB, w, n int) ce.Event {
	t.Helper()
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": "db", "namespace": "ns"},
		"data": map[string]any{"blob": strings.Repeat("x", n)},
	}}
	e, err := event.New(testRequest(w, 1), event.Options{Cluster: "test", Instance: "t", IncludeObjects: true,
		Objects: []*unstructured.Unstructured{obj}})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// startNATSLimited starts a NATS server with JetStream whose max_payload
// is maxPayload.
func startNATSLimited(t testing.TB, maxPayload int32) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(),
		MaxPayload: maxPayload, NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(s.Shutdown)
	return s
}

// Every sink marks an event refused for its size with ErrTooLarge, and
// only such a refusal: the publisher then sends it without its objects.
func TestSinksMarkTooLarge(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	small, big := eventOfSize(t, 1, 100), eventOfSize(t, 2, 8<<10)

	t.Run("jetstream max_msg_size", func(t *testing.T) {
		srv := startNATS(t, 0, t.TempDir())
		_, js := connectJS(t, srv.ClientURL())
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "LIMITED", Subjects: []string{"limited.>"}, MaxMsgSize: 4 << 10}); err != nil {
			t.Fatal(err)
		}
		s := newJetStreamSink(t, srv.ClientURL(), "LIMITED", nil)
		assertTooLarge(t, func(e ce.Event) error { return s.Send(ctx, Target{Subject: "limited.a"}, e) }, small, big)
	})
	t.Run("jetstream max_payload", func(t *testing.T) {
		srv := startNATSLimited(t, 4<<10)
		_, js := connectJS(t, srv.ClientURL())
		createStream(t, js, "EVENTS", "events.>")
		s := newJetStreamSink(t, srv.ClientURL(), "EVENTS", nil)
		assertTooLarge(t, func(e ce.Event) error { return s.Send(ctx, Target{Subject: "events.a"}, e) }, small, big)
	})
	t.Run("core nats max_payload", func(t *testing.T) {
		srv := startNATSLimited(t, 4<<10)
		s, err := NewNATS("core", config.NATS{NATSConn: config.NATSConn{URL: srv.ClientURL()}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close(ctx)
		assertTooLarge(t, func(e ce.Event) error { return s.Send(ctx, Target{Subject: "core.a"}, e) }, small, big)
	})
	t.Run("http 413", func(t *testing.T) {
		rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request, _ int) bool {
			if r.ContentLength > 4<<10 {
				w.WriteHeader(http.StatusRequestEntityTooLarge)
				return false
			}
			return true
		})
		s := newHTTPSink(t, rc.URL, 5*time.Second, nil)
		assertTooLarge(t, func(e ce.Event) error { return s.Send(ctx, Target{}, e) }, small, big)
	})
	t.Run("http 422", func(t *testing.T) {
		rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request, _ int) bool {
			w.WriteHeader(http.StatusUnprocessableEntity)
			return false
		})
		s := newHTTPSink(t, rc.URL, 5*time.Second, nil)
		if err := s.Send(ctx, Target{}, big); err == nil || errors.Is(err, ErrTooLarge) {
			t.Errorf("Send = %v, want an error that is not ErrTooLarge", err)
		}
	})
}

// assertTooLarge checks that send accepts small and refuses big with
// ErrTooLarge, in both modes.
func assertTooLarge(t *testing.T, send func(ce.Event) error, small, big ce.Event) {
	t.Helper()
	if err := send(small); err != nil {
		t.Fatalf("small event: %v", err)
	}
	err := send(big)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("big event: %v, want ErrTooLarge", err)
	}
	if !strings.Contains(err.Error(), big.ID()) {
		t.Errorf("error %q does not name the event", err)
	}
}
