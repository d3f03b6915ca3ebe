package bridge

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/control"
	"github.com/depbridge/depbridge/internal/sink"
	"github.com/depbridge/depbridge/internal/watch"
)

// The control channel's errors: a malformed run-time subscription or
// query, and a watcher the configuration file defines (the file wins).
var (
	ErrInvalid = control.ErrInvalid
	ErrOwned   = control.ErrOwned
)

var _ control.Subscriptions = (*subscriptions)(nil)

// invalid wraps the engine's input errors as ErrInvalid, for the control
// channel's status events and metrics.
func invalid(err error) error {
	if errors.Is(err, watch.ErrInvalidInput) && !errors.Is(err, ErrInvalid) {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return err
}

type origin int

const (
	fromFile origin = iota
	fromControl
)

// subscriptions keeps the engine's watchers in line with the subscriptions
// of the configuration file and of the control channel, and routes each
// watcher's requests. Registrations are serialised; routing (the publish
// hot path) only takes a read lock.
type subscriptions struct {
	e      *watch.Engine
	routes map[string]*sink.Route
	log    *slog.Logger
	// timeout bounds one registration (discovery, list and watch start).
	timeout time.Duration

	// forget, if set, is told of every watcher removed (its checkpoint
	// record and what the publisher keeps of it go).
	forget func(cache.Ref)
	// persist, if set, writes the changed checkpoint records of the
	// watchers given (see persistNew).
	persist func(context.Context, ...cache.Ref) error
	// resyncPending: the bridge keeps no checkpoints and has not sent its
	// start-up resync yet (guarded by regMu).
	resyncPending bool

	regMu sync.Mutex // serialises changes

	mu      sync.RWMutex
	subs    map[cache.Ref]entry
	failing map[cache.Ref]failure // file subscriptions not registered yet
}

type entry struct {
	sub    config.Subscription
	route  *sink.Route
	origin origin
	// settled is set while the subscription is being registered, and
	// closed once the engine took it or refused it (see change).
	settled chan struct{}
}

type failure struct {
	sub config.Subscription
	err error
}

func newSubscriptions(e *watch.Engine, routes map[string]*sink.Route, log *slog.Logger) *subscriptions {
	return &subscriptions{e: e, routes: routes, log: log, timeout: 30 * time.Second,
		subs: map[cache.Ref]entry{}, failing: map[cache.Ref]failure{}}
}

// Route implements publish.Router. A watcher with no subscription (removed
// while a request of it was queued) gets a terminal error: its request is
// dropped. While the watcher's subscription is being registered, Route
// waits until the engine took it (its route) or refused it (the route it
// had, if any): a request of that time goes neither to a route that is
// then refused nor, once accepted, to the one it replaced. The wait is
// bounded by the registration's timeout.
func (s *subscriptions) Route(w cache.Ref) (*sink.Route, error) {
	for {
		s.mu.RLock()
		e, ok := s.subs[w]
		s.mu.RUnlock()
		switch {
		case !ok:
			return nil, fmt.Errorf("%w: watcher %s has no subscription any more", watch.ErrTerminal, w.Key())
		case e.settled != nil:
			<-e.settled
		default:
			return e.route, nil
		}
	}
}

// watchOptions are the engine settings of a subscription. Until the
// start-up resync has been sent, no initial reconcile is: the resync
// reconciles every watcher once, initial or not.
func (s *subscriptions) watchOptions(sub config.Subscription, r *sink.Route) watch.WatcherOptions {
	return watch.WatcherOptions{
		NoInitial: s.resyncPending || (sub.InitialReconcile != nil && !*sub.InitialReconcile),
		Objects:   r.IncludeObjects,
		Debounce:  sub.Debounce.Duration,
	}
}

// register adds or replaces one subscription in the engine.
func (s *subscriptions) register(ctx context.Context, sub config.Subscription, o origin) error {
	r := s.routes[sub.Route]
	if r == nil {
		return fmt.Errorf("%w: route %q does not exist (routes: %s)", ErrInvalid, sub.Route, strings.Join(slices.Sorted(maps.Keys(s.routes)), ", "))
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.change(entry{sub: sub, route: r, origin: o}, func() error {
		return s.e.Subscribe(ctx, watch.Subscription{Watcher: sub.Watcher, Watched: sub.Watched, Options: s.watchOptions(sub, r)})
	})
}

// change makes e the watcher's entry if register, which registers it with
// the engine, succeeds, and leaves the entry as it was if not. Meanwhile
// the entry is unsettled, so that Route waits: the engine may hand the
// watcher's requests to a worker before register returns.
func (s *subscriptions) change(e entry, register func() error) error {
	w := e.sub.Watcher
	e.settled = make(chan struct{})
	defer close(e.settled)
	s.mu.Lock()
	prev, had := s.subs[w]
	s.subs[w] = e
	s.mu.Unlock()
	err := register()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err == nil:
		e.settled = nil
		s.subs[w] = e
	case had:
		prev.settled = nil // settled: registrations never overlap (regMu)
		s.subs[w] = prev
	default:
		delete(s.subs, w)
	}
	return err
}

func (s *subscriptions) remove(w cache.Ref) error {
	if err := s.e.RemoveWatcher(w); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.subs, w)
	s.mu.Unlock()
	if s.forget != nil {
		s.forget(w)
	}
	return nil
}

// resyncAll queues one request for every registered watcher: without a
// checkpoint store, the bridge cannot tell what changed while it was down.
// Registrations made before it skipped their initial reconcile; later ones
// do not.
func (s *subscriptions) resyncAll() {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	s.mu.RLock()
	ws := slices.Collect(maps.Keys(s.subs))
	s.mu.RUnlock()
	for _, w := range ws {
		if err := s.e.Resync(w); err != nil {
			s.log.Error("resync", "watcher", w.Key(), "error", err)
		}
	}
	s.resyncPending = false
	s.log.Info("no checkpoint store: every watcher resynced", "watchers", len(ws))
}

// setFile makes the file's subscriptions (validated, canonical) those the
// engine runs: new and changed ones are registered, ones no longer in the
// file removed, unchanged ones left alone. A subscription that fails to
// register is kept for retry and reported by failures.
func (s *subscriptions) setFile(ctx context.Context, subs []config.Subscription) {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	want := make(map[cache.Ref]config.Subscription, len(subs))
	for _, sub := range subs {
		want[sub.Watcher] = sub
	}
	s.mu.RLock()
	var stale []cache.Ref
	for w, e := range s.subs {
		if _, ok := want[w]; !ok && e.origin == fromFile {
			stale = append(stale, w)
		}
	}
	s.mu.RUnlock()
	for _, w := range stale {
		if err := s.remove(w); err != nil {
			s.log.Error("remove subscription", "watcher", w.Key(), "error", err)
			continue
		}
		s.log.Info("subscription removed", "watcher", w.Key())
	}
	s.mu.Lock()
	for w := range s.failing {
		if _, ok := want[w]; !ok {
			delete(s.failing, w)
		}
	}
	s.mu.Unlock()
	var registered []cache.Ref
	for _, w := range slices.SortedFunc(maps.Keys(want), func(a, b cache.Ref) int { return cmp.Compare(a.Key(), b.Key()) }) {
		sub := want[w]
		s.mu.RLock()
		cur, ok := s.subs[w]
		s.mu.RUnlock()
		if ok && cur.origin == fromFile && sameSubscription(cur.sub, sub) {
			continue
		}
		if s.registerFile(ctx, sub) {
			registered = append(registered, w)
		}
	}
	s.persistNew(ctx, registered...)
}

// registerFile registers a file subscription, or keeps it for retry; it
// reports whether it registered it.
func (s *subscriptions) registerFile(ctx context.Context, sub config.Subscription) bool {
	err := s.register(ctx, sub, fromFile)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.failing[sub.Watcher] = failure{sub: sub, err: err}
		s.log.Error("subscription not registered; retrying", "watcher", sub.Watcher.Key(), "error", err)
		return false
	}
	delete(s.failing, sub.Watcher)
	s.log.Info("subscription registered", "watcher", sub.Watcher.Key(), "watched", len(sub.Watched), "route", sub.Route)
	return true
}

// retryFailed registers again the file subscriptions that failed, with
// backoff from 1s to 30s, until ctx is done.
func (s *subscriptions) retryFailed(ctx context.Context) {
	delay := time.Second
	t := time.NewTimer(delay)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.regMu.Lock()
		s.mu.RLock()
		retry := slices.Collect(maps.Values(s.failing))
		s.mu.RUnlock()
		var registered []cache.Ref
		for _, f := range retry {
			if s.registerFile(ctx, f.sub) {
				registered = append(registered, f.sub.Watcher)
			}
		}
		s.persistNew(ctx, registered...)
		s.regMu.Unlock()
		if len(retry) == 0 {
			delay = time.Second
		} else {
			delay = min(2*delay, 30*time.Second)
		}
		t.Reset(delay)
	}
}

// failures describes the file subscriptions not registered yet.
func (s *subscriptions) failures() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.failing))
	for w, f := range s.failing {
		out = append(out, w.Key()+": "+f.err.Error())
	}
	slices.Sort(out)
	return out
}

// Apply adds or replaces a run-time subscription from the control channel.
func (s *subscriptions) Apply(ctx context.Context, sub config.Subscription) error {
	sub, err := s.checkControl(sub)
	if err != nil {
		return err
	}
	s.regMu.Lock()
	defer s.regMu.Unlock()
	if err := s.notOwned(sub.Watcher); err != nil {
		return err
	}
	if err := s.register(ctx, sub, fromControl); err != nil {
		return invalid(err)
	}
	s.persistNew(ctx, sub.Watcher)
	return nil
}

// persistNew writes the checkpoint records of subscriptions just
// registered, before they are reported registered (the control channel's
// status, readiness at start). A watcher registered without an initial
// reconcile starts from a baseline, the state of its dependencies then,
// which the checkpoint store otherwise writes only at its next interval:
// a bridge stopped before that would restart with no record of the
// watcher, take a new baseline, and never tell it what changed in
// between. Only the records of ws are written, for at most
// persistTimeout: registrations wait for no other watcher's record, nor
// long for a checkpoint store that is down. A failed write is logged, not
// returned: the subscription is registered, and the store writes the
// record at its next interval.
func (s *subscriptions) persistNew(ctx context.Context, ws ...cache.Ref) {
	if s.persist == nil || len(ws) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, persistTimeout)
	defer cancel()
	if err := s.persist(ctx, ws...); err != nil {
		s.log.Warn("checkpoint write after registering subscriptions failed; retried at the checkpoint interval",
			"watchers", len(ws), "error", err)
	}
}

// persistTimeout bounds persistNew's write.
const persistTimeout = 10 * time.Second

// Delete removes a run-time subscription; an unknown watcher is fine.
func (s *subscriptions) Delete(_ context.Context, w cache.Ref) error {
	w, err := w.Canonical()
	if err != nil {
		return fmt.Errorf("%w: watcher: %w", ErrInvalid, err)
	}
	s.regMu.Lock()
	defer s.regMu.Unlock()
	if err := s.notOwned(w); err != nil {
		return err
	}
	return s.remove(w)
}

// Query makes exactly queries the watcher's dependencies, its events going
// to route, and returns what each finds in the cache.
func (s *subscriptions) Query(ctx context.Context, w cache.Ref, route string, initial bool, queries []cache.Ref) ([]watch.QueryResult, error) {
	sub, err := s.checkControl(config.Subscription{Watcher: w, Watched: queries, Route: route, InitialReconcile: &initial})
	if err != nil && len(queries) > 0 {
		return nil, err
	}
	if len(queries) == 0 {
		return nil, s.Delete(ctx, w)
	}
	s.regMu.Lock()
	defer s.regMu.Unlock()
	if err := s.notOwned(sub.Watcher); err != nil {
		return nil, err
	}
	r := s.routes[sub.Route]
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var res []watch.QueryResult
	err = s.change(entry{sub: sub, route: r, origin: fromControl}, func() (err error) {
		res, err = s.e.Query(ctx, sub.Watcher, s.watchOptions(sub, r), sub.Watched)
		return err
	})
	if err != nil {
		return nil, invalid(err)
	}
	s.persistNew(ctx, sub.Watcher)
	return res, nil
}

// Resource implements control.KindResolver with the engine's discovery
// cache.
func (s *subscriptions) Resource(ctx context.Context, gvk schema.GroupVersionKind) (cache.Resource, error) {
	return s.e.Resource(ctx, gvk)
}

// checkControl validates a control-channel subscription and makes it
// canonical.
func (s *subscriptions) checkControl(sub config.Subscription) (config.Subscription, error) {
	w, err := sub.Watcher.Canonical()
	if err != nil {
		return sub, fmt.Errorf("%w: watcher: %w", ErrInvalid, err)
	}
	sub.Watcher = w
	if len(sub.Watched) == 0 {
		return sub, fmt.Errorf("%w: no watched objects", ErrInvalid)
	}
	watched := make([]cache.Ref, len(sub.Watched))
	for i, r := range sub.Watched {
		if watched[i], err = r.Canonical(); err != nil {
			return sub, fmt.Errorf("%w: watched[%d]: %w", ErrInvalid, i, err)
		}
	}
	sub.Watched = watched
	if sub.Route == "" {
		sub.Route = config.DefaultRoute
	}
	if s.routes[sub.Route] == nil {
		return sub, fmt.Errorf("%w: route %q does not exist", ErrInvalid, sub.Route)
	}
	if sub.Debounce.Duration < 0 {
		return sub, fmt.Errorf("%w: negative debounce %s", ErrInvalid, sub.Debounce.Duration)
	}
	return sub, nil
}

func (s *subscriptions) notOwned(w cache.Ref) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if e, ok := s.subs[w]; ok && e.origin == fromFile {
		return fmt.Errorf("%w: %s", ErrOwned, w.Key())
	}
	if _, ok := s.failing[w]; ok {
		return fmt.Errorf("%w: %s", ErrOwned, w.Key())
	}
	return nil
}

// sameSubscription compares two canonical subscriptions, ignoring the order
// of and duplicates in the watched list.
func sameSubscription(a, b config.Subscription) bool {
	set := func(refs []cache.Ref) []string {
		keys := make([]string, 0, len(refs))
		for _, r := range refs {
			keys = append(keys, r.String())
		}
		slices.Sort(keys)
		return slices.Compact(keys)
	}
	ai, bi := true, true
	if a.InitialReconcile != nil {
		ai = *a.InitialReconcile
	}
	if b.InitialReconcile != nil {
		bi = *b.InitialReconcile
	}
	return a.Watcher == b.Watcher && a.Route == b.Route && ai == bi && a.Debounce == b.Debounce &&
		slices.Equal(set(a.Watched), set(b.Watched))
}
