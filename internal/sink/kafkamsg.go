package sink

import (
	"context"
	"fmt"
	"io"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/binding/format"
	"github.com/cloudevents/sdk-go/v2/binding/spec"
	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/segmentio/kafka-go"

	"github.com/depbridge/depbridge/internal/event"
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

// encodeKafka writes e onto a new Kafka record for topic in mode.
func encodeKafka(ctx context.Context, topic string, mode Mode, e *ce.Event) (kafka.Message, error) {
	m := kafka.Message{Topic: topic}
	if k, ok := e.Extensions()[event.ExtPartitionKey]; ok {
		s, err := types.ToString(k)
		if err != nil {
			return m, fmt.Errorf("encode event %s for Kafka: partitionkey: %w", e.ID(), err)
		}
		m.Key = []byte(s)
	}
	w := &kafkaMessage{Message: &m}
	var err error
	if mode == Structured {
		_, err = binding.Write(ctx, binding.ToMessage(e), w, nil)
	} else {
		_, err = binding.Write(ctx, binding.ToMessage(e), nil, w)
	}
	if err != nil {
		return m, fmt.Errorf("encode event %s for Kafka (%s mode): %w", e.ID(), mode, err)
	}
	return m, nil
}

// kafkaMessage is a kafka-go record being written by sdk-go's binding.Write.
type kafkaMessage struct {
	*kafka.Message
	// values backs the header values, so that a record costs one or two
	// allocations for all of them.
	values []byte
}

// kafkaHeaderNames avoids building "ce_"+name for the attributes and
// extensions every event has.
var kafkaHeaderNames = func() map[string]string {
	m := map[string]string{}
	for n := range natsHeaderNames {
		m[n] = kafkaHeaderPrefix + n
	}
	return m
}()

var (
	_ binding.StructuredWriter = (*kafkaMessage)(nil)
	_ binding.BinaryWriter     = (*kafkaMessage)(nil)
)

func (m *kafkaMessage) SetStructuredEvent(_ context.Context, f format.Format, event io.Reader) error {
	m.Headers = append(m.Headers[:0], kafka.Header{Key: kafkaContentType, Value: []byte(structuredMediaType(f))})
	var err error
	m.Value, err = readBody(event)
	return err
}

func (m *kafkaMessage) Start(context.Context) error {
	m.Headers = make([]kafka.Header, 0, natsHeaderDefault)
	return nil
}

func (m *kafkaMessage) SetAttribute(a spec.Attribute, value any) error {
	if a.Kind() == spec.DataContentType {
		return m.set(kafkaContentType, value)
	}
	return m.SetExtension(a.Name(), value)
}

func (m *kafkaMessage) SetExtension(name string, value any) error {
	key, ok := kafkaHeaderNames[name]
	if !ok {
		key = kafkaHeaderPrefix + name
	}
	return m.set(key, value)
}

func (m *kafkaMessage) set(key string, value any) error {
	for i, h := range m.Headers {
		if h.Key == key {
			m.Headers = append(m.Headers[:i], m.Headers[i+1:]...)
			break
		}
	}
	if value == nil {
		return nil
	}
	s, err := types.Format(value)
	if err != nil {
		return fmt.Errorf("attribute %s: %w", key, err)
	}
	if m.values == nil {
		m.values = make([]byte, 0, 512)
	}
	start := len(m.values)
	m.values = append(m.values, s...)
	end := len(m.values)
	m.Headers = append(m.Headers, kafka.Header{Key: key, Value: m.values[start:end:end]})
	return nil
}

func (m *kafkaMessage) SetData(data io.Reader) error {
	var err error
	m.Value, err = readBody(data)
	return err
}

func (m *kafkaMessage) End(context.Context) error { return nil }
