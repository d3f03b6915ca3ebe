package control

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
)

func TestCheckPolicy(t *testing.T) {
	cm := func(ns string) cache.Ref {
		return cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: ns, Name: "x"}
	}
	sel := func(kind, ns string) cache.Ref {
		return cache.Ref{Version: "v1", Kind: kind, Namespace: ns, Selector: "app=web"}
	}
	deploy := cache.Ref{Group: "apps", Version: "v1", Kind: "Deployment", Namespace: "team-a", Name: "web"}
	widget := cache.Ref{Group: "example.com", Version: "v1", Kind: "Widget", Namespace: "team-a", Name: "w"}
	rule := func(groups, kinds, nss []string) config.PolicyRule {
		return config.PolicyRule{Groups: groups, Kinds: kinds, Namespaces: nss}
	}
	teams := config.Policy{Allow: []config.PolicyRule{
		rule([]string{""}, []string{"ConfigMap", "Service"}, []string{"team-a", "team-b"}),
		rule([]string{"example.com"}, []string{"*"}, nil),
	}}
	anyCore := config.Policy{Allow: []config.PolicyRule{rule([]string{""}, []string{"*"}, []string{"*"})}}
	anything := config.Policy{Allow: []config.PolicyRule{{}}}
	withSecrets := anyCore
	withSecrets.AllowSecrets = true

	tests := map[string]struct {
		p    config.Policy
		ref  cache.Ref
		deny string // "" when allowed; else in the error
	}{
		"no rules":                             {config.Policy{}, cm("team-a"), "no rules"},
		"no rules, even with allowSecrets":     {config.Policy{AllowSecrets: true}, cm("team-a"), "no rules"},
		"listed kind and namespace":            {teams, cm("team-a"), ""},
		"second namespace":                     {teams, sel("Service", "team-b"), ""},
		"namespace not listed":                 {teams, cm("team-c"), "no rule allows group \"\" (core), kind ConfigMap in namespace team-c"},
		"kind not listed":                      {teams, sel("Pod", "team-a"), "kind Pod"},
		"group not listed":                     {teams, deploy, "group apps"},
		"every namespace needs any namespace":  {teams, sel("ConfigMap", ""), "every namespace"},
		"wildcard kinds, empty namespaces":     {teams, widget, ""},
		"empty namespaces allow all of them":   {teams, cache.Ref{Group: "example.com", Version: "v1", Kind: "Widget", Selector: "*"}, ""},
		"star namespaces allow all of them":    {anyCore, sel("ConfigMap", ""), ""},
		"star namespaces allow cluster scoped": {anyCore, cache.Ref{Version: "v1", Kind: "Namespace", Name: "team-a"}, ""},
		"core rule is not any group":           {anyCore, deploy, "group apps"},
		"empty rule allows anything":           {anything, deploy, ""},
		"Secret denied by default":             {anyCore, cache.Ref{Version: "v1", Kind: "Secret", Namespace: "a", Name: "db"}, "Secrets are denied"},
		"Secret denied whatever the rule":      {anything, cache.Ref{Version: "v1", Kind: "Secret", Namespace: "a", Selector: "*"}, "Secrets are denied"},
		"Secret in any letter case":            {anything, cache.Ref{Version: "v1", Kind: "secret", Namespace: "a", Name: "db"}, "Secrets are denied"},
		"Secret of another version":            {anything, cache.Ref{Version: "v2", Kind: "Secret", Namespace: "a", Name: "db"}, "Secrets are denied"},
		"Secret allowed":                       {withSecrets, cache.Ref{Version: "v1", Kind: "Secret", Namespace: "a", Name: "db"}, ""},
		"allowSecrets still needs a rule":      {config.Policy{Allow: teams.Allow, AllowSecrets: true}, cache.Ref{Version: "v1", Kind: "Secret", Namespace: "team-a", Name: "db"}, "kind Secret"},
		"a non-core Secret kind is not core":   {teams, cache.Ref{Group: "example.com", Version: "v1", Kind: "Secret", Namespace: "team-a", Name: "s"}, ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := CheckPolicy(tc.p, tc.ref)
			if tc.deny == "" {
				if err != nil {
					t.Fatalf("denied: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), tc.deny) {
				t.Fatalf("got %v, want ErrDenied saying %q", err, tc.deny)
			}
			if !strings.Contains(err.Error(), tc.ref.Key()) {
				t.Errorf("error %q does not name %s", err, tc.ref.Key())
			}
		})
	}
}

// scopedSubs is a fakeSubs that knows whether kinds are namespaced, as the
// bridge's Subscriptions does through the engine's discovery cache.
type scopedSubs struct {
	fakeSubs
	namespaced map[string]bool // by kind; a kind not in it is not served
	err        error           // discovery fails
}

func (s *scopedSubs) Resource(_ context.Context, gvk schema.GroupVersionKind) (cache.Resource, error) {
	if s.err != nil {
		return cache.Resource{}, s.err
	}
	ns, ok := s.namespaced[gvk.Kind]
	if !ok {
		return cache.Resource{}, fmt.Errorf("%w: %s", cache.ErrNoVersionedResource, gvk)
	}
	return cache.Resource{GroupVersionResource: gvk.GroupVersion().WithResource(strings.ToLower(gvk.Kind) + "s"), Namespaced: ns}, nil
}

// TestPolicyClusterScoped: the namespace a client gives for an object of
// a cluster-scoped kind is ignored by the engine, so the policy decides as
// for no namespace; a client restricted to a namespace cannot watch Nodes
// by naming its namespace.
func TestPolicyClusterScoped(t *testing.T) {
	teamA := config.Policy{Allow: []config.PolicyRule{
		{Groups: []string{""}, Namespaces: []string{"team-a"}},
		{Groups: []string{"example.com"}, Namespaces: []string{"team-a"}},
	}}
	anyNS := config.Policy{Allow: []config.PolicyRule{{Groups: []string{""}}}}
	kinds := map[string]bool{"ConfigMap": true, "Node": false, "PersistentVolume": false}
	nodes := func(ns string) cache.Ref { return cache.Ref{Version: "v1", Kind: "Node", Namespace: ns, Selector: "*"} }
	pv := cache.Ref{Version: "v1", Kind: "PersistentVolume", Namespace: "team-a", Name: "pv1"}
	widget := cache.Ref{Group: "example.com", Version: "v1", Kind: "Widget", Namespace: "team-a", Name: "w"}
	tests := map[string]struct {
		policy config.Policy
		typ    string
		ref    cache.Ref
		err    error  // discovery error
		deny   string // "" when allowed; else in the reason
	}{
		"namespaced kind in the namespace":        {teamA, TypeApply, cmRef("team-a", "x"), nil, ""},
		"namespaced kind in another namespace":    {teamA, TypeApply, cmRef("team-b", "x"), nil, "in namespace team-b"},
		"every Node":                              {teamA, TypeApply, nodes(""), nil, "every namespace"},
		"every Node, given a namespace":           {teamA, TypeApply, nodes("team-a"), nil, "v1/Node is cluster-scoped"},
		"a PersistentVolume, given a namespace":   {teamA, TypeApply, pv, nil, "v1/PersistentVolume is cluster-scoped"},
		"a query of Nodes, given a namespace":     {teamA, TypeQuery, nodes("team-a"), nil, "v1/Node is cluster-scoped"},
		"cluster-scoped with any namespace":       {anyNS, TypeApply, nodes("team-a"), nil, ""},
		"a kind not served may be cluster-scoped": {teamA, TypeApply, widget, nil, "not served"},
		"a kind not served, any namespace":        {config.Policy{Allow: []config.PolicyRule{{}}}, TypeApply, widget, nil, ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			subs := &scopedSubs{namespaced: kinds, err: tc.err}
			p := newProcessor(config.Control{Policy: tc.policy}, subs, Options{}.withDefaults())
			w := fnRef("team-a", "fn")
			req := &Request{ID: "id-1", Type: tc.typ, Watcher: w}
			if tc.typ == TypeApply {
				req.Apply = &ApplyData{Watcher: w, Watched: []cache.Ref{tc.ref}}
			} else {
				req.Query = &QueryData{Watcher: w, Queries: []cache.Ref{tc.ref}}
			}
			st, err := p.handle(context.Background(), req)
			if tc.deny == "" {
				if err != nil || !st.Accepted || len(subs.got) != 1 {
					t.Fatalf("not allowed: %v %+v", err, st)
				}
				return
			}
			if !errors.Is(err, ErrDenied) || st.Accepted || !strings.Contains(st.Reason, tc.deny) {
				t.Errorf("got %v (%+v), want ErrDenied saying %q", err, st, tc.deny)
			}
			if len(subs.got) != 0 {
				t.Errorf("Subscriptions called after a denial: %v", subs.got)
			}
		})
	}
	// Discovery failing is no denial: the message fails, saying why.
	subs := &scopedSubs{err: errors.New("discovery: connection refused")}
	p := newProcessor(config.Control{Policy: teamA}, subs, Options{}.withDefaults())
	w := fnRef("team-a", "fn")
	st, err := p.handle(context.Background(), &Request{ID: "id-1", Type: TypeApply, Watcher: w,
		Apply: &ApplyData{Watcher: w, Watched: []cache.Ref{nodes("team-a")}}})
	if err == nil || errors.Is(err, ErrDenied) || reasonOf(err) != "failed" || !strings.Contains(st.Reason, "connection refused") || len(subs.got) != 0 {
		t.Errorf("discovery error: %v %+v %v", err, st, subs.got)
	}
}
