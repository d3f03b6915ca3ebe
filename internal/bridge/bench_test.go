package bridge

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/testenv"
)

// BenchmarkRestart: 10 000 watchers (each on one of 500 ConfigMaps), a
// bridge restarted with nothing changed. Reports the events the restart
// sends with a checkpoint store (JetStream key-value; target 0) and
// without one (one resync per watcher), and the time from start to ready
// for each.
func BenchmarkRestart(b *testing.B) {
	for range b.N {
		benchRestart(b, 10000, 500)
	}
}

func benchRestart(b *testing.B, watchers, objects int) {
	b.StopTimer()
	ctx := context.Background()
	broker, _, stream := testenv.StartNATSStream(b, jetstream.StreamConfig{Name: "RESTART", Subjects: []string{"restart.>"}, Duplicates: time.Second})
	msgs := func() uint64 { info, _ := stream.Info(ctx); return info.State.Msgs }

	cs := kubernetes.NewForConfigOrDie(env.Config)
	ns := fmt.Sprintf("restart-%d", time.Now().UnixNano()%1e9)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	work := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range work {
				if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint("cm", i)}}, metav1.CreateOptions{}); err != nil {
					b.Error(err)
				}
			}
		})
	}
	for i := range objects {
		work <- i
	}
	close(work)
	wg.Wait()

	var subs strings.Builder
	for i := range watchers {
		fmt.Fprintf(&subs, "  - {watcher: {version: v1, kind: ConfigMap, namespace: fn, name: w%d}, watched: [{version: v1, kind: ConfigMap, namespace: %s, name: cm%d}]}\n", i, ns, i%objects)
	}
	cfgText := func(checkpoint string) string {
		return fmt.Sprintf("sinks: [{name: js, jetstream: {url: %q}}]\nroutes: [{name: default, sink: js, subject: \"restart.{{.Name}}\"}]\n%ssubscriptions:\n%s",
			broker.URL(), checkpoint, subs.String())
	}
	const cp = "checkpoint: {jetstream: {sink: js, bucket: restart_bench}}\n"
	dir := b.TempDir()
	// run starts a bridge on cfg and returns how long it took to be ready
	// and a function that stops it.
	run := func(cfg string) (time.Duration, func()) {
		path := filepath.Join(dir, "config.yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			b.Fatal(err)
		}
		c, err := config.Load(path)
		if err == nil {
			err = c.Validate()
		}
		if err != nil {
			b.Fatal(err)
		}
		br, err := New(Options{Config: c, REST: env.Config, Logger: logger(), Listen: "127.0.0.1:0"})
		if err != nil {
			b.Fatal(err)
		}
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- br.Start(runCtx) }()
		for br.Addr() == nil {
			time.Sleep(10 * time.Millisecond)
		}
		for {
			resp, err := http.Get("http://" + br.Addr().String() + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if time.Since(start) > 5*time.Minute {
				b.Fatal("not ready within 5 minutes")
			}
			time.Sleep(20 * time.Millisecond)
		}
		return time.Since(start), func() {
			cancel()
			if err := <-done; err != nil {
				b.Error(err)
			}
		}
	}
	// settle waits until the stream has stopped growing for a second.
	settle := func() uint64 {
		last, since := msgs(), time.Now()
		for time.Since(since) < time.Second {
			time.Sleep(100 * time.Millisecond)
			if n := msgs(); n != last {
				last, since = n, time.Now()
			}
		}
		return last
	}

	// Record: the initial requests, acknowledged, and every watcher's
	// record written (the store's last write happens at shutdown).
	_, stop := run(cfgText(cp))
	for msgs() < uint64(watchers) {
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	base := settle()

	b.StartTimer()
	readyWith, stop := run(cfgText(cp))
	withCP := settle() - base
	stop()
	base = settle()
	readyWithout, stop := run(cfgText(""))
	for msgs() < base+uint64(watchers) {
		time.Sleep(50 * time.Millisecond)
	}
	withoutCP := settle() - base
	stop()
	b.StopTimer()

	b.ReportMetric(float64(watchers), "watchers")
	b.ReportMetric(float64(withCP), "events-checkpoint")
	b.ReportMetric(float64(withoutCP), "events-no-checkpoint")
	b.ReportMetric(readyWith.Seconds(), "ready-s-checkpoint")
	b.ReportMetric(readyWithout.Seconds(), "ready-s-no-checkpoint")
	if withCP != 0 {
		b.Errorf("a restart with nothing changed sent %d events with a checkpoint, want 0", withCP)
	}
	if withoutCP != uint64(watchers) {
		b.Errorf("a restart without checkpoint sent %d events, want one per watcher (%d)", withoutCP, watchers)
	}
}
