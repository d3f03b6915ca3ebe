package sink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
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
		v, err := decodeHeaderValue(values[0])
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
			s, _ := decodeHeaderValue(v[0])
			return s
		}
	}
	return ""
}

// decodeHeaderValue undoes the binding's percent-encoding; a value in
// double quotes (the legacy form) is taken as is, without them.
func decodeHeaderValue(v string) (string, error) {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	} else {
		d, err := url.PathUnescape(v)
		if err != nil {
			return "", err
		}
		v = d
	}
	if !utf8.ValidString(v) {
		return "", errors.New("value is not valid UTF-8")
	}
	return v, nil
}
