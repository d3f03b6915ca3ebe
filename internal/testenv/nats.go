package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATS is an in-process nats-server with JetStream that can be stopped and
// started again on the same port with the same storage, as a broker outage.
type NATS struct {
	mu   sync.Mutex
	opts server.Options
	srv  *server.Server
	dir  string
}

// StartNATS starts a server with JetStream on a free loopback port.
func StartNATS() (*NATS, error) {
	dir, err := os.MkdirTemp("", "depbridge-nats-")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	n := &NATS{dir: dir, opts: server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir, NoSigs: true, NoLog: true}}
	if err := n.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return n, nil
}

// URL of the server (the same across restarts).
func (n *NATS) URL() string {
	return "nats://" + net.JoinHostPort(n.opts.Host, strconv.Itoa(n.opts.Port))
}

// Start starts a stopped server again.
func (n *NATS) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv != nil {
		return nil
	}
	opts := n.opts
	srv, err := server.NewServer(&opts)
	if err != nil {
		return fmt.Errorf("nats-server: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return fmt.Errorf("nats-server did not start on port %d", n.opts.Port)
	}
	n.srv = srv
	return nil
}

// Stop shuts the server down; its data stays for Start.
func (n *NATS) Stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
		n.srv = nil
	}
}

// Close stops the server and removes its data.
func (n *NATS) Close() {
	n.Stop()
	_ = os.RemoveAll(n.dir)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartJetStream starts a NATS server with JetStream for a test and
// connects a JetStream client to it (both closed when it ends).
func StartJetStream(t testing.TB) (*NATS, jetstream.JetStream) {
	t.Helper()
	n, err := StartNATS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	nc, err := nats.Connect(n.URL(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return n, js
}

// StartNATSStream is StartJetStream, and creates stream cfg; it returns
// the stream too.
func StartNATSStream(t testing.TB, cfg jetstream.StreamConfig) (*NATS, jetstream.JetStream, jetstream.Stream) {
	t.Helper()
	n, js := StartJetStream(t)
	s, err := js.CreateStream(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return n, js, s
}
