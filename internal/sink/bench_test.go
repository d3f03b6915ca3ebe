package sink

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/event"
	"github.com/depbridge/depbridge/internal/watch"
)

// Each benchmark iteration publishes benchEvents reconcile requests through
// the bridge path (event.New + Route.Target + Send, with benchSenders
// concurrent senders standing in for the engine's workers, each Send
// waiting for its ack), then the same number of same-size messages through
// the raw client, and reports both rates and their ratio.
const (
	benchEvents   = 20000
	benchSenders  = 128
	benchWatchers = 1000
)

// benchRequests are the requests of iteration iter: benchWatchers watchers,
// one cause each, ids unique across iterations (so JetStream's duplicate
// window drops nothing).
func benchRequests(iter int) []watch.Request {
	reqs := make([]watch.Request, benchEvents)
	for i := range reqs {
		reqs[i] = watch.Request{
			Watcher: cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "team-" + strconv.Itoa(i%7), Name: "watcher-" + strconv.Itoa(i%benchWatchers)},
			Causes: []watch.Cause{{
				Watched:   cache.Ref{Version: "v1", Kind: "Secret", Namespace: "team-" + strconv.Itoa(i%7), Name: "db-credentials"},
				Namespace: "team-" + strconv.Itoa(i%7), Name: "db-credentials", UID: "6f1c8d2e-3b1a-4c7e-9f0a-2d4b6c8e0f12",
				ResourceVersion: strconv.Itoa(iter*benchEvents + i), Op: watch.OpModified,
			}},
			Enqueued: time.Unix(1700000000, 0),
		}
	}
	return reqs
}

// runBridge sends reqs through route with benchSenders goroutines and
// returns how long it took.
func runBridge(b *testing.B, route *Route, reqs []watch.Request) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range benchSenders {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(len(reqs)) {
					return
				}
				e, err := event.New(reqs[i], event.Options{Cluster: "bench", Instance: "b"})
				if err != nil {
					b.Error(err)
					return
				}
				tgt, err := route.Target(reqs[i].Watcher)
				if err != nil {
					b.Error(err)
					return
				}
				if err := route.Sink.Send(ctx, tgt, e); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}

// natsSize is the wire size of a message's headers and data.
func natsSize(m *nats.Msg) int {
	n := len(m.Data) + len("NATS/1.0\r\n\r\n")
	for k, vs := range m.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

func reportRates(b *testing.B, bridge, raw time.Duration) {
	n := float64(b.N * benchEvents)
	events, rawRate := n/bridge.Seconds(), n/raw.Seconds()
	b.ReportMetric(events, "events/s")
	b.ReportMetric(rawRate, "raw/s")
	b.ReportMetric(events/rawRate, "ratio")
	b.ReportMetric(benchSenders, "senders")
	b.ReportMetric(0, "ns/op") // the rates above are the result
}

func BenchmarkJetStream(b *testing.B) {
	srv := startNATS(b, 0, b.TempDir())
	_, js := connectJS(b, srv.ClientURL())
	createStream(b, js, "BENCH", "bench.>")
	s := newJetStreamSink(b, srv.ClientURL(), "BENCH", nil)
	route, err := NewRoute(config.Route{Name: "bench", Sink: "js", Subject: "bench.{{.Kind}}.{{.Namespace}}.{{.Name}}"},
		config.Sink{Name: "js", JetStream: &config.JetStream{}}, s)
	if err != nil {
		b.Fatal(err)
	}
	sample, _ := event.New(benchRequests(0)[0], event.Options{Cluster: "bench", Instance: "b"})
	m, _ := encodeNATS(context.Background(), "x", Binary, &sample)
	payload := make([]byte, natsSize(m))
	b.ReportMetric(float64(len(payload)), "bytes/msg")

	var bridge, raw time.Duration
	for i := 0; i < b.N; i++ {
		reqs := benchRequests(i)
		bridge += runBridge(b, route, reqs)

		var failed atomic.Int64
		start := time.Now()
		for j := range benchEvents {
			f, err := js.PublishAsync("bench.raw."+strconv.Itoa(j%benchWatchers), payload)
			if err != nil {
				b.Fatal(err)
			}
			_ = f
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(time.Minute):
			b.Fatal("raw publishes not acked within a minute")
		}
		raw += time.Since(start)
		if failed.Load() > 0 {
			b.Fatalf("%d raw publishes failed", failed.Load())
		}
	}
	reportRates(b, bridge, raw)
}

func BenchmarkKafka(b *testing.B) {
	const partitions = 8
	c := startKafka(b, 0, "", kfake.NumBrokers(1), kfake.SeedTopics(partitions, "bench"))
	addr := c.ListenAddrs()[0]
	s := newKafkaSink(b, addr)
	route, err := NewRoute(config.Route{Name: "bench", Sink: "k", Subject: "bench"}, config.Sink{Name: "k", Kafka: &config.Kafka{}}, s)
	if err != nil {
		b.Fatal(err)
	}
	w := &kafka.Writer{
		Addr: kafka.TCP(addr), Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll, Async: false,
		BatchTimeout: defaultBatchTimeout, BatchSize: kafkaBatchSize, BatchBytes: kafkaBatchBytes,
	}
	defer w.Close()
	sample, _ := event.New(benchRequests(0)[0], event.Options{Cluster: "bench", Instance: "b"})
	km, _ := encodeKafka(context.Background(), "bench", Binary, &sample)
	size := len(km.Value)
	for _, h := range km.Headers {
		size += len(h.Key) + len(h.Value)
	}
	b.ReportMetric(float64(size), "bytes/msg")
	msgs := make([]kafka.Message, benchEvents)
	for j := range msgs {
		msgs[j] = kafka.Message{Topic: "bench", Key: []byte("v1/ConfigMap/ns/watcher-" + strconv.Itoa(j%benchWatchers)), Value: make([]byte, size-len(km.Key))}
	}

	var bridge, raw time.Duration
	for i := 0; i < b.N; i++ {
		bridge += runBridge(b, route, benchRequests(i))
		start := time.Now()
		if err := w.WriteMessages(context.Background(), msgs...); err != nil {
			b.Fatal(err)
		}
		raw += time.Since(start)
	}
	reportRates(b, bridge, raw)
}

// BenchmarkEncode measures the encode path of one event: event.New,
// Route.Target and the binding writer, per transport and mode.
func BenchmarkEncode(b *testing.B) {
	req := benchRequests(0)[0]
	natsRoute, _ := NewRoute(config.Route{Name: "r", Sink: "s"}, config.Sink{Name: "s", JetStream: &config.JetStream{}}, nil)
	kafkaRoute, _ := NewRoute(config.Route{Name: "r", Sink: "s", Subject: "bench"}, config.Sink{Name: "s", Kafka: &config.Kafka{}}, nil)
	ctx := context.Background()
	for _, mode := range []Mode{Binary, Structured} {
		b.Run("nats/"+mode.String(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				e, _ := event.New(req, event.Options{})
				t, _ := natsRoute.Target(req.Watcher)
				if _, err := encodeNATS(ctx, t.Subject, mode, &e); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("kafka/"+mode.String(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				e, _ := event.New(req, event.Options{})
				t, _ := kafkaRoute.Target(req.Watcher)
				if _, err := encodeKafka(ctx, t.Subject, mode, &e); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
