package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/kafkatopic"
	"github.com/depbridge/depbridge/internal/sink"
)

// hdrRestoredKafka marks a record the bridge produced again after rejecting
// a later one; its value is the rejected record's offset.
const hdrRestoredKafka = "depbridge-restored"

// kafkaMaxStatusBytes bounds a status record (the brokers' default
// message.max.bytes is about 1 MiB); a larger status goes without the
// query's objects.
const kafkaMaxStatusBytes = 900 << 10

// kafkaFetchMaxBytes bounds one fetch of the readers; it must exceed the
// largest record, control messages being at most control.maxMessageBytes.
const kafkaFetchMaxBytes = 10 << 20

// Kafka is the control channel on a compacted Kafka topic.
//
// The topic (control.subject) holds applies, deletes and queries, each
// keyed by its watcher's key (cache.Ref.Key of the canonical watcher; a
// record whose key is not its watcher's is rejected), so that compaction
// keeps the last record of each watcher. A delete is either a
// TypeDelete event or a tombstone (a record with the watcher's key and a
// null value); both are accepted. Create the topic with one partition, or
// produce each watcher's records to one partition (any keyed producer
// does): records of one key are handled in partition order, and nothing
// orders partitions.
//
// At start every partition is read from its first offset to its high
// watermark; the last record of each key is handled (in partition order of
// those last records), with no status events, and Synced is closed once
// all are handled once. A replayed record that failed for a reason that
// may pass (not a rejection of the record itself) is retried with backoff
// until it is carried out or a newer record of its key replaces it;
// Failures reports it meanwhile. Then new records are handled as they
// come, and each gets a status event on StatusTopic, keyed by its
// watcher, with the request's id in the correlationid extension; a
// query's status carries its results.
// No consumer group is used: the bridge reads everything, commits nothing.
//
// A rejected record changes nothing, and the topic is put back as it was:
// the watcher's last accepted record is produced again to the same
// partition (marked so that handling it again sends no status), or, when
// there is none, a tombstone; either unless a newer record of the key has
// already been read.
type Kafka struct {
	ctl     config.Control
	kcfg    config.Kafka
	opts    Options
	proc    *processor
	log     *slog.Logger
	replay  *replayTracker
	retries *retrySet

	topic, statusTopic string
	started            atomic.Bool

	// set by Start
	writer *kafka.Writer

	mu       sync.Mutex
	known    map[string]cache.Ref     // key -> watcher with a run-time subscription
	lastGood map[string]kafka.Message // key -> last accepted record
	lastRead map[partitionKey]int64   // newest offset read of each key
}

type partitionKey struct {
	partition int
	key       string
}

// NewKafka returns the control channel ctl on the Kafka brokers of kcfg,
// changing subs. It starts nothing; call Start.
func NewKafka(ctl config.Control, kcfg config.Kafka, subs Subscriptions, opts Options) (*Kafka, error) {
	if subs == nil {
		return nil, errors.New("control: no Subscriptions")
	}
	if len(kcfg.Brokers) == 0 {
		return nil, errors.New("control: kafka: brokers is required")
	}
	ctl.Default()
	kcfg.Default()
	opts = opts.withDefaults()
	log := opts.Logger.With("control", "kafka", "topic", ctl.Subject)
	opts.Logger = log
	t := &Kafka{
		ctl:         ctl,
		kcfg:        kcfg,
		opts:        opts,
		proc:        newProcessor(ctl, subs, opts),
		log:         log,
		replay:      newReplayTracker(1), // Start adds one per partition
		retries:     newRetrySet(log),
		topic:       ctl.Subject,
		statusTopic: StatusTopic(ctl.Subject),
		known:       map[string]cache.Ref{},
		lastGood:    map[string]kafka.Message{},
		lastRead:    map[partitionKey]int64{},
	}
	return t, nil
}

// Synced is closed once the last record of every key that was in the
// topic at start has been handled: the run-time subscriptions are
// restored. Report ready only then.
// It is never closed when Start fails or stops before.
func (t *Kafka) Synced() <-chan struct{} { return t.replay.synced }

// Failures describes the replayed records that failed for a reason that
// may pass and wait for a retry, one "<watcher>: <error>" each: their
// run-time subscriptions are not restored yet. Report ready only when
// there are none.
func (t *Kafka) Failures() []string { return t.retries.failures() }

// Start checks (or creates, unless Options.NoCreate) the control and
// status topics, replays the control topic, and handles new records until
// ctx is done. It blocks, and returns only after its goroutines have
// exited. It fails at once when the brokers cannot be reached or a topic is
// missing or not compacted. A transport starts once.
func (t *Kafka) Start(ctx context.Context) error {
	if !t.started.CompareAndSwap(false, true) {
		return errors.New("control: Start called twice")
	}
	transport, err := sink.KafkaTransport(t.kcfg)
	if err != nil {
		return fmt.Errorf("control: kafka: %w", err)
	}
	defer transport.CloseIdleConnections()
	dialer, err := sink.KafkaDialer(t.kcfg)
	if err != nil {
		return fmt.Errorf("control: kafka: %w", err)
	}
	addr := kafka.TCP(t.kcfg.Brokers...)
	client := &kafka.Client{Addr: addr, Timeout: t.kcfg.WriteTimeout.Duration, Transport: transport}
	parts, err := t.ensureTopics(ctx, client)
	if err != nil {
		return err
	}
	offsets, err := kafkatopic.Ranges(ctx, client, t.topic, parts)
	if err != nil {
		return fmt.Errorf("control: kafka: %w", err)
	}
	t.writer = &kafka.Writer{
		Addr:                   addr,
		Balancer:               &balancer{control: t.topic},
		MaxAttempts:            3,
		WriteBackoffMin:        50 * time.Millisecond,
		WriteBackoffMax:        500 * time.Millisecond,
		BatchSize:              100,
		BatchTimeout:           time.Millisecond,
		ReadTimeout:            t.kcfg.WriteTimeout.Duration,
		WriteTimeout:           t.kcfg.WriteTimeout.Duration,
		RequiredAcks:           kafka.RequireAll,
		Async:                  false,
		AllowAutoTopicCreation: false,
		Transport:              transport,
	}
	defer t.writer.Close()
	var replayed int64
	for _, o := range offsets {
		replayed += o.Last - o.First
	}
	t.log.Info("control channel started", "partitions", len(parts), "replay", replayed, "status", t.statusTopic)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	ser := newSerializer(t.opts.MaxPending)
	var wg sync.WaitGroup
	for range t.opts.Workers {
		wg.Go(func() { ser.run(runCtx) })
	}
	wg.Go(func() { t.retries.run(runCtx, ser) })
	t.replay.addReaders(len(offsets))
	for _, o := range offsets {
		wg.Go(func() { t.read(runCtx, dialer, o, ser) })
	}
	t.replay.readerDone() // the setup
	<-ctx.Done()
	cancel()
	wg.Wait()
	t.log.Info("control channel stopped")
	return nil
}

// ensureTopics checks that the control topic exists and is compacted and
// that the status topic exists, creating what is missing unless
// NoCreate. It returns the control topic's partitions.
func (t *Kafka) ensureTopics(ctx context.Context, client *kafka.Client) ([]int, error) {
	err := kafkatopic.Ensure(ctx, client, []kafkatopic.Spec{
		{Topic: t.topic, Compacted: true, ReplicationFactor: t.opts.ReplicationFactor},
		{Topic: t.statusTopic, ReplicationFactor: t.opts.ReplicationFactor},
	}, t.opts.NoCreate, t.log)
	if err != nil {
		return nil, fmt.Errorf("control: kafka: %w", err)
	}
	parts, err := kafkatopic.Partitions(ctx, client, t.topic)
	if err != nil {
		return nil, fmt.Errorf("control: kafka: %w", err)
	}
	return parts, nil
}

// read consumes one partition: first up to its high watermark at start,
// keeping the last record of each key and handling those as the replay,
// then every record as it comes.
func (t *Kafka) read(ctx context.Context, dialer *kafka.Dialer, pr kafkatopic.Range, ser *serializer) {
	log := t.log.With("partition", pr.Partition)
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:        t.kcfg.Brokers,
		Topic:          t.topic,
		Partition:      pr.Partition,
		Dialer:         dialer,
		MinBytes:       1,
		MaxBytes:       kafkaFetchMaxBytes, // kafka-go panics when MinBytes is set without it
		MaxWait:        500 * time.Millisecond,
		ReadBackoffMin: 100 * time.Millisecond,
		ReadBackoffMax: time.Second,
		ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) {
			log.Debug("kafka-go: " + fmt.Sprintf(msg, args...))
		}),
	})
	defer r.Close()
	if err := r.SetOffset(kafka.FirstOffset); err != nil {
		log.Error("cannot read the control topic", "err", err)
		return
	}
	next := func() (kafka.Message, bool) {
		for {
			m, err := r.ReadMessage(ctx)
			if err == nil {
				t.mu.Lock()
				t.lastRead[partitionKey{m.Partition, string(m.Key)}] = m.Offset
				t.mu.Unlock()
				return m, true
			}
			if ctx.Err() != nil {
				return m, false
			}
			log.Warn("reading the control topic failed; retrying", "err", err)
			sleep(ctx, time.Second)
		}
	}
	if pr.Last > pr.First {
		var order []string
		latest := map[string]kafka.Message{}
		for {
			m, ok := next()
			if !ok {
				return
			}
			k := string(m.Key)
			if _, seen := latest[k]; !seen {
				order = append(order, k)
			}
			latest[k] = m
			if m.Offset+1 >= pr.Last {
				break
			}
		}
		for _, k := range order {
			m := latest[k]
			t.replay.add()
			err := ser.add(ctx, k, func(ctx context.Context) {
				defer t.replay.handled()
				t.retries.handle(ctx, k, func(ctx context.Context) *transient { return t.process(ctx, m, true) })
			})
			if err != nil {
				t.replay.handled()
				return
			}
		}
	}
	t.replay.readerDone()
	for {
		m, ok := next()
		if !ok {
			return
		}
		k := string(m.Key)
		fn := func(ctx context.Context) {
			t.retries.handle(ctx, k, func(ctx context.Context) *transient { return t.process(ctx, m, false) })
		}
		if ser.add(ctx, k, fn) != nil {
			return
		}
	}
}

// process handles one record: a tombstone deletes the watcher last known
// under its key; anything else is decoded, checked and carried out. Then
// it answers (unless replayed or restored) and puts the topic back after a
// rejection. A replayed record that fails for a reason that may pass is
// neither rejected nor counted: process returns it for retry.
func (t *Kafka) process(ctx context.Context, m kafka.Message, replay bool) *transient {
	start := time.Now()
	key := string(m.Key)
	restored := kafkaHeader(m, hdrRestoredKafka) != ""
	var (
		req *Request
		st  *StatusData
		err error
	)
	if m.Value == nil {
		t.mu.Lock()
		w, known := t.known[key]
		t.mu.Unlock()
		req = &Request{ID: fmt.Sprintf("%s/%d@%d", m.Topic, m.Partition, m.Offset), Source: "kafka:" + m.Topic, Type: TypeDelete, Watcher: w}
		if known {
			st, err = t.proc.handle(ctx, req)
		} else {
			st = &StatusData{RequestID: req.ID, RequestType: TypeDelete, Accepted: true}
		}
	} else {
		req, err = t.proc.decoder.DecodeKafka(m.Headers, m.Value)
		if err == nil && key != req.Watcher.Key() {
			err = fmt.Errorf("%w: record key %q, but the key of watcher %s is %q", ErrInvalid, key, req.Watcher, req.Watcher.Key())
		}
		if err != nil {
			st = rejected(req, err)
		} else {
			st, err = t.proc.handle(ctx, req)
		}
	}
	log := t.log.With("key", key, "partition", m.Partition, "offset", m.Offset, "replay", replay)
	if req != nil {
		log = log.With("type", req.Type, "event_id", req.ID)
		if req.Watcher != (cache.Ref{}) {
			log = log.With("watcher", req.Watcher.Key())
		}
	}
	if tr, done := t.proc.outcome(ctx, log, req, err, key, replay, restored, start); done {
		return tr
	}
	if err != nil {
		log.Warn("control message rejected", "err", err)
		if !replay && !restored {
			t.undo(ctx, m)
		}
	} else {
		log.Info("control message applied")
		t.mu.Lock()
		if req.Type == TypeDelete {
			delete(t.known, key)
		} else {
			t.known[key] = req.Watcher
		}
		t.lastGood[key] = m
		t.mu.Unlock()
	}
	if replay || restored {
		return nil
	}
	t.publishStatus(ctx, req, st, key)
	return nil
}

// undo puts the topic back as it was before the rejected record m: the
// key's last accepted record again, or a tombstone when there is none,
// unless a newer record of the key has been read.
func (t *Kafka) undo(ctx context.Context, m kafka.Message) {
	key := string(m.Key)
	t.mu.Lock()
	good, ok := t.lastGood[key]
	newer := t.lastRead[partitionKey{m.Partition, key}] > m.Offset
	t.mu.Unlock()
	log := t.log.With("key", key, "partition", m.Partition, "offset", m.Offset)
	if newer {
		log.Debug("a newer record replaced the rejected one; nothing to restore")
		return
	}
	r := kafka.Message{Topic: t.topic, Partition: m.Partition, Key: m.Key}
	if ok {
		r.Value = good.Value
		for _, h := range good.Headers {
			if !strings.EqualFold(h.Key, hdrRestoredKafka) {
				r.Headers = append(r.Headers, h)
			}
		}
	}
	r.Headers = append(r.Headers, kafka.Header{Key: hdrRestoredKafka, Value: []byte(strconv.FormatInt(m.Offset, 10))})
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := t.writer.WriteMessages(ctx, r); err != nil {
		log.Warn("cannot put the control topic back; a restart will handle the rejected record again", "err", err)
		return
	}
	log.Debug("restored the last accepted record", "tombstone", !ok)
}

// publishStatus produces the status event of st to the status topic, in
// the request's content mode, keyed like the record it answers (by its
// watcher's key). A status with query results that is too large, for
// kafkaMaxStatusBytes or for the topic's max.message.bytes, goes without
// the results' objects (objectsOmitted).
func (t *Kafka) publishStatus(ctx context.Context, req *Request, st *StatusData, recordKey string) {
	key, reqSource, mode := "", "", sink.Binary
	if st.Watcher != nil {
		key = st.Watcher.Key()
	}
	if req != nil {
		reqSource = req.Source
		if req.Structured {
			mode = sink.Structured
		}
	}
	m, err := t.encodeStatus(ctx, reqSource, st, key, mode)
	omitted := false
	if err == nil && kafkaSize(m) > kafkaMaxStatusBytes && len(st.Results) > 0 {
		m, err = t.encodeStatus(ctx, reqSource, withoutObjects(st), key, mode)
		omitted = true
	}
	if err != nil {
		t.log.Error("cannot encode a status event", "key", recordKey, "err", err)
		return
	}
	if recordKey != "" {
		// The key of the record answered: its watcher's key, unless the
		// record was rejected for carrying another.
		m.Key = []byte(recordKey)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = t.writer.WriteMessages(ctx, m)
	if sink.KafkaRefusedForSize(err) {
		// The writer may have batched it with other statuses: once more
		// before it loses its objects.
		err = t.writer.WriteMessages(ctx, m)
	}
	if sink.KafkaRefusedForSize(err) && len(st.Results) > 0 && !omitted {
		// The status topic takes less than kafkaMaxStatusBytes.
		t.log.Warn("status event too large for the status topic; sending it without the objects", "key", recordKey,
			"topic", t.statusTopic, "bytes", kafkaSize(m), "err", err)
		var small kafka.Message
		if small, err = t.encodeStatus(ctx, reqSource, withoutObjects(st), key, mode); err == nil {
			small.Key = m.Key
			err = t.writer.WriteMessages(ctx, small)
		}
	}
	if err != nil {
		t.log.Warn("cannot publish a status event", "key", recordKey, "topic", t.statusTopic, "err", err)
	}
}

func (t *Kafka) encodeStatus(ctx context.Context, reqSource string, st *StatusData, key string, mode sink.Mode) (kafka.Message, error) {
	e, err := statusEvent(t.proc.source, reqSource, t.proc.nowFunc(), st, key)
	if err != nil {
		return kafka.Message{}, err
	}
	return sink.EncodeKafka(ctx, t.statusTopic, mode, &e)
}

func kafkaSize(m kafka.Message) int {
	n := len(m.Key) + len(m.Value)
	for _, h := range m.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}

func kafkaHeader(m kafka.Message, name string) string {
	for _, h := range m.Headers {
		if strings.EqualFold(h.Key, name) {
			return string(h.Value)
		}
	}
	return ""
}

// balancer sends records of the control topic (restores) to the partition
// they name, so that they follow the record they answer, and others
// (status events) by the hash of their key, as the Kafka sink does.
type balancer struct {
	control string
	hash    kafka.Hash
}

func (b *balancer) Balance(m kafka.Message, partitions ...int) int {
	if m.Topic == b.control {
		for _, p := range partitions {
			if p == m.Partition {
				return p
			}
		}
	}
	return b.hash.Balance(m, partitions...)
}
