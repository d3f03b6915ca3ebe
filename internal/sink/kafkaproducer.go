package sink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
)

// Limits of one produce request of the Kafka sink.
const (
	// kafkaMaxBatchRecords and kafkaMaxBatchBytes bound the records of one
	// produce request; kafkaMaxBatchBytes stays under the brokers' default
	// message.max.bytes (1MiB), which applies to a whole record batch. A
	// topic whose max.message.bytes is smaller refuses larger batches,
	// which are then split (see producer.deliver); a record larger than
	// kafkaMaxBatchBytes goes alone, and the broker decides.
	kafkaMaxBatchRecords = 1000
	kafkaMaxBatchBytes   = 1<<20 - 64<<10
	// kafkaMaxAttempts is how often one batch is tried when the error is
	// retriable (a leader moving, a connection reset); past it, the Sends
	// of the batch fail and their callers retry.
	kafkaMaxAttempts = 3
	kafkaBackoffMin  = 50 * time.Millisecond
	// kafkaMetadataTTL is how long partition counts and the transport's
	// cluster layout are kept before they are fetched again.
	kafkaMetadataTTL = 6 * time.Second
	// kafkaRefreshInterval is the least time between two forced metadata
	// refreshes (see producer.refresh).
	kafkaRefreshInterval = time.Second
	// kafkaSizeBoundTTL is how long a partition bounds its batches after
	// a refusal for size (see partitionQueue.maxBytes).
	kafkaSizeBoundTTL = 10 * time.Minute
)

// producer writes records to Kafka with acks from all in-sync replicas and
// "natural" batching, as franz-go and the Java client do with linger 0:
// each partition has at most one produce request in flight; records that
// arrive while it is in flight wait for it and go together in the next
// one, sent as soon as it returns. A lone record is sent at once, and the
// more concurrent senders, the larger the batches, with no timer.
//
// It is hand-written, a conscious exception to using what the client
// library provides: kafka-go's Writer has no such mode. It seals a batch
// when it holds BatchSize records or BatchTimeout after its first record,
// so a synchronous send whose partition sees fewer than BatchSize
// concurrent records always waits the full timeout (at most S /
// BatchTimeout records per second for S senders; BenchmarkKafka measured
// 0.07 of a raw writer's rate at 10ms). What is kept from kafka-go: its
// Client.Produce (one request to one partition's leader), its Transport
// (connections, TLS, SASL, leader routing, cached metadata) and its Hash
// balancer (so keys map to the partitions the Writer, and sarama, pick).
//
// produce is safe for concurrent use. Records of one partition are sent
// in the order produce was called; the sink's callers never send two
// records of one key at once, so each key's records stay in order. A
// record the broker refuses for its size, alone, fails with ErrTooLarge;
// the records batched with it do not fail for it.
type producer struct {
	client    *kafka.Client
	transport *kafka.Transport
	balancer  kafka.Hash
	// linger, when positive, holds a partition's next batch until its
	// first record has waited that long (unless the batch is full).
	linger time.Duration
	// metadataTTL is how long partition counts are kept.
	metadataTTL time.Duration
	// sizeBoundTTL is how long a partition keeps the bound on its batches
	// that a refusal for size taught it (partitionQueue.maxBytes).
	sizeBoundTTL time.Duration
	log          *slog.Logger

	// ctx is cancelled by stop, which aborts requests in flight.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // running flushers

	mu          sync.RWMutex
	stopped     bool
	topics      map[string]*topicPartitions
	queues      map[topicPartition]*partitionQueue
	lastRefresh time.Time
}

type topicPartition struct {
	topic     string
	partition int
}

// topicPartitions are the partition ids of a topic (0..n-1), as the
// balancer takes them, until they expire.
type topicPartitions struct {
	ids     []int
	expires time.Time
	// rereading is set by the one caller that reads them again.
	rereading atomic.Bool
}

// partitionQueue holds the records waiting for a partition's next request.
type partitionQueue struct {
	topicPartition
	mu      sync.Mutex
	pending []*pendingRecord
	// flushing is set while a flusher goroutine owns the partition; it
	// sends pending records until none are left, then clears it.
	flushing bool
	// maxBytes, when set, bounds the bytes of the partition's batches
	// below kafkaMaxBatchBytes: half of the last batch the broker refused
	// for its size (see producer.deliver), so that a topic whose
	// max.message.bytes is smaller costs a refused request a few times,
	// not on every large batch. It is set at maxBytesAt and dropped
	// sizeBoundTTL later, so that a topic whose limit was raised gets
	// large batches again.
	maxBytes   int
	maxBytesAt time.Time
}

// pendingRecord is one produce call waiting for its ack.
type pendingRecord struct {
	ctx    context.Context // the caller's: once done, the record is not sent
	record kafkaRecord
	at     time.Time       // when it was queued; only set for a linger
	done   func(err error) // called once with the result; must not block
}

func newProducer(client *kafka.Client, transport *kafka.Transport, linger time.Duration, log *slog.Logger) *producer {
	ctx, cancel := context.WithCancel(context.Background())
	return &producer{
		client: client, transport: transport, linger: linger, metadataTTL: kafkaMetadataTTL, sizeBoundTTL: kafkaSizeBoundTTL, log: log,
		ctx: ctx, cancel: cancel,
		topics: map[string]*topicPartitions{},
		queues: map[topicPartition]*partitionQueue{},
	}
}

// produce sends r to the partition of its key in its topic and returns
// when the partition leader acknowledged it with acks=all, the request
// failed, or ctx is done. r's event and byte slices must not be modified
// afterwards either: as with kafka-go's Writer, a request given up on may
// still be reading them.
func (p *producer) produce(ctx context.Context, r kafkaRecord) error {
	result := make(chan error, 1) // done never blocks, even after ctx
	p.produceAsync(ctx, r, func(err error) { result <- err })
	select {
	case err := <-result:
		return err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// produceAsync queues r as produce does and calls done once with the
// result, on a flusher goroutine or, when r cannot be queued, before it
// returns. Once ctx is done, r is no longer sent (done gets ctx's cause)
// and an attempt that failed is not repeated for it.
func (p *producer) produceAsync(ctx context.Context, r kafkaRecord, done func(error)) {
	q, err := p.queue(ctx, &r)
	if err != nil {
		done(err)
		return
	}
	pr := &pendingRecord{ctx: ctx, record: r, done: done}
	if p.linger > 0 {
		pr.at = time.Now()
	}
	q.mu.Lock()
	q.pending = append(q.pending, pr)
	start := !q.flushing
	q.flushing = true
	q.mu.Unlock()
	if start {
		p.startFlusher(q)
	}
}

// queue returns the queue of r's partition, reading the topic's partitions
// when they are not known or have expired.
func (p *producer) queue(ctx context.Context, r *kafkaRecord) (*partitionQueue, error) {
	p.mu.RLock()
	stopped, tp := p.stopped, p.topics[r.topic]
	p.mu.RUnlock()
	if stopped {
		return nil, ErrClosed
	}
	switch {
	case tp == nil:
		var err error
		if tp, err = p.readPartitions(ctx, r.topic); err != nil {
			return nil, err
		}
	case time.Now().After(tp.expires) && tp.rereading.CompareAndSwap(false, true):
		// One caller reads again (partitions may have been added); the
		// others go on with what is known.
		if fresh, err := p.readPartitions(ctx, r.topic); err == nil {
			tp = fresh
		} else {
			tp.rereading.Store(false) // a later call tries again
		}
	}
	key := topicPartition{r.topic, p.balancer.Balance(kafka.Message{Key: r.key}, tp.ids...)}
	p.mu.RLock()
	q := p.queues[key]
	p.mu.RUnlock()
	if q != nil {
		return q, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if q = p.queues[key]; q == nil {
		q = &partitionQueue{topicPartition: key}
		p.queues[key] = q
	}
	return q, nil
}

// readPartitions asks the transport (which caches the cluster's metadata)
// for topic's partitions. The sink never creates topics: a missing one is
// an error, and forces a refresh so that a topic created since is found by
// a retry.
func (p *producer) readPartitions(ctx context.Context, topic string) (*topicPartitions, error) {
	resp, err := p.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("read partitions of topic %q: %w", topic, err)
	}
	for _, t := range resp.Topics {
		if t.Name != topic {
			continue
		}
		if t.Error != nil {
			p.refresh(topic)
			return nil, fmt.Errorf("topic %q: %w (the sink does not create topics)", topic, t.Error)
		}
		if len(t.Partitions) == 0 {
			break
		}
		tp := &topicPartitions{ids: make([]int, len(t.Partitions)), expires: time.Now().Add(p.metadataTTL)}
		for i := range tp.ids {
			tp.ids[i] = i
		}
		p.mu.Lock()
		p.topics[topic] = tp
		p.mu.Unlock()
		return tp, nil
	}
	p.refresh(topic)
	return nil, fmt.Errorf("topic %q: %w", topic, kafka.UnknownTopicOrPartition)
}

// refresh forgets topic's partitions and makes the transport fetch the
// cluster's metadata again, so that a leader that moved, a topic created or
// partitions added are seen by the next request rather than after the
// transport's TTL. kafka-go has no call for that; dropping its connection
// pools does it: requests in flight finish on their connections, the next
// one waits for fresh metadata. At most once per kafkaRefreshInterval.
func (p *producer) refresh(topic string) {
	p.mu.Lock()
	delete(p.topics, topic)
	due := time.Since(p.lastRefresh) >= kafkaRefreshInterval
	if due {
		p.lastRefresh = time.Now()
	}
	p.mu.Unlock()
	if due {
		p.log.Debug("refreshing Kafka metadata", "topic", topic)
		p.transport.CloseIdleConnections()
	}
}

// startFlusher runs a flusher for q, which the caller has marked flushing.
// After stop it fails q's records instead.
func (p *producer) startFlusher(q *partitionQueue) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		q.mu.Lock()
		batch := q.pending
		q.pending, q.flushing = nil, false
		q.mu.Unlock()
		finish(batch, ErrClosed)
		return
	}
	p.wg.Go(func() { p.flush(q) })
}

// flush sends q's records, one request at a time, until none are left.
func (p *producer) flush(q *partitionQueue) {
	for {
		batch, dropped := p.next(q)
		for _, r := range dropped {
			r.done(context.Cause(r.ctx))
		}
		if batch == nil {
			return
		}
		p.deliver(q, batch)
	}
}

// deliver sends batch to q's partition and completes its records. The
// broker measures a whole record batch against the topic's
// max.message.bytes, so a batch it refuses as too large (MESSAGE_TOO_LARGE)
// may still hold only records it would take on their own: it is split in
// halves, sent one after the other, the second once the first is
// acknowledged, so that the partition keeps its order. A lone record
// refused so fails with ErrTooLarge, and the records after it go on. The
// partition's later batches are bounded by half the refused one's bytes
// (partitionQueue.maxBytes) for kafkaSizeBoundTTL. Each part leaves out
// the records whose caller gave up meanwhile. When a part fails otherwise,
// the records after it are not sent and fail with its error, which
// deliver returns.
func (p *producer) deliver(q *partitionQueue, batch []*pendingRecord) error {
	if len(batch) == 0 {
		return nil
	}
	err := p.send(q, batch)
	switch {
	case err == nil || !KafkaRefusedForSize(err):
		finish(batch, err)
		return err
	case len(batch) == 1:
		p.log.Debug("record too large for the topic", "topic", q.topic, "partition", q.partition,
			"bytes", batch[0].record.size, "err", err)
		finish(batch, tooLarge(batch[0].record.size, err))
		return nil
	}
	size := batchSize(batch)
	p.log.Debug("record batch too large for the topic; splitting it", "topic", q.topic, "partition", q.partition,
		"records", len(batch), "bytes", size)
	q.mu.Lock()
	if q.maxBytes == 0 || size/2 < q.maxBytes {
		q.maxBytes = max(size/2, 1)
	}
	q.maxBytesAt = time.Now()
	q.mu.Unlock()
	half := len(batch) / 2
	if err := p.deliver(q, abandonGivenUp(batch[:half])); err != nil {
		finish(batch[half:], fmt.Errorf("not sent after the records before it failed: %w", err))
		return err
	}
	return p.deliver(q, abandonGivenUp(batch[half:]))
}

// abandonGivenUp completes with their context's cause the records of part
// whose caller gave up while the batch was being split, as next leaves
// them out of a batch, and returns the others.
func abandonGivenUp(part []*pendingRecord) []*pendingRecord {
	if !slices.ContainsFunc(part, func(r *pendingRecord) bool { return r.ctx.Err() != nil }) {
		return part
	}
	live := make([]*pendingRecord, 0, len(part))
	for _, r := range part {
		if r.ctx.Err() != nil {
			r.done(context.Cause(r.ctx))
			continue
		}
		live = append(live, r)
	}
	return live
}

// KafkaRefusedForSize reports whether err, from kafka-go, says that the
// broker refuses a record batch for its size: over the topic's
// max.message.bytes (MESSAGE_TOO_LARGE), or, rarer, over its segment.bytes
// (RECORD_LIST_TOO_LARGE); for a Writer's kafka.WriteErrors, whether one
// of them does. Trying the same batch again cannot help; smaller ones may.
func KafkaRefusedForSize(err error) bool {
	if errors.Is(err, kafka.MessageSizeTooLarge) || errors.Is(err, kafka.RecordListTooLarge) {
		return true
	}
	// WriteErrors has no Unwrap.
	if werrs, ok := errors.AsType[kafka.WriteErrors](err); ok {
		for _, e := range werrs {
			if e != nil && KafkaRefusedForSize(e) {
				return true
			}
		}
	}
	return false
}

func batchSize(batch []*pendingRecord) int {
	n := 0
	for _, r := range batch {
		n += r.record.size
	}
	return n
}

// next takes the records of q's next request, dropping those whose caller
// has given up (returned apart, to be failed outside q's lock). It returns
// a nil batch, and gives q up, when none are pending.
func (p *producer) next(q *partitionQueue) (batch, dropped []*pendingRecord) {
	if p.linger > 0 {
		p.lingerFor(q)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.maxBytes > 0 && time.Since(q.maxBytesAt) > p.sizeBoundTTL {
		q.maxBytes = 0
	}
	maxBytes := kafkaMaxBatchBytes
	if q.maxBytes > 0 {
		maxBytes = q.maxBytes
	}
	for len(q.pending) > 0 {
		n, size := 0, 0
		batch = make([]*pendingRecord, 0, min(len(q.pending), kafkaMaxBatchRecords))
		for _, r := range q.pending {
			if len(batch) == kafkaMaxBatchRecords || len(batch) > 0 && size+r.record.size > maxBytes {
				break
			}
			n++
			if r.ctx.Err() != nil {
				dropped = append(dropped, r)
				continue
			}
			batch = append(batch, r)
			size += r.record.size
		}
		// Keep the backing array for the records to come.
		left := copy(q.pending, q.pending[n:])
		clear(q.pending[left:])
		q.pending = q.pending[:left]
		if len(batch) > 0 {
			return batch, dropped
		}
	}
	q.flushing = false
	return nil, dropped
}

// lingerFor waits until q's oldest record has waited p.linger, unless a
// full batch is already pending.
func (p *producer) lingerFor(q *partitionQueue) {
	q.mu.Lock()
	var wait time.Duration
	if len(q.pending) > 0 && len(q.pending) < kafkaMaxBatchRecords {
		wait = p.linger - time.Since(q.pending[0].at)
	}
	q.mu.Unlock()
	if wait <= 0 {
		return
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-p.ctx.Done():
	}
}

// send produces batch to q's partition, trying again (up to
// kafkaMaxAttempts, with backoff) when the error is retriable and some
// caller still waits. Errors that say the metadata is stale refresh it
// first.
func (p *producer) send(q *partitionQueue, batch []*pendingRecord) error {
	backoff := kafkaBackoffMin
	for attempt := 1; ; attempt++ {
		err := p.produceBatch(q, batch)
		if err == nil {
			return nil
		}
		if p.ctx.Err() != nil {
			return fmt.Errorf("produce to topic %q partition %d: %w", q.topic, q.partition, ErrClosed)
		}
		p.log.Debug("produce failed", "topic", q.topic, "partition", q.partition, "records", len(batch), "attempt", attempt, "err", err)
		if staleMetadata(err) {
			p.refresh(q.topic)
		}
		if attempt == kafkaMaxAttempts || !retriable(err) || !waiting(batch) {
			return err
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-p.ctx.Done():
			t.Stop()
			return fmt.Errorf("produce to topic %q partition %d: %w", q.topic, q.partition, ErrClosed)
		}
		backoff *= 2
	}
}

// produceBatch sends one produce request with batch.
func (p *producer) produceBatch(q *partitionQueue, batch []*pendingRecord) error {
	res, err := p.client.Produce(p.ctx, &kafka.ProduceRequest{
		Topic:        q.topic,
		Partition:    q.partition,
		RequiredAcks: kafka.RequireAll,
		Records:      &batchRecords{batch: batch},
	})
	if err != nil {
		return fmt.Errorf("produce to topic %q partition %d: %w", q.topic, q.partition, err)
	}
	if res.Error != nil {
		err := res.Error
		for i, rerr := range res.RecordErrors {
			err = fmt.Errorf("%w (record %d of the batch: %w)", err, i, rerr)
			break // one is enough to say why
		}
		return fmt.Errorf("produce to topic %q partition %d: %w", q.topic, q.partition, err)
	}
	return nil
}

// stop aborts requests in flight, fails records not yet sent (with
// ErrClosed), and waits for the flushers to exit. The sink calls it after its Sends returned or
// its Close deadline passed.
func (p *producer) stop() {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
}

func finish(batch []*pendingRecord, err error) {
	for _, r := range batch {
		r.done(err)
	}
}

// waiting reports whether a caller still waits for one of batch.
func waiting(batch []*pendingRecord) bool {
	for _, r := range batch {
		if r.ctx.Err() == nil {
			return true
		}
	}
	return false
}

// retriable errors may not recur on the next attempt: kafka-go's
// temporary Kafka errors and network errors, and stale metadata. A batch
// refused for its size is not retried as it is (see deliver).
func retriable(err error) bool {
	if KafkaRefusedForSize(err) {
		return false
	}
	var temp interface{ Temporary() bool }
	var nerr net.Error
	return errors.As(err, &temp) && temp.Temporary() || errors.As(err, &nerr) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || staleMetadata(err)
}

// staleMetadata errors say that the partition's leader or the topic is not
// where the cached metadata says.
func staleMetadata(err error) bool {
	return errors.Is(err, kafka.UnknownTopicOrPartition) || errors.Is(err, kafka.NotLeaderForPartition) ||
		errors.Is(err, kafka.LeaderNotAvailable) || errors.Is(err, kafka.BrokerNotAvailable) ||
		errors.Is(err, protocol.ErrNoTopic) || errors.Is(err, protocol.ErrNoPartition) || errors.Is(err, protocol.ErrNoLeader)
}

// batchRecords is a kafka.RecordReader over a batch that writes each
// record's headers when it is read, reusing one record, two readers and
// the headers' buffers, as kafka-go reads a record to the end before it
// asks for the next.
type batchRecords struct {
	batch      []*pendingRecord
	i          int
	record     kafka.Record
	key, value bytesReadCloser
	headers    []kafka.Header
	buf        []byte // the headers' values
}

func (b *batchRecords) ReadRecord() (*kafka.Record, error) {
	if b.i >= len(b.batch) {
		return nil, io.EOF
	}
	r := &b.batch[b.i].record
	b.i++
	if cap(b.buf) < r.headerBytes {
		b.buf = make([]byte, 0, r.headerBytes)
	}
	b.headers, b.buf = r.appendHeaders(b.headers[:0], b.buf[:0])
	b.record = kafka.Record{Headers: b.headers}
	if r.key != nil {
		b.key.Reset(r.key)
		b.record.Key = &b.key
	}
	if r.value != nil {
		b.value.Reset(r.value)
		b.record.Value = &b.value
	}
	return &b.record, nil
}

type bytesReadCloser struct{ bytes.Reader }

func (*bytesReadCloser) Close() error { return nil }
