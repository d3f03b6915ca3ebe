package event

import (
	"encoding/json"
	"strconv"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/watch"
)

// Data is the data of a reconcile request event, encoded as JSON.
type Data struct {
	// Watcher is the watcher to reconcile.
	Watcher cache.Ref `json:"watcher"`
	// Causes say why, oldest first; never null, empty for a requeue.
	Causes []watch.Cause `json:"causes"`
	// Truncated counts causes dropped because too many were pending; when
	// non-zero, every dependency may have changed.
	Truncated int `json:"truncated"`
	// Objects are snapshots of the watched objects, present only when the
	// route includes objects.
	Objects []map[string]any `json:"objects,omitempty"`
	// ObjectsOmitted says the route includes objects but this event does
	// not: with them, it was too large for the sink.
	ObjectsOmitted bool `json:"objectsOmitted,omitempty"`
}

// encode returns d encoded as JSON: exactly the bytes encoding/json gives
// for d (TestDataJSONMatchesEncodingJSON and FuzzDataJSON check), with nil
// Causes written as []. It is written out by hand because encoding/json's
// reflection took half of New's time; the objects, which are arbitrary,
// still go through encoding/json. It fails only if an object cannot be
// encoded.
func (d *Data) encode() ([]byte, error) {
	var objs []byte
	if len(d.Objects) > 0 {
		var err error
		if objs, err = json.Marshal(d.Objects); err != nil {
			return nil, err
		}
	}
	b := make([]byte, 0, d.sizeHint()+len(objs))
	b = append(b, `{"watcher":`...)
	b = appendRefJSON(b, &d.Watcher)
	b = append(b, `,"causes":[`...)
	for i := range d.Causes {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendCauseJSON(b, &d.Causes[i])
	}
	b = append(b, `],"truncated":`...)
	b = strconv.AppendInt(b, int64(d.Truncated), 10)
	if objs != nil {
		b = append(append(b, `,"objects":`...), objs...)
	}
	if d.ObjectsOmitted {
		b = append(b, `,"objectsOmitted":true`...)
	}
	return append(b, '}'), nil
}

// sizeHint is about the length of d's JSON without objects, so that one
// allocation usually holds it.
func (d *Data) sizeHint() int {
	n := 96 + refSize(&d.Watcher)
	for i := range d.Causes {
		c := &d.Causes[i]
		n += 96 + refSize(&c.Watched) + len(c.Namespace) + len(c.Name) + len(c.UID) +
			len(c.ResourceVersion) + len(c.Op) + len(c.Reason)
	}
	return n
}

func refSize(r *cache.Ref) int {
	return 80 + len(r.Group) + len(r.Version) + len(r.Kind) + len(r.Namespace) + len(r.Name) + len(r.Selector)
}

// appendRefJSON writes a cache.Ref as encoding/json does, following its
// struct tags; TestDataJSONFields fails when the type gains a field.
func appendRefJSON(b []byte, r *cache.Ref) []byte {
	b = append(b, '{')
	if r.Group != "" {
		b = appendFieldJSON(b, `"group":`, r.Group)
		b = append(b, ',')
	}
	b = appendFieldJSON(b, `"version":`, r.Version)
	b = appendFieldJSON(b, `,"kind":`, r.Kind)
	if r.Namespace != "" {
		b = appendFieldJSON(b, `,"namespace":`, r.Namespace)
	}
	if r.Name != "" {
		b = appendFieldJSON(b, `,"name":`, r.Name)
	}
	if r.Selector != "" {
		b = appendFieldJSON(b, `,"selector":`, r.Selector)
	}
	return append(b, '}')
}

// appendCauseJSON writes a watch.Cause as encoding/json does, following its
// struct tags; TestDataJSONFields fails when the type gains a field.
func appendCauseJSON(b []byte, c *watch.Cause) []byte {
	// Every field is written with a leading comma; the first one's is
	// dropped at the end (op is always there, so there is a first).
	start := len(b)
	b = append(b, '{')
	if c.Watched != (cache.Ref{}) { // omitzero
		b = append(b, `,"watched":`...)
		b = appendRefJSON(b, &c.Watched)
	}
	if c.Namespace != "" {
		b = appendFieldJSON(b, `,"namespace":`, c.Namespace)
	}
	if c.Name != "" {
		b = appendFieldJSON(b, `,"name":`, c.Name)
	}
	if c.UID != "" {
		b = appendFieldJSON(b, `,"uid":`, string(c.UID))
	}
	if c.ResourceVersion != "" {
		b = appendFieldJSON(b, `,"resourceVersion":`, c.ResourceVersion)
	}
	b = appendFieldJSON(b, `,"op":`, string(c.Op))
	if c.Reason != "" {
		b = appendFieldJSON(b, `,"reason":`, c.Reason)
	}
	b = append(b, '}')
	return append(b[:start+1], b[start+2:]...) // the first field's comma
}

func appendFieldJSON(b []byte, name, value string) []byte {
	return appendStringJSON(append(b, name...), value)
}

// appendStringJSON writes s as a JSON string. Strings of printable ASCII that
// need no escaping (Kubernetes names, kinds, uids, resource versions) are
// copied as they are; anything else is left to encoding/json, so that
// escaping (HTML characters, control characters, invalid UTF-8, U+2028)
// is exactly its own.
func appendStringJSON(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7E || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
