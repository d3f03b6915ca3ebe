package sink

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats-server/v2/server"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/event"
	"github.com/depbridge/depbridge/internal/testenv"
	"github.com/depbridge/depbridge/internal/watch"
)

// startNATS runs an in-process nats-server with JetStream on 127.0.0.1.
// port 0 picks a free port; storeDir keeps JetStream's data across a
// restart. The server is shut down when the test ends.
func startNATS(t testing.TB, port int, storeDir string) *server.Server {
	t.Helper()
	if port == 0 {
		port = server.RANDOM_PORT
	}
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: storeDir,
		NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start within 10s")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

func natsPort(s *server.Server) int { return s.Addr().(*net.TCPAddr).Port }

// watcherRef is watcher number w of a test.
func watcherRef(w int) cache.Ref {
	return cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "ns", Name: "watcher-" + strconv.Itoa(w)}
}

// testEvent is the event of watcher w's seq-th request, built as the
// publisher builds it; its id is unique per (w, seq).
func testEvent(t testing.TB, w, seq int) ce.Event {
	t.Helper()
	e, err := event.New(testRequest(w, seq), event.Options{Cluster: "test", Instance: "t"})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// testRequest is watcher w's seq-th request.
func testRequest(w, seq int) watch.Request {
	return watch.Request{
		Watcher: watcherRef(w),
		Causes: []watch.Cause{{
			Watched:   cache.Ref{Version: "v1", Kind: "Secret", Namespace: "ns", Name: "db"},
			Namespace: "ns", Name: "db", UID: "uid-db", ResourceVersion: strconv.Itoa(seq), Op: watch.OpModified,
		}},
		Enqueued: time.Unix(1700000000, 0),
	}
}

// sendUntilAcked stands in for the engine's requeue: it sends e until Send
// returns nil, each attempt bounded by attempt, waiting backoff between
// attempts, and gives up only when ctx (the test's deadline) is done. It
// returns the number of failed attempts.
func sendUntilAcked(ctx context.Context, s Sink, t Target, e ce.Event, attempt, backoff time.Duration) (failures int, err error) {
	for {
		actx, cancel := context.WithTimeout(ctx, attempt)
		err := s.Send(actx, t, e)
		cancel()
		if err == nil {
			return failures, nil
		}
		failures++
		wait := backoff
		if d, ok := RetryAfter(err); ok {
			wait = d
		}
		select {
		case <-ctx.Done():
			return failures, fmt.Errorf("event %s not acked before the test deadline (%d failed attempts, last: %w)", e.ID(), failures, err)
		case <-time.After(wait):
		}
	}
}

// outageRun drives the events of `watchers` watchers (perWatcher each)
// through s with one goroutine per watcher (the engine never sends two
// events of one watcher at once), retrying each until acked. When a third
// of the events are acked it stops the broker; the senders send nothing
// more until it is stopped, so the rest of the stream meets the outage.
// After `outage` it starts the broker again, and the senders keep retrying
// until everything is acked. It returns the ids sent and the number of
// failed attempts.
func outageRun(t *testing.T, ctx context.Context, s Sink, tgt Target, watchers, perWatcher int,
	stop func(), outage time.Duration, start func()) (sent map[string]bool, failures int64) {
	t.Helper()
	var (
		mu      sync.Mutex
		acked   atomic.Int64
		failed  atomic.Int64
		wg      sync.WaitGroup
		once    sync.Once
		stopped = make(chan struct{})
		outDone = make(chan struct{})
	)
	sent = map[string]bool{}
	total := int64(watchers * perWatcher)
	for w := range watchers {
		wg.Go(func() {
			for seq := range perWatcher {
				if acked.Load() >= total/3 {
					once.Do(func() {
						go func() {
							defer close(outDone)
							stop()
							close(stopped)
							select {
							case <-time.After(outage):
							case <-ctx.Done():
							}
							start()
						}()
					})
					select {
					case <-stopped:
					case <-ctx.Done():
						t.Error("broker not stopped before the test deadline")
						return
					}
				}
				e := testEvent(t, w, seq)
				f, err := sendUntilAcked(ctx, s, tgt, e, 2*time.Second, 50*time.Millisecond)
				failed.Add(int64(f))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				sent[e.ID()] = true
				mu.Unlock()
				acked.Add(1)
			}
		})
	}
	wg.Wait()
	select {
	case <-outDone:
	case <-ctx.Done():
		t.Fatal("outage did not finish before the test deadline")
	}
	return sent, failed.Load()
}

// logBuffer is a concurrency-safe log destination for assertions.
type logBuffer = testenv.SyncBuffer

func testLogger(w *logBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func durationOf(d time.Duration) metav1.Duration { return metav1.Duration{Duration: d} }
