package rbac

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
)

// kinds is a fake cluster: where each group and kind is served, whatever
// the version. Kinds not listed are not served.
var kinds = map[schema.GroupKind]cache.Resource{
	{Kind: "ConfigMap"}:                     res("", "configmaps", true),
	{Kind: "Secret"}:                        res("", "secrets", true),
	{Kind: "Service"}:                       res("", "services", true),
	{Kind: "Namespace"}:                     res("", "namespaces", false),
	{Kind: "Endpoints"}:                     res("", "endpoints", true),
	{Group: "apps", Kind: "Deployment"}:     res("apps", "deployments", true),
	{Group: "example.com", Kind: "App"}:     res("example.com", "apps", true),
	{Group: "example.com", Kind: "Cluster"}: res("example.com", "clusters", false),
	{Group: "authorization.k8s.io", Kind: "SubjectAccessReview"}: res("authorization.k8s.io", "subjectaccessreviews", false),
}

func res(group, resource string, namespaced bool) cache.Resource {
	return cache.Resource{GroupVersionResource: schema.GroupVersionResource{Group: group, Version: "v1", Resource: resource}, Namespaced: namespaced}
}

// fakeResolver resolves from kinds and records the kinds asked for.
type fakeResolver struct {
	asked []schema.GroupVersionKind
	fail  error // returned for every kind when set
}

func (f *fakeResolver) resolve(_ context.Context, gvk schema.GroupVersionKind) (cache.Resource, error) {
	f.asked = append(f.asked, gvk)
	if f.fail != nil {
		return cache.Resource{}, f.fail
	}
	r, ok := kinds[gvk.GroupKind()]
	switch {
	case !ok:
		return cache.Resource{}, fmt.Errorf("%w: %s", cache.ErrNoVersionedResource, gvk)
	case gvk.Kind == "SubjectAccessReview":
		return r, fmt.Errorf("%w: %s", cache.ErrResourceUnwatchable, r.GroupVersionResource)
	}
	return r, nil
}

// parse loads a configuration from YAML and validates it.
func parse(t *testing.T, doc string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(doc))
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		t.Fatalf("configuration: %v\n%s", err, doc)
	}
	return cfg
}

// subs writes a configuration whose subscriptions each watch one Ref
// (given in YAML flow style), plus extra top-level YAML.
func subs(extra string, watched ...string) string {
	var b strings.Builder
	b.WriteString(extra)
	b.WriteString("\nsubscriptions:\n")
	for i, w := range watched {
		fmt.Fprintf(&b, "  - watcher: {version: v1, kind: ConfigMap, namespace: w, name: w%d}\n    watched: [%s]\n", i, w)
	}
	return b.String()
}

const bus = `
sinks: [{name: bus, jetstream: {url: "nats://127.0.0.1:4222"}}]
routes: [{name: default, sink: bus}]
`

// control writes a control channel with the policy rules (YAML flow).
func control(rules ...string) string {
	return bus + "control:\n  sink: bus\n  policy:\n    allow:\n      - " + strings.Join(rules, "\n      - ") + "\n"
}

// summary renders objects one per line, rules as group:resources:verbs
// (":" before resourceNames).
func summary(objs []runtime.Object) []string {
	rules := func(rs []rbacv1.PolicyRule) string {
		var s []string
		for _, r := range rs {
			x := strings.Join(r.APIGroups, ",") + ":" + strings.Join(r.Resources, ",")
			if len(r.ResourceNames) > 0 {
				x += "/" + strings.Join(r.ResourceNames, ",")
			}
			s = append(s, x+":"+strings.Join(r.Verbs, ","))
		}
		return strings.Join(s, " ")
	}
	subjects := func(ss []rbacv1.Subject) string {
		var s []string
		for _, x := range ss {
			s = append(s, x.Kind+" "+x.Namespace+"/"+x.Name)
		}
		return strings.Join(s, ",")
	}
	var out []string
	for _, o := range objs {
		switch o := o.(type) {
		case *rbacv1.ClusterRole:
			out = append(out, "ClusterRole "+o.Name+": "+rules(o.Rules))
		case *rbacv1.ClusterRoleBinding:
			out = append(out, "ClusterRoleBinding "+o.Name+" -> "+o.RoleRef.Kind+" "+o.RoleRef.Name+": "+subjects(o.Subjects))
		case *rbacv1.Role:
			out = append(out, "Role "+o.Namespace+"/"+o.Name+": "+rules(o.Rules))
		case *rbacv1.RoleBinding:
			out = append(out, "RoleBinding "+o.Namespace+"/"+o.Name+" -> "+o.RoleRef.Kind+" "+o.RoleRef.Name+": "+subjects(o.Subjects))
		default:
			out = append(out, fmt.Sprintf("unexpected %T", o))
		}
	}
	return out
}

const (
	sa      = "ServiceAccount depbridge/depbridge"
	crb     = "ClusterRoleBinding depbridge -> ClusterRole depbridge: " + sa
	crdRule = "apiextensions.k8s.io:customresourcedefinitions:list,watch"
)

func rb(ns string) string { return "RoleBinding " + ns + "/depbridge -> Role depbridge: " + sa }

func manyNamespaces(n int) []string {
	var refs []string
	for i := range n {
		refs = append(refs, fmt.Sprintf("{version: v1, kind: ConfigMap, namespace: ns%02d, name: cm}", i))
	}
	return refs
}

func TestGenerate(t *testing.T) {
	tests := map[string]struct {
		config    string
		opts      Options
		want      []string
		wantNotes []string // substrings, one note each, in order
		wantErr   string
	}{
		"nothing watched": {
			config: "{}",
		},
		"names and selectors in one namespace: one Role": {
			config: subs("",
				"{version: v1, kind: ConfigMap, namespace: shop, name: settings}",
				"{version: v1, kind: Service, namespace: shop, selector: 'app=web'}",
				"{group: apps, version: v1, kind: Deployment, namespace: shop, selector: '*'}"),
			want: []string{
				"Role shop/depbridge: :configmaps,services:get,list,watch apps:deployments:get,list,watch",
				rb("shop"),
			},
		},
		"two namespaces: a Role each, only what each watches": {
			config: subs("",
				"{version: v1, kind: ConfigMap, namespace: b, name: x}",
				"{version: v1, kind: ConfigMap, namespace: a, name: x}",
				"{version: v1, kind: Secret, namespace: a, name: y}"),
			want: []string{
				"Role a/depbridge: :configmaps,secrets:get,list,watch", rb("a"),
				"Role b/depbridge: :configmaps:get,list,watch", rb("b"),
			},
		},
		"every namespace: a ClusterRole": {
			config: subs("", "{version: v1, kind: ConfigMap, selector: 'app=web'}"),
			want:   []string{"ClusterRole depbridge: :configmaps:get,list,watch", crb},
		},
		"cluster-wide and namespaced refs of one resource: the ClusterRole covers both": {
			config: subs("",
				"{version: v1, kind: ConfigMap, namespace: a, name: x}",
				"{version: v1, kind: ConfigMap, selector: 'app=web'}",
				"{version: v1, kind: Service, namespace: a, name: x}"),
			want: []string{
				"ClusterRole depbridge: :configmaps:get,list,watch", crb,
				"Role a/depbridge: :services:get,list,watch", rb("a"),
			},
		},
		"cluster-scoped kind, even with a namespace: a ClusterRole": {
			config: subs("",
				"{version: v1, kind: Namespace, selector: 'team=a'}",
				"{group: example.com, version: v1, kind: Cluster, namespace: ignored, name: prod}"),
			want: []string{"ClusterRole depbridge: :namespaces:get,list,watch example.com:clusters:get,list,watch", crb},
		},
		"16 namespaces: Roles": {
			config: subs("", manyNamespaces(16)...),
			want: func() []string {
				var w []string
				for i := range 16 {
					ns := fmt.Sprintf("ns%02d", i)
					w = append(w, "Role "+ns+"/depbridge: :configmaps:get,list,watch", rb(ns))
				}
				return w
			}(),
		},
		"17 namespaces: a ClusterRole": {
			config: subs("", manyNamespaces(17)...),
			want:   []string{"ClusterRole depbridge: :configmaps:get,list,watch", crb},
		},
		"MaxNamespaceSources lowered": {
			config: subs("", manyNamespaces(3)...),
			opts:   Options{MaxNamespaceSources: 2},
			want:   []string{"ClusterRole depbridge: :configmaps:get,list,watch", crb},
		},
		"irregular plural from discovery": {
			config: subs("", "{version: v1, kind: Endpoints, namespace: a, name: web}"),
			want:   []string{"Role a/depbridge: :endpoints:get,list,watch", rb("a")},
		},
		"kind not served: guessed resource, CRDs watched, a note": {
			config: subs("",
				"{group: widgets.example.com, version: v1alpha1, kind: Widget, namespace: a, name: w}",
				"{group: widgets.example.com, version: v1alpha1, kind: Policy, selector: '*'}"),
			want: []string{
				"ClusterRole depbridge: widgets.example.com:policies:get,list,watch " + crdRule, crb,
				"Role a/depbridge: widgets.example.com:widgets:get,list,watch", rb("a"),
			},
			wantNotes: []string{
				`widgets.example.com/v1alpha1 Widget is not served (its CustomResourceDefinition is not installed?): its resource is guessed as "widgets", namespaced (read in a;`,
				`widgets.example.com/v1alpha1 Policy is not served`,
			},
		},
		"CRDs always": {
			config: subs("", "{version: v1, kind: ConfigMap, namespace: a, name: x}"),
			opts:   Options{CRDs: true},
			want: []string{
				"ClusterRole depbridge: " + crdRule, crb,
				"Role a/depbridge: :configmaps:get,list,watch", rb("a"),
			},
		},
		"leader election: create leases, get and update the Lease by name": {
			config: subs("", "{version: v1, kind: ConfigMap, namespace: a, name: x}"),
			opts:   Options{LeaderElection: true},
			want: []string{
				"Role a/depbridge: :configmaps:get,list,watch", rb("a"),
				"Role depbridge/depbridge-leader-election: coordination.k8s.io:leases:create coordination.k8s.io:leases/depbridge:get,update",
				"RoleBinding depbridge/depbridge-leader-election -> Role depbridge-leader-election: " + sa,
			},
		},
		"names, namespaces and lease set": {
			config: subs("", "{version: v1, kind: ConfigMap, namespace: a, name: x}", "{version: v1, kind: Namespace, name: a}"),
			opts: Options{ServiceAccount: "bridge", Namespace: "ops", Name: "bridge-eu", LeaderElection: true,
				LeaseName: "bridge-eu-lock", LeaseNamespace: "locks"},
			want: []string{
				"ClusterRole bridge-eu: :namespaces:get,list,watch",
				"ClusterRoleBinding bridge-eu -> ClusterRole bridge-eu: ServiceAccount ops/bridge",
				"Role a/bridge-eu: :configmaps:get,list,watch",
				"RoleBinding a/bridge-eu -> Role bridge-eu: ServiceAccount ops/bridge",
				"Role locks/bridge-eu-leader-election: coordination.k8s.io:leases:create coordination.k8s.io:leases/bridge-eu-lock:get,update",
				"RoleBinding locks/bridge-eu-leader-election -> Role bridge-eu-leader-election: ServiceAccount ops/bridge",
			},
		},
		"unwatchable kind": {
			config:  subs("", "{group: authorization.k8s.io, version: v1, kind: SubjectAccessReview, name: x}"),
			wantErr: "subscriptions[0].watched[0]: kind authorization.k8s.io/v1 SubjectAccessReview: resource does not support list and watch",
		},
		"bad options": {
			config:  "{}",
			opts:    Options{Namespace: "Not_A_Namespace", ServiceAccount: "a b"},
			wantErr: `rbac: service account "a b"`,
		},
		"policy with kinds and namespaces: Roles": {
			config: control("{groups: [''], kinds: [ConfigMap, Service], namespaces: [team-a, team-b]}",
				"{groups: [apps], kinds: [Deployment], namespaces: [team-a]}"),
			want: []string{
				"Role team-a/depbridge: :configmaps,services:get,list,watch apps:deployments:get,list,watch", rb("team-a"),
				"Role team-b/depbridge: :configmaps,services:get,list,watch", rb("team-b"),
			},
		},
		"policy in every namespace: ClusterRole": {
			config: control("{groups: [example.com], kinds: [App], namespaces: ['*']}", "{groups: [''], kinds: [Service]}"),
			want:   []string{"ClusterRole depbridge: :services:get,list,watch example.com:apps:get,list,watch", crb},
		},
		"policy and subscriptions merge": {
			config: subs(control("{groups: [''], kinds: [ConfigMap], namespaces: [a]}"),
				"{version: v1, kind: ConfigMap, namespace: a, name: x}",
				"{version: v1, kind: ConfigMap, namespace: b, name: x}"),
			want: []string{
				"Role a/depbridge: :configmaps:get,list,watch", rb("a"),
				"Role b/depbridge: :configmaps:get,list,watch", rb("b"),
			},
		},
		"policy allows a cluster-scoped kind in namespaces: cluster-wide, with a note": {
			config:    control("{groups: [''], kinds: [Namespace], namespaces: [a]}"),
			want:      []string{"ClusterRole depbridge: :namespaces:get,list,watch", crb},
			wantNotes: []string{"core Namespace, allowed by the control policy in namespaces a, is cluster-scoped"},
		},
		"policy kind not served": {
			config: control("{groups: [widgets.example.com], kinds: [Widget], namespaces: [a]}"),
			want: []string{
				"ClusterRole depbridge: " + crdRule, crb,
				"Role a/depbridge: widgets.example.com:widgets:get,list,watch", rb("a"),
			},
			wantNotes: []string{`widgets.example.com Widget, allowed by the control policy, is not served`},
		},
		"policy allows any kind: refused": {
			config:  control("{groups: [example.com], kinds: ['*']}"),
			wantErr: `control.policy.allow[0]: the rule allows any kind, which RBAC cannot grant narrowly: it would take get, list and watch on resources ["*"] of API groups ["example.com"] in every namespace`,
		},
		"policy allows any group: refused": {
			config:  control("{kinds: [ConfigMap], namespaces: [a]}"),
			wantErr: `control.policy.allow[0]: the rule allows its kinds in any group`,
		},
		"policy allows any kind of the core group: refused, Secrets said": {
			config:  control("{groups: [''], kinds: ['*'], namespaces: [a]}"),
			wantErr: `(Secrets included: RBAC cannot except them, even when the policy denies them)`,
		},
		"policy wildcards allowed: granted as wildcards, with notes": {
			config: subs(control("{groups: [example.com], kinds: ['*']}", "{groups: [''], kinds: ['*'], namespaces: [a]}"),
				"{version: v1, kind: ConfigMap, namespace: a, name: x}"),
			opts: Options{Wildcards: true},
			want: []string{
				"ClusterRole depbridge: example.com:*:get,list,watch " + crdRule, crb,
				"Role a/depbridge: :*:get,list,watch", rb("a"),
			},
			wantNotes: []string{
				`the control policy allows any kind: granted get, list and watch on resources ["*"] of API groups ["example.com"] in every namespace; the bridge still enforces the policy`,
				`the control policy allows any kind: granted get, list and watch on resources ["*"] of API groups [""] in namespaces a (Secrets included`,
			},
		},
		"policy allows anything, wildcards allowed": {
			config:    control("{}"),
			opts:      Options{Wildcards: true},
			want:      []string{"ClusterRole depbridge: *:*:get,list,watch " + crdRule, crb},
			wantNotes: []string{"the control policy allows any group and any kind"},
		},
		"policy allows kinds in any group, wildcards allowed": {
			config:    control("{groups: ['*'], kinds: [Widget], namespaces: [a]}"),
			opts:      Options{Wildcards: true},
			want:      []string{"Role a/depbridge: *:widgets:get,list,watch", rb("a")},
			wantNotes: []string{"the control policy allows its kinds in any group", "resources of kinds Widget in any group are guessed"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg := parse(t, tc.config)
			f := &fakeResolver{}
			got, err := Generate(context.Background(), cfg, f.resolve, tc.opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := summary(got.Objects); !slices.Equal(s, tc.want) {
				t.Errorf("objects:\n  %s\nwant:\n  %s", strings.Join(s, "\n  "), strings.Join(tc.want, "\n  "))
			}
			if len(got.Notes) != len(tc.wantNotes) {
				t.Fatalf("notes = %q, want %d", got.Notes, len(tc.wantNotes))
			}
			for i, n := range tc.wantNotes {
				if !strings.Contains(got.Notes[i], n) {
					t.Errorf("note %d = %q, want it to contain %q", i, got.Notes[i], n)
				}
			}
			if _, err := got.YAML(); err != nil {
				t.Errorf("YAML: %v", err)
			}
		})
	}
}

// The control policy names no versions: the resolver is asked for the
// version a subscription uses for the same kind, else for none.
func TestPolicyVersions(t *testing.T) {
	cfg := parse(t, subs(control("{groups: [apps, example.com], kinds: [Deployment, App], namespaces: [a]}"),
		"{group: apps, version: v1, kind: Deployment, namespace: a, name: web}"))
	f := &fakeResolver{}
	if _, err := Generate(context.Background(), cfg, f.resolve, Options{}); err != nil {
		t.Fatal(err)
	}
	want := []schema.GroupVersionKind{
		{Group: "apps", Version: "v1", Kind: "Deployment"},
		{Group: "apps", Kind: "App"},
		{Group: "example.com", Kind: "Deployment"},
		{Group: "example.com", Kind: "App"},
	}
	if !slices.Equal(f.asked, want) {
		t.Fatalf("asked %v, want %v (each kind once)", f.asked, want)
	}
}

// Discovery failures are errors, never guesses.
func TestResolverFailure(t *testing.T) {
	cfg := parse(t, subs("", "{version: v1, kind: ConfigMap, namespace: a, name: x}"))
	boom := errors.New("connection refused")
	f := &fakeResolver{fail: boom}
	_, err := Generate(context.Background(), cfg, f.resolve, Options{})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "subscriptions[0].watched[0]: kind v1 ConfigMap") {
		t.Fatalf("err = %v, want the resolver's error with the field", err)
	}
}

// The output does not depend on the order of subscriptions, watched Refs
// or policy rules.
func TestDeterministic(t *testing.T) {
	refs := []string{
		"{version: v1, kind: ConfigMap, namespace: b, name: x}",
		"{version: v1, kind: ConfigMap, namespace: a, selector: '*'}",
		"{version: v1, kind: Service, namespace: c, name: x}",
		"{version: v1, kind: Namespace, name: x}",
		"{group: apps, version: v1, kind: Deployment, selector: 'a=b'}",
		"{group: example.com, version: v1, kind: App, namespace: a, name: x}",
		"{group: widgets.example.com, version: v1, kind: Widget, namespace: b, name: x}",
	}
	rules := []string{
		"{groups: [''], kinds: [ConfigMap, Service], namespaces: [d, e]}",
		"{groups: [example.com], kinds: [App, Cluster], namespaces: [a]}",
	}
	var first []byte
	for i := range 20 {
		rand.Shuffle(len(refs), func(i, j int) { refs[i], refs[j] = refs[j], refs[i] })
		rand.Shuffle(len(rules), func(i, j int) { rules[i], rules[j] = rules[j], rules[i] })
		cfg := parse(t, subs(control(rules...), refs...))
		f := &fakeResolver{}
		got, err := Generate(context.Background(), cfg, f.resolve, Options{LeaderElection: true})
		if err != nil {
			t.Fatal(err)
		}
		out, err := got.YAML()
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = out
			continue
		}
		if string(out) != string(first) {
			t.Fatalf("output differs with another order:\n%s\nfirst:\n%s", out, first)
		}
	}
}

func TestYAMLNeedsTypeMeta(t *testing.T) {
	_, err := YAML([]runtime.Object{&rbacv1.Role{}})
	if err == nil || !strings.Contains(err.Error(), "no apiVersion or kind") {
		t.Fatalf("err = %v, want no apiVersion or kind", err)
	}
}

func TestWrap(t *testing.T) {
	tests := map[string]struct {
		in    string
		width int
		want  []string
	}{
		"empty":     {"", 10, nil},
		"fits":      {"a b c", 10, []string{"a b c"}},
		"breaks":    {"aaa bbb ccc", 7, []string{"aaa bbb", "ccc"}},
		"long word": {"a bbbbbbbbbbbb c", 5, []string{"a", "bbbbbbbbbbbb", "c"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := wrap(tc.in, tc.width); !slices.Equal(got, tc.want) {
				t.Fatalf("wrap(%q, %d) = %q, want %q", tc.in, tc.width, got, tc.want)
			}
		})
	}
}
