package control

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"

	"github.com/depbridge/depbridge/internal/event"
	"github.com/depbridge/depbridge/internal/watch"
)

// statusEvent returns the status event of d, answering a request from
// reqSource, sent by source at now. key is the watcher key (subject and
// partitionkey); empty when the watcher is unknown. The id is a hash of
// source, the request's source and id, and the outcome, so the same answer
// to the same request always has the same id. Pure.
func statusEvent(source, reqSource string, now time.Time, d *StatusData, key string) (ce.Event, error) {
	data, err := json.Marshal(d)
	if err != nil {
		return ce.Event{}, fmt.Errorf("encode status of request %q: %w", d.RequestID, err)
	}
	e := ce.New(ce.CloudEventsVersionV1)
	e.SetID(statusID(source, reqSource, d))
	e.SetSource(source)
	e.SetType(TypeStatus)
	e.SetTime(now)
	if key != "" {
		e.SetSubject(key)
		e.SetExtension(event.ExtPartitionKey, key)
	}
	if d.RequestID != "" {
		e.SetExtension(ExtCorrelationID, d.RequestID)
	}
	e.SetDataContentType(event.DataContentType)
	e.DataEncoded = data
	if err := e.Validate(); err != nil {
		return ce.Event{}, fmt.Errorf("status of request %q: %w", d.RequestID, err)
	}
	return e, nil
}

func statusID(source, reqSource string, d *StatusData) string {
	h := sha256.New()
	for _, s := range []string{TypeStatus, source, reqSource, d.RequestID, d.RequestType, fmt.Sprint(d.Accepted)} {
		var n [binary.MaxVarintLen64]byte
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(s)))])
		h.Write([]byte(s))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// results converts the engine's query results for a status, with Secret
// data and stringData removed unless keepSecretData.
func results(rs []watch.QueryResult, keepSecretData bool) []QueryResult {
	out := make([]QueryResult, len(rs))
	for i, r := range rs {
		out[i] = QueryResult{Query: r.Query, Pending: r.Pending, Objects: event.Redact(r.Objects, keepSecretData)}
	}
	return out
}

// withoutObjects returns d with the objects of its results left out, for
// a status that would not fit the transport.
func withoutObjects(d *StatusData) *StatusData {
	c := *d
	c.Results = make([]QueryResult, len(d.Results))
	for i, r := range d.Results {
		c.Results[i] = QueryResult{Query: r.Query, Pending: r.Pending, Objects: []map[string]any{}}
	}
	c.ObjectsOmitted = true
	return &c
}
