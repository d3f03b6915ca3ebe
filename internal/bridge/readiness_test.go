package bridge

import (
	"context"
	"slices"
	"testing"

	"k8s.io/client-go/rest"

	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/control"
)

// retryingControl is a control channel that has replayed its messages
// and retries some of them.
type retryingControl struct{ failures []string }

func (c retryingControl) Start(ctx context.Context) error { <-ctx.Done(); return nil }

func (c retryingControl) Synced() <-chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}

func (c retryingControl) Failures() []string { return c.failures }

var _ control.Transport = retryingControl{}

// TestReadinessControlFailures: readiness reports each run-time
// subscription the control channel is still retrying, and only those.
func TestReadinessControlFailures(t *testing.T) {
	b, err := New(Options{Config: &config.Config{}, REST: &rest.Config{}})
	if err != nil {
		t.Fatal(err)
	}
	close(b.started)
	const f = "example.com/v1/Function/ns/fn: watch v1/ConfigMap/ns/a: forbidden"
	b.control = retryingControl{failures: []string{f}}
	want := "control channel: run-time subscription " + f
	if got := b.readiness(); !slices.Contains(got, want) {
		t.Errorf("readiness = %q, want it to contain %q", got, want)
	}
	b.control = retryingControl{}
	if got := b.readiness(); slices.ContainsFunc(got, func(p string) bool { return p != "watches are still syncing" }) {
		t.Errorf("readiness = %q, want only the engine's", got)
	}
}
