package faults

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/event"
	"github.com/depbridge/depbridge/internal/watch"
)

// TestCoverageRule checks the ledger's rule on hand-made events, so that
// the suite's 0 lost means what ledger's comment says.
func TestCoverageRule(t *testing.T) {
	const w = "example.com/v1/App/ns/app-00"
	o := objKey{"ns", "team-0001"}
	cause := func(op watch.Op, uid, rv string) watch.Cause {
		return watch.Cause{Namespace: o.ns, Name: o.name, UID: types.UID(uid), ResourceVersion: rv, Op: op}
	}
	tests := map[string]struct {
		change change
		causes []watch.Cause
		want   bool
	}{
		"same version":        {change{obj: o, uid: "u1", rv: 10}, []watch.Cause{cause(watch.OpModified, "u1", "10")}, true},
		"later version":       {change{obj: o, uid: "u1", rv: 10}, []watch.Cause{cause(watch.OpRelisted, "u1", "12")}, true},
		"earlier version":     {change{obj: o, uid: "u1", rv: 10}, []watch.Cause{cause(watch.OpModified, "u1", "9")}, false},
		"numeric, not text":   {change{obj: o, uid: "u1", rv: 10}, []watch.Cause{cause(watch.OpModified, "u1", "9"), cause(watch.OpInitial, "u1", "100")}, true},
		"other uid":           {change{obj: o, uid: "u1", rv: 10}, []watch.Cause{cause(watch.OpModified, "u2", "12")}, false},
		"left at the version": {change{obj: o, uid: "u1", rv: 10, op: "leave"}, []watch.Cause{cause(watch.OpLeft, "u1", "10")}, true},
		"deleted":             {change{obj: o, uid: "u1", op: "delete"}, []watch.Cause{cause(watch.OpDeleted, "u1", "9")}, true},
		"relisted gone":       {change{obj: o, uid: "u1", op: "delete"}, []watch.Cause{cause(watch.OpRelisted, "u1", "")}, true},
		"delete, not by rv":   {change{obj: o, uid: "u1", op: "delete"}, []watch.Cause{cause(watch.OpModified, "u1", "99")}, false},
		"lost covers nothing": {change{obj: o, uid: "u1", rv: 10}, []watch.Cause{{Watched: cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "ns", Selector: "team=t0"}, Op: watch.OpLost, Reason: "forbidden"}}, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			l := newLedger()
			tc.change.watchers = []string{w}
			l.record(tc.change)
			l.receive(received{sink: "kafka", id: "id-1", watcher: w, at: time.Now(), data: event.Data{Causes: tc.causes}})
			_, n := l.sweep("ns")
			if got := n == 0; got != tc.want {
				t.Errorf("covered = %t, want %t", got, tc.want)
			}
		})
	}

	// An object the watcher was never told of is covered once it has left
	// the watcher's set, its whole stay within a blind window (a
	// transient a relist cannot see); one it was told of is not.
	for _, told := range []bool{false, true} {
		l := newLedger()
		l.blindWindow("ns", time.Now(), time.Now().Add(time.Hour))
		l.record(change{obj: o, uid: "u1", rv: 10, op: "create", watchers: []string{w}})
		if told {
			l.receive(received{id: "t", watcher: w, data: event.Data{Causes: []watch.Cause{cause(watch.OpAdded, "u1", "10")}}})
		}
		if _, n := l.sweep("ns"); n != map[bool]int{false: 1, true: 0}[told] {
			t.Errorf("told %t: %d uncovered before the object left", told, n)
		}
		l.record(change{obj: o, uid: "u1", rv: 12, op: "leave", watchers: []string{w}})
		_, n := l.sweep("ns")
		if want := map[bool]int{false: 0, true: 1}[told]; n != want {
			t.Errorf("told %t: %d uncovered after the object left untold, want %d", told, n, want)
		}
		if st := l.stats("ns"); !told && st.transients != 2 {
			t.Errorf("transients = %d, want 2", st.transients)
		}
	}

	// A resync covers the changes made before it was recorded, not after.
	l := newLedger()
	l.record(change{obj: o, uid: "u1", rv: 10, watchers: []string{w}})
	resyncAt := time.Now()
	time.Sleep(time.Millisecond)
	l.record(change{obj: o, uid: "u1", rv: 11, watchers: []string{w}})
	l.receive(received{sink: "jetstream", id: "id-2", watcher: w, at: time.Now(), time: resyncAt,
		data: event.Data{Causes: []watch.Cause{{Op: watch.OpResync}}}})
	if _, n := l.sweep("ns"); n != 1 {
		t.Errorf("after a resync, %d uncovered, want 1 (the change after it)", n)
	}

	// Duplicates: the same id again counts, also when it tells the same
	// version by another op; the same id with another version is a
	// problem; a new id repeating known versions is a re-announcement.
	l = newLedger()
	modified := event.Data{Causes: []watch.Cause{cause(watch.OpModified, "u1", "10")}}
	relisted := event.Data{Causes: []watch.Cause{cause(watch.OpRelisted, "u1", "10")}}
	both := event.Data{Causes: []watch.Cause{cause(watch.OpRelisted, "u1", "10"), cause(watch.OpModified, "u2", "11")}}
	l.receive(received{id: "a", watcher: w, data: modified})
	l.receive(received{id: "a", watcher: w, data: relisted})
	l.receive(received{id: "b", watcher: w, data: both})
	l.receive(received{id: "c", watcher: w, data: relisted})
	l.receive(received{id: "a", watcher: w, data: both})
	st := l.stats("ns")
	if st.recv.duplicates != 2 || st.recv.reannounced != 1 || len(st.problems) != 1 {
		t.Errorf("duplicates %d (want 2), re-announced %d (want 1), problems %q (want 1)", st.recv.duplicates, st.recv.reannounced, st.problems)
	}
}

// TestCoverageRuleBlindWindows checks that an object a watcher was never
// told of is exempt (a transient) only when its whole stay in the
// watcher's set lies within a blind window of its phase; anywhere else it
// is lost.
func TestCoverageRuleBlindWindows(t *testing.T) {
	const w = "example.com/v1/App/ns/app-00"
	o := objKey{"ns", "team-0001"}
	created := func(l *ledger) {
		l.record(change{obj: o, uid: "u1", rv: 10, op: "create", watchers: []string{w}})
		time.Sleep(time.Millisecond)
		l.record(change{obj: o, uid: "u1", rv: 11, op: "update", watchers: []string{w}})
		time.Sleep(time.Millisecond)
	}
	deleted := func(l *ledger) {
		l.record(change{obj: o, uid: "u1", op: "delete", watchers: []string{w}})
		time.Sleep(time.Millisecond)
	}
	blind := func(l *ledger, ns string, open func()) {
		from := time.Now()
		time.Sleep(time.Millisecond)
		open()
		l.blindWindow(ns, from, time.Now())
	}
	tests := map[string]struct {
		run        func(l *ledger)
		uncovered  int
		transients int
	}{
		"created and deleted untold, inside a blind window: transient": {
			run:        func(l *ledger) { blind(l, "ns", func() { created(l); deleted(l) }) },
			uncovered:  0,
			transients: 3,
		},
		"created and deleted untold, outside any window: lost": {
			run:       func(l *ledger) { created(l); deleted(l) },
			uncovered: 3,
		},
		"created and deleted untold, between two windows: lost": {
			run: func(l *ledger) {
				blind(l, "ns", func() {})
				created(l)
				deleted(l)
				blind(l, "ns", func() {})
			},
			uncovered: 3,
		},
		"created before the window, deleted in it: lost": {
			run: func(l *ledger) {
				created(l)
				blind(l, "ns", func() { deleted(l) })
			},
			uncovered: 3,
		},
		"created in the window, deleted after it: lost": {
			run: func(l *ledger) {
				blind(l, "ns", func() { created(l) })
				deleted(l)
			},
			uncovered: 3,
		},
		"a window of another phase: lost": {
			run:       func(l *ledger) { blind(l, "other", func() { created(l); deleted(l) }) },
			uncovered: 3,
		},
		"entered and left untold, across two overlapping windows: transient": {
			run: func(l *ledger) {
				from := time.Now()
				l.record(change{obj: o, uid: "u1", rv: 10, op: "enter", watchers: []string{w}})
				time.Sleep(time.Millisecond)
				mid := time.Now()
				time.Sleep(time.Millisecond)
				l.record(change{obj: o, uid: "u1", rv: 12, op: "leave", watchers: []string{w}})
				l.blindWindow("ns", mid, time.Now())
				l.blindWindow("ns", from, mid)
			},
			uncovered:  0,
			transients: 2,
		},
		"still in the set, untold, inside a window: lost": {
			run:       func(l *ledger) { blind(l, "ns", func() { created(l) }) },
			uncovered: 2,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			l := newLedger()
			tc.run(l)
			if _, n := l.sweep("ns"); n != tc.uncovered {
				t.Errorf("%d uncovered, want %d", n, tc.uncovered)
			}
			if st := l.stats("ns"); st.transients != tc.transients || st.lost != tc.uncovered {
				t.Errorf("transients %d, lost %d; want %d, %d", st.transients, st.lost, tc.transients, tc.uncovered)
			}
		})
	}

	// A window recorded after a sweep applies at the next one.
	l := newLedger()
	from := time.Now()
	created(l)
	deleted(l)
	if _, n := l.sweep("ns"); n != 3 {
		t.Errorf("before the window is recorded: %d uncovered, want 3", n)
	}
	l.blindWindow("ns", from, time.Now())
	if _, n := l.sweep("ns"); n != 0 {
		t.Errorf("after the window is recorded: %d uncovered, want 0", n)
	}
}
