package rbac

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
)

// Resolver says where a kind is served, like cache.Mapper.Resource. It
// returns an error wrapping cache.ErrNoVersionedResource when the kind is not
// served (its CRD is not installed), and one wrapping
// cache.ErrResourceUnwatchable when it cannot be listed and watched.
//
// gvk.Version is empty for a kind that only the control policy names (a
// policy names no versions): the resolver then answers for any version the
// group serves, since RBAC rules name no versions either.
type Resolver func(ctx context.Context, gvk schema.GroupVersionKind) (cache.Resource, error)

// Options says whom the RBAC is for. The zero value works.
type Options struct {
	// ServiceAccount the roles are bound to. Defaults to "depbridge".
	ServiceAccount string
	// Namespace of the ServiceAccount. Defaults to "depbridge".
	Namespace string
	// Name of the ClusterRole, of each Role and of their bindings; the
	// leader-election Role and binding are Name + "-leader-election".
	// Defaults to "depbridge". Two bridges in one cluster need two names.
	Name string
	// LeaderElection grants what --leader-elect needs: create on leases,
	// get and update on the Lease LeaseName, in LeaseNamespace. Defaults
	// to false.
	LeaderElection bool
	// LeaseName is the bridge's --leader-elect-name. Defaults to
	// "depbridge".
	LeaseName string
	// LeaseNamespace is the bridge's --leader-elect-namespace. Defaults to
	// Namespace.
	LeaseNamespace string
	// CRDs grants list and watch on CustomResourceDefinitions even when
	// every watched kind is served, so that kinds whose CRD is deleted and
	// installed again, or that control-channel subscriptions name before
	// their CRD exists, start as soon as they are served (without it the
	// engine polls discovery, up to every 30s). Defaults to false: granted
	// only when a watched kind is not served.
	CRDs bool
	// MaxNamespaceSources is the most namespaces of one resource granted
	// with Roles; more get a ClusterRole. Keep it equal to the engine's
	// watch.Options.MaxNamespaceSources. Defaults to 16.
	MaxNamespaceSources int
	// Wildcards grants control policy rules that allow any kind or any
	// group, with RBAC wildcards, instead of refusing them. Defaults to
	// false.
	Wildcards bool
}

// Result is the generated RBAC.
type Result struct {
	// Objects are *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding,
	// *rbacv1.Role and *rbacv1.RoleBinding values with their TypeMeta set:
	// the ClusterRole and its binding first, then by namespace each Role
	// before its RoleBinding.
	Objects []runtime.Object
	// Notes are what a reader of the RBAC must know: resources guessed for
	// kinds not served, wildcard grants and what they imply.
	Notes []string
}

const (
	crdGroup    = "apiextensions.k8s.io"
	crdResource = "customresourcedefinitions"
	leaseGroup  = "coordination.k8s.io"
	wildcard    = "*"
)

var readVerbs = []string{"get", "list", "watch"}

// resourceKey is a resource in RBAC terms: group and resource, no version.
// Group or Resource may be "*".
type resourceKey struct {
	Group, Resource string
}

// scope is where a resource is read: cluster-wide, or in namespaces.
type scope struct {
	cluster    bool
	namespaces map[string]bool
}

type generator struct {
	ctx      context.Context
	resolve  Resolver
	opts     Options
	resolved map[schema.GroupVersionKind]resolution
	grants   map[resourceKey]*scope
	crds     bool
	notes    []string
}

type resolution struct {
	res   cache.Resource
	guess bool // not served: resource guessed, scope unknown
	err   error
}

// Generate returns the RBAC that cfg needs (see the package documentation).
// cfg must have passed config.Validate.
func Generate(ctx context.Context, cfg *config.Config, resolve Resolver, opts Options) (*Result, error) {
	if cfg == nil {
		return nil, errors.New("rbac: no configuration")
	}
	if resolve == nil {
		return nil, errors.New("rbac: no resolver")
	}
	opts.ServiceAccount = cmp.Or(opts.ServiceAccount, "depbridge")
	opts.Namespace = cmp.Or(opts.Namespace, "depbridge")
	opts.Name = cmp.Or(opts.Name, "depbridge")
	opts.LeaseName = cmp.Or(opts.LeaseName, "depbridge")
	opts.LeaseNamespace = cmp.Or(opts.LeaseNamespace, opts.Namespace)
	if opts.MaxNamespaceSources <= 0 {
		opts.MaxNamespaceSources = 16
	}
	if err := opts.validate(); err != nil {
		return nil, err
	}
	g := &generator{ctx: ctx, resolve: resolve, opts: opts,
		resolved: map[schema.GroupVersionKind]resolution{}, grants: map[resourceKey]*scope{}, crds: opts.CRDs}
	for i, s := range cfg.Subscriptions {
		for j, ref := range s.Watched {
			if err := g.watched(ref); err != nil {
				return nil, fmt.Errorf("subscriptions[%d].watched[%d]: %w", i, j, err)
			}
		}
	}
	if cfg.Control != nil {
		versions := map[schema.GroupKind]string{}
		for _, s := range cfg.Subscriptions {
			for _, ref := range s.Watched {
				versions[schema.GroupKind{Group: ref.Group, Kind: ref.Kind}] = ref.Version
			}
		}
		for i, rule := range cfg.Control.Policy.Allow {
			if err := g.policy(rule, versions); err != nil {
				return nil, fmt.Errorf("control.policy.allow[%d]: %w", i, err)
			}
		}
	}
	return &Result{Objects: g.objects(), Notes: g.notes}, nil
}

func (o *Options) validate() error {
	var errs []error
	check := func(field, value string, msgs []string) {
		if len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("rbac: %s %q: %s", field, value, strings.Join(msgs, "; ")))
		}
	}
	check("service account", o.ServiceAccount, validation.IsDNS1123Subdomain(o.ServiceAccount))
	check("namespace", o.Namespace, validation.IsDNS1123Label(o.Namespace))
	check("name", o.Name, validation.IsDNS1123Subdomain(o.Name+"-leader-election"))
	check("lease name", o.LeaseName, validation.IsDNS1123Subdomain(o.LeaseName))
	check("lease namespace", o.LeaseNamespace, validation.IsDNS1123Label(o.LeaseNamespace))
	return errors.Join(errs...)
}

// kind resolves gvk once.
func (g *generator) kind(gvk schema.GroupVersionKind) resolution {
	if r, ok := g.resolved[gvk]; ok {
		return r
	}
	res, err := g.resolve(g.ctx, gvk)
	var r resolution
	switch {
	case err == nil:
		r = resolution{res: res}
	case errors.Is(err, cache.ErrNoVersionedResource):
		plural, _ := meta.UnsafeGuessKindToResource(gvk)
		r = resolution{res: cache.Resource{GroupVersionResource: plural, Namespaced: true}, guess: true}
	default:
		r = resolution{err: fmt.Errorf("kind %s: %w", kindString(gvk), err)}
	}
	g.resolved[gvk] = r
	return r
}

// watched grants what the engine needs to watch ref.
func (g *generator) watched(ref cache.Ref) error {
	if err := ref.Validate(); err != nil {
		return err
	}
	gvk := ref.GroupVersionKind()
	r := g.kind(gvk)
	if r.err != nil {
		return r.err
	}
	key := resourceKey{Group: gvk.Group, Resource: r.res.Resource}
	if r.guess {
		g.crds = true
		g.note("%s is not served (its CustomResourceDefinition is not installed?): its resource is guessed as %q, "+
			"%s; check with `kubectl api-resources --api-group=%s` once it is served, and regenerate",
			kindString(gvk), r.res.Resource, guessedScope(ref.Namespace), gvk.Group)
	}
	g.grant(key, r.res.Namespaced, ref.Namespace)
	return nil
}

func guessedScope(ns string) string {
	if ns == "" {
		return "read in every namespace"
	}
	return fmt.Sprintf("namespaced (read in %s; a cluster-scoped kind would need a ClusterRole)", ns)
}

// policy grants what a control policy rule allows.
func (g *generator) policy(rule config.PolicyRule, versions map[schema.GroupKind]string) error {
	anyGroup, anyKind, anyNS := isAny(rule.Groups), isAny(rule.Kinds), isAny(rule.Namespaces)
	namespaces := []string{""}
	if !anyNS {
		namespaces = rule.Namespaces
	}
	if anyGroup || anyKind {
		return g.policyWildcard(rule, anyGroup, anyKind, namespaces)
	}
	for _, group := range rule.Groups {
		for _, kind := range rule.Kinds {
			gk := schema.GroupKind{Group: group, Kind: kind}
			gvk := gk.WithVersion(versions[gk])
			r := g.kind(gvk)
			if r.err != nil {
				return r.err
			}
			key := resourceKey{Group: group, Resource: r.res.Resource}
			if r.guess {
				g.crds = true
				g.note("%s, allowed by the control policy, is not served (its CustomResourceDefinition is not installed?): "+
					"its resource is guessed as %q, %s; check with `kubectl api-resources --api-group=%s` "+
					"once it is served, and regenerate", kindString(gvk), r.res.Resource,
					guessedScope(strings.Join(rule.Namespaces, ", ")), group)
			}
			if !r.res.Namespaced && !anyNS {
				g.note("%s, allowed by the control policy in namespaces %s, is cluster-scoped: its objects have no "+
					"namespace, so it is granted cluster-wide", kindString(gvk), strings.Join(rule.Namespaces, ", "))
			}
			for _, ns := range namespaces {
				g.grant(key, r.res.Namespaced, ns)
			}
		}
	}
	return nil
}

// policyWildcard grants a rule that allows any group or any kind, if
// Options.Wildcards says so.
func (g *generator) policyWildcard(rule config.PolicyRule, anyGroup, anyKind bool, namespaces []string) error {
	groups := rule.Groups
	if anyGroup {
		groups = []string{wildcard}
	}
	var resources []string
	if anyKind {
		resources = []string{wildcard}
	} else {
		for _, kind := range rule.Kinds {
			plural, _ := meta.UnsafeGuessKindToResource(schema.GroupVersionKind{Kind: kind})
			resources = append(resources, plural.Resource)
		}
	}
	where := "in every namespace"
	if namespaces[0] != "" {
		where = "in namespaces " + strings.Join(namespaces, ", ")
	}
	what := fmt.Sprintf("resources %s of API groups %s %s", quoteList(resources), quoteList(groups), where)
	allows := "any kind"
	switch {
	case anyGroup && anyKind:
		allows = "any group and any kind"
	case anyGroup:
		allows = "its kinds in any group"
	}
	if !g.opts.Wildcards {
		return fmt.Errorf("the rule allows %s, which RBAC cannot grant narrowly: it would take get, list and watch on %s, "+
			"covering every resource those groups have or will have%s; list the groups and kinds the control channel "+
			"may use, or allow wildcards (Options.Wildcards)", allows, what, secretsClause(groups, anyKind))
	}
	g.note("the control policy allows %s: granted get, list and watch on %s%s; the bridge still enforces the policy",
		allows, what, secretsClause(groups, anyKind))
	if anyKind {
		// A kind the policy allows may not be served yet.
		g.crds = true
	}
	if !anyKind && anyGroup {
		g.note("resources of kinds %s in any group are guessed from the kind names", strings.Join(rule.Kinds, ", "))
	}
	for _, group := range groups {
		for _, resource := range resources {
			for _, ns := range namespaces {
				// A wildcard may cover cluster-scoped kinds: granted
				// cluster-wide only when the rule spans every namespace.
				g.grant(resourceKey{Group: group, Resource: resource}, true, ns)
			}
		}
	}
	return nil
}

// secretsClause says that a wildcard covers Secrets, which the policy may
// deny but RBAC cannot except.
func secretsClause(groups []string, anyKind bool) string {
	if anyKind && (slices.Contains(groups, "") || slices.Contains(groups, wildcard)) {
		return " (Secrets included: RBAC cannot except them, even when the policy denies them)"
	}
	return ""
}

func isAny(list []string) bool {
	return len(list) == 0 || (len(list) == 1 && list[0] == wildcard)
}

// grant records that key is read in ns ("" = every namespace); a
// cluster-scoped resource is always read cluster-wide.
func (g *generator) grant(key resourceKey, namespaced bool, ns string) {
	s := g.grants[key]
	if s == nil {
		s = &scope{namespaces: map[string]bool{}}
		g.grants[key] = s
	}
	if !namespaced || ns == "" {
		s.cluster = true
		return
	}
	s.namespaces[ns] = true
}

func (g *generator) note(format string, args ...any) {
	n := fmt.Sprintf(format, args...)
	if !slices.Contains(g.notes, n) {
		g.notes = append(g.notes, n)
	}
}

// objects builds the roles and bindings from the grants.
func (g *generator) objects() []runtime.Object {
	cluster := map[string][]string{}               // group -> resources
	namespaced := map[string]map[string][]string{} // namespace -> group -> resources
	for key, s := range g.grants {
		if s.cluster || len(s.namespaces) > g.opts.MaxNamespaceSources {
			cluster[key.Group] = append(cluster[key.Group], key.Resource)
			continue
		}
		for ns := range s.namespaces {
			if namespaced[ns] == nil {
				namespaced[ns] = map[string][]string{}
			}
			namespaced[ns][key.Group] = append(namespaced[ns][key.Group], key.Resource)
		}
	}
	var objs []runtime.Object
	clusterRules := rules(cluster)
	if g.crds {
		clusterRules = append(clusterRules, rbacv1.PolicyRule{APIGroups: []string{crdGroup},
			Resources: []string{crdResource}, Verbs: []string{"list", "watch"}})
	}
	if len(clusterRules) > 0 {
		objs = append(objs,
			&rbacv1.ClusterRole{TypeMeta: typeMeta("ClusterRole"), ObjectMeta: g.meta(g.opts.Name, ""), Rules: clusterRules},
			&rbacv1.ClusterRoleBinding{TypeMeta: typeMeta("ClusterRoleBinding"), ObjectMeta: g.meta(g.opts.Name, ""),
				RoleRef: roleRef("ClusterRole", g.opts.Name), Subjects: g.subjects()})
	}
	type role struct {
		ns, name string
		rules    []rbacv1.PolicyRule
	}
	var all []role
	for ns, groups := range namespaced {
		all = append(all, role{ns, g.opts.Name, rules(groups)})
	}
	if g.opts.LeaderElection {
		all = append(all, role{g.opts.LeaseNamespace, g.opts.Name + "-leader-election", []rbacv1.PolicyRule{
			{APIGroups: []string{leaseGroup}, Resources: []string{"leases"}, Verbs: []string{"create"}},
			{APIGroups: []string{leaseGroup}, Resources: []string{"leases"}, ResourceNames: []string{g.opts.LeaseName},
				Verbs: []string{"get", "update"}},
		}})
	}
	slices.SortFunc(all, func(a, b role) int { return cmp.Or(cmp.Compare(a.ns, b.ns), cmp.Compare(a.name, b.name)) })
	for _, r := range all {
		objs = append(objs,
			&rbacv1.Role{TypeMeta: typeMeta("Role"), ObjectMeta: g.meta(r.name, r.ns), Rules: r.rules},
			&rbacv1.RoleBinding{TypeMeta: typeMeta("RoleBinding"), ObjectMeta: g.meta(r.name, r.ns),
				RoleRef: roleRef("Role", r.name), Subjects: g.subjects()})
	}
	return objs
}

// rules turns group -> resources into read rules, one per group, sorted;
// a wildcard resource absorbs the others of its group.
func rules(groups map[string][]string) []rbacv1.PolicyRule {
	var out []rbacv1.PolicyRule
	for _, group := range slices.Sorted(maps.Keys(groups)) {
		res := slices.Compact(slices.Sorted(slices.Values(groups[group])))
		if slices.Contains(res, wildcard) {
			res = []string{wildcard}
		}
		out = append(out, rbacv1.PolicyRule{APIGroups: []string{group}, Resources: res, Verbs: slices.Clone(readVerbs)})
	}
	return out
}

func (g *generator) meta(name, ns string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/name": "depbridge"}}
}

func (g *generator) subjects() []rbacv1.Subject {
	return []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: g.opts.ServiceAccount, Namespace: g.opts.Namespace}}
}

func typeMeta(kind string) metav1.TypeMeta {
	return metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: kind}
}

func roleRef(kind, name string) rbacv1.RoleRef {
	return rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: kind, Name: name}
}

// kindString renders a kind as in a manifest: "apps/v1 Deployment", "v1
// ConfigMap", "example.com Widget" (policy kinds have no version).
func kindString(gvk schema.GroupVersionKind) string {
	if gvk.Version == "" {
		if gvk.Group == "" {
			return "core " + gvk.Kind
		}
		return gvk.Group + " " + gvk.Kind
	}
	return gvk.GroupVersion().String() + " " + gvk.Kind
}

func quoteList(list []string) string {
	q := make([]string, len(list))
	for i, s := range list {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
