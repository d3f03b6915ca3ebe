package config

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	reloadA = "cluster: a\n"
	reloadB = "cluster: b\n"
	// reloadBad parses but does not validate.
	reloadBad = "cluster: a\nengine: {workers: -1}\n"
)

// reloadHarness runs a Reloader on a file and records what it delivers.
type reloadHarness struct {
	t       *testing.T
	changes chan *Config
	errs    chan error
	stop    func()
}

func startReloader(t *testing.T, path string, current *Config) *reloadHarness {
	t.Helper()
	h := &reloadHarness{t: t, changes: make(chan *Config, 10), errs: make(chan error, 10)}
	r := &Reloader{
		Path:     path,
		Current:  current,
		Interval: 5 * time.Millisecond,
		OnChange: func(c *Config) { h.changes <- c },
		OnError:  func(err error) { h.errs <- err },
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var startErr error
	wg.Go(func() { startErr = r.Start(ctx) })
	h.stop = func() {
		cancel()
		wg.Wait()
		if startErr != nil {
			t.Errorf("Start: %v", startErr)
		}
	}
	t.Cleanup(h.stop)
	return h
}

func (h *reloadHarness) wantChange(cluster string) *Config {
	h.t.Helper()
	select {
	case c := <-h.changes:
		if c.Cluster != cluster {
			h.t.Fatalf("delivered cluster %q, want %q", c.Cluster, cluster)
		}
		return c
	case err := <-h.errs:
		h.t.Fatalf("got error %v, want a change to cluster %q", err, cluster)
	case <-time.After(5 * time.Second):
		h.t.Fatalf("no change to cluster %q delivered", cluster)
	}
	return nil
}

func (h *reloadHarness) wantError(substr string) {
	h.t.Helper()
	select {
	case err := <-h.errs:
		if !strings.Contains(err.Error(), substr) {
			h.t.Fatalf("error %q does not contain %q", err, substr)
		}
	case c := <-h.changes:
		h.t.Fatalf("got change to %q, want an error", c.Cluster)
	case <-time.After(5 * time.Second):
		h.t.Fatalf("no error delivered")
	}
}

// wantQuiet checks that nothing is delivered for a while (many polls).
func (h *reloadHarness) wantQuiet() {
	h.t.Helper()
	select {
	case c := <-h.changes:
		h.t.Fatalf("unexpected change to %q", c.Cluster)
	case err := <-h.errs:
		h.t.Fatalf("unexpected error %v", err)
	case <-time.After(100 * time.Millisecond):
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	// Write and rename, as editors and kubectl cp do, so that a poll never
	// sees half a file in this test.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestReloader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bridge.yaml")
	writeFile(t, path, reloadA)
	current, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	h := startReloader(t, path, current)
	h.wantQuiet() // the file holds the config in force

	writeFile(t, path, reloadB)
	if c := h.wantChange("b"); c.Engine.Workers != 256 {
		t.Errorf("delivered config has no defaults: %+v", c)
	}
	h.wantQuiet()

	// A bad version is reported once, and nothing is delivered.
	writeFile(t, path, reloadBad)
	h.wantError("bridge.yaml:2:19: engine.workers: must not be negative")
	h.wantQuiet()

	// The file comes back to the config in force: nothing to deliver.
	writeFile(t, path, reloadB)
	h.wantQuiet()

	// A missing file is reported, and its return delivered.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	h.wantError("no such file or directory")
	writeFile(t, path, reloadA)
	h.wantChange("a")
}

func TestReloaderWithoutCurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bridge.yaml")
	writeFile(t, path, reloadA)
	h := startReloader(t, path, nil)
	h.wantChange("a")
	h.wantQuiet()
}

func TestReloaderFileChangedBeforeStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bridge.yaml")
	writeFile(t, path, reloadA)
	current, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, reloadB)
	h := startReloader(t, path, current)
	h.wantChange("b")
}

// TestReloaderConfigMapSwap lays files out as the kubelet does for a
// ConfigMap volume: bridge.yaml -> ..data/bridge.yaml, ..data -> a
// timestamped directory; an update writes a new directory and renames a new
// ..data symlink over the old one.
func TestReloaderConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	version := func(name, data string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "bridge.yaml"), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(name, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..2025_01_01_00_00_00.1", reloadA)
	path := filepath.Join(dir, "bridge.yaml")
	if err := os.Symlink(filepath.Join("..data", "bridge.yaml"), path); err != nil {
		t.Fatal(err)
	}
	current, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	h := startReloader(t, path, current)
	h.wantQuiet()
	version("..2025_01_01_00_00_01.2", reloadB)
	h.wantChange("b")
	version("..2025_01_01_00_00_02.3", reloadBad)
	h.wantError("engine.workers: must not be negative")
}

func TestReloaderStartReturnsOnCancel(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bridge.yaml")
	writeFile(t, path, reloadA)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	r := &Reloader{Path: path, OnChange: func(*Config) {}}
	go func() { done <- r.Start(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Start = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Start did not return after cancel")
	}
	if err := (&Reloader{Path: path}).Start(ctx); err == nil {
		t.Error("Start without OnChange succeeded")
	}
}
