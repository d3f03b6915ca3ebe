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
	"github.com/segmentio/kafka-go"
)

// DecodeKafka reads the CloudEvent of a Kafka record written in either
// content mode by the Kafka protocol binding: structured when content-type
// is an event format, else binary with "ce_" headers (UTF-8) and
// content-type as datacontenttype.
func DecodeKafka(ctx context.Context, m kafka.Message) (*ce.Event, error) {
	e, err := binding.ToEvent(ctx, kafkaReader{m})
	if err == nil {
		err = e.Validate()
	}
	if err != nil {
		return nil, fmt.Errorf("decode CloudEvent from Kafka record %s/%d@%d: %w", m.Topic, m.Partition, m.Offset, err)
	}
	return e, nil
}

// kafkaReader is a binding.MessageReader over a received Kafka record.
type kafkaReader struct{ m kafka.Message }

var kafkaVersions = spec.WithPrefix(kafkaHeaderPrefix)

func (r kafkaReader) header(name string) (string, bool) {
	for _, h := range r.m.Headers {
		if strings.EqualFold(h.Key, name) {
			return string(h.Value), true
		}
	}
	return "", false
}

func (r kafkaReader) ReadEncoding() binding.Encoding {
	ct, _ := r.header(kafkaContentType)
	if format.Lookup(ct) != nil {
		return binding.EncodingStructured
	}
	if _, ok := r.header(kafkaHeaderPrefix + "specversion"); ok {
		return binding.EncodingBinary
	}
	return binding.EncodingUnknown
}

func (r kafkaReader) ReadStructured(ctx context.Context, w binding.StructuredWriter) error {
	ct, _ := r.header(kafkaContentType)
	f := format.Lookup(ct)
	if f == nil {
		return binding.ErrNotStructured
	}
	return w.SetStructuredEvent(ctx, f, bytes.NewReader(r.m.Value))
}

func (r kafkaReader) ReadBinary(ctx context.Context, w binding.BinaryWriter) error {
	sv, _ := r.header(kafkaHeaderPrefix + "specversion")
	version := kafkaVersions.Version(sv)
	if version == nil {
		return binding.ErrNotBinary
	}
	if err := w.Start(ctx); err != nil {
		return err
	}
	for _, h := range r.m.Headers {
		key := strings.ToLower(h.Key)
		v := string(h.Value)
		if !utf8.ValidString(v) {
			return fmt.Errorf("header %s: %w", h.Key, errors.New("value is not valid UTF-8"))
		}
		switch {
		case key == kafkaContentType:
			if err := w.SetAttribute(version.AttributeFromKind(spec.DataContentType), v); err != nil {
				return err
			}
		case !strings.HasPrefix(key, kafkaHeaderPrefix):
		case version.Attribute(key) != nil:
			if attr := version.Attribute(key); attr.Kind() != spec.SpecVersion {
				if err := w.SetAttribute(attr, v); err != nil {
					return err
				}
			}
		default:
			if err := w.SetExtension(strings.TrimPrefix(key, kafkaHeaderPrefix), v); err != nil {
				return err
			}
		}
	}
	if len(r.m.Value) > 0 {
		if err := w.SetData(bytes.NewReader(r.m.Value)); err != nil {
			return err
		}
	}
	return w.End(ctx)
}

func (r kafkaReader) GetAttribute(spec.Kind) (spec.Attribute, any) { return nil, nil }
func (r kafkaReader) GetExtension(string) any                      { return nil }
func (r kafkaReader) Finish(error) error                           { return nil }
