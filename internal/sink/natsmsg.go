package sink

import (
	"errors"
	"fmt"
	"strings"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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
	natsHeaderPrefix = "ce-"
	natsContentType  = "Content-Type"
	// natsExtraHeaders is room left in a message's header map for the
	// JetStream sink's Nats-Msg-Id and Nats-Expected-Stream.
	natsExtraHeaders = 2
)

// encodeNATS writes e onto a new NATS message for subject in mode. The
// message shares e's data; neither may be modified afterwards.
func encodeNATS(subject string, mode Mode, e *ce.Event) (*nats.Msg, error) {
	m := &nats.Msg{Subject: subject}
	if mode == Structured {
		body, err := structuredJSON(e)
		if err != nil {
			return nil, fmt.Errorf("encode event %s for NATS (%s mode): %w", e.ID(), mode, err)
		}
		m.Header = make(nats.Header, 1+natsExtraHeaders)
		m.Header[natsContentType] = []string{structuredJSONCT}
		m.Data = body
		return m, nil
	}
	var stack [maxAttributes]attribute
	attrs, err := attributes(e, stack[:0])
	if err != nil {
		return nil, fmt.Errorf("encode event %s for NATS (%s mode): %w", e.ID(), mode, err)
	}
	m.Header = make(nats.Header, len(attrs)+natsExtraHeaders)
	// One backing array for the one-element value slices of all headers.
	values := make([]string, len(attrs))
	for i, a := range attrs {
		values[i] = percentEncode(a.text())
		m.Header[natsHeaderName(a.name)] = values[i : i+1 : i+1]
	}
	if len(e.DataEncoded) > 0 {
		m.Data = e.DataEncoded
	}
	return m, nil
}

// natsError is err, the client's or server's error for publishing m,
// marked as ErrTooLarge when it says m is too large: over the server's
// max_payload (checked by the client), or over the stream's max_msg_size.
func natsError(m *nats.Msg, err error) error {
	if errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, jetstream.ErrStreamMessageExceedsMaximum) {
		return tooLarge(NATSSize(m), err)
	}
	return err
}

// NATSSize is the wire size of m's headers and data, as the server counts
// it against max_payload.
func NATSSize(m *nats.Msg) int {
	n := len(m.Data)
	if len(m.Header) > 0 {
		n += len("NATS/1.0\r\n\r\n")
		for k, vs := range m.Header {
			for _, v := range vs {
				n += len(k) + len(v) + len(": \r\n")
			}
		}
	}
	return n
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

func natsHeaderName(attribute string) string {
	if h, ok := natsHeaderNames[attribute]; ok {
		return h
	}
	return natsHeaderPrefix + attribute
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
