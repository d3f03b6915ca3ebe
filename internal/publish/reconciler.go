// Package publish is the watch.Reconciler that turns each reconcile request
// into a CloudEvent and publishes it: route the watcher, fetch the watched
// objects if the route wants them, build the event (package event), render
// the subject, and Send. It returns Send's error, wrapped, so the engine
// retries the request (with its causes, so with the same event id) until
// the broker acknowledges it: nothing is dropped after N attempts.
package publish

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/event"
	"github.com/depbridge/depbridge/internal/sink"
	"github.com/depbridge/depbridge/internal/watch"
)

// Router finds where a watcher's requests go.
type Router interface {
	Route(watcher cache.Ref) (*sink.Route, error)
}

// RouterFunc adapts a function to Router.
type RouterFunc func(watcher cache.Ref) (*sink.Route, error)

// Route calls f.
func (f RouterFunc) Route(watcher cache.Ref) (*sink.Route, error) { return f(watcher) }

// ObjectsFunc returns the objects watcher depends on, from the engine's
// cache. It must not modify them later: the event shares their maps while
// it is encoded.
type ObjectsFunc func(watcher cache.Ref) ([]*unstructured.Unstructured, error)

// Options of a Reconciler.
type Options struct {
	// Cluster and Instance name the event source
	// ("depbridge://<cluster>/<instance>"). Default to "default" and
	// "depbridge".
	Cluster  string
	Instance string
	// Router is required.
	Router Router
	// Objects is called only for routes that include objects; a request
	// for such a route fails when it is nil. Defaults to nil.
	Objects ObjectsFunc
	// Metrics records publishing; nil records nothing. Defaults to nil.
	Metrics *Metrics
	// Logger receives per-event Debug lines. Defaults to discarding.
	Logger *slog.Logger
}

// Reconciler publishes reconcile requests. It is safe for concurrent use by
// the engine's workers, which never reconcile one watcher concurrently.
type Reconciler struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	failing map[string]struct{} // watchers whose last publish failed
}

// New checks opts and returns a Reconciler.
func New(opts Options) (*Reconciler, error) {
	if opts.Router == nil {
		return nil, errors.New("publish: a Router is required")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Reconciler{opts: opts, log: log, failing: map[string]struct{}{}}, nil
}

// Reconcile publishes req and returns after the broker acknowledged it. On
// failure it returns an error that wraps the sink's (so sink.RetryAfter
// works on it) for the engine to retry; it never gives up on its own.
func (r *Reconciler) Reconcile(ctx context.Context, req watch.Request) (watch.Result, error) {
	var err error
	r.run(ctx, req, false, func(_ watch.Result, e error) { err = e })
	return watch.Result{}, err
}

// Begin is Reconcile for the engine's pipelined path: on a sink that is a
// sink.AsyncSender it hands the event over and returns, and done gets the
// broker's answer; on other sinks it sends and waits, then calls done.
func (r *Reconciler) Begin(ctx context.Context, req watch.Request, done func(watch.Result, error)) {
	r.run(ctx, req, true, done)
}

// run publishes req and calls done with the result, before it returns
// unless async and the sink is a sink.AsyncSender.
func (r *Reconciler) run(ctx context.Context, req watch.Request, async bool, done func(watch.Result, error)) {
	key := req.Watcher.Key()
	route, err := r.opts.Router.Route(req.Watcher)
	if err != nil {
		done(watch.Result{}, fmt.Errorf("route watcher %s: %w", key, err))
		return
	}
	if route == nil || route.Sink == nil {
		done(watch.Result{}, fmt.Errorf("route watcher %s: no route or no sink", key))
		return
	}
	r.publish(ctx, req, key, route, false, async, done)
}

// publish builds req's event for route, without the objects the route
// includes when omit is set, and sends it; it calls done as run does. An
// event with objects that the sink refuses for its size
// (sink.ErrTooLarge) is sent again without them, marked objectsOmitted,
// rather than retried for ever: the objects only grow with the watched
// set.
func (r *Reconciler) publish(ctx context.Context, req watch.Request, key string, route *sink.Route, omit, async bool, done func(watch.Result, error)) {
	m := r.opts.Metrics
	e, t, err := r.prepare(req, key, route, omit)
	if err != nil {
		r.setFailing(key, true)
		if m != nil {
			m.failed.WithLabelValues(route.SinkName).Inc()
		}
		done(watch.Result{}, err)
		return
	}
	if m != nil && !omit && r.isFailing(key) { // a resend without objects is not a retry
		m.retries.WithLabelValues(route.SinkName).Inc()
	}
	as, pipelined := route.Sink.(sink.AsyncSender)
	pipelined = pipelined && async
	start := time.Now()
	sent := func(err error) {
		if m != nil {
			m.duration.WithLabelValues(route.SinkName).Observe(time.Since(start).Seconds())
		}
		if err != nil && route.IncludeObjects && !omit && errors.Is(err, sink.ErrTooLarge) {
			r.log.Warn("event too large for the sink with the watched objects; sending it without them (objectsOmitted)",
				"watcher", key, "event_id", e.ID(), "route", route.Name, "sink", route.SinkName, "error", err)
			if pipelined {
				// Not on the client's callback goroutine, which must not
				// block.
				go func() {
					defer func() {
						if p := recover(); p != nil {
							done(watch.Result{}, fmt.Errorf("resend of the reconcile request for %s without objects panicked: %v", key, p))
						}
					}()
					r.publish(ctx, req, key, route, true, async, done)
				}()
				return
			}
			r.publish(ctx, req, key, route, true, async, done)
			return
		}
		if err != nil {
			r.setFailing(key, true)
			if m != nil {
				m.failed.WithLabelValues(route.SinkName).Inc()
			}
			done(watch.Result{}, fmt.Errorf("publish reconcile request for %s (event %s) via route %q: %w", key, e.ID(), route.Name, err))
			return
		}
		r.setFailing(key, false)
		if m != nil {
			m.published.WithLabelValues(route.SinkName).Inc()
			if omit {
				m.omitted.WithLabelValues(route.SinkName).Inc()
			}
		}
		r.log.Debug("published", "watcher", key, "event_id", e.ID(), "route", route.Name, "sink", route.SinkName, "subject", t.Subject)
		done(watch.Result{}, nil)
	}
	if pipelined {
		as.SendAsync(t, e, sent)
		return
	}
	sent(route.Sink.Send(ctx, t, e))
}

// prepare builds req's event, with the watched objects if the route
// includes them and omit is not set, and renders its target.
func (r *Reconciler) prepare(req watch.Request, key string, route *sink.Route, omit bool) (ce.Event, sink.Target, error) {
	opts := event.Options{
		Cluster: r.opts.Cluster, Instance: r.opts.Instance,
		IncludeObjects: route.IncludeObjects && !omit, IncludeSecretData: route.IncludeSecretData,
		ObjectsOmitted: route.IncludeObjects && omit,
	}
	if opts.IncludeObjects {
		if r.opts.Objects == nil {
			return ce.Event{}, sink.Target{}, fmt.Errorf("route %q includes objects, but the publisher has no way to fetch them", route.Name)
		}
		objs, err := r.opts.Objects(req.Watcher)
		if err != nil {
			return ce.Event{}, sink.Target{}, fmt.Errorf("fetch objects of watcher %s: %w", key, err)
		}
		opts.Objects = objs
	}
	e, err := event.New(req, opts)
	if err != nil {
		return ce.Event{}, sink.Target{}, err
	}
	t, err := route.Target(req.Watcher)
	if err != nil {
		return ce.Event{}, sink.Target{}, err
	}
	return e, t, nil
}

// Forget drops what the reconciler keeps of watcher w (whether its last
// publish failed), once w has no subscription any more: a watcher added
// again later starts afresh.
func (r *Reconciler) Forget(w cache.Ref) { r.setFailing(w.Key(), false) }

func (r *Reconciler) isFailing(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.failing[key]
	return ok
}

func (r *Reconciler) setFailing(key string, failing bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if failing {
		r.failing[key] = struct{}{}
	} else {
		delete(r.failing, key)
	}
}

var _ watch.AsyncReconciler = (*Reconciler)(nil)
