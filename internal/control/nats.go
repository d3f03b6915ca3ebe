package control

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/sink"
)

// Headers the NATS transport sets on messages it stores in the stream.
// They are not CloudEvents attributes.
const (
	// hdrRequest marks a query stored on behalf of a core-NATS request; its
	// value is a random token only the waiting request knows.
	hdrRequest = "Depbridge-Request"
	// hdrRestored marks a message the bridge stored again after rejecting a
	// later one; its value is the rejected message's stream sequence.
	hdrRestored = "Depbridge-Restored"
)

// queueGroup spreads query requests over the bridges that serve them, so
// each request is answered once.
const queueGroup = "depbridge-control"

// NATS is the control channel on NATS JetStream.
//
// Applies, deletes and queries are stored in a stream (Options.Stream)
// capturing "<control.subject>.watcher.>" that keeps the last message of
// each subject; each watcher has one subject (WatcherSubject), and a
// message on another watcher's subject is rejected. At start the stream is
// replayed from its first message, in order, with no status events; Synced
// is closed once every message that was there has been handled once. A
// replayed message that failed for a reason that may pass (not a
// rejection of the message itself) is retried with backoff until it is
// carried out or a newer message of its watcher replaces it; Failures
// reports it meanwhile. Then new messages are handled as they come, and
// each gets a status event on StatusSubject, and on its replyto extension
// when it has one.
//
// Queries are also served as core-NATS requests on QuerySubject (a subject
// no stream may capture, or JetStream would answer them): the bridge
// checks the request, stores it as the watcher's last message in the
// stream, handles it from there like any stored message, and answers on
// the request's reply subject with the status event carrying the results.
// After a restart the replay applies it again, without answering.
//
// A rejected message changes nothing, and the stream is put back as it
// was: the watcher's last accepted message is stored again (marked so that
// handling it again sends no status), or, when there is none, the rejected
// message is purged; either only while the rejected message is still the
// subject's last, so a newer message is never overwritten. A delete is
// stored like any message: it stays the last message of its subject, and
// replaying it removes nothing.
type NATS struct {
	ctl     config.Control
	conn    config.NATSConn
	opts    Options
	proc    *processor
	log     *slog.Logger
	replay  *replayTracker
	retries *retrySet

	filter, querySubject string
	started              atomic.Bool

	// set by Start
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream

	mu       sync.Mutex
	lastGood map[string]*nats.Msg // subject -> last accepted message
	waiters  map[string]*waiter   // hdrRequest token -> core request
}

// waiter is a core-NATS query request waiting for its stored copy to be
// handled.
type waiter struct {
	inbox string
	done  chan struct{}
}

// NewNATS returns the control channel ctl on the NATS server of conn,
// changing subs. It starts nothing; call Start.
func NewNATS(ctl config.Control, conn config.NATSConn, subs Subscriptions, opts Options) (*NATS, error) {
	if subs == nil {
		return nil, errors.New("control: no Subscriptions")
	}
	ctl.Default()
	if err := checkSubjectPrefix(ctl.Subject); err != nil {
		return nil, fmt.Errorf("control: subject: %w", err)
	}
	opts = opts.withDefaults()
	log := opts.Logger.With("control", "nats", "stream", opts.Stream)
	opts.Logger = log
	return &NATS{
		ctl:          ctl,
		conn:         conn,
		opts:         opts,
		proc:         newProcessor(ctl, subs, opts),
		log:          log,
		replay:       newReplayTracker(1),
		retries:      newRetrySet(log),
		filter:       ctl.Subject + ".watcher.>",
		querySubject: QuerySubject(ctl.Subject),
		lastGood:     map[string]*nats.Msg{},
		waiters:      map[string]*waiter{},
	}, nil
}

// Synced is closed once every message that was in the stream at start has
// been handled: the run-time subscriptions are restored. Report ready only
// then.
// It is never closed when Start fails or stops before.
func (t *NATS) Synced() <-chan struct{} { return t.replay.synced }

// Failures describes the replayed messages that failed for a reason that
// may pass and wait for a retry, one "<watcher>: <error>" each: their
// run-time subscriptions are not restored yet. Report ready only when
// there are none.
func (t *NATS) Failures() []string { return t.retries.failures() }

// Start connects, creates or updates the stream (unless Options.NoCreate),
// replays it, serves queries once synced, and handles new messages until
// ctx is done. It blocks, and returns only after its goroutines have
// exited and the connection is closed. It fails at once when the server
// cannot be reached or the stream cannot be set up. A transport starts
// once.
func (t *NATS) Start(ctx context.Context) error {
	if !t.started.CompareAndSwap(false, true) {
		return errors.New("control: Start called twice")
	}
	nc, err := sink.DialNATS("control", t.conn, t.log)
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	defer func() {
		// Status events still buffered go out before the connection closes.
		if nc.IsConnected() {
			_ = nc.FlushTimeout(2 * time.Second)
		}
		nc.Close()
	}()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("control: jetstream: %w", err)
	}
	t.nc, t.js = nc, js
	if t.stream, err = t.ensureStream(ctx); err != nil {
		return err
	}
	if err := t.checkQuerySubject(ctx); err != nil {
		return err
	}
	info, err := t.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("control: stream %q: %w", t.opts.Stream, err)
	}
	bootLast := info.State.LastSeq
	if info.State.Msgs == 0 {
		bootLast = 0
	}
	cons, err := t.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{t.filter},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("control: consumer on stream %q: %w", t.opts.Stream, err)
	}
	queries := make(chan *nats.Msg, t.opts.MaxPending)
	sub, err := nc.ChanQueueSubscribe(t.querySubject, queueGroup, queries)
	if err != nil {
		return fmt.Errorf("control: subscribe to %s: %w", t.querySubject, err)
	}
	// The server must know of the subscription before Synced is closed, or
	// a query sent as soon as the bridge is ready finds no responder.
	if err := nc.FlushTimeout(10 * time.Second); err != nil {
		return fmt.Errorf("control: subscribe to %s: %w", t.querySubject, err)
	}
	t.log.Info("control channel started", "subject", t.filter, "queries", t.querySubject, "replay", info.State.Msgs)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	ser := newSerializer(t.opts.MaxPending)
	var wg sync.WaitGroup
	for range t.opts.Workers {
		wg.Go(func() { ser.run(runCtx) })
	}
	wg.Go(func() { t.retries.run(runCtx, ser) })
	wg.Go(func() { t.read(runCtx, cons, ser, bootLast) })
	wg.Go(func() { t.serveQueries(runCtx, queries) })

	<-ctx.Done()
	_ = sub.Unsubscribe()
	cancel()
	wg.Wait()
	t.log.Info("control channel stopped")
	return nil
}

// ensureStream returns the control stream, creating it, or adding the
// control subjects and the one-message-per-subject limit to it, as
// needed and allowed.
func (t *NATS) ensureStream(ctx context.Context) (jetstream.Stream, error) {
	name := t.opts.Stream
	s, err := t.js.Stream(ctx, name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		if t.opts.NoCreate {
			return nil, fmt.Errorf("control: stream %q does not exist; create it with subjects %q and max messages per subject 1", name, t.filter)
		}
		s, err = t.js.CreateStream(ctx, jetstream.StreamConfig{
			Name:              name,
			Description:       "depbridge control channel: the last control message of each watcher",
			Subjects:          []string{t.filter},
			Retention:         jetstream.LimitsPolicy,
			Storage:           jetstream.FileStorage,
			Discard:           jetstream.DiscardOld,
			MaxMsgsPerSubject: 1,
			Replicas:          t.opts.StreamReplicas,
		})
		if err != nil {
			return nil, fmt.Errorf("control: create stream %q for %q: %w", name, t.filter, err)
		}
		t.log.Info("created control stream", "subjects", t.filter)
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("control: stream %q: %w", name, err)
	}
	cfg := s.CachedInfo().Config
	if slices.Contains(cfg.Subjects, t.filter) && cfg.MaxMsgsPerSubject == 1 {
		return s, nil
	}
	if t.opts.NoCreate {
		return nil, fmt.Errorf("control: stream %q must capture %q and keep 1 message per subject (has subjects %q, max messages per subject %d)",
			name, t.filter, cfg.Subjects, cfg.MaxMsgsPerSubject)
	}
	if !slices.Contains(cfg.Subjects, t.filter) {
		cfg.Subjects = append(cfg.Subjects, t.filter)
	}
	cfg.MaxMsgsPerSubject = 1
	if s, err = t.js.UpdateStream(ctx, cfg); err != nil {
		return nil, fmt.Errorf("control: update stream %q to capture %q with 1 message per subject: %w", name, t.filter, err)
	}
	t.log.Info("updated control stream", "subjects", cfg.Subjects)
	return s, nil
}

// checkQuerySubject fails when a stream captures the query subject: its
// PubAck would answer every request before the bridge does.
func (t *NATS) checkQuerySubject(ctx context.Context) error {
	name, err := t.js.StreamNameBySubject(ctx, t.querySubject)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("control: look for a stream capturing %s: %w", t.querySubject, err)
	}
	return fmt.Errorf("control: stream %q captures the query subject %s, so JetStream would answer every query request; "+
		"exclude it from the stream's subjects", name, t.querySubject)
}

// read consumes the stream in order and queues each message under its
// subject. Messages with a sequence up to bootLast are the replay.
func (t *NATS) read(ctx context.Context, cons jetstream.Consumer, ser *serializer, bootLast uint64) {
	replayRead := false
	readerDone := func() {
		if !replayRead {
			replayRead = true
			t.replay.readerDone()
		}
	}
	if bootLast == 0 {
		readerDone()
	}
	var it jetstream.MessagesContext
	defer func() {
		if it != nil {
			it.Stop()
		}
	}()
	for ctx.Err() == nil {
		if it == nil {
			var err error
			if it, err = cons.Messages(); err != nil {
				t.log.Warn("cannot consume the control stream; retrying", "err", err)
				sleep(ctx, time.Second)
				continue
			}
		}
		nctx, cancel := context.WithTimeout(ctx, time.Second)
		msg, err := it.Next(jetstream.NextContext(nctx))
		cancel()
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return
			case errors.Is(err, context.DeadlineExceeded):
				// Idle: the replay is over when nothing is left (messages
				// that were there at start may have been removed since).
				if !replayRead {
					if ci, err := cons.Info(ctx); err == nil && ci.NumPending == 0 {
						readerDone()
					}
				}
				continue
			case errors.Is(err, jetstream.ErrMsgIteratorClosed):
				it = nil
			}
			t.log.Warn("reading the control stream failed; retrying", "err", err)
			sleep(ctx, 250*time.Millisecond)
			continue
		}
		meta, err := msg.Metadata()
		if err != nil {
			t.log.Warn("control message without JetStream metadata; skipped", "subject", msg.Subject(), "err", err)
			continue
		}
		seq := meta.Sequence.Stream
		replay := seq <= bootLast
		m := &nats.Msg{Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data()}
		if replay {
			t.replay.add()
		}
		err = ser.add(ctx, m.Subject, func(ctx context.Context) {
			if replay {
				defer t.replay.handled()
			}
			t.retries.handle(ctx, m.Subject, func(ctx context.Context) *transient { return t.process(ctx, m, seq, replay) })
		})
		if err != nil {
			if replay {
				t.replay.handled()
			}
			return
		}
		if seq >= bootLast || meta.NumPending == 0 {
			readerDone()
		}
	}
}

// process handles one stored message: decode, check, carry out, answer
// (unless replayed or restored), and put the stream back after a
// rejection. A replayed message that fails for a reason that may pass is
// neither rejected nor counted: process returns it for retry.
func (t *NATS) process(ctx context.Context, m *nats.Msg, seq uint64, replay bool) *transient {
	start := time.Now()
	restored := m.Header.Get(hdrRestored) != ""
	var w *waiter
	if tok := m.Header.Get(hdrRequest); tok != "" && !replay {
		if w = t.takeWaiter(tok); w != nil {
			defer close(w.done)
		}
	}
	req, err := t.proc.decoder.DecodeNATS(m.Header, m.Data)
	if err == nil {
		if want := WatcherSubject(t.ctl.Subject, req.Watcher); m.Subject != want {
			err = fmt.Errorf("%w: published to %s, but the subject of watcher %s is %s", ErrInvalid, m.Subject, req.Watcher.Key(), want)
		}
	}
	if err == nil && !replay {
		err = t.checkReplyTo(req.ReplyTo)
	}
	var st *StatusData
	if err != nil {
		st = rejected(req, err)
	} else {
		st, err = t.proc.handle(ctx, req)
	}
	log := t.log.With("subject", m.Subject, "seq", seq, "replay", replay)
	if req != nil {
		log = log.With("watcher", req.Watcher.Key(), "type", req.Type, "event_id", req.ID)
	}
	watcher := m.Subject
	if req != nil {
		watcher = req.Watcher.Key()
	}
	if tr, done := t.proc.outcome(ctx, log, req, err, watcher, replay, restored, start); done {
		return tr
	}
	if err != nil {
		log.Warn("control message rejected", "err", err)
		if !replay && !restored {
			t.undo(ctx, m, seq)
		}
	} else {
		log.Info("control message applied")
		t.mu.Lock()
		t.lastGood[m.Subject] = m
		t.mu.Unlock()
	}
	if replay || restored {
		return nil
	}
	dests := []string{t.ctl.Subject + ".status." + strings.TrimPrefix(m.Subject, t.ctl.Subject+".watcher.")}
	if req != nil && req.ReplyTo != "" && t.checkReplyTo(req.ReplyTo) == nil {
		dests = append(dests, req.ReplyTo)
	}
	if w != nil {
		dests = append(dests, w.inbox)
	}
	t.publishStatus(ctx, req, st, dests)
	return nil
}

// undo puts the stream back as it was before the rejected message m (at
// seq): it stores the subject's last accepted message again, or purges m
// when there is none; in both cases only while m is still the subject's
// last message.
func (t *NATS) undo(ctx context.Context, m *nats.Msg, seq uint64) {
	t.mu.Lock()
	good := t.lastGood[m.Subject]
	t.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	log := t.log.With("subject", m.Subject, "seq", seq)
	if good == nil {
		err := t.stream.Purge(ctx, jetstream.WithPurgeSubject(m.Subject), jetstream.WithPurgeSequence(seq+1))
		if err != nil {
			log.Warn("cannot purge the rejected control message; a restart will reject it again", "err", err)
		}
		return
	}
	r := nats.NewMsg(m.Subject)
	r.Header = storedHeader(good.Header)
	r.Header.Set(hdrRestored, strconv.FormatUint(seq, 10))
	r.Data = good.Data
	_, err := t.js.PublishMsg(ctx, r, jetstream.WithExpectLastSequencePerSubject(seq))
	var apiErr *jetstream.APIError
	switch {
	case err == nil:
		log.Debug("stored the last accepted control message again")
	case errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant):
		log.Debug("a newer control message replaced the rejected one; nothing to restore")
	default:
		log.Warn("cannot store the last accepted control message again; a restart will reject the rejected one and lose the watcher's run-time subscription", "err", err)
	}
}

// storedHeader copies h without the headers JetStream acts on (Nats-*)
// and the transport's own marks.
func storedHeader(h nats.Header) nats.Header {
	out := make(nats.Header, len(h))
	for k, v := range h {
		if len(k) >= 5 && strings.EqualFold(k[:5], "nats-") || strings.EqualFold(k, hdrRequest) || strings.EqualFold(k, hdrRestored) {
			continue
		}
		out[k] = slices.Clone(v)
	}
	return out
}

// checkReplyTo refuses a replyto subject that is not a valid subject to
// publish to, is a system or JetStream API subject ('$'), or is one of
// the control channel's own request subjects.
func (t *NATS) checkReplyTo(s string) error {
	if s == "" {
		return nil
	}
	if err := checkSubjectPrefix(s); err != nil {
		return fmt.Errorf("%w: replyto: %v", ErrInvalid, err)
	}
	if strings.HasPrefix(s, "$") || s == t.querySubject || strings.HasPrefix(s, t.ctl.Subject+".watcher.") {
		return fmt.Errorf("%w: replyto %q: a system, JetStream API or control request subject cannot receive status events", ErrInvalid, s)
	}
	return nil
}

// publishStatus sends the status event of st to each subject, in the
// request's content mode, with core NATS. A status larger than the
// server's maximum payload goes without the query's objects.
func (t *NATS) publishStatus(ctx context.Context, req *Request, st *StatusData, subjects []string) {
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
	if err != nil {
		t.log.Error("cannot encode a status event", "watcher", key, "err", err)
		return
	}
	if size := sink.NATSSize(m); size > int(t.nc.MaxPayload()) && len(st.Results) > 0 {
		if m, err = t.encodeStatus(ctx, reqSource, withoutObjects(st), key, mode); err != nil {
			t.log.Error("cannot encode a status event", "watcher", key, "err", err)
			return
		}
	}
	for _, s := range subjects {
		m.Subject = s
		if err := t.nc.PublishMsg(m); err != nil {
			t.log.Warn("cannot publish a status event", "watcher", key, "to", s, "err", err)
		}
	}
}

func (t *NATS) encodeStatus(ctx context.Context, reqSource string, st *StatusData, key string, mode sink.Mode) (*nats.Msg, error) {
	e, err := statusEvent(t.proc.source, reqSource, t.proc.nowFunc(), st, key)
	if err != nil {
		return nil, err
	}
	return sink.EncodeNATS(ctx, "status", mode, &e)
}

// serveQueries answers core-NATS query requests once the replay is over;
// at most Options.MaxPending at once.
func (t *NATS) serveQueries(ctx context.Context, queries <-chan *nats.Msg) {
	select {
	case <-t.replay.synced:
	case <-ctx.Done():
		return
	}
	sem := make(chan struct{}, t.opts.MaxPending)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-queries:
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			wg.Go(func() {
				defer func() { <-sem }()
				t.serveQuery(ctx, m)
			})
		}
	}
}

// serveQuery checks one query request, stores it as its watcher's last
// message, and waits until the stored copy has been handled (which
// answers the request).
func (t *NATS) serveQuery(ctx context.Context, m *nats.Msg) {
	start := time.Now()
	req, err := t.proc.decoder.DecodeNATS(m.Header, m.Data)
	if err == nil && req.Type != TypeQuery {
		err = fmt.Errorf("%w: %s takes only %s requests; publish %s to the watcher's subject %s", ErrUnsupported,
			t.querySubject, TypeQuery, req.Type, WatcherSubject(t.ctl.Subject, req.Watcher))
	}
	if err == nil {
		err = t.checkReplyTo(req.ReplyTo)
	}
	if err == nil {
		cctx, cancel := context.WithTimeout(ctx, t.opts.MessageTimeout)
		err = t.proc.check(cctx, req)
		cancel()
	}
	if err == nil {
		err = t.store(ctx, m, req, start)
		if err == nil {
			return
		}
	}
	if interrupted(ctx, err) {
		// The request goes unanswered, as it would a moment later. Had it
		// been stored, the next start handles it.
		t.log.Info("control query not handled: the control channel is stopping", "watcher", keyOf(req), "err", err)
		return
	}
	typ := ""
	var dests []string
	if req != nil {
		typ = req.Type
		if req.Watcher != (cache.Ref{}) {
			dests = append(dests, StatusSubject(t.ctl.Subject, req.Watcher))
		}
		if t.checkReplyTo(req.ReplyTo) == nil && req.ReplyTo != "" {
			dests = append(dests, req.ReplyTo)
		}
	}
	if m.Reply != "" {
		dests = append(dests, m.Reply)
	}
	t.proc.metrics.observe(typ, err, time.Since(start))
	t.log.Warn("control query rejected", "watcher", keyOf(req), "err", err)
	t.publishStatus(ctx, req, rejected(req, err), dests)
}

// store publishes the query request m to its watcher's subject in the
// stream and waits for its handling, which answers m.Reply. An error
// means nothing was stored.
func (t *NATS) store(ctx context.Context, m *nats.Msg, req *Request, start time.Time) error {
	tok := rand.Text()
	w := &waiter{inbox: m.Reply, done: make(chan struct{})}
	t.mu.Lock()
	t.waiters[tok] = w
	t.mu.Unlock()
	defer t.takeWaiter(tok)
	s := nats.NewMsg(WatcherSubject(t.ctl.Subject, req.Watcher))
	s.Header = storedHeader(m.Header)
	s.Header.Set(hdrRequest, tok)
	s.Data = m.Data
	pctx, cancel := context.WithTimeout(ctx, t.opts.MessageTimeout)
	defer cancel()
	if _, err := t.js.PublishMsg(pctx, s, jetstream.WithExpectStream(t.opts.Stream)); err != nil {
		return fmt.Errorf("store the query in stream %q: %w", t.opts.Stream, err)
	}
	// Handling is bounded by the message timeout once it starts; the
	// messages of the same watcher queued before it come first.
	wait := time.NewTimer(2*t.opts.MessageTimeout - time.Since(start))
	defer wait.Stop()
	select {
	case <-w.done:
	case <-wait.C:
		t.log.Warn("control query not handled in time; its status will be published when it is", "watcher", req.Watcher.Key(), "event_id", req.ID)
	case <-ctx.Done():
	}
	return nil
}

// takeWaiter removes and returns the waiter of tok (nil if none).
func (t *NATS) takeWaiter(tok string) *waiter {
	t.mu.Lock()
	defer t.mu.Unlock()
	w := t.waiters[tok]
	delete(t.waiters, tok)
	return w
}

func keyOf(req *Request) string {
	if req == nil {
		return ""
	}
	return req.Watcher.Key()
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
