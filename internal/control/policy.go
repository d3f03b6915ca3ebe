package control

import (
	"fmt"
	"slices"
	"strings"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
)

// CheckPolicy reports whether the control channel may make ref (a watched
// object or a query) a dependency under p: nil, or an error wrapping
// ErrDenied that says why. It is pure.
//
// A rule allows ref when its groups, kinds and namespaces each list ref's
// (an empty list, or "*", allows any; the core group is ""). A Ref with no
// namespace (every namespace of a namespaced kind, or a cluster-scoped
// object) is allowed only by a rule that allows every namespace. With no
// rules nothing is allowed. Core Secrets (group "", any version, kind
// Secret in any letter case) are denied, whatever the rules, unless
// p.AllowSecrets.
func CheckPolicy(p config.Policy, ref cache.Ref) error {
	if ref.Group == "" && strings.EqualFold(ref.Kind, "Secret") && !p.AllowSecrets {
		return fmt.Errorf("%w: %s: Secrets are denied unless policy.allowSecrets is true", ErrDenied, ref.Key())
	}
	if len(p.Allow) == 0 {
		return fmt.Errorf("%w: %s: the policy has no rules, so nothing is allowed", ErrDenied, ref.Key())
	}
	for _, r := range p.Allow {
		if allows(r.Groups, ref.Group) && allows(r.Kinds, ref.Kind) && allowsNamespace(r.Namespaces, ref.Namespace) {
			return nil
		}
	}
	what := "namespace " + ref.Namespace
	if ref.Namespace == "" {
		what = "every namespace (or a cluster-scoped object)"
	}
	group := ref.Group
	if group == "" {
		group = `"" (core)`
	}
	return fmt.Errorf("%w: %s: no rule allows group %s, kind %s in %s", ErrDenied, ref.Key(), group, ref.Kind, what)
}

// allows reports whether list (empty or "*" for any) contains v.
func allows(list []string, v string) bool {
	return len(list) == 0 || slices.Contains(list, cache.Everything) || slices.Contains(list, v)
}

// allowsNamespace is allows, except that the empty namespace (all of
// them) needs a list that allows any.
func allowsNamespace(list []string, ns string) bool {
	if ns == "" {
		return len(list) == 0 || slices.Contains(list, cache.Everything)
	}
	return allows(list, ns)
}
