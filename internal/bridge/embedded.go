package bridge

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/depbridge/depbridge/internal/config"
)

// EmbeddedStream is the JetStream stream the embedded server keeps events
// in, and EmbeddedSubjects what it captures: the default route's subjects.
const (
	EmbeddedStream   = "DEPBRIDGE_EVENTS"
	EmbeddedSubjects = "depbridge.reconcile.>"
)

// embedded is a NATS server with JetStream running in the bridge's process,
// for when the configuration names no broker.
type embedded struct {
	srv *server.Server
	dir string // removed on shutdown when the bridge made it
	url string
}

// startEmbedded starts the server on listen ("127.0.0.1:4222"), storing
// JetStream data in dir (a temporary directory when empty), and creates
// the events stream.
func startEmbedded(ctx context.Context, listen, dir string, log *slog.Logger) (*embedded, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS listen address %q: %w", listen, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS listen address %q: bad port: %w", listen, err)
	}
	if p == 0 {
		p = server.RANDOM_PORT // nats-server takes 0 to mean its default, 4222
	}
	e := &embedded{}
	if dir == "" {
		if dir, err = os.MkdirTemp("", "depbridge-nats-"); err != nil {
			return nil, err
		}
		e.dir = dir
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: "depbridge-embedded", Host: host, Port: p,
		JetStream: true, StoreDir: dir, NoSigs: true, NoLog: true,
	})
	if err != nil {
		e.cleanup()
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		e.cleanup()
		return nil, fmt.Errorf("embedded NATS did not start listening on %s (is the port in use? set --embedded-nats)", listen)
	}
	e.srv = srv
	e.url = srv.ClientURL()
	nc, err := nats.Connect(e.url)
	if err != nil {
		e.stop()
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		e.stop()
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: EmbeddedStream, Subjects: []string{EmbeddedSubjects},
		Storage: jetstream.FileStorage, MaxAge: 24 * time.Hour, Duplicates: 2 * time.Minute,
	}); err != nil {
		e.stop()
		return nil, fmt.Errorf("embedded NATS: create stream %s: %w", EmbeddedStream, err)
	}
	log.Info("embedded NATS server with JetStream started", "url", e.url, "stream", EmbeddedStream,
		"subscribe", fmt.Sprintf("nats --server %s sub '%s'  (or: bridge tail --nats %s)", e.url, EmbeddedSubjects, e.url))
	return e, nil
}

func (e *embedded) stop() {
	if e.srv != nil {
		e.srv.Shutdown()
		e.srv.WaitForShutdown()
	}
	e.cleanup()
}

func (e *embedded) cleanup() {
	if e.dir != "" {
		_ = os.RemoveAll(e.dir)
	}
}

// withEmbeddedSink adds to cfg the sink for the embedded server and, if
// missing, the default route to it.
func withEmbeddedSink(cfg *config.Config, url string) {
	s := config.Sink{Name: config.EmbeddedSink, JetStream: &config.JetStream{NATSConn: config.NATSConn{URL: url}, Stream: EmbeddedStream}}
	s.Default()
	cfg.Sinks = append(cfg.Sinks, s)
	for _, r := range cfg.Routes {
		if r.Name == config.DefaultRoute {
			return
		}
	}
	r := config.Route{Name: config.DefaultRoute, Sink: config.EmbeddedSink}
	cfg.Routes = append(cfg.Routes, r)
	cfg.Default()
}
