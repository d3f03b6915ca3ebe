package control

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
)

// CheckPolicy reports whether the control channel may make ref (a watched
// object or a query) a dependency under p: nil, or an error wrapping
// ErrDenied that says why. It is pure: it judges ref as written, so the
// caller must clear the namespace of a Ref of a cluster-scoped kind (which
// the engine ignores) first; the transports do (see KindResolver).
//
// A rule allows ref when its groups, kinds and namespaces each list ref's
// (an empty list, or "*", allows any; the core group is ""). A Ref with no
// namespace (every namespace of a namespaced kind, or a cluster-scoped
// object) is allowed only by a rule that allows every namespace. With no
// rules nothing is allowed. Core Secrets (group "", any version, kind
// Secret in any letter case) are denied, whatever the rules, unless
// p.AllowSecrets.
func CheckPolicy(p config.Policy, ref cache.Ref) error {
	if why := denial(p, ref); why != "" {
		return fmt.Errorf("%w: %s: %s", ErrDenied, ref.Key(), why)
	}
	return nil
}

// denial is why p denies ref, or "" when it allows it.
func denial(p config.Policy, ref cache.Ref) string {
	if ref.Group == "" && strings.EqualFold(ref.Kind, "Secret") && !p.AllowSecrets {
		return "Secrets are denied unless policy.allowSecrets is true"
	}
	if len(p.Allow) == 0 {
		return "the policy has no rules, so nothing is allowed"
	}
	for _, r := range p.Allow {
		if allows(r.Groups, ref.Group) && allows(r.Kinds, ref.Kind) && allowsNamespace(r.Namespaces, ref.Namespace) {
			return ""
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
	return fmt.Sprintf("no rule allows group %s, kind %s in %s", group, ref.Kind, what)
}

// checkScoped is CheckPolicy for a Ref of a kind that kinds says is
// cluster-scoped, or does not know (not served yet: a CRD
// installed later may make it cluster-scoped, and the engine then drops
// the namespace): the namespace ref gives is ignored, and the decision is
// that for no namespace. An error not wrapping ErrDenied means the scope
// could not be found out.
func checkScoped(ctx context.Context, p config.Policy, kinds KindResolver, ref cache.Ref) error {
	if err := CheckPolicy(p, ref); err != nil || ref.Namespace == "" {
		return err
	}
	cluster := ref
	cluster.Namespace = ""
	why := denial(p, cluster)
	if why == "" {
		return nil // allowed whatever the scope
	}
	gvk := ref.GroupVersionKind()
	kind := ref.APIVersion() + "/" + ref.Kind
	res, err := kinds.Resource(ctx, gvk)
	switch {
	case err == nil, errors.Is(err, cache.ErrResourceUnwatchable):
		// Unwatchable: the engine refuses it anyway, but its scope is known.
		if res.Namespaced {
			return nil
		}
		return fmt.Errorf("%w: %s: %s is cluster-scoped, so the namespace is ignored, and %s", ErrDenied, ref.Key(), kind, why)
	case errors.Is(err, cache.ErrNoVersionedResource):
		return fmt.Errorf("%w: %s: %s is not served (yet), so it may be cluster-scoped and its namespace ignored, and %s",
			ErrDenied, ref.Key(), kind, why)
	}
	return fmt.Errorf("%s: cannot tell whether %s is cluster-scoped: %w", ref.Key(), kind, err)
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
