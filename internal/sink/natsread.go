package sink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/binding/format"
	"github.com/cloudevents/sdk-go/v2/binding/spec"
	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
)

// DecodeNATS reads the CloudEvent of a NATS message written in either
// content mode by the NATS protocol binding: structured when Content-Type
// is an event format, else binary with percent-encoded "ce-" headers
// (legacy quoted values accepted, invalid UTF-8 rejected).
func DecodeNATS(ctx context.Context, m *nats.Msg) (*ce.Event, error) {
	e, err := binding.ToEvent(ctx, natsReader{m})
	if err == nil {
		err = e.Validate()
	}
	if err != nil {
		return nil, fmt.Errorf("decode CloudEvent from NATS message on %s: %w", m.Subject, err)
	}
	return e, nil
}

// natsReader is a binding.MessageReader over a received NATS message.
type natsReader struct{ m *nats.Msg }

var versions = spec.WithPrefix(natsHeaderPrefix)

func (r natsReader) ReadEncoding() binding.Encoding {
	if f := format.Lookup(r.m.Header.Get(natsContentType)); f != nil {
		return binding.EncodingStructured
	}
	if r.m.Header.Get(natsHeaderPrefix+"specversion") != "" {
		return binding.EncodingBinary
	}
	return binding.EncodingUnknown
}

func (r natsReader) ReadStructured(ctx context.Context, w binding.StructuredWriter) error {
	f := format.Lookup(r.m.Header.Get(natsContentType))
	if f == nil {
		return binding.ErrNotStructured
	}
	return w.SetStructuredEvent(ctx, f, bytes.NewReader(r.m.Data))
}

func (r natsReader) ReadBinary(ctx context.Context, w binding.BinaryWriter) error {
	version := versions.Version(headerValueOrEmpty(r.m.Header, natsHeaderPrefix+"specversion"))
	if version == nil {
		return binding.ErrNotBinary
	}
	if err := w.Start(ctx); err != nil {
		return err
	}
	for key, values := range r.m.Header {
		lower := strings.ToLower(key)
		if !strings.HasPrefix(lower, natsHeaderPrefix) || len(values) == 0 {
			continue
		}
		v, err := DecodeHeaderValue(values[0])
		if err != nil {
			return fmt.Errorf("header %s: %w", key, err)
		}
		if attr := version.Attribute(lower); attr != nil {
			if attr.Kind() == spec.SpecVersion {
				continue
			}
			if err := w.SetAttribute(attr, v); err != nil {
				return err
			}
			continue
		}
		if err := w.SetExtension(strings.TrimPrefix(lower, natsHeaderPrefix), v); err != nil {
			return err
		}
	}
	if len(r.m.Data) > 0 {
		if err := w.SetData(bytes.NewReader(r.m.Data)); err != nil {
			return err
		}
	}
	return w.End(ctx)
}

func (r natsReader) GetAttribute(spec.Kind) (spec.Attribute, any) { return nil, nil }
func (r natsReader) GetExtension(string) any                      { return nil }
func (r natsReader) Finish(error) error                           { return nil }

func headerValueOrEmpty(h nats.Header, key string) string {
	for k, v := range h {
		if strings.EqualFold(k, key) && len(v) > 0 {
			s, _ := DecodeHeaderValue(v[0])
			return s
		}
	}
	return ""
}

// DecodeHeaderValue decodes a NATS header value by the CloudEvents NATS
// binding's rules: a value in double quotes (the legacy quoted-string form)
// is unquoted first (backslash escapes honoured); percent escapes are
// decoded; the result must be valid UTF-8.
func DecodeHeaderValue(v string) (string, error) {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		var b strings.Builder
		for i := 1; i < len(v)-1; i++ {
			c := v[i]
			if c == '\\' {
				if i+1 >= len(v)-1 {
					return "", errors.New("quoted string ends in a backslash")
				}
				i++
				c = v[i]
			} else if c == '"' {
				return "", errors.New("unescaped quote inside a quoted string")
			}
			b.WriteByte(c)
		}
		v = b.String()
	}
	if strings.IndexByte(v, '%') < 0 {
		if !utf8.ValidString(v) {
			return "", errors.New("not valid UTF-8")
		}
		return v, nil
	}
	out := make([]byte, 0, len(v))
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c != '%' {
			out = append(out, c)
			continue
		}
		if i+2 >= len(v) {
			return "", errors.New("truncated percent escape")
		}
		h, ok1 := unhex(v[i+1])
		l, ok2 := unhex(v[i+2])
		if !ok1 || !ok2 {
			return "", fmt.Errorf("bad percent escape %q", v[i:i+3])
		}
		out = append(out, h<<4|l)
		i += 2
	}
	if !utf8.Valid(out) {
		return "", errors.New("does not decode to valid UTF-8")
	}
	return string(out), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
