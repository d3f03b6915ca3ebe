package watch

import (
	"context"
	"errors"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/depbridge/depbridge/internal/testenv"
)

// grant gives user the verbs on ConfigMaps in ns (a Role), or cluster-wide
// when ns is "" (a ClusterRole); a second grant replaces the first.
func grant(t *testing.T, user, ns string, verbs ...string) {
	t.Helper()
	cs := kube(t)
	ctx := context.Background()
	rules := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: verbs}}
	name := "depbridge-test-" + user
	subject := []rbacv1.Subject{{Kind: "User", Name: user, APIGroup: rbacv1.GroupName}}
	if ns == "" {
		_ = cs.RbacV1().ClusterRoles().Delete(ctx, name, metav1.DeleteOptions{})
		_ = cs.RbacV1().ClusterRoleBindings().Delete(ctx, name, metav1.DeleteOptions{})
		if _, err := cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name}, Subjects: subject}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cs.RbacV1().ClusterRoles().Delete(ctx, name, metav1.DeleteOptions{})
			_ = cs.RbacV1().ClusterRoleBindings().Delete(ctx, name, metav1.DeleteOptions{})
		})
		return
	}
	_ = cs.RbacV1().Roles(ns).Delete(ctx, name, metav1.DeleteOptions{})
	_ = cs.RbacV1().RoleBindings(ns).Delete(ctx, name, metav1.DeleteOptions{})
	if len(verbs) == 0 {
		return
	}
	if _, err := cs.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name}, Subjects: subject}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// userConfig is a client with no permissions but what grant gives. RBAC
// changes take effect on the next request, so eventually is used where the
// test depends on them.
func userConfig(t *testing.T, name string) *rest.Config {
	t.Helper()
	cfg, err := integration(t).User(name)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// AC-19, AC-20, AC-21, AC-Δ3, AC-Δ4: list without watch is refused at
// registration with a Forbidden error and leaves nothing behind; with watch
// it works; when access is revoked and the stream ends, the watch is
// dropped, its watcher reconciled once with OpLost, and nothing is left.
func TestPermissions(t *testing.T) {
	ns := namespace(t)
	createCM(t, ns, "cm", nil)
	user := "limited-" + ns
	grant(t, user, ns, "get", "list")
	faults := testenv.NewFaults()
	rec := newRecorder()
	e := startEngine(t, faults.Wrap(userConfig(t, user)), rec, Options{})
	w := watcher("rbac")

	err := e.AddWatcher(ctxT(t), w, cmRef(ns, "cm"))
	if !apierrors.IsForbidden(err) {
		t.Fatalf("add with list but no watch: err = %v, want Forbidden", err)
	}
	if st := e.Stats(); st.Streams != 0 || st.Watched != 0 || st.Watchers != 0 {
		t.Fatalf("stats after a forbidden add = %+v, want nothing", st)
	}
	if n := len(rec.requests(w)); n != 0 {
		t.Fatalf("%d reconciles after a forbidden add, want 0", n)
	}

	grant(t, user, ns, "get", "list", "watch")
	eventually(t, "add succeeds once watch is granted", func() bool {
		return e.AddWatcher(ctxT(t), w, cmRef(ns, "cm")) == nil
	})
	if st := e.Stats(); st.Streams != 1 || st.Watched != 1 {
		t.Fatalf("stats = %+v, want 1 stream and 1 watched", st)
	}
	if reqs := rec.waitFor(t, w, 1); reqs[0].Causes[0].Op != OpInitial {
		t.Fatalf("causes = %+v, want initial", reqs[0].Causes)
	}

	grant(t, user, ns) // revoke
	faults.CutWatches()
	reqs := rec.waitFor(t, w, 2)
	if c := reqs[1].Causes; len(c) != 1 || c[0].Op != OpLost || c[0].Watched != cmRef(ns, "cm") || c[0].Reason == "" {
		t.Fatalf("causes after revocation = %+v, want one lost with a reason", c)
	}
	if st := e.Stats(); st.Streams != 0 || st.Watched != 0 || st.Watchers != 0 {
		t.Fatalf("stats after revocation = %+v, want nothing left", st)
	}
	srcs := e.Sources()
	if len(srcs) != 1 || srcs[0].State != StateFailed || srcs[0].Namespace != ns || !strings.Contains(srcs[0].Error, "forbidden") {
		t.Fatalf("sources after revocation = %+v, want one failed with the reason", srcs)
	}
	// Granted again: a new watch starts and the failure is no longer shown.
	grant(t, user, ns, "get", "list", "watch")
	eventually(t, "add succeeds once access is back", func() bool {
		return e.AddWatcher(ctxT(t), w, cmRef(ns, "cm")) == nil
	})
	if srcs := e.Sources(); len(srcs) != 1 || srcs[0].State != StateActive {
		t.Fatalf("sources after access is back = %+v, want one active", srcs)
	}
}

// A namespace-scoped Role is enough: when too many namespaces would be
// watched one by one, the engine tries one cluster-wide list+watch, and
// when that is forbidden, it watches each namespace.
func TestNamespacedFallback(t *testing.T) {
	ns1, ns2 := namespace(t), namespace(t)
	user := "ns-only-" + ns1
	grant(t, user, ns1, "list", "watch")
	grant(t, user, ns2, "list", "watch")
	rec := newRecorder()
	e := startEngine(t, userConfig(t, user), rec, Options{MaxNamespaceSources: 1})
	createCM(t, ns1, "a", nil)
	createCM(t, ns2, "b", nil)
	eventually(t, "RBAC in effect", func() bool {
		return e.AddWatcher(ctxT(t), watcher("a"), cmRef(ns1, "a")) == nil
	})
	if err := e.AddWatcher(ctxT(t), watcher("b"), cmRef(ns2, "b")); err != nil {
		t.Fatalf("second namespace: %v", err)
	}
	srcs := e.Sources()
	if len(srcs) != 2 || srcs[0].Namespace == "" || srcs[1].Namespace == "" {
		t.Fatalf("sources = %+v, want one per namespace", srcs)
	}
	rec.waitFor(t, watcher("b"), 1)
	updateCM(t, ns2, "b", nil)
	rec.waitFor(t, watcher("b"), 2)
	// A dependency across all namespaces is refused, and the namespaced
	// ones keep working.
	err := e.AddWatcher(ctxT(t), watcher("everywhere"), cmSel("", "*"))
	if !apierrors.IsForbidden(err) {
		t.Fatalf("cluster-wide add: err = %v, want Forbidden", err)
	}
	updateCM(t, ns1, "a", nil)
	rec.waitFor(t, watcher("a"), 2)
	if st := e.Stats(); st.Watchers != 2 || st.Watched != 2 || st.Streams != 2 {
		t.Fatalf("stats = %+v, want the two namespaced watches only", st)
	}
	if errors.Is(err, ErrNotStarted) {
		t.Fatal("engine stopped")
	}
}
