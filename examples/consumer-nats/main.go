// Command consumer-nats reads depbridge's reconcile requests from a
// JetStream stream with a durable consumer, decodes each message into a
// CloudEvent with the CloudEvents Go SDK, reconciles, and acknowledges.
//
//	go run ./examples/consumer-nats -server nats://127.0.0.1:4222 -stream DEPBRIDGE
//
// Delivery is at least once: a message that is not acknowledged (the
// reconcile failed, the consumer crashed) comes again after AckWait, and
// the bridge may publish a request twice. Reconciling is idempotent, and
// the event id identifies a request (the same id is the same request).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/binding/format"
	"github.com/cloudevents/sdk-go/v2/binding/spec"
	cloudevents "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func main() {
	server := flag.String("server", nats.DefaultURL, "NATS server URL")
	stream := flag.String("stream", "DEPBRIDGE", "JetStream stream of the bridge's events")
	durable := flag.String("durable", "consumer-nats", "durable consumer name: the stream remembers what it acknowledged")
	subject := flag.String("subject", "depbridge.reconcile.>", "subjects to consume, such as depbridge.reconcile.Deployment.>")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *server, *stream, *durable, *subject, reconcile); err != nil {
		log.Fatal(err)
	}
}

// run consumes until ctx is done, calling handle with each event: nil
// acknowledges the message, an error has it redelivered.
func run(ctx context.Context, server, stream, durable, subject string, handle func(context.Context, *cloudevents.Event) error) error {
	nc, err := nats.Connect(server, nats.Name("consumer-nats"))
	if err != nil {
		return err
	}
	defer nc.Drain()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable:       durable,
		FilterSubject: subject,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("consumer %s on stream %s: %w", durable, stream, err)
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		e, err := binding.ToEvent(ctx, natsMessage{header: msg.Headers(), data: msg.Data()})
		if err != nil {
			log.Printf("%s: not a CloudEvent: %v", msg.Subject(), err)
			_ = msg.Term() // never redeliver what cannot be decoded
			return
		}
		if err := handle(ctx, e); err != nil {
			log.Printf("reconcile %s: %v; redelivered in a while", e.Subject(), err)
			_ = msg.NakWithDelay(5 * time.Second)
			return
		}
		if err := msg.Ack(); err != nil {
			log.Printf("ack %s: %v", e.ID(), err)
		}
	})
	if err != nil {
		return err
	}
	defer cc.Stop()
	log.Printf("consuming %s from stream %s as %s", subject, stream, durable)
	<-ctx.Done()
	return nil
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
	log.Printf("reconcile %s (id %s, from %s): %s", e.Subject(), e.ID(), e.Source(), strings.Join(why, ", "))
	return nil
}

// natsMessage reads a CloudEvent from a NATS message by the NATS protocol
// binding: binary mode has every attribute in a percent-encoded "ce-"
// header, structured mode a Content-Type of an event format. (sdk-go's own
// NATS readers expect an unprefixed content-type and do not percent-decode;
// see docs/events.md.)
type natsMessage struct {
	header nats.Header
	data   []byte
}

var natsSpec = spec.WithPrefix("ce-")

func (m natsMessage) get(name string) string {
	for k, v := range m.header {
		if strings.EqualFold(k, name) && len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

func (m natsMessage) ReadEncoding() binding.Encoding {
	if format.Lookup(m.get("Content-Type")) != nil {
		return binding.EncodingStructured
	}
	if m.get("ce-specversion") != "" {
		return binding.EncodingBinary
	}
	return binding.EncodingUnknown
}

func (m natsMessage) ReadStructured(ctx context.Context, w binding.StructuredWriter) error {
	f := format.Lookup(m.get("Content-Type"))
	if f == nil {
		return binding.ErrNotStructured
	}
	return w.SetStructuredEvent(ctx, f, bytes.NewReader(m.data))
}

func (m natsMessage) ReadBinary(_ context.Context, w binding.BinaryWriter) error {
	version := natsSpec.Version(m.get("ce-specversion"))
	if version == nil {
		return binding.ErrNotBinary
	}
	for k, v := range m.header {
		name := strings.ToLower(k)
		if !strings.HasPrefix(name, "ce-") || len(v) == 0 {
			continue
		}
		value, err := url.PathUnescape(v[0])
		if err != nil {
			return fmt.Errorf("header %s: %w", k, err)
		}
		if attr := version.Attribute(name); attr != nil {
			err = w.SetAttribute(attr, value)
		} else {
			err = w.SetExtension(strings.TrimPrefix(name, "ce-"), value)
		}
		if err != nil {
			return err
		}
	}
	if len(m.data) == 0 {
		return nil
	}
	return w.SetData(bytes.NewReader(m.data))
}

// GetAttribute and GetExtension read single attributes of a binary-mode
// message (sdk-go's transformers use them).
func (m natsMessage) GetAttribute(k spec.Kind) (spec.Attribute, any) {
	version := natsSpec.Version(m.get("ce-specversion"))
	if version == nil {
		return nil, nil
	}
	attr := version.AttributeFromKind(k)
	if attr == nil {
		return nil, nil
	}
	if v := m.GetExtension(attr.Name()); v != nil {
		return attr, v
	}
	return attr, nil
}

func (m natsMessage) GetExtension(name string) any {
	v, err := url.PathUnescape(m.get("ce-" + name))
	if err != nil || v == "" {
		return nil
	}
	return v
}

func (m natsMessage) Finish(error) error { return nil }

var (
	_ binding.Message               = natsMessage{}
	_ binding.MessageMetadataReader = natsMessage{}
)
