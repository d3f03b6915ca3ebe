package cache

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"

	"github.com/depbridge/depbridge/internal/testenv"
)

// discoveryCounter counts discovery requests and can fail the next ones
// with 503, as an overloaded server would.
type discoveryCounter struct {
	next  http.RoundTripper
	calls atomic.Int64
	fail  atomic.Int64
}

func (d *discoveryCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	if p := req.URL.Path; p == "/api" || p == "/apis" || strings.HasPrefix(p, "/api/") || strings.HasPrefix(p, "/apis/") {
		d.calls.Add(1)
		if d.fail.Add(-1) >= 0 {
			return &http.Response{StatusCode: http.StatusServiceUnavailable, Status: "503 Service Unavailable",
				Header: http.Header{"Content-Type": []string{"text/plain"}}, Body: http.NoBody, Request: req}, nil
		}
	}
	return d.next.RoundTrip(req)
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestMapper(t *testing.T) {
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := env.Stop(); err != nil {
			t.Error(err)
		}
	}()
	counter := &discoveryCounter{}
	cfg := rest.CopyConfig(env.Config)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { counter.next = rt; return counter }
	dc := discovery.NewDiscoveryClientForConfigOrDie(cfg)
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	m := NewMapper(dc, MapperOptions{TTL: time.Minute, MinRefresh: time.Second, Now: clock.Now})
	ctx := context.Background()

	t.Run("AC-35 known kind", func(t *testing.T) {
		res, err := m.Resource(ctx, schema.GroupVersionKind{Version: "v1", Kind: "ConfigMap"})
		if err != nil || res.Resource != "configmaps" || !res.Namespaced {
			t.Fatalf("ConfigMap = %+v, %v", res, err)
		}
		res, err = m.Resource(ctx, schema.GroupVersionKind{Version: "v1", Kind: "Namespace"})
		if err != nil || res.Resource != "namespaces" || res.Namespaced {
			t.Fatalf("Namespace = %+v, %v", res, err)
		}
	})
	t.Run("AC-40 unknown and unwatchable", func(t *testing.T) {
		for name, gvk := range map[string]schema.GroupVersionKind{
			"unknown group":         {Group: "nope.example.com", Version: "v1", Kind: "Thing"},
			"unknown kind":          {Version: "v1", Kind: "SuperCoolConfigMap"},
			"unknown version":       {Group: "apps", Version: "v9", Kind: "Deployment"},
			"kind in another group": {Group: "apps", Version: "v1", Kind: "ConfigMap"},
		} {
			clock.Add(2 * time.Second) // allow the refetch a miss may make
			if _, err := m.Resource(ctx, gvk); !errors.Is(err, ErrNoVersionedResource) {
				t.Errorf("%s: err = %v, want ErrNoVersionedResource", name, err)
			}
		}
		res, err := m.Resource(ctx, schema.GroupVersionKind{Group: "authorization.k8s.io", Version: "v1", Kind: "SubjectAccessReview"})
		if !errors.Is(err, ErrResourceUnwatchable) || res.Resource != "subjectaccessreviews" {
			t.Fatalf("SubjectAccessReview = %+v, %v; want subjectaccessreviews with ErrResourceUnwatchable", res, err)
		}
	})
	t.Run("AC-Δ8 TTL is extended by a refetch", func(t *testing.T) {
		gvk := schema.GroupVersionKind{Version: "v1", Kind: "Secret"}
		if _, err := m.Resource(ctx, gvk); err != nil {
			t.Fatal(err)
		}
		n := counter.calls.Load()
		if _, err := m.Resource(ctx, gvk); err != nil || counter.calls.Load() != n {
			t.Fatalf("cached lookup made %d discovery calls (err %v)", counter.calls.Load()-n, err)
		}
		clock.Add(61 * time.Second)
		if _, err := m.Resource(ctx, gvk); err != nil || counter.calls.Load() == n {
			t.Fatalf("lookup after the TTL made no discovery call (err %v)", err)
		}
		n = counter.calls.Load()
		for range 3 {
			if _, err := m.Resource(ctx, gvk); err != nil {
				t.Fatal(err)
			}
		}
		if got := counter.calls.Load() - n; got != 0 {
			t.Fatalf("%d discovery calls after a refetch, want 0: the refetch must start a new TTL", got)
		}
	})
	t.Run("AC-Δ8 transient failures are not cached", func(t *testing.T) {
		m.Invalidate()
		counter.fail.Store(100) // every discovery call fails for now
		_, err := m.Resource(ctx, schema.GroupVersionKind{Version: "v1", Kind: "ConfigMap"})
		if err == nil || errors.Is(err, ErrNoVersionedResource) {
			t.Fatalf("lookup during a discovery outage: err = %v, want a transient error", err)
		}
		counter.fail.Store(0)
		if res, err := m.Resource(ctx, schema.GroupVersionKind{Version: "v1", Kind: "ConfigMap"}); err != nil || res.Resource != "configmaps" {
			t.Fatalf("lookup after the outage = %+v, %v", res, err)
		}
	})
	t.Run("AC-41 Invalidate refetches", func(t *testing.T) {
		n := counter.calls.Load()
		m.Invalidate()
		if _, err := m.Resource(ctx, schema.GroupVersionKind{Version: "v1", Kind: "ConfigMap"}); err != nil {
			t.Fatal(err)
		}
		if counter.calls.Load() == n {
			t.Fatal("no discovery call after Invalidate")
		}
	})
}
