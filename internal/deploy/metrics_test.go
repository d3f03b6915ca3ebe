package deploy

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"

	"github.com/depbridge/depbridge/internal/control"
	"github.com/depbridge/depbridge/internal/metrics"
	"github.com/depbridge/depbridge/internal/publish"
	"github.com/depbridge/depbridge/internal/watch"
)

type fakeEngine struct{}

func (fakeEngine) Stats() watch.Stats            { return watch.Stats{} }
func (fakeEngine) Sources() []watch.SourceStatus { return nil }

// exported returns the names of every series the bridge exports, as the
// bridge registers them, with the _bucket, _sum and _count of histograms.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(metrics.NewCollector(fakeEngine{}))
	if _, err := publish.NewMetrics(reg, "bus"); err != nil {
		t.Fatal(err)
	}
	if _, err := metrics.NewLeader(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := control.NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	wq, err := metrics.NewWorkqueue(reg)
	if err != nil {
		t.Fatal(err)
	}
	wq.NewDepthMetric("reconcile")
	wq.NewAddsMetric("reconcile")
	wq.NewLatencyMetric("reconcile")
	wq.NewWorkDurationMetric("reconcile")
	wq.NewUnfinishedWorkSecondsMetric("reconcile")
	wq.NewLongestRunningProcessorSecondsMetric("reconcile")
	wq.NewRetriesMetric("reconcile")
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range families {
		names[f.GetName()] = true
		if f.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[f.GetName()+s] = true
			}
		}
	}
	return names
}

var metricName = regexp.MustCompile(`\b(?:depbridge|workqueue|process|go)_[a-z0-9_]*[a-z0-9]\b`)

// TestMetricNames: the metrics that docs/operations.md and the Prometheus
// rules name are those the bridge exports, and the docs list every
// depbridge_ and workqueue_ metric.
func TestMetricNames(t *testing.T) {
	names := exported(t)
	for _, file := range []string{"docs/operations.md", "config/components/prometheus/prometheusrule.yaml"} {
		text := string(read(t, file))
		for _, m := range metricName.FindAllString(text, -1) {
			if !names[m] {
				t.Errorf("%s names %s, which the bridge does not export", file, m)
			}
		}
	}
	docs := string(read(t, "docs/operations.md"))
	for n := range names {
		if (strings.HasPrefix(n, "depbridge_") || strings.HasPrefix(n, "workqueue_")) && !slices.ContainsFunc([]string{"_bucket", "_sum", "_count"}, func(s string) bool { return strings.HasSuffix(n, s) }) &&
			!strings.Contains(docs, "`"+n) {
			t.Errorf("docs/operations.md does not list %s", n)
		}
	}
}
