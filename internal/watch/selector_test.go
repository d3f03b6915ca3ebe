package watch

import (
	"slices"
	"testing"
)

// AC-16, AC-17: a selector with no matches gives nothing; a matching object
// created gives one reconcile, deleted one more.
func TestSelectorCreateDelete(t *testing.T) {
	ns := namespace(t)
	rec := newRecorder()
	e := startEngine(t, integration(t).Config, rec, Options{Workers: 1})
	b := newBarrier(t, e, rec, ns)
	w := watcher("sel")
	if err := e.AddWatcher(ctxT(t), w, cmSel(ns, "app=web")); err != nil {
		t.Fatal(err)
	}
	if n := b.count(t, w); n != 0 {
		t.Fatalf("%d reconciles for a selector with no matches, want 0", n)
	}
	cm := createCM(t, ns, "web", map[string]string{"app": "web"})
	reqs := rec.waitFor(t, w, 1)
	if c := reqs[0].Causes; len(c) != 1 || c[0].Op != OpAdded || c[0].UID != cm.UID || c[0].Watched != cmSel(ns, "app=web") {
		t.Fatalf("create causes = %+v, want one added for %s", c, cm.UID)
	}
	deleteCM(t, ns, "web")
	reqs = rec.waitFor(t, w, 2)
	if c := reqs[1].Causes; len(c) != 1 || c[0].Op != OpDeleted {
		t.Fatalf("delete causes = %+v, want one deleted", c)
	}
	if n := b.count(t, w); n != 2 {
		t.Fatalf("%d reconciles, want 2", n)
	}
}

// AC-18: relabelling into and out of a selector reconciles, with entered
// and left causes; deleting the object once it no longer matches does not.
func TestSelectorEnteredLeft(t *testing.T) {
	ns := namespace(t)
	rec := newRecorder()
	e := startEngine(t, integration(t).Config, rec, Options{Workers: 1})
	b := newBarrier(t, e, rec, ns)
	w := watcher("entered-left")
	if err := e.AddWatcher(ctxT(t), w, cmSel(ns, "tier in (front,back),app")); err != nil {
		t.Fatal(err)
	}
	createCM(t, ns, "obj", map[string]string{"tier": "front"}) // no "app": no match
	if n := b.count(t, w); n != 0 {
		t.Fatalf("%d reconciles for a non-matching create, want 0", n)
	}
	updateCM(t, ns, "obj", map[string]string{"tier": "back", "app": "x"})
	rec.waitFor(t, w, 1)
	updateCM(t, ns, "obj", map[string]string{"tier": "back", "app": "y"}) // still matches
	rec.waitFor(t, w, 2)
	updateCM(t, ns, "obj", map[string]string{"tier": "side", "app": "y"})
	rec.waitFor(t, w, 3)
	deleteCM(t, ns, "obj")
	b.wait(t)
	if got := ops(rec.requests(w)); !slices.Equal(got, []Op{OpEntered, OpModified, OpLeft}) {
		t.Fatalf("causes = %v, want [entered modified left] and nothing for the delete", got)
	}
}

// A whole-namespace dependency (selector "*") sees every object of the kind
// in the namespace; a name dependency with no namespace sees that name in
// every namespace.
func TestEverythingAndAnyNamespace(t *testing.T) {
	ns1, ns2 := namespace(t), namespace(t)
	rec := newRecorder()
	e := startEngine(t, integration(t).Config, rec, Options{})
	all, anyNS := watcher("all"), watcher("any-namespace")
	if err := e.AddWatcher(ctxT(t), all, cmSel(ns1, "*")); err != nil {
		t.Fatal(err)
	}
	if err := e.AddWatcher(ctxT(t), anyNS, cmRef("", "same-name")); err != nil {
		t.Fatal(err)
	}
	createCM(t, ns1, "one", nil)
	createCM(t, ns2, "same-name", nil)
	if c := rec.waitFor(t, all, 1)[0].Causes; c[0].Name != "one" || c[0].Op != OpAdded {
		t.Fatalf("whole-namespace causes = %+v", c)
	}
	if c := rec.waitFor(t, anyNS, 1)[0].Causes; c[0].Namespace != ns2 || c[0].Op != OpAdded {
		t.Fatalf("any-namespace causes = %+v", c)
	}
}
