package cache

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
)

// LastAppliedAnnotation is removed from every stored object, with
// metadata.managedFields: both are large and no consumer needs them.
const LastAppliedAnnotation = "kubectl.kubernetes.io/last-applied-configuration"

// Object is one stored object. It is immutable: an update replaces the
// Object, so a reader holding one never sees it change.
type Object struct {
	Namespace       string
	Name            string
	UID             types.UID
	ResourceVersion string
	// Labels must not be modified.
	Labels labels.Set

	// obj is an *unstructured.Unstructured (full body) or a
	// *metav1.PartialObjectMetadata (metadata-only source).
	obj runtime.Object
}

// Change is a difference found by Replace: Old is nil for an object that
// appeared, New is nil for one that disappeared.
type Change struct {
	Old, New *Object
}

// Store holds one copy of each object of the watched kinds, keyed by
// resource, namespace and name, whatever query brought it in. It records
// which namespaces of each resource it covers (has fully listed), so that it
// can tell "watched and absent" (Get returns nil, nil) from "not watched"
// (ErrNoCacheEntry). Safe for concurrent use.
type Store struct {
	// UnsafeDisableDeepCopy makes reads return the stored objects, not
	// copies. Callers must not modify them. Stored objects are never changed
	// in place, so results a caller already holds stay intact.
	UnsafeDisableDeepCopy bool

	mu    sync.RWMutex
	kinds map[schema.GroupVersionResource]*kindStore
}

type kindStore struct {
	gvk schema.GroupVersionKind
	// objects by namespace then name; "" for cluster-scoped objects.
	objects map[string]map[string]*Object
	// covered namespaces; "" means all of them.
	covered map[string]bool
}

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{kinds: map[schema.GroupVersionResource]*kindStore{}}
}

func (s *Store) kind(gvr schema.GroupVersionResource, gvk schema.GroupVersionKind) *kindStore {
	k := s.kinds[gvr]
	if k == nil {
		k = &kindStore{gvk: gvk, objects: map[string]map[string]*Object{}, covered: map[string]bool{}}
		s.kinds[gvr] = k
	}
	return k
}

// NewObject strips obj (in place: the caller hands it over) and wraps it.
// obj must be an *unstructured.Unstructured or a *metav1.PartialObjectMetadata.
func NewObject(obj any) (*Object, error) {
	switch o := obj.(type) {
	case *unstructured.Unstructured:
		if o == nil {
			break
		}
		unstructured.RemoveNestedField(o.Object, "metadata", "managedFields")
		if ann := o.GetAnnotations(); ann != nil {
			if _, ok := ann[LastAppliedAnnotation]; ok {
				delete(ann, LastAppliedAnnotation)
				o.SetAnnotations(ann) // SetAnnotations(empty) removes the field
			}
		}
		return &Object{Namespace: o.GetNamespace(), Name: o.GetName(), UID: o.GetUID(),
			ResourceVersion: o.GetResourceVersion(), Labels: o.GetLabels(), obj: o}, nil
	case *metav1.PartialObjectMetadata:
		if o == nil {
			break
		}
		o.ManagedFields = nil
		if _, ok := o.Annotations[LastAppliedAnnotation]; ok {
			delete(o.Annotations, LastAppliedAnnotation)
			if len(o.Annotations) == 0 {
				o.Annotations = nil
			}
		}
		return &Object{Namespace: o.Namespace, Name: o.Name, UID: o.UID,
			ResourceVersion: o.ResourceVersion, Labels: o.Labels, obj: o}, nil
	}
	return nil, fmt.Errorf("%w: cannot store %T: want a non-nil *unstructured.Unstructured or *metav1.PartialObjectMetadata", ErrInvalidInput, obj)
}

// Apply stores o (added or updated) and returns what it replaced (nil if
// none) and whether the resourceVersion changed.
func (s *Store) Apply(gvr schema.GroupVersionResource, gvk schema.GroupVersionKind, o *Object) (old *Object, changed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.kind(gvr, gvk)
	ns := k.objects[o.Namespace]
	if ns == nil {
		ns = map[string]*Object{}
		k.objects[o.Namespace] = ns
	}
	old = ns[o.Name]
	ns[o.Name] = o
	return old, old == nil || old.ResourceVersion != o.ResourceVersion || old.UID != o.UID
}

// Delete removes an object and returns it, or nil if it was not stored.
func (s *Store) Delete(gvr schema.GroupVersionResource, namespace, name string) *Object {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.kinds[gvr]
	if k == nil {
		return nil
	}
	old := k.objects[namespace][name]
	if old != nil {
		delete(k.objects[namespace], name)
		if len(k.objects[namespace]) == 0 {
			delete(k.objects, namespace)
		}
	}
	return old
}

// Replace sets the objects of one namespace ("" for all namespaces) to
// objs, marks it covered, and returns the differences from what was stored:
// objects that appeared, disappeared, or whose UID or resourceVersion
// changed. Objects that did not change are still replaced (a metadata-only
// copy gives way to a full one) but not reported.
func (s *Store) Replace(gvr schema.GroupVersionResource, gvk schema.GroupVersionKind, namespace string, objs []*Object) []Change {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.kind(gvr, gvk)
	var changes []Change
	seen := make(map[[2]string]bool, len(objs))
	for _, o := range objs {
		seen[[2]string{o.Namespace, o.Name}] = true
		ns := k.objects[o.Namespace]
		if ns == nil {
			ns = map[string]*Object{}
			k.objects[o.Namespace] = ns
		}
		old := ns[o.Name]
		ns[o.Name] = o
		if old == nil || old.ResourceVersion != o.ResourceVersion || old.UID != o.UID {
			changes = append(changes, Change{Old: old, New: o})
		}
	}
	for nsName, ns := range k.objects {
		if namespace != "" && nsName != namespace {
			continue
		}
		for name, old := range ns {
			if !seen[[2]string{nsName, name}] {
				delete(ns, name)
				changes = append(changes, Change{Old: old})
			}
		}
		if len(ns) == 0 {
			delete(k.objects, nsName)
		}
	}
	if namespace == "" {
		clear(k.covered)
	}
	k.covered[namespace] = true
	return changes
}

// Covered reports whether namespace of gvr has been fully listed (directly
// or through a cluster-wide list). Namespace "" asks about all namespaces.
func (s *Store) Covered(gvr schema.GroupVersionResource, namespace string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.covered(gvr, namespace)
}

func (s *Store) covered(gvr schema.GroupVersionResource, namespace string) bool {
	k := s.kinds[gvr]
	return k != nil && (k.covered[""] || k.covered[namespace])
}

// Retain keeps what the store holds for gvr only in the given namespaces
// ("" meaning all, which keeps everything): objects and coverage elsewhere
// are dropped without notice. A cluster-wide coverage narrows to the kept
// namespaces, which it included. With no namespaces, gvr is forgotten.
func (s *Store) Retain(gvr schema.GroupVersionResource, namespaces []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.kinds[gvr]
	if k == nil {
		return
	}
	if len(namespaces) == 0 {
		delete(s.kinds, gvr)
		return
	}
	if slices.Contains(namespaces, "") {
		return
	}
	keep := make(map[string]bool, len(namespaces))
	for _, ns := range namespaces {
		keep[ns] = true
	}
	all := k.covered[""]
	for ns := range k.objects {
		if !keep[ns] {
			delete(k.objects, ns)
		}
	}
	for ns := range k.covered {
		if !keep[ns] {
			delete(k.covered, ns)
		}
	}
	if all {
		for ns := range keep {
			k.covered[ns] = true
		}
	}
}

// Forget drops everything stored for gvr.
func (s *Store) Forget(gvr schema.GroupVersionResource) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.kinds, gvr)
}

// Clear empties the store.
func (s *Store) Clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.kinds)
}

// Len is the number of objects stored for gvr.
func (s *Store) Len(gvr schema.GroupVersionResource) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	if k := s.kinds[gvr]; k != nil {
		for _, ns := range k.objects {
			n += len(ns)
		}
	}
	return n
}

// Lookup returns the stored object, or nil.
func (s *Store) Lookup(gvr schema.GroupVersionResource, namespace, name string) *Object {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if k := s.kinds[gvr]; k != nil {
		return k.objects[namespace][name]
	}
	return nil
}

// Each calls fn for every stored object of gvr in namespace ("" for all),
// in no particular order, until fn returns false. fn must not call the
// store.
func (s *Store) Each(gvr schema.GroupVersionResource, namespace string, fn func(*Object) bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	k := s.kinds[gvr]
	if k == nil {
		return
	}
	each := func(ns map[string]*Object) bool {
		for _, o := range ns {
			if !fn(o) {
				return false
			}
		}
		return true
	}
	if namespace != "" {
		each(k.objects[namespace])
		return
	}
	for _, ns := range k.objects {
		if !each(ns) {
			return
		}
	}
}

// Get returns a watched object: ErrNoCacheEntry if its namespace is not
// covered, (nil, nil) if it is covered and the object does not exist.
func (s *Store) Get(gvr schema.GroupVersionResource, namespace, name string) (*unstructured.Unstructured, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !s.covered(gvr, namespace) {
		return nil, fmt.Errorf("%w: %s %s/%s", ErrNoCacheEntry, gvr.GroupResource(), namespace, name)
	}
	k := s.kinds[gvr]
	o := k.objects[namespace][name]
	if o == nil {
		return nil, nil
	}
	return s.export(k.gvk, o)
}

// List returns the objects of a covered namespace ("" for all) matching
// sel (nil for all), sorted by namespace and name.
func (s *Store) List(gvr schema.GroupVersionResource, namespace string, sel labels.Selector) ([]*unstructured.Unstructured, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !s.covered(gvr, namespace) {
		return nil, fmt.Errorf("%w: %s in namespace %q", ErrNoCacheEntry, gvr.GroupResource(), namespace)
	}
	k := s.kinds[gvr]
	var objs []*Object
	for nsName, ns := range k.objects {
		if namespace != "" && nsName != namespace {
			continue
		}
		for _, o := range ns {
			if sel == nil || sel.Matches(o.Labels) {
				objs = append(objs, o)
			}
		}
	}
	return s.exportAll(k.gvk, objs)
}

// Export returns o as a caller-owned (unless UnsafeDisableDeepCopy)
// unstructured object of kind gvk.
func (s *Store) Export(gvk schema.GroupVersionKind, o *Object) (*unstructured.Unstructured, error) {
	return s.export(gvk, o)
}

func (s *Store) exportAll(gvk schema.GroupVersionKind, objs []*Object) ([]*unstructured.Unstructured, error) {
	slices.SortFunc(objs, func(a, b *Object) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	out := make([]*unstructured.Unstructured, 0, len(objs))
	for _, o := range objs {
		u, err := s.export(gvk, o)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

func (s *Store) export(gvk schema.GroupVersionKind, o *Object) (*unstructured.Unstructured, error) {
	switch obj := o.obj.(type) {
	case *unstructured.Unstructured:
		if s.UnsafeDisableDeepCopy {
			return obj, nil
		}
		return obj.DeepCopy(), nil
	case *metav1.PartialObjectMetadata:
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
		if err != nil {
			return nil, fmt.Errorf("convert metadata of %s/%s: %w", o.Namespace, o.Name, err)
		}
		u := &unstructured.Unstructured{Object: m}
		u.SetGroupVersionKind(gvk)
		return u, nil
	}
	return nil, fmt.Errorf("stored object %s/%s has unexpected type %T", o.Namespace, o.Name, o.obj)
}

// Namespaces lists the namespaces holding objects of gvr, sorted.
func (s *Store) Namespaces(gvr schema.GroupVersionResource) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if k := s.kinds[gvr]; k != nil {
		return slices.Sorted(maps.Keys(k.objects))
	}
	return nil
}
