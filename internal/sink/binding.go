package sink

import (
	"bytes"
	"fmt"
	"net/url"
	"sync/atomic"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"

	"github.com/depbridge/depbridge/internal/event"
)

// The NATS and Kafka protocol-binding writers (natsmsg.go, kafkamsg.go)
// read the event's context directly instead of going through sdk-go's
// binding.Write and binding.ToMessage, which cost about 25 allocations and
// several microseconds per event, more than building the event. What they
// write is what the binding specs say and what the sdk-go machinery wrote
// before; the conformance tests (TestEncodeNATSBinary and the others)
// decode it with decoders written from the specs.

// attribute is one context attribute in its canonical string form.
type attribute struct {
	name, value string
	// time is set for the time attribute instead of value: its string form
	// is only made when it is written (text, appendText), which the Kafka
	// writer does without allocating.
	time *time.Time
}

// text is a's value in canonical string form.
func (a *attribute) text() string {
	if a.time != nil {
		var buf [len(maxTimeText) + 16]byte // a time past year 9999 still fits
		return string(a.appendText(buf[:0]))
	}
	return a.value
}

// appendText appends text() to b. A time's canonical form is sdk-go's
// (types.FormatTime): RFC 3339 with nanoseconds, in UTC.
func (a *attribute) appendText(b []byte) []byte {
	if a.time != nil {
		return a.time.UTC().AppendFormat(b, time.RFC3339Nano)
	}
	return append(b, a.value...)
}

// maxTimeText is the longest canonical time of the years 0 to 9999.
const maxTimeText = "2006-01-02T15:04:05.999999999Z"

// maxLen is at least len(text()) (for a time in years 0 to 9999).
func (a *attribute) maxLen() int {
	if a.time != nil {
		return len(maxTimeText)
	}
	return len(a.value)
}

// attributes appends to buf every attribute of e, datacontenttype
// included, in its canonical string form (the time's is made when it is
// written): specversion, id, source, type,
// then the optional attributes that are set, then the extensions (in map
// order). Only CloudEvents 1.0 events are written.
func attributes(e *ce.Event, buf []attribute) ([]attribute, error) {
	ec, ok := e.Context.(*ce.EventContextV1)
	if !ok {
		return buf, fmt.Errorf("specversion %q is not supported: events are written as CloudEvents 1.0", e.SpecVersion())
	}
	buf = append(buf,
		attribute{name: "specversion", value: ce.CloudEventsVersionV1},
		attribute{name: "id", value: ec.ID},
		attribute{name: "source", value: uriString(&ec.Source.URL)},
		attribute{name: "type", value: ec.Type})
	if ec.Subject != nil {
		buf = append(buf, attribute{name: "subject", value: *ec.Subject})
	}
	if ec.Time != nil {
		buf = append(buf, attribute{name: "time", time: &ec.Time.Time})
	}
	if ec.DataContentType != nil {
		buf = append(buf, attribute{name: "datacontenttype", value: *ec.DataContentType})
	}
	if ec.DataSchema != nil {
		buf = append(buf, attribute{name: "dataschema", value: ec.DataSchema.String()})
	}
	for name, v := range ec.Extensions {
		s, ok := v.(string)
		if !ok {
			var err error
			if s, err = types.Format(v); err != nil {
				return buf, fmt.Errorf("extension %s: %w", name, err)
			}
		}
		buf = append(buf, attribute{name: name, value: s})
	}
	return buf, nil
}

// maxAttributes is how many attributes the writers make room for on the
// stack: the eight of the spec and our five extensions, with room to spare.
const maxAttributes = 16

// partitionKey is e's partitionkey extension in canonical string form, and
// whether it is set.
func partitionKey(e *ce.Event) (string, bool, error) {
	var exts map[string]any
	if ec, ok := e.Context.(*ce.EventContextV1); ok {
		exts = ec.Extensions // e.Extensions() would copy the map
	} else {
		exts = e.Extensions()
	}
	v, ok := exts[event.ExtPartitionKey]
	if !ok {
		return "", false, nil
	}
	s, isString := v.(string)
	if !isString {
		var err error
		if s, err = types.Format(v); err != nil {
			return "", false, fmt.Errorf("partitionkey: %w", err)
		}
	}
	return s, true, nil
}

// lastURI caches the text of the last source URL formatted: every event
// of a bridge has the same source, and url.URL.String allocates.
var lastURI atomic.Pointer[uriText]

type uriText struct {
	u url.URL
	s string
}

func uriString(u *url.URL) string {
	if c := lastURI.Load(); c != nil && c.u == *u {
		return c.s
	}
	c := &uriText{u: *u, s: u.String()}
	lastURI.Store(c)
	return c.s
}

// structuredJSONCT is the content type of a structured message in both
// bindings: the JSON event format's media type, with the charset the Kafka
// and NATS bindings show.
const structuredJSONCT = ce.ApplicationCloudEventsJSON + "; charset=UTF-8"

// structuredJSON is e in the JSON event format, as sdk-go writes it.
func structuredJSON(e *ce.Event) ([]byte, error) {
	buf := bytes.NewBuffer(make([]byte, 0, len(e.DataEncoded)+512))
	if err := ce.WriteJson(e, buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
