package sink

import (
	"context"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
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
// ceiling without building events); then as many headerless messages of
// the same size to the same subjects or keys through the raw client at its
// best (raw/s); then the bridge's own messages, encoded beforehand,
// through the same raw client (same/s). Interleaving the phases within
// one run keeps the ratios fair on a shared machine, and so does starting
// each with a collected heap: a phase pays for the garbage it makes, not
// for an earlier phase's, which in a shared heap swung the raw rate 2x
// with the raw code unchanged. Each phase's events
// name another cluster (bench-b, bench-p, bench-s): ids of their own, of
// one length, so that JetStream stores them all.
const (
	benchEvents   = 20000
	benchRounds   = 9
	benchWatchers = 1000
	// benchWorkers and benchInFlight are the engine's defaults
	// (config.Engine.Workers and MaxInFlight).
	benchWorkers  = config.DefaultWorkers
	benchInFlight = config.DefaultMaxInFlight
)

// benchRequests are the requests of round: benchWatchers watchers, one
// cause each, ids unique across rounds (so JetStream's duplicate window
// drops nothing). Request i is for watcher i%benchWatchers.
func benchRequests(round int) []watch.Request {
	reqs := make([]watch.Request, benchEvents)
	for i := range reqs {
		w := i % benchWatchers
		ns := "team-" + strconv.Itoa(w%7)
		reqs[i] = watch.Request{
			Watcher: cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: ns, Name: "watcher-" + strconv.Itoa(w)},
			Causes: []watch.Cause{{
				Watched:   cache.Ref{Version: "v1", Kind: "Secret", Namespace: ns, Name: "db-credentials"},
				Namespace: ns, Name: "db-credentials", UID: "6f1c8d2e-3b1a-4c7e-9f0a-2d4b6c8e0f12",
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

// bridgePhase sends the requests of a round through route the way the
// engine and the publisher do: build the event, render the subject,
// SendAsync.
func bridgePhase(b *testing.B, route *Route) phase {
	return func(r int) func() time.Duration {
		reqs := benchRequests(r)
		as := route.Sink.(AsyncSender)
		return func() time.Duration {
			return runPipelined(b, len(reqs), func(i int, done func(error)) {
				e, err := event.New(reqs[i], event.Options{Cluster: "bench-b"})
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
	}
}

// prebuiltPhase sends the events of a round's requests, built beforehand
// with another cluster name (other ids, so JetStream keeps them), through
// route's SendAsync.
func prebuiltPhase(b *testing.B, route *Route) phase {
	return func(r int) func() time.Duration {
		reqs := benchRequests(r)
		events := make([]ce.Event, len(reqs))
		targets := make([]Target, len(reqs))
		for i, req := range reqs {
			events[i], targets[i] = build(b, route, req, "bench-p")
		}
		as := route.Sink.(AsyncSender)
		return func() time.Duration {
			return runPipelined(b, len(reqs), func(i int, done func(error)) {
				as.SendAsync(targets[i], events[i], done)
			})
		}
	}
}

// build is req's event, naming cluster, and its target on route, as the
// publisher makes them; an error fails the benchmark.
func build(b *testing.B, route *Route, req watch.Request, cluster string) (ce.Event, Target) {
	e, err := event.New(req, event.Options{Cluster: cluster})
	if err != nil {
		b.Fatal(err)
	}
	t, err := route.Target(req.Watcher)
	if err != nil {
		b.Fatal(err)
	}
	return e, t
}

// phase prepares what round r publishes and returns send, which publishes
// it and returns how long it took until all was acknowledged. Only send is
// timed.
type phase func(r int) (send func() time.Duration)

// phases of one benchmark, each publishing the benchEvents messages of a
// round.
type phases struct {
	// bridge builds each event and sends it through the sink as the
	// engine does (bridgePhase); prebuilt sends events built beforehand
	// (prebuiltPhase).
	bridge, prebuilt phase
	// raw publishes same-size messages with no headers through the raw
	// client at its best; same publishes the bridge's own messages,
	// encoded beforehand, headers included, through the same raw client.
	raw, same phase
	// empty, called before each phase and not timed, removes what the
	// broker stored, so that every phase starts on the same broker state
	// and the stored messages do not grow the shared heap.
	empty func()
}

// rates runs the rounds of each iteration, interleaving the phases, and
// reports:
//   - the rates over all rounds: the bridge's (events/s), the raw
//     client's (raw/s), the raw client's with the bridge's messages
//     (same/s), and the bridge's with events built beforehand
//     (prebuilt/s);
//   - the bridge's ratio to raw (ratio) and to same (ratio-same, which
//     leaves out what the broker spends on the bridge's headers): each the
//     median over the rounds of the round's ratio, so that a stall of the
//     shared machine during one phase does not set the result;
//   - the process's CPU time per event in each phase, brokers included
//     (cpu-us/event, raw-cpu-us/event, same-cpu-us/event,
//     prebuilt-cpu-us/event): same minus raw is what the bridge's headers
//     cost the client and the broker, prebuilt minus same what the sink
//     adds to the raw client (writing the headers included), bridge minus
//     prebuilt what building the events costs;
//   - the bridge's bound on events in flight.
func rates(b *testing.B, p phases) {
	// run empties the broker, prepares round r of phase, collects the
	// garbage (so that no phase pays for an earlier one's, nor for its own
	// preparation), then sends and returns the time it took and the CPU
	// time the process used meanwhile.
	run := func(phase phase, r int) (wall, cpu time.Duration) {
		p.empty()
		send := phase(r)
		runtime.GC()
		c := cpuTime()
		wall = send()
		return wall, cpuTime() - c
	}
	// A round of each first, not counted: connections, metadata, pools
	// and the heap settle before the first timed phase.
	run(p.bridge, 0)
	run(p.prebuilt, 0)
	run(p.raw, 0)
	run(p.same, 0)
	var (
		tb, tp, tr, ts, cb, cp, cr, cs time.Duration
		ratios, sameRatios             []float64
	)
	for i := 0; i < b.N; i++ {
		for j := range benchRounds {
			r := 1 + i*benchRounds + j
			bridge, bridgeCPU := run(p.bridge, r)
			prebuilt, prebuiltCPU := run(p.prebuilt, r)
			raw, rawCPU := run(p.raw, r)
			same, sameCPU := run(p.same, r)
			tb, tp, tr, ts = tb+bridge, tp+prebuilt, tr+raw, ts+same
			cb, cp, cr, cs = cb+bridgeCPU, cp+prebuiltCPU, cr+rawCPU, cs+sameCPU
			ratios = append(ratios, raw.Seconds()/bridge.Seconds())
			sameRatios = append(sameRatios, same.Seconds()/bridge.Seconds())
		}
	}
	n := float64(b.N * benchRounds * benchEvents)
	b.ReportMetric(n/tb.Seconds(), "events/s")
	b.ReportMetric(n/tr.Seconds(), "raw/s")
	b.ReportMetric(median(ratios), "ratio")
	b.ReportMetric(n/ts.Seconds(), "same/s")
	b.ReportMetric(median(sameRatios), "ratio-same")
	b.ReportMetric(n/tp.Seconds(), "prebuilt/s")
	b.ReportMetric(float64(cb.Nanoseconds())/n/1e3, "cpu-us/event")
	b.ReportMetric(float64(cr.Nanoseconds())/n/1e3, "raw-cpu-us/event")
	b.ReportMetric(float64(cs.Nanoseconds())/n/1e3, "same-cpu-us/event")
	b.ReportMetric(float64(cp.Nanoseconds())/n/1e3, "prebuilt-cpu-us/event")
	b.ReportMetric(benchInFlight, "in-flight")
	b.ReportMetric(0, "ns/op") // the rates above are the result
}

// median of xs (which it sorts).
func median(xs []float64) float64 {
	slices.Sort(xs)
	if len(xs)%2 == 1 {
		return xs[len(xs)/2]
	}
	return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
}

// cpuTime is the CPU time the process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkJetStream compares the bridge with raw JetStream
// PublishAsync, all acks awaited: of headerless messages of the same size
// (the bridge's headers, Nats-Msg-Id included, and data, as payload) to
// the bridge's subjects (raw), and of the bridge's own messages (same).
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
	stream := createStream(b, js, "BENCH", "bench.>")
	s := newJetStreamSink(b, srv.ClientURL(), "BENCH", nil)
	route, err := NewRoute(config.Route{Name: "bench", Sink: "js", Subject: "bench.{{.Kind}}.{{.Namespace}}.{{.Name}}"},
		config.Sink{Name: "js", JetStream: &config.JetStream{}}, s)
	if err != nil {
		b.Fatal(err)
	}
	// encode is the bridge's message of req, as the sink sends it.
	encode := func(req watch.Request, cluster string) *nats.Msg {
		e, t := build(b, route, req, cluster)
		m, err := encodeNATS(t.Subject, t.Mode, &e)
		if err != nil {
			b.Fatal(err)
		}
		m.Header[jetstream.MsgIDHeader] = []string{e.ID()}
		m.Header[jetstream.ExpectedStreamHeader] = []string{"BENCH"}
		return m
	}
	// The raw publishes go to the bridge's subjects: the stream keeps
	// state per subject.
	raw := make([]*nats.Msg, benchEvents)
	for j, req := range benchRequests(0) {
		m := encode(req, "bench-b")
		raw[j] = &nats.Msg{Subject: m.Subject, Data: make([]byte, NATSSize(m))}
	}
	b.ReportMetric(float64(len(raw[0].Data)), "bytes/msg")
	publish := func(msgs []*nats.Msg) time.Duration {
		start := time.Now()
		for _, m := range msgs {
			if _, err := js.PublishMsgAsync(m); err != nil {
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
	}

	rates(b, phases{
		bridge:   bridgePhase(b, route),
		prebuilt: prebuiltPhase(b, route),
		raw:      func(int) func() time.Duration { return func() time.Duration { return publish(raw) } },
		same: func(r int) func() time.Duration {
			msgs := make([]*nats.Msg, benchEvents)
			for j, req := range benchRequests(r) {
				msgs[j] = encode(req, "bench-s")
			}
			return func() time.Duration { return publish(msgs) }
		},
		empty: func() {
			if err := stream.Purge(context.Background()); err != nil {
				b.Fatal(err)
			}
		},
	})
}

// BenchmarkKafka compares the bridge with a raw kafka-go Writer (acks=all)
// in the configuration that gave it the highest rate here: all records of
// a round in one WriteMessages call, batches of 1000 records (100 and 500
// were slower; larger batches pass the brokers' 1MiB message limit). The
// raw records are headerless, with the bridge's keys and a value of the
// size of its headers and value (raw), or the bridge's own (same).
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
	// encode is the bridge's record of req, as the sink sends it.
	encode := func(req watch.Request, cluster string) kafka.Message {
		e, t := build(b, route, req, cluster)
		m, err := encodeKafka(t.Subject, t.Mode, &e)
		if err != nil {
			b.Fatal(err)
		}
		return m
	}
	raw := make([]kafka.Message, benchEvents)
	for j, req := range benchRequests(0) {
		m := encode(req, "bench-b")
		size := len(m.Value)
		for _, h := range m.Headers {
			size += len(h.Key) + len(h.Value)
		}
		raw[j] = kafka.Message{Topic: m.Topic, Key: m.Key, Value: make([]byte, size)}
	}
	b.ReportMetric(float64(len(raw[0].Key)+len(raw[0].Value)), "bytes/msg")
	write := func(msgs []kafka.Message) time.Duration {
		start := time.Now()
		if err := w.WriteMessages(context.Background(), msgs...); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}

	rates(b, phases{
		bridge:   bridgePhase(b, route),
		prebuilt: prebuiltPhase(b, route),
		raw:      func(int) func() time.Duration { return func() time.Duration { return write(raw) } },
		same: func(r int) func() time.Duration {
			msgs := make([]kafka.Message, benchEvents)
			for j, req := range benchRequests(r) {
				msgs[j] = encode(req, "bench-s")
			}
			return func() time.Duration { return write(msgs) }
		},
		empty: func() {
			for p := range int32(partitions) {
				if err := c.DeleteRecords("bench", p, -1); err != nil {
					b.Fatal(err)
				}
			}
		},
	})
}

// BenchmarkEncode measures the encode path of one event: event.New,
// Route.Target and the binding writer, per transport and mode, as the
// sinks run them. Each
// iteration encodes encodeBatch events, so -benchtime 1x gives stable
// per-event numbers (ns/event, allocs/event, B/event).
func BenchmarkEncode(b *testing.B) {
	const encodeBatch = 2000
	reqs := benchRequests(0)[:encodeBatch]
	natsRoute, _ := NewRoute(config.Route{Name: "r", Sink: "s"}, config.Sink{Name: "s", JetStream: &config.JetStream{}}, nil)
	kafkaRoute, _ := NewRoute(config.Route{Name: "r", Sink: "s", Subject: "bench"}, config.Sink{Name: "s", Kafka: &config.Kafka{}}, nil)
	var (
		headers      []kafka.Header
		headerValues []byte
	)
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
		// As the Kafka sink does: the record is made when the event is
		// queued, its headers when its produce request is written, into
		// buffers the request's records share.
		"kafka": func(r watch.Request, mode Mode) error {
			e, err := event.New(r, event.Options{})
			if err != nil {
				return err
			}
			t, err := kafkaRoute.Target(r.Watcher)
			if err != nil {
				return err
			}
			rec, err := newKafkaRecord(t.Subject, mode, &e)
			if err != nil {
				return err
			}
			headers, headerValues = rec.appendHeaders(headers[:0], headerValues[:0])
			return nil
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
