package sink

import (
	"context"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/event"
	"github.com/depbridge/depbridge/internal/watch"
)

// Each benchmark iteration runs benchRounds rounds; each round publishes
// benchEvents reconcile requests through the bridge path as the engine
// drives it (benchWorkers workers each building the event with event.New
// and Route.Target and handing it to the sink's SendAsync, at most
// benchInFlight unacknowledged: events/s); then the same events built
// beforehand, through the same SendAsync path (prebuilt/s: the bridge's
// ceiling without building events); then the same number of same-size
// messages through the raw client at its best (raw/s). Interleaving the
// three within one run keeps the ratio fair on a shared machine.
const (
	benchEvents   = 20000
	benchRounds   = 5
	benchWatchers = 1000
	// benchWorkers and benchInFlight are the engine's defaults
	// (config.Engine.Workers and MaxInFlight).
	benchWorkers  = config.DefaultWorkers
	benchInFlight = config.DefaultMaxInFlight
)

// benchRequests are the requests of round: benchWatchers watchers, one
// cause each, ids unique across rounds (so JetStream's duplicate window
// drops nothing).
func benchRequests(round int) []watch.Request {
	reqs := make([]watch.Request, benchEvents)
	for i := range reqs {
		reqs[i] = watch.Request{
			Watcher: cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "team-" + strconv.Itoa(i%7), Name: "watcher-" + strconv.Itoa(i%benchWatchers)},
			Causes: []watch.Cause{{
				Watched:   cache.Ref{Version: "v1", Kind: "Secret", Namespace: "team-" + strconv.Itoa(i%7), Name: "db-credentials"},
				Namespace: "team-" + strconv.Itoa(i%7), Name: "db-credentials", UID: "6f1c8d2e-3b1a-4c7e-9f0a-2d4b6c8e0f12",
				ResourceVersion: strconv.Itoa(round*benchEvents + i), Op: watch.OpModified,
			}},
			Enqueued: time.Unix(1700000000, 0),
		}
	}
	return reqs
}

// runPipelined calls send(i, done) for every i < n from benchWorkers
// goroutines, with at most benchInFlight sends whose done has not been
// called, the way the engine drives an AsyncReconciler, and returns how
// long it took until every done was called.
func runPipelined(b *testing.B, n int, send func(i int, done func(error))) time.Duration {
	var (
		next   atomic.Int64
		acked  sync.WaitGroup
		failed atomic.Int64
		slots  = make(chan struct{}, benchInFlight)
		done   = func(err error) {
			if err != nil && failed.Add(1) == 1 {
				b.Error(err)
			}
			<-slots
			acked.Done()
		}
	)
	acked.Add(n)
	start := time.Now()
	var workers sync.WaitGroup
	for range benchWorkers {
		workers.Go(func() {
			for {
				slots <- struct{}{}
				i := next.Add(1) - 1
				if i >= int64(n) {
					<-slots
					return
				}
				send(int(i), done)
			}
		})
	}
	workers.Wait()
	acked.Wait()
	elapsed := time.Since(start)
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d sends failed", f, n)
	}
	return elapsed
}

// runBridge sends reqs through route the way the engine and the publisher
// do: build the event, render the subject, SendAsync.
func runBridge(b *testing.B, route *Route, reqs []watch.Request) time.Duration {
	as := route.Sink.(AsyncSender)
	return runPipelined(b, len(reqs), func(i int, done func(error)) {
		e, err := event.New(reqs[i], event.Options{Cluster: "bench", Instance: "b"})
		if err != nil {
			done(err)
			return
		}
		tgt, err := route.Target(reqs[i].Watcher)
		if err != nil {
			done(err)
			return
		}
		as.SendAsync(tgt, e, done)
	})
}

// runPrebuilt sends reqs' events, built beforehand with another cluster
// name (other ids, so JetStream keeps them), through route's SendAsync.
func runPrebuilt(b *testing.B, route *Route, reqs []watch.Request) time.Duration {
	as := route.Sink.(AsyncSender)
	events := make([]ce.Event, len(reqs))
	targets := make([]Target, len(reqs))
	for i, req := range reqs {
		events[i], _ = event.New(req, event.Options{Cluster: "prebuilt"})
		targets[i], _ = route.Target(req.Watcher)
	}
	return runPipelined(b, len(reqs), func(i int, done func(error)) {
		as.SendAsync(targets[i], events[i], done)
	})
}

// rates runs the rounds of each iteration and reports the rates: the
// bridge's (events/s), the raw client's at its best (raw/s), their ratio,
// the bridge's with events built beforehand (prebuilt/s), and the bridge's
// bound on events in flight. Each function publishes benchEvents messages
// for round r.
func rates(b *testing.B, bridge, prebuilt, raw func(r int) time.Duration) {
	// A round of each first, not counted: connections, metadata, pools
	// and the heap (which the brokers' stored messages grow, and with it
	// the GC's pace) settle before the first timed phase.
	bridge(0)
	prebuilt(0)
	raw(0)
	var tb, tp, tr time.Duration
	for i := 0; i < b.N; i++ {
		for j := range benchRounds {
			r := 1 + i*benchRounds + j
			tb += bridge(r)
			tp += prebuilt(r)
			tr += raw(r)
		}
	}
	n := float64(b.N * benchRounds * benchEvents)
	events, rawRate := n/tb.Seconds(), n/tr.Seconds()
	b.ReportMetric(events, "events/s")
	b.ReportMetric(rawRate, "raw/s")
	b.ReportMetric(events/rawRate, "ratio")
	b.ReportMetric(n/tp.Seconds(), "prebuilt/s")
	b.ReportMetric(benchInFlight, "in-flight")
	b.ReportMetric(0, "ns/op") // the rates above are the result
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

// BenchmarkJetStream compares the bridge with raw JetStream: PublishAsync
// of pre-built messages of the same size (headers and data of the bridge's
// messages, Nats-Msg-Id included, as payload), all acks awaited.
func BenchmarkJetStream(b *testing.B) {
	srv := startNATS(b, 0, b.TempDir())
	var rawFailed atomic.Int64
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { rawFailed.Add(1) }))
	if err != nil {
		b.Fatal(err)
	}
	createStream(b, js, "BENCH", "bench.>")
	s := newJetStreamSink(b, srv.ClientURL(), "BENCH", nil)
	route, err := NewRoute(config.Route{Name: "bench", Sink: "js", Subject: "bench.{{.Kind}}.{{.Namespace}}.{{.Name}}"},
		config.Sink{Name: "js", JetStream: &config.JetStream{}}, s)
	if err != nil {
		b.Fatal(err)
	}
	sample, _ := event.New(benchRequests(0)[0], event.Options{Cluster: "bench", Instance: "b"})
	m, _ := encodeNATS("x", Binary, &sample)
	m.Header.Set(jetstream.MsgIDHeader, sample.ID())
	m.Header.Set(jetstream.ExpectedStreamHeader, "BENCH")
	payload := make([]byte, natsSize(m))
	b.ReportMetric(float64(len(payload)), "bytes/msg")

	rates(b,
		func(r int) time.Duration { return runBridge(b, route, benchRequests(r)) },
		func(r int) time.Duration { return runPrebuilt(b, route, benchRequests(r)) },
		func(int) time.Duration {
			start := time.Now()
			for j := range benchEvents {
				if _, err := js.PublishAsync("bench.raw."+strconv.Itoa(j%benchWatchers), payload); err != nil {
					b.Fatal(err)
				}
			}
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(time.Minute):
				b.Fatal("raw publishes not acked within a minute")
			}
			if n := rawFailed.Load(); n > 0 {
				b.Fatalf("%d raw publishes failed", n)
			}
			return time.Since(start)
		})
}

// BenchmarkKafka compares the bridge with a raw kafka-go Writer (acks=all)
// in the configuration that gave it the highest rate here: all records of
// a round in one WriteMessages call, batches of 1000 records (100 and 500
// were slower; larger batches pass the brokers' 1MiB message limit).
func BenchmarkKafka(b *testing.B) {
	const partitions = 8
	// Small segments: kfake keeps each in one growing slice, and copying a
	// 100MiB one (the default) as it doubles would land on whichever
	// phase of the run crosses the size.
	c := startKafka(b, 0, "", kfake.NumBrokers(1), kfake.SeedTopics(partitions, "bench"),
		kfake.BrokerConfigs(map[string]string{"log.segment.bytes": strconv.Itoa(4 << 20)}))
	addr := c.ListenAddrs()[0]
	s, err := NewKafka("k", config.Kafka{Brokers: []string{addr}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(context.Background())
	route, err := NewRoute(config.Route{Name: "bench", Sink: "k", Subject: "bench"}, config.Sink{Name: "k", Kafka: &config.Kafka{}}, s)
	if err != nil {
		b.Fatal(err)
	}
	w := &kafka.Writer{
		Addr: kafka.TCP(addr), Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll, Async: false,
		BatchSize: 1000, BatchBytes: 1 << 20, BatchTimeout: time.Millisecond,
	}
	defer w.Close()
	sample, _ := event.New(benchRequests(0)[0], event.Options{Cluster: "bench", Instance: "b"})
	km, _ := encodeKafka("bench", Binary, &sample)
	size := len(km.Value)
	for _, h := range km.Headers {
		size += len(h.Key) + len(h.Value)
	}
	b.ReportMetric(float64(size+len(km.Key)), "bytes/msg")
	msgs := make([]kafka.Message, benchEvents)
	for j := range msgs {
		msgs[j] = kafka.Message{Topic: "bench", Key: []byte("v1/ConfigMap/ns/watcher-" + strconv.Itoa(j%benchWatchers)), Value: make([]byte, size)}
	}

	rates(b,
		func(r int) time.Duration { return runBridge(b, route, benchRequests(r)) },
		func(r int) time.Duration { return runPrebuilt(b, route, benchRequests(r)) },
		func(int) time.Duration {
			start := time.Now()
			if err := w.WriteMessages(context.Background(), msgs...); err != nil {
				b.Fatal(err)
			}
			return time.Since(start)
		})
}

// BenchmarkEncode measures the encode path of one event: event.New,
// Route.Target and the binding writer, per transport and mode. Each
// iteration encodes encodeBatch events, so -benchtime 1x gives stable
// per-event numbers (ns/event, allocs/event, B/event).
func BenchmarkEncode(b *testing.B) {
	const encodeBatch = 2000
	reqs := benchRequests(0)[:encodeBatch]
	natsRoute, _ := NewRoute(config.Route{Name: "r", Sink: "s"}, config.Sink{Name: "s", JetStream: &config.JetStream{}}, nil)
	kafkaRoute, _ := NewRoute(config.Route{Name: "r", Sink: "s", Subject: "bench"}, config.Sink{Name: "s", Kafka: &config.Kafka{}}, nil)
	encoders := map[string]func(r watch.Request, mode Mode) error{
		"nats": func(r watch.Request, mode Mode) error {
			e, err := event.New(r, event.Options{})
			if err != nil {
				return err
			}
			t, err := natsRoute.Target(r.Watcher)
			if err != nil {
				return err
			}
			_, err = encodeNATS(t.Subject, mode, &e)
			return err
		},
		"kafka": func(r watch.Request, mode Mode) error {
			e, err := event.New(r, event.Options{})
			if err != nil {
				return err
			}
			t, err := kafkaRoute.Target(r.Watcher)
			if err != nil {
				return err
			}
			_, err = encodeKafka(t.Subject, mode, &e)
			return err
		},
	}
	for _, transport := range []string{"nats", "kafka"} {
		for _, mode := range []Mode{Binary, Structured} {
			b.Run(transport+"/"+mode.String(), func(b *testing.B) {
				encode := encoders[transport]
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				start := time.Now()
				for i := 0; i < b.N; i++ {
					for _, r := range reqs {
						if err := encode(r, mode); err != nil {
							b.Fatal(err)
						}
					}
				}
				elapsed := time.Since(start)
				runtime.ReadMemStats(&after)
				n := float64(b.N * encodeBatch)
				b.ReportMetric(float64(elapsed.Nanoseconds())/n, "ns/event")
				b.ReportMetric(float64(after.Mallocs-before.Mallocs)/n, "allocs/event")
				b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/n, "B/event")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}
