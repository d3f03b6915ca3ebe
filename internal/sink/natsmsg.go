package sink

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/binding/format"
	"github.com/cloudevents/sdk-go/v2/binding/spec"
	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/nats-io/nats.go"

	"github.com/depbridge/depbridge/internal/event"
)

// NATS protocol binding (cloudevents/spec bindings/nats-protocol-binding.md,
// v1.0.3): in binary mode every attribute, datacontenttype included, is a
// header "ce-<name>" whose value is percent-encoded; in structured mode
// Content-Type is the event format's media type. sdk-go's JetStream binding
// departs from this (it writes an unprefixed content-type, detects the mode
// by ce-specversion and does not percent-encode, sdk-go#1334) and core NATS
// in sdk-go has no binary mode at all (sdk-go#814), hence this writer.
const (
	natsHeaderPrefix  = "ce-"
	natsContentType   = "Content-Type"
	structuredJSONCT  = ce.ApplicationCloudEventsJSON + "; charset=UTF-8"
	natsHeaderDefault = 12
)

// encodeNATS writes e onto a new NATS message for subject in mode.
func encodeNATS(ctx context.Context, subject string, mode Mode, e *ce.Event) (*nats.Msg, error) {
	m := &nats.Msg{Subject: subject}
	w := &natsMessage{Msg: m}
	var err error
	if mode == Structured {
		_, err = binding.Write(ctx, binding.ToMessage(e), w, nil)
	} else {
		_, err = binding.Write(ctx, binding.ToMessage(e), nil, w)
	}
	if err != nil {
		return nil, fmt.Errorf("encode event %s for NATS (%s mode): %w", e.ID(), mode, err)
	}
	return m, nil
}

// natsMessage is a NATS message being written by sdk-go's binding.Write.
type natsMessage struct {
	*nats.Msg
	// values backs the one-element value slices of the headers, so that a
	// message costs one allocation for all of them.
	values []string
}

var (
	_ binding.StructuredWriter = (*natsMessage)(nil)
	_ binding.BinaryWriter     = (*natsMessage)(nil)
)

func (m *natsMessage) SetStructuredEvent(_ context.Context, f format.Format, event io.Reader) error {
	m.Header = nats.Header{natsContentType: {structuredMediaType(f)}}
	var err error
	m.Data, err = readBody(event)
	return err
}

func (m *natsMessage) Start(context.Context) error {
	m.Header = make(nats.Header, natsHeaderDefault)
	return nil
}

// natsHeaderNames avoids building "ce-"+name for the attributes and
// extensions every event has.
var natsHeaderNames = func() map[string]string {
	m := map[string]string{}
	for _, n := range []string{
		"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema",
		event.ExtPartitionKey, event.ExtWatcherAPIVersion, event.ExtWatcherKind, event.ExtWatcherNamespace, event.ExtWatcherName,
	} {
		m[n] = natsHeaderPrefix + n
	}
	return m
}()

func (m *natsMessage) SetAttribute(a spec.Attribute, value any) error {
	return m.set(a.Name(), value)
}

func (m *natsMessage) SetExtension(name string, value any) error {
	return m.set(name, value)
}

func (m *natsMessage) set(name string, value any) error {
	key, ok := natsHeaderNames[name]
	if !ok {
		key = natsHeaderPrefix + name
	}
	if value == nil {
		delete(m.Header, key)
		return nil
	}
	s, err := types.Format(value)
	if err != nil {
		return fmt.Errorf("attribute %s: %w", name, err)
	}
	if m.values == nil {
		m.values = make([]string, 0, natsHeaderDefault)
	}
	m.values = append(m.values, percentEncode(s))
	n := len(m.values)
	m.Header[key] = m.values[n-1 : n : n]
	return nil
}

func (m *natsMessage) SetData(data io.Reader) error {
	var err error
	m.Data, err = readBody(data)
	return err
}

func (m *natsMessage) End(context.Context) error { return nil }

// structuredMediaType is the content type of a structured message: the
// format's media type, with the charset the Kafka and NATS bindings show
// for JSON.
func structuredMediaType(f format.Format) string {
	if f.MediaType() == ce.ApplicationCloudEventsJSON {
		return structuredJSONCT
	}
	return f.MediaType()
}

// readBody returns the bytes of r without copying them when r is the
// *bytes.Buffer that sdk-go passes for binary data.
func readBody(r io.Reader) ([]byte, error) {
	switch b := r.(type) {
	case *bytes.Buffer:
		return b.Bytes(), nil
	case *bytes.Reader:
		out := make([]byte, b.Len())
		_, err := io.ReadFull(b, out)
		return out, err
	}
	return io.ReadAll(r)
}

// percentEncode encodes s for a NATS (or HTTP) header value as the
// CloudEvents bindings require: space, '"', '%' and every byte outside
// printable ASCII (0x21-0x7E), which includes each byte of a non-ASCII
// character's UTF-8 encoding, become %XX (uppercase hex). Other bytes are
// kept. Invalid UTF-8 in s is encoded byte by byte as it is; the decoder
// then rejects it, as the binding says it must.
func percentEncode(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if mustEscape(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s) + 2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if mustEscape(c) {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&0xF])
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

func mustEscape(c byte) bool { return c <= ' ' || c >= 0x7F || c == '"' || c == '%' }
