package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
)

// Options configures a transport. The zero value works.
type Options struct {
	// Logger receives the channel's logs. Defaults to discarding them.
	Logger *slog.Logger
	// Metrics counts messages (see NewMetrics). Defaults to none.
	Metrics *Metrics
	// Cluster and Instance name the bridge in the source of status events,
	// "depbridge://<cluster>/<instance>", as in reconcile requests.
	// Default to "default" and "depbridge".
	Cluster  string
	Instance string
	// MessageTimeout bounds the handling of one message (the Subscriptions
	// call); past it the message is rejected and changes nothing.
	// Defaults to 30s.
	MessageTimeout time.Duration
	// Workers handle the messages of different watchers concurrently (one
	// watcher's messages are handled one at a time, in order). Defaults to
	// 4.
	Workers int
	// MaxPending bounds the messages read and not handled yet; reading
	// waits past it. Defaults to 256.
	MaxPending int
	// NoCreate: do not create the JetStream stream or the Kafka topics;
	// Start fails, saying what is missing, unless they exist and fit.
	// Defaults to false: what is missing is created.
	NoCreate bool
	// Stream is the JetStream stream of the control subjects (NATS only).
	// Defaults to "DEPBRIDGE_CONTROL".
	Stream string
	// StreamReplicas of the stream when it is created (NATS only).
	// Defaults to 1.
	StreamReplicas int
	// ReplicationFactor of the topics when they are created (Kafka only).
	// Defaults to the brokers' default.
	ReplicationFactor int
}

// DefaultStream is the JetStream stream of a NATS transport whose Options
// name none.
const DefaultStream = "DEPBRIDGE_CONTROL"

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Cluster == "" {
		o.Cluster = "default"
	}
	if o.Instance == "" {
		o.Instance = "depbridge"
	}
	if o.MessageTimeout <= 0 {
		o.MessageTimeout = 30 * time.Second
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.MaxPending <= 0 {
		o.MaxPending = 256
	}
	if o.Stream == "" {
		o.Stream = DefaultStream
	}
	if o.StreamReplicas <= 0 {
		o.StreamReplicas = 1
	}
	if o.ReplicationFactor <= 0 {
		o.ReplicationFactor = -1
	}
	return o
}

// source is the source attribute of status events.
func (o Options) source() string {
	u := url.URL{Scheme: "depbridge", Host: o.Cluster, Path: "/" + o.Instance}
	return u.String()
}

// processor carries out decoded requests through Subscriptions, whatever
// the transport.
type processor struct {
	subs    Subscriptions
	policy  config.Policy
	route   string
	timeout time.Duration
	source  string
	decoder Decoder
	metrics *Metrics
	nowFunc func() time.Time
}

func newProcessor(ctl config.Control, subs Subscriptions, o Options) *processor {
	return &processor{
		subs:    subs,
		policy:  ctl.Policy,
		route:   ctl.Route,
		timeout: o.MessageTimeout,
		source:  o.source(),
		decoder: Decoder{MaxBytes: ctl.MaxMessageBytes},
		metrics: o.Metrics,
		nowFunc: time.Now,
	}
}

// check applies the policy to what req would watch or query, judging a
// Ref of a cluster-scoped kind as one with no namespace (see checkScoped).
func (p *processor) check(ctx context.Context, req *Request) error {
	field, refs := "", []cache.Ref(nil)
	switch {
	case req.Apply != nil:
		field, refs = "watched", req.Apply.Watched
	case req.Query != nil:
		field, refs = "queries", req.Query.Queries
	}
	for i, r := range refs {
		if err := checkScoped(ctx, p.policy, p.subs, r); err != nil {
			return fmt.Errorf("%s[%d]: %w", field, i, err)
		}
	}
	return nil
}

// handle carries out req (already decoded) and returns its status: the
// policy first, then the Subscriptions call, bounded by the message
// timeout. A panic in Subscriptions is a rejection, not a crash.
func (p *processor) handle(ctx context.Context, req *Request) (st *StatusData, err error) {
	w := req.Watcher
	st = &StatusData{RequestID: req.ID, RequestType: req.Type, Watcher: &w}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic while handling %s: %v", req.Type, r)
		}
		if err != nil {
			st.Accepted, st.Reason, st.Results = false, err.Error(), nil
		} else {
			st.Accepted = true
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	if err := p.check(ctx, req); err != nil {
		return st, err
	}
	switch req.Type {
	case TypeApply:
		s := *req.Apply
		if s.Route == "" {
			s.Route = p.route
		}
		if s.InitialReconcile == nil {
			yes := true
			s.InitialReconcile = &yes
		}
		err = p.subs.Apply(ctx, s)
	case TypeDelete:
		err = p.subs.Delete(ctx, req.Watcher)
	case TypeQuery:
		q := req.Query
		route := q.Route
		if route == "" {
			route = p.route
		}
		initial := q.InitialReconcile == nil || *q.InitialReconcile
		rs, qerr := p.subs.Query(ctx, req.Watcher, route, initial, q.Queries)
		if err = qerr; err == nil {
			st.Results = results(rs, p.policy.AllowSecrets)
		}
	default:
		err = fmt.Errorf("%w: type %q", ErrUnsupported, req.Type)
	}
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) && !errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("gave up after %s: %w (%w)", p.timeout, context.DeadlineExceeded, err)
	}
	return st, err
}

// final reports whether err is a rejection that does not depend on when
// the message is handled (decoding, policy, ownership, a kind the cluster
// does not serve and no CRD can define, or one it serves without list and
// watch): handling the message again would fail the same way. Other
// errors (discovery failing, a timeout, RBAC not bound yet, the API
// server unavailable) may pass.
func final(err error) bool {
	for _, f := range []error{ErrTooLarge, ErrUnsupported, ErrInvalid, ErrDenied, ErrOwned,
		cache.ErrNoVersionedResource, cache.ErrResourceUnwatchable} {
		if errors.Is(err, f) {
			return true
		}
	}
	return false
}

// interrupted reports whether err, the outcome of handling a message under
// the run context ctx, is due to the channel stopping rather than to the
// message: ctx is done, and err is not final. Such a message was not
// carried out, and the transports leave it on the bus for the next start:
// no status (which would say it was rejected), no undo, no count.
func interrupted(ctx context.Context, err error) bool {
	return err != nil && ctx.Err() != nil && !final(err)
}

// retried reports whether err, the outcome of handling a message, is
// one to retry: the message was replayed (no one waits for its status,
// and it is its watcher's last message) and err is not final. See
// retrySet.
func retried(replay bool, err error) bool {
	return replay && err != nil && !final(err)
}

// outcome settles, for a transport, how handling a stored message (of
// watcher, its key or subject when it did not decode) under the run
// context ctx came out, in the same way on every bus. done is true when
// the transport stops there, returning t: interrupted (the channel stops;
// the message stays on the bus for the next start) or, for a replayed
// message, a failure that may pass (t, for the retry set). Otherwise the
// message is counted (unless restored) and the transport goes on to
// answer it or put the bus back.
func (p *processor) outcome(ctx context.Context, log *slog.Logger, req *Request, err error, watcher string,
	replay, restored bool, start time.Time) (t *transient, done bool) {
	switch {
	case interrupted(ctx, err):
		log.Info("control message not handled: the control channel is stopping; it will be handled at the next start", "err", err)
		return nil, true
	case retried(replay, err):
		// Its subscription is not restored; the retry set handles it
		// again, and counts it once it is carried out.
		log.Warn("replayed control message failed; retrying", "err", err)
		return &transient{watcher: watcher, err: err}, true
	}
	if !restored {
		typ := ""
		if req != nil {
			typ = req.Type
		}
		p.metrics.observe(typ, err, time.Since(start))
	}
	return nil, false
}

// rejected is the status of a message rejected before it was carried
// out; req may be nil or partial (no watcher).
func rejected(req *Request, err error) *StatusData {
	st := &StatusData{Reason: err.Error()}
	if req != nil {
		st.RequestID, st.RequestType = req.ID, req.Type
		if req.Watcher != (cache.Ref{}) {
			w := req.Watcher
			st.Watcher = &w
		}
	}
	return st
}
