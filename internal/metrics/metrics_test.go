package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/client-go/util/workqueue"

	"github.com/depbridge/depbridge/internal/watch"
)

type fakeEngine struct {
	st  watch.Stats
	src []watch.SourceStatus
}

func (f fakeEngine) Stats() watch.Stats            { return f.st }
func (f fakeEngine) Sources() []watch.SourceStatus { return f.src }

func TestCollector(t *testing.T) {
	e := fakeEngine{
		st:  watch.Stats{Watchers: 3, Watched: 7, Streams: 2, Pending: 1, Objects: 40, Queued: 5, OldestQueued: 1500 * time.Millisecond},
		src: []watch.SourceStatus{{State: watch.StateActive, Lists: 1}, {State: watch.StateActive, Lists: 3}, {State: watch.StateRestarting, Lists: 1}, {State: watch.StatePending}},
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(NewCollector(e)); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP depbridge_api_streams List+watch sources running against the API server.
# TYPE depbridge_api_streams gauge
depbridge_api_streams 2
# HELP depbridge_queue_oldest_pending_seconds Age of the oldest reconcile request not yet acknowledged.
# TYPE depbridge_queue_oldest_pending_seconds gauge
depbridge_queue_oldest_pending_seconds 1.5
# HELP depbridge_source_lists Lists stored by the running sources: one at start, one per relist (after 410 Gone or a restart of the API server).
# TYPE depbridge_source_lists gauge
depbridge_source_lists 5
# HELP depbridge_sources List+watch sources by state.
# TYPE depbridge_sources gauge
depbridge_sources{state="active"} 2
depbridge_sources{state="failed"} 0
depbridge_sources{state="pending"} 1
depbridge_sources{state="restarting"} 1
depbridge_sources{state="syncing"} 0
# HELP depbridge_watched_refs Distinct watched identifiers (names, selectors, namespaces).
# TYPE depbridge_watched_refs gauge
depbridge_watched_refs 7
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "depbridge_api_streams", "depbridge_queue_oldest_pending_seconds",
		"depbridge_source_lists", "depbridge_sources", "depbridge_watched_refs"); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 13 {
		t.Fatalf("%d series, %v; want 13", n, err)
	}
}

func TestWorkqueueProvider(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	p, err := NewWorkqueue(reg)
	if err != nil {
		t.Fatal(err)
	}
	q := workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Hour, time.Hour), // c stays delayed
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "reconcile", MetricsProvider: p})
	defer q.ShutDown()
	q.Add("a")
	q.Add("b")
	q.AddRateLimited("c")
	item, _ := q.Get()
	q.Done(item)
	if got := testutil.ToFloat64(p.adds.WithLabelValues("reconcile")); got != 2 {
		t.Errorf("adds = %v, want 2", got)
	}
	if got := testutil.ToFloat64(p.depth.WithLabelValues("reconcile")); got != 1 {
		t.Errorf("depth = %v, want 1", got)
	}
	if got := testutil.ToFloat64(p.retries.WithLabelValues("reconcile")); got != 1 {
		t.Errorf("retries = %v, want 1", got)
	}
	if _, err := NewWorkqueue(reg); err == nil {
		t.Error("registering twice succeeded")
	}
}
