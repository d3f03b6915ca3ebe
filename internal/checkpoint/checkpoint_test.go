package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/testenv"
	"github.com/depbridge/depbridge/internal/watch"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// recorder records requests per watcher.
type recorder struct {
	mu   sync.Mutex
	reqs map[string][]watch.Request
	fail func(watch.Request) error
}

func (r *recorder) Reconcile(_ context.Context, req watch.Request) (watch.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs[req.Watcher.Name] = append(r.reqs[req.Watcher.Name], req)
	if r.fail != nil {
		return watch.Result{}, r.fail(req)
	}
	return watch.Result{}, nil
}

func (r *recorder) causes(name string) []watch.Cause {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []watch.Cause
	for _, req := range r.reqs[name] {
		out = append(out, req.Causes...)
	}
	return out
}

func watcher(name string) cache.Ref {
	return cache.Ref{Group: "example.com", Version: "v1", Kind: "Function", Namespace: "fn", Name: name}
}

// run starts an engine with a checkpoint store over path, registers subs,
// and returns a stop function that flushes the store.
func run(t *testing.T, path string, rec *recorder, subs map[string][]cache.Ref) (*watch.Engine, *Store, func()) {
	t.Helper()
	var cp watch.Checkpoint
	var store *Store
	if path != "" {
		store = New(&File{Path: path}, Options{Interval: 50 * time.Millisecond})
		if err := store.Load(context.Background()); err != nil {
			t.Fatal(err)
		}
		cp = store
	}
	e, err := watch.New(env.Config, rec, watch.Options{Checkpoint: cp, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := e.Start(ctx); err != nil {
			t.Error(err)
		}
	})
	if store != nil {
		wg.Go(func() {
			if err := store.Start(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	<-e.Started()
	for name, refs := range subs {
		// Watchers named "quiet..." want no initial reconcile.
		sub := watch.Subscription{Watcher: watcher(name), Watched: refs, Options: watch.WatcherOptions{NoInitial: strings.HasPrefix(name, "quiet")}}
		if err := e.Subscribe(context.Background(), sub); err != nil {
			t.Fatal(err)
		}
	}
	return e, store, func() { cancel(); wg.Wait() }
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 30s: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRestartWithCheckpoint(t *testing.T) {
	ctx := context.Background()
	cs := kubernetes.NewForConfigOrDie(env.Config)
	ns := "cp-" + fmt.Sprint(time.Now().UnixNano()%1e9)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	mk := func(name string, lbls map[string]string) *corev1.ConfigMap {
		cm, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return cm
	}
	mk("a", nil)
	mk("b", nil)
	c := mk("c", nil)
	mk("d", map[string]string{"app": "x"})
	ref := func(name string) cache.Ref {
		return cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: ns, Name: name}
	}
	sel := cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: ns, Selector: "app=x"}
	subs := map[string][]cache.Ref{"w1": {ref("a")}, "w2": {sel}, "w3": {ref("b")}, "w4": {ref("c")}, "w5": {ref("never")},
		"quiet1": {ref("later")}, "quiet2": {ref("b"), ref("a")}}
	path := filepath.Join(t.TempDir(), "checkpoints.json")

	// First run: initial reconciles, acknowledged and recorded.
	rec := &recorder{reqs: map[string][]watch.Request{}}
	_, store, stop := run(t, path, rec, subs)
	for _, w := range []string{"w1", "w2", "w3", "w4"} {
		eventually(t, w+" initial", func() bool { return len(rec.causes(w)) > 0 })
	}
	eventually(t, "every watcher recorded, reconciled or not", func() bool { return store.Len() == 7 })
	stop()

	// While down: a changes, c is deleted, e enters w2's selector, b does
	// not change, "never" still does not exist.
	cm, _ := cs.CoreV1().ConfigMaps(ns).Get(ctx, "a", metav1.GetOptions{})
	cm.Data = map[string]string{"changed": "while down"}
	a, err := cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.CoreV1().ConfigMaps(ns).Delete(ctx, "c", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e := mk("e", map[string]string{"app": "x"})
	later := mk("later", nil) // quiet1 was never reconciled: its baseline says "absent"

	// Second run: only the watchers whose dependencies changed, with
	// causes that say what changed.
	rec2 := &recorder{reqs: map[string][]watch.Request{}}
	engine, _, stop2 := run(t, path, rec2, subs)
	defer stop2()
	eventually(t, "w1, w2, w4, quiet1 and quiet2 reconciled", func() bool {
		return len(rec2.causes("w1")) > 0 && len(rec2.causes("w2")) > 0 && len(rec2.causes("w4")) > 0 &&
			len(rec2.causes("quiet1")) > 0 && len(rec2.causes("quiet2")) > 0
	})
	want := map[string][]watch.Cause{
		"w1":     {{Watched: ref("a"), Namespace: ns, Name: "a", UID: a.UID, ResourceVersion: a.ResourceVersion, Op: watch.OpRelisted}},
		"w2":     {{Watched: sel, Namespace: ns, Name: "e", UID: e.UID, ResourceVersion: e.ResourceVersion, Op: watch.OpRelisted}},
		"w4":     {{Watched: ref("c"), Namespace: ns, Name: "c", UID: c.UID, Op: watch.OpRelisted}},
		"quiet1": {{Watched: ref("later"), Namespace: ns, Name: "later", UID: later.UID, ResourceVersion: later.ResourceVersion, Op: watch.OpRelisted}},
		"quiet2": {{Watched: ref("a"), Namespace: ns, Name: "a", UID: a.UID, ResourceVersion: a.ResourceVersion, Op: watch.OpRelisted}},
	}
	for w, causes := range want {
		if got := rec2.causes(w); !slices.Equal(got, causes) {
			t.Errorf("%s: causes %+v, want %+v", w, got, causes)
		}
	}
	// Nothing for w3 and w5: a change to a watched object of w3 arrives
	// after any restart request would have.
	cm, _ = cs.CoreV1().ConfigMaps(ns).Get(ctx, "b", metav1.GetOptions{})
	cm.Data = map[string]string{"now": "yes"}
	if _, err := cs.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "w3 reconciled for the new change", func() bool { return len(rec2.causes("w3")) > 0 })
	if got := rec2.causes("w3"); len(got) != 1 || got[0].Op != watch.OpModified {
		t.Errorf("w3: causes %+v, want only the modification after the restart", got)
	}
	if got := rec2.causes("w5"); len(got) != 0 {
		t.Errorf("w5: causes %+v, want none", got)
	}
	if st := engine.Stats(); st.Watchers != 7 {
		t.Errorf("watchers = %d", st.Watchers)
	}
}

// A request never acknowledged is not recorded: after a restart the
// watcher gets its initial reconcile again.
func TestUnacknowledgedIsNotRecorded(t *testing.T) {
	ctx := context.Background()
	cs := kubernetes.NewForConfigOrDie(env.Config)
	ns := "cp-" + fmt.Sprint(time.Now().UnixNano()%1e9)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "checkpoints.json")
	subs := map[string][]cache.Ref{"w": {{Version: "v1", Kind: "ConfigMap", Namespace: ns, Name: "x"}}}
	rec := &recorder{reqs: map[string][]watch.Request{}, fail: func(watch.Request) error { return errors.New("broker down") }}
	_, store, stop := run(t, path, rec, subs)
	eventually(t, "tried twice", func() bool { return len(rec.causes("w")) >= 2 })
	stop()
	if store.Len() != 0 {
		t.Fatalf("%d records for a request never acknowledged", store.Len())
	}
	rec2 := &recorder{reqs: map[string][]watch.Request{}}
	_, _, stop2 := run(t, path, rec2, subs)
	defer stop2()
	eventually(t, "initial after restart", func() bool { return len(rec2.causes("w")) > 0 })
	if got := rec2.causes("w"); got[0].Op != watch.OpInitial {
		t.Fatalf("causes %+v, want initial", got)
	}
}

// blockingBackend blocks every write until released.
type blockingBackend struct {
	release chan struct{}
	writes  chan map[string][]byte
}

func (b *blockingBackend) Load(context.Context) (map[string][]byte, error) {
	return map[string][]byte{}, nil
}
func (b *blockingBackend) Write(ctx context.Context, puts map[string][]byte, _ []string) error {
	select {
	case <-b.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	b.writes <- puts
	return nil
}
func (b *blockingBackend) Close() error        { return nil }
func (b *blockingBackend) MaxRecordBytes() int { return 0 }

// limitedBackend keeps records in memory and, as kafka-go does, rejects a
// whole write in which one record is larger than its limit.
type limitedBackend struct {
	limit  int
	recs   map[string][]byte
	writes []map[string][]byte
}

func (b *limitedBackend) Load(context.Context) (map[string][]byte, error) {
	return maps.Clone(b.recs), nil
}
func (b *limitedBackend) Write(_ context.Context, puts map[string][]byte, deletes []string) error {
	for k, v := range puts {
		if len(v) > b.limit {
			return fmt.Errorf("record %s: %d bytes over %d", k, len(v), b.limit)
		}
	}
	b.writes = append(b.writes, puts)
	maps.Copy(b.recs, puts)
	for _, k := range deletes {
		delete(b.recs, k)
	}
	return nil
}
func (b *limitedBackend) Close() error        { return nil }
func (b *limitedBackend) MaxRecordBytes() int { return b.limit }

// textLogger logs as text to w.
func textLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// objects is a view of n objects of one Ref, as a "*" selector over a big
// cluster gives.
func objects(ref string, n int) watch.View {
	seen := make([]watch.Seen, n)
	for i := range seen {
		seen[i] = watch.Seen{Namespace: "team-payments-production", Name: fmt.Sprintf("web-frontend-settings-%05d", i),
			UID: types.UID(fmt.Sprintf("8d5c1f2e-0b7a-4c3e-9f10-%012d", i)), ResourceVersion: fmt.Sprint(100000000 + i)}
	}
	return watch.View{ref: seen}
}

// newObject is a cause naming an object new to every record.
func newObject(ref cache.Ref, name string) watch.Cause {
	return watch.Cause{Watched: ref, Namespace: "ns", Name: name, UID: types.UID("uid-" + name), ResourceVersion: "1", Op: watch.OpAdded}
}

// FlushWatchers writes the changed records of the watchers named and no
// other; the others stay changed, for the next Flush.
func TestFlushWatchers(t *testing.T) {
	ctx := context.Background()
	b := &limitedBackend{limit: 1 << 20, recs: map[string][]byte{}}
	s := New(b, Options{})
	sel := cache.Ref{Version: "v1", Kind: "ConfigMap", Selector: "*"}
	a, c, other := watcher("a"), watcher("c"), watcher("other")
	for _, w := range []cache.Ref{a, c, other} {
		s.Baseline(w, sel.Key(), nil)
	}
	if err := s.FlushWatchers(ctx, a, c, a); err != nil {
		t.Fatal(err)
	}
	if len(b.writes) != 1 || len(b.writes[0]) != 2 || b.writes[0][a.Key()] == nil || b.writes[0][c.Key()] == nil {
		t.Fatalf("FlushWatchers(a, c, a) wrote %v, want the records of a and c", b.writes)
	}
	if err := s.FlushWatchers(ctx, a); err != nil || len(b.writes) != 1 {
		t.Fatalf("FlushWatchers of an unchanged record wrote %d times, err %v; want no write", len(b.writes)-1, err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if len(b.writes) != 2 || len(b.writes[1]) != 1 || b.writes[1][other.Key()] == nil {
		t.Fatalf("the next Flush wrote %v, want other's record alone", b.writes[1:])
	}
}

// A record too large for the backend is not written, and keeps its last
// written record: it blocks neither the other watchers' records nor its
// own watcher's delivery, and is logged once.
func TestOversizedRecord(t *testing.T) {
	ctx := context.Background()
	b := &limitedBackend{limit: 2000, recs: map[string][]byte{}}
	var logs testenv.SyncBuffer
	s := New(b, Options{Logger: textLogger(&logs)})
	big, small := watcher("big"), watcher("small")
	sel := cache.Ref{Version: "v1", Kind: "ConfigMap", Selector: "*"}
	s.Acked(big, objects(sel.Key(), 2))
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	old := string(b.recs[big.Key()])

	s.Acked(big, objects(sel.Key(), 100))
	s.Baseline(watcher("other"), sel.Key(), nil) // dirty, not written by small's Telling
	if err := s.Telling(ctx, small, []watch.Cause{newObject(sel, "a")}); err != nil {
		t.Fatalf("Telling for a small watcher: %v", err)
	}
	if last := b.writes[len(b.writes)-1]; len(last) != 1 || last[small.Key()] == nil {
		t.Errorf("Telling wrote %v, want small's record alone", slices.Collect(maps.Keys(last)))
	}
	if err := s.Telling(ctx, big, []watch.Cause{newObject(sel, "b")}); err != nil {
		t.Fatalf("Telling for the oversized watcher: %v", err)
	}
	for i := range 3 {
		s.Acked(big, objects(sel.Key(), 100+i))
		if err := s.Flush(ctx); err != nil {
			t.Fatalf("flush %d: %v", i, err)
		}
	}
	if n := strings.Count(logs.String(), "level=ERROR"); n != 1 {
		t.Errorf("%d errors logged, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "watcher="+big.Key()) || !strings.Contains(logs.String(), "limit=2000") {
		t.Errorf("the error does not name the watcher and limit:\n%s", logs.String())
	}
	if got := string(b.recs[big.Key()]); got != old {
		t.Errorf("oversized watcher's record is %.100s, want the last one written, %s", got, old)
	}

	again := New(b, Options{})
	if err := again.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if v, _ := again.Told(big); len(v[sel.Key()]) != 2 {
		t.Errorf("reloaded big: %+v, want its last record written", v)
	}
	if m := again.MayHaveTold(small); len(m[sel.Key()]) != 1 || m[sel.Key()][0].Name != "a" {
		t.Errorf("reloaded small: %+v", m)
	}
	if _, ok := again.Told(watcher("other")); !ok {
		t.Error("other's record not written")
	}

	// Small enough again: written, and said so.
	s.Acked(big, objects(sel.Key(), 3))
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := string(b.recs[big.Key()]); got == old || !strings.Contains(logs.String(), "fits the store again") {
		t.Errorf("record of big not written when small again: %s\n%s", got, logs.String())
	}
}

// Recording never waits for the backend, and records changed while a write
// is in flight are written next.
func TestAckedNeverBlocks(t *testing.T) {
	b := &blockingBackend{release: make(chan struct{}), writes: make(chan map[string][]byte, 10)}
	s := New(b, Options{Interval: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Start(ctx) }()
	start := time.Now()
	for i := range 1000 {
		s.Acked(watcher(fmt.Sprint("w", i%10)), watch.View{"r": {{Name: fmt.Sprint(i)}}})
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("1000 Acked calls took %s with the backend blocked", d)
	}
	close(b.release)
	puts := <-b.writes
	if len(puts) != 10 {
		t.Fatalf("first write has %d records, want the 10 watchers once each", len(puts))
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Told(watcher("w9")); v["r"][0].Name != "999" {
		t.Fatalf("latest record of w9 = %+v, want the last one acked", v)
	}
}

// Records are written atomically, and a file that does not decode is
// moved aside and loads empty.
func TestFileBackend(t *testing.T) {
	dir := t.TempDir()
	f := &File{Path: filepath.Join(dir, "sub", "cp.json")}
	if recs, err := f.Load(context.Background()); err != nil || len(recs) != 0 {
		t.Fatalf("missing file: %v, %v", recs, err)
	}
	if err := f.Write(context.Background(), map[string][]byte{"a": []byte(`{"r":[]}`), "b": []byte(`{}`)}, nil); err != nil {
		t.Fatal(err)
	}
	if err := f.Write(context.Background(), nil, []string{"b"}); err != nil {
		t.Fatal(err)
	}
	g := &File{Path: f.Path}
	recs, err := g.Load(context.Background())
	if err != nil || len(recs) != 1 || string(recs["a"]) != `{"r":[]}` {
		t.Fatalf("reloaded = %v, %v", recs, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(f.Path))
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
}

// A file that does not decode would fail every load, forever: it is moved
// aside, logged, and the store starts with no records.
func TestFileCorrupt(t *testing.T) {
	tests := map[string]string{
		"truncated": `{"a":{"r":[{"name":"x"`,
		"empty":     "",
		"garbage":   "\x00\x00\x00\x00",
		"not a map": `["a"]`,
	}
	for name, content := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "cp.json")
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			var logs testenv.SyncBuffer
			s := New(&File{Path: path}, Options{Logger: textLogger(&logs)})
			if err := s.Load(context.Background()); err != nil {
				t.Fatalf("load: %v", err)
			}
			if s.Len() != 0 {
				t.Fatalf("%d records", s.Len())
			}
			aside, _ := filepath.Glob(path + ".corrupt-*")
			if len(aside) != 1 {
				t.Fatalf("moved aside: %v", aside)
			}
			if b, err := os.ReadFile(aside[0]); err != nil || string(b) != content {
				t.Fatalf("moved aside %q, %v; want the file as it was", b, err)
			}
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the corrupt file is still at %s: %v", path, err)
			}
			if l := logs.String(); !strings.Contains(l, "level=ERROR") || !strings.Contains(l, path) || !strings.Contains(l, aside[0]) {
				t.Fatalf("logged %s; want an error naming both paths", l)
			}
			// The store works on.
			s.Acked(watcher("w"), watch.View{"r": {}})
			if err := s.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			again := New(&File{Path: path}, Options{})
			if err := again.Load(context.Background()); err != nil || again.Len() != 1 {
				t.Fatalf("reloaded %d records, %v", again.Len(), err)
			}
		})
	}
}

// Temporary files of a write that was interrupted (a crash between
// creating and renaming) are removed at load; other files are kept.
func TestFileRemovesTemporaries(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cp.json")
	f := &File{Path: path}
	if err := f.Write(context.Background(), map[string][]byte{"a": []byte(`{}`)}, nil); err != nil {
		t.Fatal(err)
	}
	left := []string{"cp.json.123456789", "cp.json.4242"}
	kept := []string{"cp.json", "cp.json.corrupt-1700000000", "cp.json.bak", "other.json.123"}
	for _, name := range append(slices.Clone(left), kept[1:]...) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := (&File{Path: path}).Load(context.Background())
	if err != nil || len(recs) != 1 {
		t.Fatalf("load: %v, %v", recs, err)
	}
	var names []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	slices.Sort(kept)
	if !slices.Equal(names, kept) {
		t.Fatalf("files after load %v, want %v", names, kept)
	}
}

// An object announced to a watcher whose acknowledgement was not written
// when the bridge died (here: the file as it was before the final flush),
// and which left the watcher's selector while the bridge was down, is
// announced gone after the restart: Telling wrote it before it was told.
// Without that, it is in no record and no list, and the watcher would
// never hear it went (found by the fault suite, test/faults).
func TestAnnouncedThenGoneBeforeTheRecord(t *testing.T) {
	ctx := context.Background()
	cs := kubernetes.NewForConfigOrDie(env.Config)
	ns := "cp-" + fmt.Sprint(time.Now().UnixNano()%1e9)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sel := cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: ns, Selector: "app=x"}
	subs := map[string][]cache.Ref{"w": {sel}}
	path := filepath.Join(t.TempDir(), "checkpoints.json")

	// No periodic writes: only Telling's and the final flush write.
	store := New(&File{Path: path}, Options{Interval: time.Hour})
	if err := store.Load(ctx); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{reqs: map[string][]watch.Request{}}
	e, err := watch.New(env.Config, rec, watch.Options{Checkpoint: store, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = e.Start(runCtx) })
	wg.Go(func() { _ = store.Start(runCtx) })
	<-e.Started()
	if err := e.Subscribe(ctx, watch.Subscription{Watcher: watcher("w"), Watched: subs["w"]}); err != nil {
		t.Fatal(err)
	}
	// Announced: b enters the selector.
	b, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "b", Labels: map[string]string{"app": "x"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "b announced", func() bool { return len(rec.causes("w")) > 0 })
	// The bridge dies before the acknowledgement is written: what is on
	// disk now is what a restart reads.
	onDisk, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	cancel()
	wg.Wait()
	if onDisk == nil {
		err = os.Remove(path)
	} else {
		err = os.WriteFile(path, onDisk, 0o600)
	}
	if err != nil {
		t.Fatal(err)
	}
	// While down, b leaves the selector.
	b.Labels = map[string]string{"app": "y"}
	if _, err := cs.CoreV1().ConfigMaps(ns).Update(ctx, b, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec2 := &recorder{reqs: map[string][]watch.Request{}}
	_, _, stop := run(t, path, rec2, subs)
	defer stop()
	eventually(t, "w told after the restart", func() bool { return len(rec2.causes("w")) > 0 })
	want := []watch.Cause{{Watched: sel, Namespace: ns, Name: "b", UID: b.UID, Op: watch.OpRelisted}}
	if got := rec2.causes("w"); !slices.Equal(got, want) {
		t.Fatalf("causes after the restart %+v, want %+v (b is gone from the selector)", got, want)
	}
}
