// Package event turns a reconcile request into a CloudEvent. It is pure: no
// I/O, no clock, no randomness, so the same request always gives the same
// event, and a retried request carries the same id. (Its cache of recent
// watchers' attributes changes how fast New is, never what it returns.)
//
// docs/events.md describes every attribute and data field, and
// docs/events.schema.json is the JSON Schema of the data; the tests keep both
// in step with this package.
package event

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/watch"
)

// Type is the CloudEvents type of every reconcile request. Its version
// suffix changes when the data changes incompatibly.
const Type = "io.depbridge.reconcile.v1"

// DataContentType of every event's data.
const DataContentType = "application/json"

// Extension attribute names. CloudEvents attribute names are lowercase ASCII
// letters and digits, and should not exceed 20 characters.
const (
	// ExtPartitionKey is the partitioning extension
	// (cloudevents/spec extensions/partitioning.md): the watcher key, so one
	// watcher's requests stay in order on one Kafka partition.
	ExtPartitionKey = "partitionkey"
	// ExtWatcherAPIVersion is the watcher's apiVersion ("v1", "apps/v1").
	ExtWatcherAPIVersion = "watcherapiversion"
	// ExtWatcherKind is the watcher's kind.
	ExtWatcherKind = "watcherkind"
	// ExtWatcherNamespace is the watcher's namespace; absent for a
	// cluster-scoped watcher.
	ExtWatcherNamespace = "watchernamespace"
	// ExtWatcherName is the watcher's name; absent for a selector watcher.
	ExtWatcherName = "watchername"
)

// Options of one event, from the route and the bridge's configuration.
type Options struct {
	// Cluster names the cluster in the source attribute. Defaults to
	// "default".
	Cluster string
	// Instance names the bridge instance in the source attribute. Defaults
	// to "depbridge".
	Instance string
	// IncludeObjects adds Objects to the data. Defaults to false.
	IncludeObjects bool
	// IncludeSecretData keeps the data and stringData of included core/v1
	// Secrets; without it they are removed. Defaults to false.
	IncludeSecretData bool
	// ObjectsOmitted marks the data as lacking the objects the route
	// includes (objectsOmitted): the caller leaves IncludeObjects false
	// and sets it when the event with them was too large for the sink.
	ObjectsOmitted bool
	// Objects are the watched objects, as the caller's cache holds them.
	// Used only with IncludeObjects; never modified; nil entries are
	// skipped.
	Objects []*unstructured.Unstructured
}

// New returns the CloudEvent of req. The id is a hash of the cluster, the
// watcher and the ordered causes (not of the objects, nor of the time), so
// the same request always has the same id. New fails only if an object
// cannot be encoded as JSON.
//
// The event is always valid (Event.Validate returns nil): its id, source,
// type and subject are never empty and its data content type is a
// constant, so New does not spend a validation on every event; the tests
// validate what it builds.
//
// Events of one watcher share their Extensions map (see
// watcherAttributes): to change an event's extensions, change those of a
// copy (Event.Clone copies the map), never the event's own.
func New(req watch.Request, opts Options) (ce.Event, error) {
	if opts.Cluster == "" {
		opts.Cluster = "default"
	}
	if opts.Instance == "" {
		opts.Instance = "depbridge"
	}
	w := watcherOf(req.Watcher)

	d := Data{Watcher: req.Watcher, Causes: req.Causes, Truncated: req.Truncated, ObjectsOmitted: opts.ObjectsOmitted}
	if opts.IncludeObjects {
		d.Objects = objects(opts.Objects, opts.IncludeSecretData)
	}
	data, err := d.encode()
	if err != nil {
		return ce.Event{}, fmt.Errorf("encode data of reconcile request for %s: %w", w.key, err)
	}

	// The context and the time it points to share one allocation. Setting
	// the fields directly skips the SDK's setters, their validation and
	// their copies.
	c := &eventContext{}
	c.ctx = ce.EventContextV1{
		ID:              ID(opts.Cluster, req),
		Source:          source(opts.Cluster, opts.Instance),
		Type:            Type,
		Subject:         &w.key,
		DataContentType: &dataContentType,
		Extensions:      w.extensions,
	}
	if !req.Enqueued.IsZero() {
		c.time = types.Timestamp{Time: req.Enqueued}
		c.ctx.Time = &c.time
	}
	return ce.Event{Context: &c.ctx, DataEncoded: data}, nil
}

// eventContext holds an event's context and the time it refers to, so
// that New allocates them together.
type eventContext struct {
	ctx  ce.EventContextV1
	time types.Timestamp
}

// watcherAttributes are what an event takes from its watcher alone: its
// key (the subject, and the partitionkey) and the extensions. Every event
// of a watcher has the same, so New shares them between the events of
// recent watchers (watcherOf) rather than building a map and boxing five
// strings for every event: the extensions are most of what New allocates.
// Nothing writes to them after watcherOf built them; the SDK never writes
// through Subject (SetSubject replaces the pointer), but its SetExtension
// writes into the map in place, hence New's contract.
type watcherAttributes struct {
	ref        cache.Ref
	key        string
	extensions map[string]any
}

// recentWatchers is a cache of the watcherAttributes of recent watchers.
// A watcher may sit in two slots, both picked by a hash of its Ref (two
// choices, so that watchers whose first slots collide do not evict each
// other on every event, as they did in one slot each: a fifth of 1000
// watchers in 4096 slots); a watcher in neither gets new ones, which take
// an empty one of its slots, or else one of them at random. Its size
// bounds the memory it holds (a few hundred bytes a slot) and is larger
// than the watchers that change at once in most clusters.
var (
	recentWatchers    [4096]atomic.Pointer[watcherAttributes]
	recentWatcherSeed = maphash.MakeSeed()
)

// watcherOf returns the attributes of watcher r, shared with other events
// of r.
func watcherOf(r cache.Ref) *watcherAttributes {
	h := maphash.Comparable(recentWatcherSeed, r)
	slots := [2]*atomic.Pointer[watcherAttributes]{
		&recentWatchers[h%uint64(len(recentWatchers))],
		&recentWatchers[(h>>32)%uint64(len(recentWatchers))],
	}
	for _, slot := range slots {
		if w := slot.Load(); w != nil && w.ref == r {
			return w
		}
	}
	w := &watcherAttributes{ref: r, key: watcherKey(r)}
	w.extensions = map[string]any{
		ExtPartitionKey:      w.key,
		ExtWatcherAPIVersion: apiVersion(r),
		ExtWatcherKind:       r.Kind,
	}
	if r.Namespace != "" {
		w.extensions[ExtWatcherNamespace] = r.Namespace
	}
	if r.Name != "" {
		w.extensions[ExtWatcherName] = r.Name
	}
	switch {
	case slots[0].Load() == nil:
		slots[0].Store(w)
	case slots[1].Load() == nil:
		slots[1].Store(w)
	default:
		slots[rand.Uint32()&1].Store(w)
	}
	return w
}

// dataContentType is what every event's DataContentType points to. The SDK
// never writes through that pointer (SetDataContentType replaces it).
var dataContentType = DataContentType

// lastSource caches the source attribute of the last event built: a
// bridge has one cluster and one instance, so the URL is built once.
var lastSource atomic.Pointer[sourceURI]

type sourceURI struct {
	cluster, instance string
	uri               types.URIRef
}

// source is the source attribute "depbridge://<cluster>/<instance>".
func source(cluster, instance string) types.URIRef {
	if s := lastSource.Load(); s != nil && s.cluster == cluster && s.instance == instance {
		return s.uri
	}
	s := &sourceURI{cluster: cluster, instance: instance}
	s.uri.URL.Scheme = "depbridge"
	s.uri.URL.Host = cluster
	s.uri.URL.Path = "/" + instance
	lastSource.Store(s)
	return s.uri
}

// ID is the deterministic event id of req in cluster: the first 128 bits,
// in hex, of a SHA-256 over a length-prefixed encoding of the cluster, the
// watcher, Truncated and the set of its causes. The cluster is included
// because JetStream deduplicates by id across the whole stream, whichever
// source published.
//
// A cause counts by the object version it reports, not by how it was
// learned: its watched Ref, object, UID, resourceVersion, and whether the
// object is in the Ref's set at that version (not for deleted, left, or
// relisted with no resourceVersion). So a retry carries the same id, and
// so does a re-announcement after a restart of exactly the versions an
// earlier event announced (a relisted cause for what was a modified one),
// which JetStream's duplicate window then drops. A deletion never shares
// an id with the modification before it. Causes with no object (lost,
// resync) count by op and reason. Order does not matter.
//
// A request that names no object version for all it reports (one with a
// lost or resync cause, truncated causes, or no causes) is an occurrence
// rather than a set of versions: two resyncs of a watcher, at two starts
// of the bridge, announce different things under the same causes. Its id
// also counts req.Enqueued, which a retry keeps, so that JetStream's
// duplicate window drops its retries but not the next occurrence.
func ID(cluster string, req watch.Request) string {
	var stack [1024]byte
	b := appendStr(stack[:0], "depbridge.reconcile.v2")
	b = appendStr(b, cluster)
	b = appendRef(b, req.Watcher)
	b = binary.AppendUvarint(b, uint64(req.Truncated))
	if occurrence(req) {
		b = binary.AppendVarint(b, req.Enqueued.UnixNano())
	}
	switch len(req.Causes) {
	case 0:
	case 1:
		b = appendCauseKey(b, &req.Causes[0])
	default:
		keys := make([][]byte, len(req.Causes))
		for i := range req.Causes {
			keys[i] = appendCauseKey(nil, &req.Causes[i])
		}
		slices.SortFunc(keys, bytes.Compare)
		for i, k := range keys {
			if i > 0 && bytes.Equal(k, keys[i-1]) {
				continue // a set
			}
			b = append(b, k...)
		}
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// occurrence reports whether req's causes leave something unnamed by an
// object version (see ID).
func occurrence(req watch.Request) bool {
	if len(req.Causes) == 0 || req.Truncated > 0 {
		return true
	}
	for i := range req.Causes {
		if req.Causes[i].Name == "" { // lost, resync
			return true
		}
	}
	return false
}

// appendCauseKey encodes what identifies a cause for ID.
func appendCauseKey(b []byte, c *watch.Cause) []byte {
	b = appendRef(b, c.Watched)
	if c.Name == "" { // lost, resync
		b = append(b, 0)
		b = appendStr(b, string(c.Op))
		return appendStr(b, c.Reason)
	}
	b = append(b, 1)
	b = appendStr(b, c.Namespace)
	b = appendStr(b, c.Name)
	b = appendStr(b, string(c.UID))
	b = appendStr(b, c.ResourceVersion)
	gone := c.Op == watch.OpDeleted || c.Op == watch.OpLeft || (c.Op == watch.OpRelisted && c.ResourceVersion == "")
	if gone {
		return append(b, 0)
	}
	return append(b, 1)
}

// appendStr appends s with its length first, so that no two sequences of
// strings encode alike.
func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendRef(b []byte, r cache.Ref) []byte {
	b = appendStr(b, r.Group)
	b = appendStr(b, r.Version)
	b = appendStr(b, r.Kind)
	b = appendStr(b, r.Namespace)
	b = appendStr(b, r.Name)
	return appendStr(b, r.Selector)
}

// objects returns the contents of objs, with Secret data and stringData
// removed unless keepSecretData. The caller's maps are shared, never
// modified: a redacted Secret gets a shallow copy of its top-level map.
func objects(objs []*unstructured.Unstructured, keepSecretData bool) []map[string]any {
	out := make([]map[string]any, 0, len(objs))
	for _, u := range objs {
		if u == nil || u.Object == nil {
			continue
		}
		o := u.Object
		if !keepSecretData && isSecret(u) {
			c := make(map[string]any, len(o))
			for k, v := range o {
				if k != "data" && k != "stringData" {
					c[k] = v
				}
			}
			o = c
		}
		out = append(out, o)
	}
	return out
}

// isSecret reports whether u is a core/v1 Secret (group "", version v1).
func isSecret(u *unstructured.Unstructured) bool {
	return u.GetKind() == "Secret" && u.GetAPIVersion() == "v1"
}

// apiVersion is req.Watcher.APIVersion() without its allocations.
func apiVersion(r cache.Ref) string {
	if r.Group == "" {
		return r.Version
	}
	return r.Group + "/" + r.Version
}

// watcherKey is r.Key(), built in one allocation.
func watcherKey(r cache.Ref) string {
	last := r.Name
	sep := "/"
	if r.Selector != "" {
		last, sep = r.Selector, "/?"
	}
	var b strings.Builder
	b.Grow(len(r.Group) + len(r.Version) + len(r.Kind) + len(r.Namespace) + len(last) + 6)
	if r.Group != "" {
		b.WriteString(r.Group)
		b.WriteByte('/')
	}
	b.WriteString(r.Version)
	b.WriteByte('/')
	b.WriteString(r.Kind)
	b.WriteByte('/')
	b.WriteString(r.Namespace)
	b.WriteString(sep)
	b.WriteString(last)
	return b.String()
}
