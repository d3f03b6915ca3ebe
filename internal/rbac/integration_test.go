package rbac_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/rbac"
	"github.com/depbridge/depbridge/internal/testenv"
	"github.com/depbridge/depbridge/internal/watch"
)

// The control plane of this package's integration tests, started by the
// first test that needs one (the table tests need none) and stopped by
// TestMain.
var (
	envOnce   sync.Once
	sharedEnv *testenv.Env
	envErr    error
)

// integration returns the control plane, or fails the test with
// testenv's message saying why it could not start.
func integration(t *testing.T) *testenv.Env {
	t.Helper()
	envOnce.Do(func() { sharedEnv, envErr = testenv.Start() })
	if envErr != nil {
		t.Fatalf("control plane: %v", envErr)
	}
	return sharedEnv
}

func TestMain(m *testing.M) {
	// client-go's leader election logs through klog; keep test output clean.
	klog.SetOutput(io.Discard)
	klog.LogToStderr(false)
	code := m.Run()
	if sharedEnv != nil {
		if err := sharedEnv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop control plane:", err)
		}
	}
	os.Exit(code)
}

const wait = 30 * time.Second

// recorder records the engine's reconcile requests.
type recorder struct {
	mu   sync.Mutex
	reqs map[cache.Ref][]watch.Request
}

func (r *recorder) Reconcile(_ context.Context, req watch.Request) (watch.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs[req.Watcher] = append(r.reqs[req.Watcher], req)
	return watch.Result{}, nil
}

// waitFor waits until a request of w has a cause for which ok is true.
func (r *recorder) waitFor(t *testing.T, what string, w cache.Ref, ok func(watch.Cause) bool) {
	t.Helper()
	w, _ = w.Canonical()
	deadline := time.Now().Add(wait)
	for {
		r.mu.Lock()
		for _, req := range r.reqs[w] {
			if slices.ContainsFunc(req.Causes, ok) {
				r.mu.Unlock()
				return
			}
		}
		got := fmt.Sprint(r.reqs[w])
		r.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("%s: no such request of %s after %s; got %s", what, w.Key(), wait, got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// eventually retries f until it returns nil (RBAC changes reach the
// authorizer through its informers, a moment after they are written).
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func must[T any](v T, err error) func(t *testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// apply creates the generated objects with the admin client.
func apply(ctx context.Context, t *testing.T, cs kubernetes.Interface, objs []runtime.Object) {
	t.Helper()
	for _, o := range objs {
		var err error
		switch o := o.(type) {
		case *rbacv1.ClusterRole:
			_, err = cs.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.Role:
			_, err = cs.RbacV1().Roles(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			_, err = cs.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		default:
			err = fmt.Errorf("unexpected %T", o)
		}
		if err != nil {
			t.Fatalf("apply: %v", err)
		}
	}
}

// TestGeneratedRBAC generates RBAC for a configuration against the real
// API server's discovery, applies it, and runs the watch engine as the
// ServiceAccount it is bound to (by impersonation): every subscription of
// the configuration registers and is reconciled, what the configuration
// does not watch is forbidden, and leader election works.
func TestGeneratedRBAC(t *testing.T) {
	env := integration(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin := must(kubernetes.NewForConfig(env.Config))(t)

	b := make([]byte, 4)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	sys, nsA, nsB, nsC, other := "depbridge-"+id, "a-"+id, "b-"+id, "c-"+id, "other-"+id
	for _, ns := range []string{sys, nsA, nsB, nsC, other} {
		n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}
		if ns == nsA {
			n.Labels = map[string]string{"depbridge-test": id}
		}
		must(admin.CoreV1().Namespaces().Create(ctx, n, metav1.CreateOptions{}))(t)
	}
	const widgetGroup = "rbactest.example.com"
	cfg, err := config.Parse("integration.yaml", []byte(strings.NewReplacer("$A", nsA, "$B", nsB, "$C", nsC, "$ID", id).Replace(`
sinks: [{name: bus, jetstream: {url: "nats://127.0.0.1:4222"}}]
routes: [{name: default, sink: bus}]
control:
  sink: bus
  policy:
    allow:
      - {groups: [""], kinds: [ConfigMap], namespaces: [$C]}
      - {groups: [apps], kinds: [Deployment], namespaces: [$C]}
subscriptions:
  - watcher: {group: apps, version: v1, kind: Deployment, namespace: $A, name: web}
    watched:
      - {version: v1, kind: ConfigMap, namespace: $A, name: web-config}
      - {version: v1, kind: Service, namespace: $A, selector: "app=web"}
  - watcher: {version: v1, kind: ConfigMap, namespace: $B, name: audit}
    watched:
      - {version: v1, kind: ConfigMap, namespace: $B, selector: "*"}
  - watcher: {version: v1, kind: ConfigMap, namespace: $A, name: inventory}
    watched:
      - {version: v1, kind: Namespace, selector: "depbridge-test=$ID"}
  - watcher: {version: v1, kind: ConfigMap, namespace: $A, name: widgets}
    watched:
      - {group: `+widgetGroup+`, version: v1, kind: Widget, namespace: $A, name: w}
`)))
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		t.Fatal(err)
	}

	// Generate against the real discovery.
	disc := must(discovery.NewDiscoveryClientForConfig(env.Config))(t)
	res, err := rbac.Generate(ctx, cfg, rbac.DiscoveryResolver(disc), rbac.Options{Namespace: sys, LeaderElection: true})
	if err != nil {
		t.Fatal(err)
	}
	out := must(res.YAML())(t)
	t.Logf("generated:\n%s", out)
	var got []string
	for _, o := range res.Objects {
		m := o.(metav1.Object)
		got = append(got, fmt.Sprintf("%s %s/%s", o.GetObjectKind().GroupVersionKind().Kind, m.GetNamespace(), m.GetName()))
	}
	want := []string{
		"ClusterRole /depbridge", "ClusterRoleBinding /depbridge",
		"Role " + nsA + "/depbridge", "RoleBinding " + nsA + "/depbridge",
		"Role " + nsB + "/depbridge", "RoleBinding " + nsB + "/depbridge",
		"Role " + nsC + "/depbridge", "RoleBinding " + nsC + "/depbridge",
		"Role " + sys + "/depbridge-leader-election", "RoleBinding " + sys + "/depbridge-leader-election",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("objects %q, want %q", got, want)
	}
	for _, s := range []string{
		"namespaces\n  verbs:\n  - get\n  - list\n  - watch\n- apiGroups:\n  - apiextensions.k8s.io\n  resources:\n  - customresourcedefinitions\n  verbs:\n  - list\n  - watch\n",
		"  - configmaps\n  - services\n",
		"  namespace: " + nsC + "\nrules:\n- apiGroups:\n  - \"\"\n  resources:\n  - configmaps\n  verbs:\n  - get\n  - list\n  - watch\n- apiGroups:\n  - apps\n  resources:\n  - deployments\n",
		"  - " + widgetGroup + "\n  resources:\n  - widgets\n",
	} {
		if !strings.Contains(string(out), s) {
			t.Errorf("generated RBAC lacks\n%s", s)
		}
	}
	if len(res.Notes) != 1 || !strings.Contains(res.Notes[0], `its resource is guessed as "widgets"`) {
		t.Errorf("notes = %q, want one about the guessed widgets", res.Notes)
	}

	// The ServiceAccount, impersonated: no permissions before the RBAC.
	must(admin.CoreV1().ServiceAccounts(sys).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "depbridge"}}, metav1.CreateOptions{}))(t)
	saCfg := rest.CopyConfig(env.Config)
	saCfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + sys + ":depbridge"}
	sa := must(kubernetes.NewForConfig(saCfg))(t)
	if _, err := sa.CoreV1().ConfigMaps(nsA).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("list ConfigMaps as the ServiceAccount before RBAC: err = %v, want Forbidden", err)
	}
	apply(ctx, t, admin, res.Objects)

	// Objects the subscriptions depend on.
	must(admin.CoreV1().ConfigMaps(nsA).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "web-config"}}, metav1.CreateOptions{}))(t)
	must(admin.CoreV1().ConfigMaps(nsB).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "anything"}}, metav1.CreateOptions{}))(t)
	must(admin.CoreV1().Services(nsA).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{"app": "web"}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}}}, metav1.CreateOptions{}))(t)

	// The engine, as the ServiceAccount.
	rec := &recorder{reqs: map[cache.Ref][]watch.Request{}}
	e := must(watch.New(saCfg, rec, watch.Options{}))(t)
	engineCtx, stopEngine := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- e.Start(engineCtx) }()
	defer func() {
		stopEngine()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	<-e.Started()

	for i, s := range cfg.Subscriptions {
		sub := watch.Subscription{Watcher: s.Watcher, Watched: s.Watched,
			Options: watch.WatcherOptions{NoInitial: s.InitialReconcile != nil && !*s.InitialReconcile, Debounce: s.Debounce.Duration}}
		eventually(t, fmt.Sprintf("subscribe subscriptions[%d] (%s)", i, s.Watcher.Key()), func() error {
			return e.Subscribe(ctx, sub)
		})
	}
	if st := e.Stats(); st.Watchers != 4 || st.Pending != 1 {
		t.Fatalf("engine stats %+v, want 4 watchers, 1 watched kind pending (Widget)", st)
	}
	for _, s := range cfg.Subscriptions[:3] {
		rec.waitFor(t, "initial reconcile", s.Watcher, func(c watch.Cause) bool { return c.Op == watch.OpInitial })
	}
	for _, s := range e.Sources() {
		if s.State != watch.StatePending && s.Namespace == "" && s.Resource != "namespaces" {
			t.Errorf("source %+v is cluster-wide; only namespaces should be", s)
		}
	}

	// A change is reconciled.
	cm := must(admin.CoreV1().ConfigMaps(nsA).Get(ctx, "web-config", metav1.GetOptions{}))(t)
	cm.Data = map[string]string{"changed": "yes"}
	must(admin.CoreV1().ConfigMaps(nsA).Update(ctx, cm, metav1.UpdateOptions{}))(t)
	rec.waitFor(t, "ConfigMap update", cfg.Subscriptions[0].Watcher, func(c watch.Cause) bool {
		return c.Op == watch.OpModified && c.Name == "web-config"
	})

	// The CRD-watch grant: the pending Widget starts once its CRD is
	// installed, under the guessed resource name.
	meta := must(metadata.NewForConfig(saCfg))(t)
	crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	if _, err := meta.Resource(crds).List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("list CRDs (metadata) as the ServiceAccount: %v", err)
	}
	installWidgetCRD(ctx, t, env, widgetGroup)
	dyn := must(dynamic.NewForConfig(env.Config))(t)
	widget := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": widgetGroup + "/v1", "kind": "Widget", "metadata": map[string]any{"name": "w"}}}
	eventually(t, "create Widget", func() error {
		_, err := dyn.Resource(schema.GroupVersionResource{Group: widgetGroup, Version: "v1", Resource: "widgets"}).
			Namespace(nsA).Create(ctx, widget, metav1.CreateOptions{})
		return err
	})
	rec.waitFor(t, "Widget reconcile", cfg.Subscriptions[3].Watcher, func(c watch.Cause) bool { return c.Name == "w" })

	// What the configuration does not watch is forbidden.
	w := cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: nsA, Name: "intruder"}
	for name, ref := range map[string]cache.Ref{
		"ConfigMap in another namespace": {Version: "v1", Kind: "ConfigMap", Namespace: other, Name: "x"},
		"ConfigMaps in every namespace":  {Version: "v1", Kind: "ConfigMap", Selector: "*"},
		"Secret in a watched namespace":  {Version: "v1", Kind: "Secret", Namespace: nsA, Name: "x"},
		"Deployment":                     {Group: "apps", Version: "v1", Kind: "Deployment", Namespace: nsA, Name: "web"},
		"Node":                           {Version: "v1", Kind: "Node", Selector: "*"},
	} {
		if err := e.AddWatcher(ctx, w, ref); !apierrors.IsForbidden(err) {
			t.Errorf("%s: err = %v, want Forbidden", name, err)
		}
	}
	// What the control policy allows is not.
	for _, ref := range []cache.Ref{
		{Version: "v1", Kind: "ConfigMap", Namespace: nsC, Selector: "*"},
		{Group: "apps", Version: "v1", Kind: "Deployment", Namespace: nsC, Name: "web"},
	} {
		if err := e.AddWatcher(ctx, w, ref); err != nil {
			t.Errorf("%s, allowed by the policy: %v", ref.Key(), err)
		}
	}

	// Leader election with the Lease grant; no other Lease may be read.
	leaderElection(ctx, t, saCfg, sys)
	if _, err := sa.CoordinationV1().Leases(sys).Get(ctx, "another", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("get another Lease: err = %v, want Forbidden", err)
	}
	if _, err := sa.CoordinationV1().Leases(nsA).Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "depbridge"}},
		metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("create a Lease in another namespace: err = %v, want Forbidden", err)
	}
}

// DiscoveryResolver against the real API server, with and without
// versions.
func TestDiscoveryResolver(t *testing.T) {
	resolve := rbac.DiscoveryResolver(must(discovery.NewDiscoveryClientForConfig(integration(t).Config))(t))
	tests := map[string]struct {
		gvk        schema.GroupVersionKind
		resource   string
		namespaced bool
		err        error
	}{
		"core, version":         {gvk: schema.GroupVersionKind{Version: "v1", Kind: "ConfigMap"}, resource: "configmaps", namespaced: true},
		"core, no version":      {gvk: schema.GroupVersionKind{Kind: "Namespace"}, resource: "namespaces"},
		"group, no version":     {gvk: schema.GroupVersionKind{Group: "apps", Kind: "Deployment"}, resource: "deployments", namespaced: true},
		"irregular plural":      {gvk: schema.GroupVersionKind{Kind: "Endpoints"}, resource: "endpoints", namespaced: true},
		"no such kind":          {gvk: schema.GroupVersionKind{Group: "apps", Kind: "Nope"}, err: cache.ErrNoVersionedResource},
		"no such group":         {gvk: schema.GroupVersionKind{Group: "nope.example.com", Kind: "Nope"}, err: cache.ErrNoVersionedResource},
		"no such version":       {gvk: schema.GroupVersionKind{Group: "apps", Version: "v9", Kind: "Deployment"}, err: cache.ErrNoVersionedResource},
		"cannot list and watch": {gvk: schema.GroupVersionKind{Group: "authorization.k8s.io", Kind: "SubjectAccessReview"}, resource: "subjectaccessreviews", err: cache.ErrResourceUnwatchable},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			res, err := resolve(context.Background(), tc.gvk)
			if !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if res.Resource != tc.resource || res.Namespaced != tc.namespaced {
				t.Fatalf("resource %+v, want %s namespaced=%v", res, tc.resource, tc.namespaced)
			}
		})
	}
}

func installWidgetCRD(ctx context.Context, t *testing.T, env *testenv.Env, group string) {
	t.Helper()
	crd := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": "widgets." + group},
		"spec": map[string]any{
			"group": group, "scope": "Namespaced",
			"names": map[string]any{"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
			"versions": []any{map[string]any{"name": "v1", "served": true, "storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}},
		},
	}}
	dyn := must(dynamic.NewForConfig(env.Config))(t)
	crds := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	if _, err := dyn.Resource(crds).Create(ctx, crd, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create CRD: %v", err)
	}
}

// leaderElection becomes leader with client-go's leader election, as the
// bridge does, using the ServiceAccount's Lease grant.
func leaderElection(ctx context.Context, t *testing.T, cfg *rest.Config, ns string) {
	t.Helper()
	cs := must(kubernetes.NewForConfig(cfg))(t)
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: "depbridge", Namespace: ns},
		Client:     cs.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: "rbac-test"},
	}
	leCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	leading := make(chan struct{})
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: lock, LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: time.Second,
		ReleaseOnCancel: true, Name: "rbac-test",
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) { close(leading) },
			OnStoppedLeading: func() {},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		le.Run(leCtx)
	}()
	select {
	case <-leading:
	case <-time.After(wait):
		t.Fatalf("not leader after %s", wait)
	}
	cancel()
	<-done
	// Released on cancel: the update went through.
	l, err := cs.CoordinationV1().Leases(ns).Get(ctx, "depbridge", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get the Lease: %v", err)
	}
	if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
		t.Errorf("Lease still held by %q after release", *l.Spec.HolderIdentity)
	}
}
