// Package rbac generates the least-privilege RBAC a bridge configuration
// needs: what `bridge rbac` prints and what config/base/rbac.yaml holds.
//
// One call generates it, one renders it:
//
//	disc, err := discovery.NewDiscoveryClientForConfig(restConfig)
//	...
//	res, err := rbac.Generate(ctx, cfg, rbac.DiscoveryResolver(disc), rbac.Options{
//		ServiceAccount: "depbridge", Namespace: "depbridge", LeaderElection: true,
//	})
//	...
//	out, err := res.YAML() // multi-document YAML with the notes as comments
//
// cfg must have passed config.Validate. The resolver says where each kind is
// served; DiscoveryResolver asks the cluster, and any function with the
// signature of cache.Mapper.Resource will do for kinds with a version.
//
// # What is granted
//
// get, list and watch (the engine only lists and watches; get is for the
// operator's kubectl) on exactly the resources of the watched kinds: every
// Ref watched by the configuration's subscriptions and, when a control
// channel is configured, every kind its policy allows. The scope follows the
// engine's sources (see internal/watch):
//
//   - a Role and RoleBinding in each watched namespace, when every Ref of the
//     resource names a namespace and they name at most
//     Options.MaxNamespaceSources (16, the engine's default) namespaces;
//   - a ClusterRole and ClusterRoleBinding otherwise: a Ref (or policy rule)
//     over every namespace, a cluster-scoped kind, or more namespaces than
//     that. Above that many namespaces the engine opens one cluster-wide
//     list+watch (it falls back to one per namespace only when that is
//     forbidden).
//
// Watchers are identifiers, never read, so they need nothing. Names and
// selectors do not narrow a grant: the engine shares one list+watch per
// resource and namespace, and RBAC cannot restrict list or watch by label.
//
// list and watch on customresourcedefinitions (metadata only, cluster-wide)
// are granted when a watched kind is not served (the engine watches CRDs
// while a kind is pending, to start as soon as it is installed), or always
// with Options.CRDs. The resource of a kind that is not served cannot be
// discovered: it is guessed (lowercase plural, as CRDs almost always are),
// scoped as the Ref's namespace suggests, and reported in Result.Notes.
//
// With Options.LeaderElection: create on leases, and get and update on the
// Lease Options.LeaseName only, in Options.LeaseNamespace (create cannot be
// restricted to a name in RBAC).
//
// Everything is bound to the ServiceAccount Options.ServiceAccount in
// Options.Namespace. The ServiceAccount itself, and the namespaces of the
// Roles, are not generated.
//
// # The control policy
//
// A policy rule naming groups and kinds is granted like watched Refs: per
// namespace when it names at most MaxNamespaceSources namespaces, else
// cluster-wide. A policy names kinds without a version, so the resolver is
// asked for a version-less kind unless a subscription names the same group
// and kind; DiscoveryResolver answers with any served version.
//
// A rule that allows any kind ("*" or no kinds) or any group cannot be
// granted narrowly: RBAC would need resources "*" (every resource of the
// group, including those added later, and Secrets in the core group even
// when the policy denies them). Generate refuses such a rule with an error
// that says so, unless Options.Wildcards is set; then it grants the
// wildcard (apiGroups and resources "*" as the rule says) and says what it
// implies in Result.Notes.
//
// # Output
//
// Result.Objects is deterministic: the ClusterRole and its binding first,
// then, by namespace, each Role before its RoleBinding; rules sorted by API
// group, resources sorted. YAML renders objects as multi-document YAML
// without status or creationTimestamp; Result.YAML adds a header and the
// notes as comments.
package rbac
