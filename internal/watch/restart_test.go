package watch

import (
	"context"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/testenv"
)

// AC-15, AC-Δ2: watches survive a restart of the API server: each source
// relists (the restarted server's watch cache cannot resume old streams),
// the stream count is unchanged, nothing is reconciled for objects that did
// not change, and changes after the restart are delivered.
func TestAPIServerRestart(t *testing.T) {
	cp, err := testenv.Start() // its own control plane: this test stops it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Error(err)
		}
	})
	cs := kubernetes.NewForConfigOrDie(cp.Config)
	ctx := context.Background()
	for _, name := range []string{"a", "b"} {
		if _, err := cs.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	rec := newRecorder()
	e := startEngine(t, cp.Config, rec, Options{Workers: 1})
	w := watcher("restart")
	if err := e.AddWatcher(ctxT(t), w, cmRef("default", "a"), cmRef("default", "b")); err != nil {
		t.Fatal(err)
	}
	// The initial causes of a and b may come in one request or two.
	eventually(t, "initial causes for a and b", func() bool { return len(ops(rec.requests(w))) == 2 })
	initial := len(rec.requests(w))
	before := e.Stats()
	lists := e.Sources()[0].Lists

	if err := cp.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	if err := cp.StartAPIServer(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "sources relisted and active after the restart", func() bool {
		s := e.Sources()
		return len(s) == 1 && s[0].Lists > lists && s[0].State == StateActive
	})
	if after := e.Stats(); after.Streams != before.Streams || after.Watched != before.Watched {
		t.Fatalf("stats after restart = %+v, want as before %+v", after, before)
	}
	cm, err := cs.CoreV1().ConfigMaps("default").Get(ctx, "b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data = map[string]string{"after": "restart"}
	if _, err := cs.CoreV1().ConfigMaps("default").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	reqs := rec.waitFor(t, w, initial+1)
	if got := ops(reqs[initial:]); !slices.Equal(got, []Op{OpModified}) {
		t.Fatalf("causes after restart = %v, want only [modified] for b: the relist found nothing changed", got)
	}
}

// AC-Δ2: after 410 Gone the source relists and only watchers whose objects
// changed while the stream was down are reconciled, with relisted causes
// (an object deleted meanwhile has no resourceVersion). A cut stream alone
// resumes from the last resourceVersion without relisting.
func TestRelistReconcilesOnlyChanges(t *testing.T) {
	ns := namespace(t)
	for _, n := range []string{"same", "changed", "deleted"} {
		createCM(t, ns, n, nil)
	}
	faults := testenv.NewFaults()
	rec := newRecorder()
	e := startEngine(t, faults.Wrap(integration(t).Config), rec, Options{Workers: 1, DisableInitialReconcile: true})
	same, changed, deleted, created := watcher("same"), watcher("changed"), watcher("deleted"), watcher("created")
	for w, ref := range map[cache.Ref]cache.Ref{same: cmRef(ns, "same"), changed: cmRef(ns, "changed"), deleted: cmRef(ns, "deleted"), created: cmRef(ns, "created")} {
		if err := e.AddWatcher(ctxT(t), w, ref); err != nil {
			t.Fatal(err)
		}
	}
	b := newBarrier(t, e, rec, ns)

	// A cut stream resumes: no relist, and a change made meanwhile arrives
	// as an ordinary event.
	lists := e.Sources()[0].Lists
	faults.CutWatches()
	updateCM(t, ns, "changed", nil)
	reqs := rec.waitFor(t, changed, 1)
	if got := ops(reqs); !slices.Equal(got, []Op{OpModified}) {
		t.Fatalf("causes after a cut stream = %v, want [modified]", got)
	}
	if l := e.Sources()[0].Lists; l != lists {
		t.Fatalf("lists = %d after a cut stream, want %d (resume, no relist)", l, lists)
	}

	// Down, then 410 Gone: a relist.
	faults.RefuseWatches(true)
	faults.CutWatches()
	eventually(t, "source restarting", func() bool { return e.Sources()[0].State == StateRestarting })
	cur := updateCM(t, ns, "changed", nil)
	deleteCM(t, ns, "deleted")
	born := createCM(t, ns, "created", nil)
	faults.ExpireWatches(1)
	faults.RefuseWatches(false)
	eventually(t, "relisted", func() bool { return e.Sources()[0].Lists > lists })

	reqs = rec.waitFor(t, changed, 2)
	if c := reqs[1].Causes; len(c) != 1 || c[0].Op != OpRelisted || c[0].ResourceVersion != cur.ResourceVersion {
		t.Fatalf("changed: causes = %+v, want relisted at %s", c, cur.ResourceVersion)
	}
	reqs = rec.waitFor(t, deleted, 1)
	if c := reqs[0].Causes; len(c) != 1 || c[0].Op != OpRelisted || c[0].ResourceVersion != "" || c[0].UID == "" {
		t.Fatalf("deleted: causes = %+v, want relisted with no resourceVersion", c)
	}
	reqs = rec.waitFor(t, created, 1)
	if c := reqs[0].Causes; len(c) != 1 || c[0].Op != OpRelisted || c[0].UID != born.UID {
		t.Fatalf("created: causes = %+v, want relisted for %s", c, born.UID)
	}
	if n := b.count(t, same); n != 0 {
		t.Fatalf("unchanged object's watcher reconciled %d times, want 0", n)
	}
}

// AC-Δ3: removing a watcher whose watch is restarting does not wait for the
// API server, and stops the restart; adding while the server is away waits
// no longer than the caller's context and leaves nothing behind.
func TestRemoveDuringRestart(t *testing.T) {
	ns := namespace(t)
	createCM(t, ns, "cm", nil)
	faults := testenv.NewFaults()
	rec := newRecorder()
	e := startEngine(t, faults.Wrap(integration(t).Config), rec, Options{})
	w := watcher("restarting")
	if err := e.AddWatcher(ctxT(t), w, cmRef(ns, "cm")); err != nil {
		t.Fatal(err)
	}
	faults.RefuseWatches(true)
	faults.CutWatches()
	eventually(t, "source restarting", func() bool { return e.Sources()[0].State == StateRestarting })

	start := time.Now()
	if err := e.RemoveWatcher(w); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("RemoveWatcher took %s", d)
	}
	if st := e.Stats(); st.Streams != 0 || st.Watched != 0 || st.Watchers != 0 {
		t.Fatalf("stats after remove = %+v, want nothing", st)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := e.AddWatcher(ctx, w, cmRef(ns, "cm"))
	if err == nil {
		t.Fatal("add succeeded while watches are refused")
	}
	if st := e.Stats(); st.Streams != 0 || st.Watched != 0 || st.Watchers != 0 {
		t.Fatalf("stats after a timed-out add = %+v, want nothing", st)
	}
	faults.RefuseWatches(false)
	if err := e.AddWatcher(ctxT(t), w, cmRef(ns, "cm")); err != nil {
		t.Fatal(err)
	}
}
