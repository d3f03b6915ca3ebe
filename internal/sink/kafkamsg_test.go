package sink

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func TestEncodeKafkaBinary(t *testing.T) {
	e := trickyEvent(t)
	m, err := encodeKafka("topic-a", Binary, &e)
	if err != nil {
		t.Fatal(err)
	}
	if m.Topic != "topic-a" {
		t.Errorf("topic = %q", m.Topic)
	}
	if string(m.Key) != "v1/ConfigMap/ns/name" {
		t.Errorf("key = %q, want the partitionkey extension", m.Key)
	}
	want := map[string]string{
		"ce_specversion":  "1.0",
		"ce_id":           "id 1",
		"ce_source":       "depbridge://c/i",
		"ce_type":         "io.depbridge.reconcile.v1",
		"ce_subject":      `v1/ConfigMap/ns/"quoted" 100% €uro 😀`,
		"ce_time":         "2026-01-02T03:04:05.000006Z",
		"ce_dataschema":   "https://example.com/schema?a=b c",
		"content-type":    "application/json; charset=utf-8",
		"ce_partitionkey": "v1/ConfigMap/ns/name",
		"ce_watchername":  "tab\there\nnewline",
		"ce_count":        "42",
		"ce_flag":         "true",
	}
	got := map[string]string{}
	for _, h := range m.Headers {
		if _, dup := got[h.Key]; dup {
			t.Errorf("header %s appears twice", h.Key)
		}
		got[h.Key] = string(h.Value)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("header %s = %q, want %q", k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected header %s (no ce_datacontenttype: datacontenttype maps to content-type)", k)
		}
	}
	if string(m.Value) != `{"x":"ü"}` {
		t.Errorf("value = %q, want the data as-is", m.Value)
	}
	back := decodeKafka(t, m)
	assertSameEvent(t, back, e)
}

func TestEncodeKafkaStructured(t *testing.T) {
	e := trickyEvent(t)
	m, err := encodeKafka("topic-a", Structured, &e)
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Key) != "v1/ConfigMap/ns/name" {
		t.Errorf("key = %q, want the partitionkey extension in structured mode too", m.Key)
	}
	if len(m.Headers) != 1 || m.Headers[0].Key != "content-type" || string(m.Headers[0].Value) != "application/cloudevents+json; charset=UTF-8" {
		t.Errorf("headers = %v, want content-type: application/cloudevents+json; charset=UTF-8", m.Headers)
	}
	var raw map[string]any
	if err := json.Unmarshal(m.Value, &raw); err != nil {
		t.Fatal(err)
	}
	if raw["partitionkey"] != "v1/ConfigMap/ns/name" {
		t.Errorf("the key mapper must not remove partitionkey from the event: %s", m.Value)
	}
	assertSameEvent(t, decodeKafka(t, m), e)
}

func TestEncodeKafkaNoPartitionKey(t *testing.T) {
	e := ce.New()
	e.SetID("1")
	e.SetSource("s")
	e.SetType("t")
	m, err := encodeKafka("t", Binary, &e)
	if err != nil {
		t.Fatal(err)
	}
	if m.Key != nil || m.Value != nil {
		t.Errorf("key = %q, value = %q; want nil (no partitionkey, no data)", m.Key, m.Value)
	}
}

// decodeKafka is a Kafka binding decoder written from the spec: structured
// iff content-type starts with "application/cloudevents"; else ce_ headers
// are attributes (UTF-8), content-type is datacontenttype and the value is
// the data.
func decodeKafka(t *testing.T, m kafka.Message) ce.Event {
	t.Helper()
	e := ce.New()
	var ct string
	for _, h := range m.Headers {
		if h.Key == "content-type" {
			ct = string(h.Value)
		}
	}
	if strings.HasPrefix(ct, "application/cloudevents") {
		if err := json.Unmarshal(m.Value, &e); err != nil {
			t.Fatal(err)
		}
		return e
	}
	for _, h := range m.Headers {
		name, ok := strings.CutPrefix(h.Key, "ce_")
		if !ok {
			continue
		}
		if err := setAttribute(&e, name, string(h.Value)); err != nil {
			t.Fatal(err)
		}
	}
	if ct != "" {
		e.SetDataContentType(ct)
	}
	e.DataEncoded = m.Value
	if err := e.Validate(); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestKafkaRecordSize: a record's size, by which the producer keeps a
// produce request under the brokers' message.max.bytes, is at least what
// the record takes in a version 2 record batch, and not far more (batches
// would be smaller than they need to be); its headers and header bytes
// are what appendHeaders writes.
func TestKafkaRecordSize(t *testing.T) {
	big := trickyEvent(t)
	big.DataEncoded = []byte(`"` + strings.Repeat("x", 100000) + `"`)
	bare := ce.New()
	bare.SetID("1")
	bare.SetSource("s")
	bare.SetType("t")
	for name, e := range map[string]ce.Event{"tricky": trickyEvent(t), "big": big, "bare": bare} {
		for _, mode := range []Mode{Binary, Structured} {
			r, err := newKafkaRecord("topic", mode, &e)
			if err != nil {
				t.Fatal(err)
			}
			hs, buf := r.appendHeaders(nil, nil)
			if len(hs) != r.headers || len(buf) > r.headerBytes {
				t.Errorf("%s %s: %d headers of %d value bytes, record says %d and at most %d", name, mode, len(hs), len(buf), r.headers, r.headerBytes)
			}
			// The record as a record batch (v2) holds it, encoded by
			// franz-go, with the largest timestamp and offset deltas of a
			// batch of a few seconds and kafkaMaxBatchRecords records.
			rec := kmsg.Record{
				TimestampDelta64: int64(10 * time.Second / time.Millisecond), OffsetDelta: kafkaMaxBatchRecords,
				Key: r.key, Value: r.value,
			}
			for _, h := range hs {
				rec.Headers = append(rec.Headers, kmsg.Header{Key: h.Key, Value: h.Value})
			}
			rec.Length = int32(len(rec.AppendTo(nil)) - 1) // less the Length of 0 it starts with
			wire := len(rec.AppendTo(nil))
			if r.size < wire || r.size > wire+64+8*len(hs) {
				t.Errorf("%s %s: size %d for a record of %d bytes in a batch", name, mode, r.size, wire)
			}
		}
	}
}
