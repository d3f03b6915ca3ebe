// Package watch is depbridge's dependency watch engine: watchers depend on
// Kubernetes objects (by name, by label selector, or every object of a kind
// in a namespace), and the engine reconciles a watcher whenever one of them
// is added, modified or deleted, telling it why.
//
// Its semantics are those of stolostron/kubernetes-dependency-watches
// (DynamicWatcher, ObjectCache, query batches), with its known bugs fixed
// and without its cost of one API watch per watched object.
//
// Guarantees:
//
//   - Shared sources. One list+watch per (resource, namespace scope), however
//     many watchers and names: per watched namespace while every dependency
//     of a kind is namespaced (so a namespace-scoped Role is enough), one
//     cluster-wide otherwise. Names, selectors and namespaces are matched
//     locally through indexes. Kinds no watcher reads in full are watched as
//     metadata only.
//   - Causes. Each Request carries why: the watched Ref, the object, its UID
//     and resourceVersion, and the operation (added, modified, deleted,
//     entered or left a selector, initial, relisted, lost). Causes accumulate
//     while a watcher waits and are kept when its reconcile fails.
//   - Stingy queue. Requests are keyed by watcher on client-go's workqueue:
//     bursts coalesce, a watcher is never reconciled concurrently (so
//     per-watcher state in a Reconciler needs no lock), different watchers are
//     reconciled by Options.Workers workers (an AsyncReconciler's worker
//     moves on once the request is handed over, up to Options.MaxInFlight
//     in flight), failures retry with capped exponential backoff forever
//     (never dropped), panics are recovered and retried.
//   - Initial reconciles. Every watcher that starts to depend on objects that
//     exist gets one, whoever watched them first, unless disabled.
//   - Restarts. A broken stream resumes from the last resourceVersion
//     (bookmarks on); after 410 Gone or a restart the engine relists, compares
//     with the store, and reconciles only watchers whose view changed.
//   - Nothing hangs, nothing leaks. Registration does discovery and waits for
//     list+watch without holding the engine's lock, honours its context, and
//     is all or nothing. Removal never waits on the API server. Access revoked
//     mid-stream drops the affected watches and reconciles their watchers once
//     (OpLost). A kind whose CRD does not exist yet is accepted as pending and
//     watched once the CRD is established; a deleted CRD's watchers are
//     reconciled once and wait, pending, for it to return.
//   - Cache. One immutable copy per object (managedFields and the
//     last-applied annotation stripped), readable by name whatever query
//     brought it in; reads return copies, and results already returned never
//     change.
package watch
