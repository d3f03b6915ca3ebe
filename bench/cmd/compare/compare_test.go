package main

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

// TestSmoke runs every implementation once on a tiny workload and checks
// that each got its initial reconciles, delivered writes and came back
// after the API server restart.
func TestSmoke(t *testing.T) {
	ctrllog.SetLogger(logr.Discard())
	dir := t.TempDir()
	bins := map[string]string{}
	for _, n := range impls {
		bins[n] = filepath.Join(dir, n)
	}
	if err := build(bins, "../.."); err != nil {
		t.Fatal(err)
	}
	wl := workload{W: 10, Rate: 20, Duration: 4 * time.Second, Warmup: time.Second, InitialTimeout: time.Minute,
		DrainTimeout: 30 * time.Second, RecoverTimeout: time.Minute, Seed: 1}
	for _, n := range impls {
		t.Run(n, func(t *testing.T) {
			r := runOne(context.Background(), n, bins[n], wl, 0, dir)
			t.Logf("%+v", r)
			if r.Err != "" {
				t.Fatal(r.Err)
			}
			if r.InitialMsgs == 0 || r.PerSec == 0 || r.Pairs == 0 || r.PairsMissed > 0 {
				t.Errorf("%s: %d initial messages, %.0f/s, %d of %d pairs missed", n, r.InitialMsgs, r.PerSec, r.PairsMissed, r.Pairs)
			}
		})
	}
}
