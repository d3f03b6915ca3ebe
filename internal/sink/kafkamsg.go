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
	m := kafka.Message{Topic: topic}
	fail := func(err error) (kafka.Message, error) {
		return m, fmt.Errorf("encode event %s for Kafka (%s mode): %w", e.ID(), mode, err)
	}
	key, hasKey, err := partitionKey(e)
	if err != nil {
		return fail(err)
	}
	if mode == Structured {
		if m.Value, err = structuredJSON(e); err != nil {
			return fail(err)
		}
		m.Headers = []kafka.Header{{Key: kafkaContentType, Value: kafkaStructuredCT}}
		if hasKey {
			m.Key = []byte(key)
		}
		return m, nil
	}
	var stack [maxAttributes]attribute
	attrs, err := attributes(e, stack[:0])
	if err != nil {
		return fail(err)
	}
	// One backing array for the key and all header values.
	n := len(key)
	for _, a := range attrs {
		n += len(a.value)
	}
	values := make([]byte, 0, n)
	if hasKey {
		values = append(values, key...)
		m.Key = values[:len(key):len(key)]
	}
	m.Headers = make([]kafka.Header, len(attrs))
	for i, a := range attrs {
		start := len(values)
		values = append(values, a.value...)
		m.Headers[i] = kafka.Header{Key: kafkaHeaderName(a.name), Value: values[start:len(values):len(values)]}
	}
	if len(e.DataEncoded) > 0 {
		m.Value = e.DataEncoded
	}
	return m, nil
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
