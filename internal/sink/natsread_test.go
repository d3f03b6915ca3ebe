package sink

import (
	"context"
	"testing"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/segmentio/kafka-go"
)

// DecodeNATS inverts encodeNATS in both modes, values that need
// percent-encoding included.
func TestDecodeNATSRoundTrip(t *testing.T) {
	e := ce.New()
	e.SetID("id-1")
	e.SetSource("depbridge://c/i")
	e.SetType("io.depbridge.reconcile.v1")
	e.SetSubject("v1/ConfigMap/ns/n ?a=b%c\"é")
	e.SetTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	e.SetExtension("partitionkey", "v1/ConfigMap/ns/n")
	if err := e.SetData("application/json", map[string]any{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []Mode{Binary, Structured} {
		m, err := encodeNATS("s", mode, &e)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeNATS(context.Background(), m)
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if got.ID() != e.ID() || got.Subject() != e.Subject() || got.Type() != e.Type() || !got.Time().Equal(e.Time()) ||
			got.Extensions()["partitionkey"] != "v1/ConfigMap/ns/n" || string(got.Data()) != string(e.Data()) || got.DataContentType() != "application/json" {
			t.Fatalf("%s: decoded %v, want %v", mode, got, e)
		}
	}
}

func TestDecodeNATSRejects(t *testing.T) {
	tests := map[string]*nats.Msg{
		"no headers":   {Subject: "s", Data: []byte("{}")},
		"bad encoding": {Subject: "s", Header: nats.Header{"ce-specversion": {"1.0"}, "ce-id": {"%zz"}, "ce-source": {"s"}, "ce-type": {"t"}}},
		"not utf-8":    {Subject: "s", Header: nats.Header{"ce-specversion": {"1.0"}, "ce-id": {"%ff%fe"}, "ce-source": {"s"}, "ce-type": {"t"}}},
		"missing id":   {Subject: "s", Header: nats.Header{"ce-specversion": {"1.0"}, "ce-source": {"s"}, "ce-type": {"t"}}},
		"bad json":     {Subject: "s", Header: nats.Header{"Content-Type": {"application/cloudevents+json"}}, Data: []byte("{")},
	}
	for name, m := range tests {
		if _, err := DecodeNATS(context.Background(), m); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
	legacy := &nats.Msg{Subject: "s", Header: nats.Header{"ce-specversion": {`"1.0"`}, "ce-id": {`"a b"`}, "ce-source": {"s"}, "ce-type": {"t"}}}
	if e, err := DecodeNATS(context.Background(), legacy); err != nil || e.ID() != "a b" {
		t.Errorf("legacy quoted values: %v, %v", e, err)
	}
}

// DecodeKafka inverts the Kafka binding writer in both modes.
func TestDecodeKafkaRoundTrip(t *testing.T) {
	e := ce.New()
	e.SetID("id-2")
	e.SetSource("depbridge://c/i")
	e.SetType("io.depbridge.reconcile.v1")
	e.SetSubject("v1/ConfigMap/ns/n ?a=b")
	e.SetExtension("partitionkey", "v1/ConfigMap/ns/n")
	if err := e.SetData("application/json", map[string]any{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []Mode{Binary, Structured} {
		m, err := EncodeKafka(context.Background(), "t", mode, &e)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeKafka(context.Background(), m)
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if got.ID() != e.ID() || got.Subject() != e.Subject() || got.Extensions()["partitionkey"] != "v1/ConfigMap/ns/n" ||
			string(got.Data()) != string(e.Data()) || got.DataContentType() != "application/json" {
			t.Fatalf("%s: decoded %v, want %v", mode, got, e)
		}
	}
	if _, err := DecodeKafka(context.Background(), kafka.Message{Value: []byte("{}")}); err == nil {
		t.Error("a record with no CloudEvent decoded")
	}
}
