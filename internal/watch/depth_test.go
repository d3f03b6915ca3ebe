package watch

import (
	"testing"
	"time"

	"k8s.io/client-go/util/workqueue"

	"github.com/depbridge/depbridge/internal/cache"
)

// The queue's depth counts every watcher whose request is not acknowledged
// yet, being reconciled included (an AsyncReconciler's until the broker
// acks), once each, and its age is that of the oldest such request.
func TestQueueDepthCountsRequestsInFlight(t *testing.T) {
	q := newQueue(workqueue.DefaultTypedControllerRateLimiter[cache.Ref](), 10, nil)
	defer q.shutdown()
	a, b := watcher("a"), watcher("b")
	change := func(name string) Cause {
		return Cause{Watched: cmRef("ns", name), Namespace: "ns", Name: name, ResourceVersion: "1", Op: OpModified}
	}
	check := func(step string, wantN int, minAge, maxAge time.Duration) {
		t.Helper()
		n, age := q.depth()
		if n != wantN || age < minAge || age > maxAge {
			t.Fatalf("%s: depth %d, oldest %s; want %d, oldest in [%s, %s]", step, n, age, wantN, minAge, maxAge)
		}
	}
	check("empty", 0, 0, 0)

	// A retried request keeps the time it was first enqueued.
	q.restore(Request{Watcher: a, Causes: []Cause{change("cm")}, Enqueued: time.Now().Add(-time.Hour)}, 10)
	check("a waiting", 1, time.Hour, 2*time.Hour)
	if _, ok := q.take(a); !ok {
		t.Fatal("nothing to take for a")
	}
	check("a in flight", 1, time.Hour, 2*time.Hour)
	q.add(a, change("other"), 0)
	check("a in flight, with a newer change waiting", 1, time.Hour, 2*time.Hour)
	q.add(b, change("cm"), 0)
	check("b waiting too", 2, time.Hour, 2*time.Hour)
	q.finished(a) // acknowledged; its newer change still waits
	check("a acknowledged", 2, 0, time.Minute)
	if _, ok := q.take(b); !ok {
		t.Fatal("nothing to take for b")
	}
	q.finished(b)
	check("b acknowledged", 1, 0, time.Minute)
}
