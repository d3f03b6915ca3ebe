// Command consumer-kafka reads depbridge's reconcile requests from a Kafka
// topic in a consumer group, decodes each record into a CloudEvent with the
// CloudEvents Go SDK, reconciles, and commits.
//
//	go run ./examples/consumer-kafka -brokers localhost:9094 -topic depbridge.reconcile
//
// The record key is the watcher, so one watcher's requests are on one
// partition, in order; a failed reconcile is retried in place, which keeps
// that order (and holds the partition meanwhile). Delivery is at least
// once: after a crash, records since the last commit come again, and the
// bridge may publish a request twice. Reconciling is idempotent, and the
// event id identifies a request.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/binding/format"
	"github.com/cloudevents/sdk-go/v2/binding/spec"
	cloudevents "github.com/cloudevents/sdk-go/v2/event"
	"github.com/segmentio/kafka-go"
)

func main() {
	brokers := flag.String("brokers", "localhost:9094", "bootstrap brokers, comma-separated")
	topic := flag.String("topic", "depbridge.reconcile", "topic of the bridge's events")
	group := flag.String("group", "consumer-kafka", "consumer group: commits what was reconciled")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, strings.Split(*brokers, ","), *topic, *group, reconcile); err != nil {
		log.Fatal(err)
	}
}

// retryDelay spaces the attempts to reconcile one event.
var retryDelay = 5 * time.Second

// run consumes until ctx is done, calling handle with each event and
// committing the record once handle returns nil; an error is retried.
func run(ctx context.Context, brokers []string, topic, group string, handle func(context.Context, *cloudevents.Event) error) error {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:     brokers,
		Topic:       topic,
		GroupID:     group,
		StartOffset: kafka.FirstOffset, // a new group starts at the beginning
		MaxWait:     time.Second,
	})
	defer r.Close()
	log.Printf("consuming %s as group %s", topic, group)
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("fetch: %w", err)
		}
		e, err := binding.ToEvent(ctx, kafkaMessage(m))
		if err != nil {
			log.Printf("%s/%d@%d: not a CloudEvent: %v", m.Topic, m.Partition, m.Offset, err)
		} else {
			for err := handle(ctx, e); err != nil; err = handle(ctx, e) {
				log.Printf("reconcile %s: %v; retrying", e.Subject(), err)
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(retryDelay):
				}
			}
		}
		if err := r.CommitMessages(ctx, m); err != nil {
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return fmt.Errorf("commit: %w", err)
		}
	}
}

// request is the data of io.depbridge.reconcile.v1 (docs/events.md).
type request struct {
	Watcher   map[string]string `json:"watcher"`
	Causes    []cause           `json:"causes"`
	Truncated int               `json:"truncated"`
	Objects   []json.RawMessage `json:"objects,omitempty"`
}

type cause struct {
	Watched         map[string]string `json:"watched"`
	Namespace       string            `json:"namespace,omitempty"`
	Name            string            `json:"name,omitempty"`
	UID             string            `json:"uid,omitempty"`
	ResourceVersion string            `json:"resourceVersion,omitempty"`
	Op              string            `json:"op"`
	Reason          string            `json:"reason,omitempty"`
}

// reconcile is where a real consumer brings the watcher up to date.
func reconcile(_ context.Context, e *cloudevents.Event) error {
	if e.Type() != "io.depbridge.reconcile.v1" {
		return nil // not for us
	}
	var req request
	if err := e.DataAs(&req); err != nil {
		return fmt.Errorf("data: %w", err)
	}
	var why []string
	for _, c := range req.Causes {
		why = append(why, fmt.Sprintf("%s %s/%s", c.Op, c.Namespace, c.Name))
	}
	log.Printf("reconcile %s (id %s, from %s): %s; %d objects", e.Subject(), e.ID(), e.Source(), strings.Join(why, ", "), len(req.Objects))
	return nil
}

// kafkaMessage reads a CloudEvent from a Kafka record by the Kafka protocol
// binding: binary mode has datacontenttype in the content-type header and
// every other attribute in a "ce_" header, structured mode a content-type of
// an event format.
type kafkaMessage kafka.Message

var kafkaSpec = spec.WithPrefix("ce_")

func (m kafkaMessage) get(name string) string {
	for _, h := range m.Headers {
		if strings.EqualFold(h.Key, name) {
			return string(h.Value)
		}
	}
	return ""
}

func (m kafkaMessage) ReadEncoding() binding.Encoding {
	if format.Lookup(m.get("content-type")) != nil {
		return binding.EncodingStructured
	}
	if m.get("ce_specversion") != "" {
		return binding.EncodingBinary
	}
	return binding.EncodingUnknown
}

func (m kafkaMessage) ReadStructured(ctx context.Context, w binding.StructuredWriter) error {
	f := format.Lookup(m.get("content-type"))
	if f == nil {
		return binding.ErrNotStructured
	}
	return w.SetStructuredEvent(ctx, f, bytes.NewReader(m.Value))
}

func (m kafkaMessage) ReadBinary(_ context.Context, w binding.BinaryWriter) error {
	version := kafkaSpec.Version(m.get("ce_specversion"))
	if version == nil {
		return binding.ErrNotBinary
	}
	for _, h := range m.Headers {
		name := strings.ToLower(h.Key)
		var err error
		switch {
		case name == "content-type":
			err = w.SetAttribute(version.AttributeFromKind(spec.DataContentType), string(h.Value))
		case strings.HasPrefix(name, "ce_"):
			if attr := version.Attribute(name); attr != nil {
				err = w.SetAttribute(attr, string(h.Value))
			} else {
				err = w.SetExtension(strings.TrimPrefix(name, "ce_"), string(h.Value))
			}
		}
		if err != nil {
			return err
		}
	}
	if len(m.Value) == 0 {
		return nil
	}
	return w.SetData(bytes.NewReader(m.Value))
}

// GetAttribute and GetExtension read single attributes of a binary-mode
// record (sdk-go's transformers use them).
func (m kafkaMessage) GetAttribute(k spec.Kind) (spec.Attribute, any) {
	version := kafkaSpec.Version(m.get("ce_specversion"))
	if version == nil {
		return nil, nil
	}
	attr := version.AttributeFromKind(k)
	if attr == nil {
		return nil, nil
	}
	name := attr.PrefixedName()
	if k == spec.DataContentType {
		name = "content-type"
	}
	if v := m.get(name); v != "" {
		return attr, v
	}
	return attr, nil
}

func (m kafkaMessage) GetExtension(name string) any {
	if v := m.get("ce_" + name); v != "" {
		return v
	}
	return nil
}

func (m kafkaMessage) Finish(error) error { return nil }

var (
	_ binding.Message               = kafkaMessage{}
	_ binding.MessageMetadataReader = kafkaMessage{}
)
