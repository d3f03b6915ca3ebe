package sink

import (
	"context"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/segmentio/kafka-go"
)

// EncodeNATS writes e onto a new NATS message for subject in mode, by the
// CloudEvents NATS protocol binding, exactly as the NATS and JetStream
// sinks send events (natsmsg.go).
func EncodeNATS(_ context.Context, subject string, mode Mode, e *ce.Event) (*nats.Msg, error) {
	return encodeNATS(subject, mode, e)
}

// EncodeKafka writes e onto a new Kafka record for topic in mode, by the
// CloudEvents Kafka protocol binding, exactly as the Kafka sink sends
// events (kafkamsg.go): the key is e's partitionkey extension.
func EncodeKafka(_ context.Context, topic string, mode Mode, e *ce.Event) (kafka.Message, error) {
	return encodeKafka(topic, mode, e)
}
