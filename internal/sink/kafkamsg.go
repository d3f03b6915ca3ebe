package sink

import (
	"fmt"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/segmentio/kafka-go"
)

// Kafka protocol binding (cloudevents/spec bindings/kafka-protocol-binding.md)
// for kafka-go, which sdk-go has no binding for (sdk-go#683); modelled on
// sdk-go's protocol/kafka_sarama/v2/write_producer_message.go. Binary mode:
// datacontenttype is the "content-type" header, every other attribute a
// "ce_<name>" header holding its canonical string form in UTF-8, the data
// the value. Structured mode: "content-type: application/cloudevents+json;
// charset=UTF-8" and the event JSON as the value. In both modes the record
// key is the partitionkey extension (the binding's Key Mapper), which is
// kept in the event.
const (
	kafkaHeaderPrefix = "ce_"
	kafkaContentType  = "content-type"
)

// kafkaStructuredCT is the content-type header value of structured
// records, shared by all of them; nothing writes to it.
var kafkaStructuredCT = []byte(structuredJSONCT)

// encodeKafka writes e onto a new Kafka record for topic in mode. The
// record shares e's data; neither may be modified afterwards.
func encodeKafka(topic string, mode Mode, e *ce.Event) (kafka.Message, error) {
	r, err := newKafkaRecord(topic, mode, e)
	if err != nil {
		return kafka.Message{}, err
	}
	m := kafka.Message{Topic: topic, Key: r.key, Value: r.value}
	// Exactly sized: a record kept for long should not hold more.
	m.Headers, _ = r.appendHeaders(make([]kafka.Header, 0, r.headers), make([]byte, 0, r.headerBytes))
	return m, nil
}

// kafkaRecord is an event on its way to a Kafka record. Its headers are
// written only when the produce request that carries it is (appendHeaders),
// into buffers that the request's records share: queuing an event costs
// its key, not a header slice and a copy of every attribute.
type kafkaRecord struct {
	topic string
	mode  Mode
	event ce.Event
	key   []byte // the partitionkey; nil when the event has none
	value []byte // the data (binary mode) or the event in JSON (structured)
	// size is about the bytes the record takes in a record batch; its
	// headers are that many, their values at most headerBytes (none
	// in structured mode, whose one header's value is a constant).
	size, headers, headerBytes int
}

// newKafkaRecord checks that e can be written in mode and returns its
// record for topic, which shares e's data; neither may be modified
// afterwards.
func newKafkaRecord(topic string, mode Mode, e *ce.Event) (kafkaRecord, error) {
	r := kafkaRecord{topic: topic, mode: mode, event: *e}
	fail := func(err error) (kafkaRecord, error) {
		return kafkaRecord{}, fmt.Errorf("encode event %s for Kafka (%s mode): %w", e.ID(), mode, err)
	}
	key, hasKey, err := partitionKey(e)
	if err != nil {
		return fail(err)
	}
	if hasKey {
		r.key = []byte(key)
	}
	if mode == Structured {
		if r.value, err = structuredJSON(e); err != nil {
			return fail(err)
		}
		r.size = 32 + len(r.key) + len(r.value) + 8 + len(kafkaContentType) + len(kafkaStructuredCT)
		r.headers = 1
		return r, nil
	}
	var stack [maxAttributes]attribute
	attrs, err := attributes(e, stack[:0])
	if err != nil {
		return fail(err)
	}
	if len(e.DataEncoded) > 0 {
		r.value = e.DataEncoded
	}
	r.headers = len(attrs)
	for i := range attrs {
		// "ce_" and the name: the key of every header but content-type's,
		// which is shorter than "ce_datacontenttype".
		r.size += 8 + len(kafkaHeaderPrefix) + len(attrs[i].name)
		r.headerBytes += attrs[i].maxLen()
	}
	r.size += 32 + len(r.key) + len(r.value) + r.headerBytes
	return r, nil
}

// appendHeaders appends r's headers to hs and their values to buf, which
// the headers then refer to, and returns both: r.headers headers, values
// of at most r.headerBytes bytes.
func (r *kafkaRecord) appendHeaders(hs []kafka.Header, buf []byte) ([]kafka.Header, []byte) {
	if r.mode == Structured {
		return append(hs, kafka.Header{Key: kafkaContentType, Value: kafkaStructuredCT}), buf
	}
	var stack [maxAttributes]attribute
	attrs, _ := attributes(&r.event, stack[:0]) // newKafkaRecord checked that this works
	for i := range attrs {
		start := len(buf)
		buf = attrs[i].appendText(buf)
		hs = append(hs, kafka.Header{Key: kafkaHeaderName(attrs[i].name), Value: buf[start:len(buf):len(buf)]})
	}
	return hs, buf
}

// kafkaHeaderNames avoids building "ce_"+name for the attributes and
// extensions every event has; datacontenttype is the content-type header.
var kafkaHeaderNames = func() map[string]string {
	m := map[string]string{}
	for n := range natsHeaderNames {
		m[n] = kafkaHeaderPrefix + n
	}
	m["datacontenttype"] = kafkaContentType
	return m
}()

func kafkaHeaderName(attribute string) string {
	if h, ok := kafkaHeaderNames[attribute]; ok {
		return h
	}
	return kafkaHeaderPrefix + attribute
}
