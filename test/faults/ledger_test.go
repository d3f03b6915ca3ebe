package faults

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/depbridge/depbridge/internal/event"
	"github.com/depbridge/depbridge/internal/watch"
)

// objKey is a watched object by namespace and name.
type objKey struct{ ns, name string }

func (o objKey) String() string { return o.ns + "/" + o.name }

// change is one write of the driver that some watchers depend on.
type change struct {
	obj objKey
	uid types.UID
	// rv is the resourceVersion the write returned; 0 for a deletion
	// (the API returns none).
	rv int64
	// op is what the driver did: create, update, enter, leave or delete.
	op string
	// at is when the write returned.
	at time.Time
	// watchers are the keys of the watchers that depend on the object
	// before or after the write.
	watchers []string
}

// expectation is one change for one of its watchers.
type expectation struct {
	c       *change
	watcher string
	covered time.Time // zero while not covered
	// transient: covered because the object's whole stay in the
	// watcher's set lay within a blind window of its phase and the bridge
	// told nothing of it (it may tell it later).
	transient bool
}

// received is one CloudEvent as a consumer read it.
type received struct {
	sink    string
	id      string
	watcher string // the subject: the watcher key
	at      time.Time
	time    time.Time // the event's time attribute: its first cause's
	data    event.Data
}

// seenKey is what a watcher was told about one object (by uid).
type seenKey struct {
	watcher string
	obj     objKey
	uid     types.UID
}

type seenState struct {
	maxRV int64
	gone  bool // a deleted cause, or relisted with no resourceVersion
}

// ledger is what the driver wrote and what the consumers received, and
// decides coverage. Safe for concurrent use.
//
// coverage: a change (object O, uid U, at resourceVersion R, for watcher
// W) is covered when W received an event with
//   - a cause on O (uid U) whose resourceVersion is ≥ R, compared as
//     numbers: W was told of O at this version or a later one (a later
//     change of O updates the pending cause, so an intermediate version is
//     never announced on its own; initial, relisted, modified, added,
//     entered and left causes all carry the version they report);
//   - or a cause saying O (uid U) is gone from W's set: deleted, or
//     relisted with no resourceVersion. The driver never brings an object
//     back into a selector it left and never reuses a name, so for W this
//     is O's last state and it covers every change of O. A deletion (R
//     unknown) is covered only this way;
//   - or a resync cause whose time attribute (when the bridge recorded
//     it, at start without a checkpoint: "reconcile from scratch") is
//     after the change returned;
//   - or, for an object W was never told of at all, once O has left W's
//     set for good (deleted, or relabelled out: final in the driver), if
//     O's whole stay in W's set lay within one blind window of the phase:
//     from the change that put it there (create or enter: the first
//     change recorded for O and W; later only if that write failed as
//     the API server went away, yet was applied) to the one that ended
//     it (delete or leave), each at the time its write returned. A
//     blind window is an interval during which the bridge could not
//     watch, recorded by the phase that injects the fault (blindWindow):
//     from just before the fault starts (a kill, kube-apiserver stopping,
//     the proxy going down) to when the bridge was seen watching again (a
//     new process ready, a relist stored). This is how a relist works: an object created and
//     deleted (or entered and left) while the bridge could not watch is
//     in no snapshot, so nothing differs and nothing is announced, and
//     W's view of O (none) is O's state, as level-triggered consumers
//     need. Such expectations are counted as transients, apart. An
//     object that was in W's set at any moment the bridge could watch
//     (outside every blind window) must have been told: no exemption
//     there, it is lost. Nor for an object W was told is in its set: it
//     must be told it left. A window is applied once recorded (a sweep
//     before that leaves the expectation pending); overlapping windows
//     merge.
//
// lost causes (the bridge can no longer watch a dependency) and
// truncated requests cover nothing; they are counted and reported.
type ledger struct {
	mu       sync.Mutex
	exps     map[string][]*expectation // by namespace (one per phase)
	pending  map[string][]*expectation // not yet covered, by namespace
	changes  map[string]int            // by namespace
	seen     map[seenKey]seenState
	resyncs  map[string][]time.Time // by watcher
	ids      map[string]string      // event id -> signature of its first event
	versions map[string]bool        // watcher|cause version, for re-announcements
	recv     map[string]*recvStats  // by namespace
	problems []string
	// history of what each watcher was told about each object, for the
	// report of a lost change.
	history map[objWatcher][]string
	// stays: when each object entered each watcher's set (its first
	// recorded change for the watcher) and, once a leave or a delete was
	// recorded, when it left for good.
	stays map[seenKey]*stay
	// blind: the windows during which a phase's bridge could not watch,
	// by namespace (one per phase), sorted and merged.
	blind map[string][]window
}

// stay is an object's time in a watcher's set: from the change that put
// it there to the one that ended it (zero while it is still there).
type stay struct{ from, to time.Time }

// window is an interval during which the bridge could not watch.
type window struct{ from, to time.Time }

func (w window) String() string {
	return w.from.Format("15:04:05.000") + "-" + w.to.Format("15:04:05.000")
}

type objWatcher struct {
	watcher string
	obj     objKey
}

// recvStats counts what was received for one phase.
type recvStats struct {
	events, duplicates, reannounced, lost, resync, truncated int
	bySink                                                   map[string]int
}

func newLedger() *ledger {
	return &ledger{exps: map[string][]*expectation{}, pending: map[string][]*expectation{}, changes: map[string]int{},
		seen: map[seenKey]seenState{}, resyncs: map[string][]time.Time{}, ids: map[string]string{},
		versions: map[string]bool{}, recv: map[string]*recvStats{}, history: map[objWatcher][]string{},
		stays: map[seenKey]*stay{}, blind: map[string][]window{}}
}

// record adds a change the driver made, stamped now. A change no
// watcher depends on is not recorded.
func (l *ledger) record(c change) {
	if len(c.watchers) == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	c.at = time.Now()
	cp := &c
	l.changes[c.obj.ns]++
	for _, w := range c.watchers {
		k := seenKey{watcher: w, obj: c.obj, uid: c.uid}
		st := l.stays[k]
		if st == nil {
			st = &stay{from: c.at}
			l.stays[k] = st
		}
		if c.op == "delete" || c.op == "leave" {
			st.to = c.at
		}
		e := &expectation{c: cp, watcher: w}
		l.exps[c.obj.ns] = append(l.exps[c.obj.ns], e)
		l.pending[c.obj.ns] = append(l.pending[c.obj.ns], e)
	}
}

// blindWindow records that the bridge of the phase in namespace ns could
// not watch from from to to; overlapping windows merge.
func (l *ledger) blindWindow(ns string, from, to time.Time) {
	if to.Before(from) {
		panic(fmt.Sprintf("blind window %s ends before it starts", window{from, to}))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	ws := append(l.blind[ns], window{from, to})
	slices.SortFunc(ws, func(a, b window) int { return a.from.Compare(b.from) })
	merged := ws[:1]
	for _, w := range ws[1:] {
		last := &merged[len(merged)-1]
		if !w.from.After(last.to) {
			if w.to.After(last.to) {
				last.to = w.to
			}
			continue
		}
		merged = append(merged, w)
	}
	l.blind[ns] = merged
}

// blindWindows are the phase's blind windows so far.
func (l *ledger) blindWindows(ns string) []window {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.blind[ns])
}

// blindLocked reports whether [from, to] lies within one blind window of
// namespace ns.
func (l *ledger) blindLocked(ns string, from, to time.Time) bool {
	for _, w := range l.blind[ns] {
		if !from.Before(w.from) && !to.After(w.to) {
			return true
		}
	}
	return false
}

// watcherNamespace is the namespace in a watcher key
// (group/version/Kind/namespace/name).
func watcherNamespace(key string) string {
	parts := strings.Split(key, "/")
	if len(parts) < 5 {
		return ""
	}
	return parts[len(parts)-2]
}

// receive records one event.
func (l *ledger) receive(r received) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ns := watcherNamespace(r.watcher)
	st := l.recv[ns]
	if st == nil {
		st = &recvStats{bySink: map[string]int{}}
		l.recv[ns] = st
	}
	st.events++
	st.bySink[r.sink]++
	sig := signature(r.watcher, r.data)
	if first, ok := l.ids[r.id]; ok {
		st.duplicates++
		if first != sig {
			l.problems = append(l.problems, fmt.Sprintf("event id %s carried two different requests:\n  %s\n  %s", r.id, first, sig))
		}
	} else {
		l.ids[r.id] = sig
		// A new id whose every object cause repeats a version already
		// received for the watcher: a re-announcement.
		all, some := true, false
		for _, c := range r.data.Causes {
			if c.Name == "" {
				all = false
				continue
			}
			some = true
			if !l.versions[r.watcher+"|"+causeVersion(c)] {
				all = false
			}
		}
		if all && some {
			st.reannounced++
		}
	}
	if r.data.Truncated > 0 {
		st.truncated++
	}
	for _, c := range r.data.Causes {
		switch {
		case c.Op == watch.OpResync:
			st.resync++
			l.resyncs[r.watcher] = append(l.resyncs[r.watcher], r.time)
			continue
		case c.Op == watch.OpLost:
			st.lost++
			continue
		case c.Name == "":
			continue
		}
		l.versions[r.watcher+"|"+causeVersion(c)] = true
		ow := objWatcher{r.watcher, objKey{c.Namespace, c.Name}}
		l.history[ow] = append(l.history[ow], fmt.Sprintf("%s@%s %s via %s at %s", c.Op, c.ResourceVersion, r.id[:min(8, len(r.id))], r.sink, r.at.Format("15:04:05.000")))
		k := seenKey{watcher: r.watcher, obj: objKey{c.Namespace, c.Name}, uid: c.UID}
		s := l.seen[k]
		if c.ResourceVersion != "" {
			rv, err := strconv.ParseInt(c.ResourceVersion, 10, 64)
			if err != nil {
				l.problems = append(l.problems, fmt.Sprintf("event %s: resourceVersion %q is not a number", r.id, c.ResourceVersion))
			}
			s.maxRV = max(s.maxRV, rv)
		}
		if c.Op == watch.OpDeleted || (c.Op == watch.OpRelisted && c.ResourceVersion == "") {
			s.gone = true
		}
		l.seen[k] = s
	}
}

// causeVersion identifies the object version a cause reports, as the
// event id counts it.
func causeVersion(c watch.Cause) string {
	gone := c.Op == watch.OpDeleted || c.Op == watch.OpLeft || (c.Op == watch.OpRelisted && c.ResourceVersion == "")
	return fmt.Sprintf("%s/%s/%s/%s/%t", c.Namespace, c.Name, c.UID, c.ResourceVersion, gone)
}

// signature is what an event id stands for (docs/events.md): the watcher,
// truncated and the set of its causes, each by the watched Ref and the
// object version it reports (whether it is gone from the Ref's set
// included, not the op that told it: a relisted cause repeating a
// modified one is the same); causes without an object by op and reason.
func signature(watcher string, d event.Data) string {
	cs := make([]string, 0, len(d.Causes))
	for _, c := range d.Causes {
		if c.Name == "" {
			cs = append(cs, fmt.Sprintf("%s %s %s", c.Watched.Key(), c.Op, c.Reason))
			continue
		}
		cs = append(cs, c.Watched.Key()+" "+causeVersion(c))
	}
	slices.Sort(cs)
	cs = slices.Compact(cs)
	return fmt.Sprintf("%s truncated=%d [%s]", watcher, d.Truncated, strings.Join(cs, "; "))
}

// coveredLocked applies the coverage rule (see ledger).
func (l *ledger) coveredLocked(e *expectation) bool {
	c := e.c
	k := seenKey{watcher: e.watcher, obj: c.obj, uid: c.uid}
	s, told := l.seen[k]
	if s.gone || (c.rv > 0 && s.maxRV >= c.rv) {
		return true
	}
	if st := l.stays[k]; !told && st != nil && !st.to.IsZero() && l.blindLocked(c.obj.ns, st.from, st.to) {
		e.transient = true
		return true
	}
	for _, t := range l.resyncs[e.watcher] {
		if t.After(c.at) {
			return true
		}
	}
	return false
}

// sweep marks newly covered expectations of a phase and returns the time
// of the oldest change still uncovered (zero if none) and how many are.
func (l *ledger) sweep(ns string) (oldest time.Time, uncovered int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	keep := l.pending[ns][:0]
	for _, e := range l.pending[ns] {
		if l.coveredLocked(e) {
			e.covered = now
			continue
		}
		keep = append(keep, e)
		if oldest.IsZero() || e.c.at.Before(oldest) {
			oldest = e.c.at
		}
	}
	clear(l.pending[ns][len(keep):])
	l.pending[ns] = keep
	return oldest, len(keep)
}

// phaseStats are a phase's totals.
type phaseStats struct {
	changes, expectations, lost, transients int
	recv                                    recvStats
	uncovered                               []string // descriptions of the first lost ones
	problems                                []string
}

// stats sums up a phase after its last sweep.
func (l *ledger) stats(ns string) phaseStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	ps := phaseStats{changes: l.changes[ns], expectations: len(l.exps[ns]), lost: len(l.pending[ns]),
		problems: slices.Clone(l.problems)}
	// Transients: covered only by the exemption, and still never told of
	// (a gone cause may have come after the object left).
	for _, e := range l.exps[ns] {
		if _, told := l.seen[seenKey{watcher: e.watcher, obj: e.c.obj, uid: e.c.uid}]; e.transient && !told {
			ps.transients++
		}
	}
	if st := l.recv[ns]; st != nil {
		ps.recv = *st
		ps.recv.bySink = maps.Clone(st.bySink)
	}
	for i, e := range l.pending[ns] {
		if i == 20 {
			break
		}
		k := seenKey{watcher: e.watcher, obj: e.c.obj, uid: e.c.uid}
		s := l.seen[k]
		desc := fmt.Sprintf("%s: %s %s (uid %s) at rv %d, %s; told up to rv %d, gone %t; told %v",
			e.watcher, e.c.op, e.c.obj, e.c.uid, e.c.rv, e.c.at.Format("15:04:05.000"), s.maxRV, s.gone, l.history[objWatcher{e.watcher, e.c.obj}])
		if st := l.stays[k]; st != nil && !st.to.IsZero() {
			desc += fmt.Sprintf("; in the watcher's set %s, blind windows %v", window{st.from, st.to}, l.blind[ns])
		}
		ps.uncovered = append(ps.uncovered, desc)
	}
	return ps
}
