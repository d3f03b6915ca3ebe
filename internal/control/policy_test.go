package control

import (
	"errors"
	"strings"
	"testing"

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
