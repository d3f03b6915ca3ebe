package control

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/nats-io/nats.go"
	"github.com/segmentio/kafka-go"
	sigsjson "sigs.k8s.io/json"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/sink"
)

// DefaultMaxMessageBytes is the size limit of a Decoder with no MaxBytes,
// as of control.maxMessageBytes.
const DefaultMaxMessageBytes = 65536

// Decoder reads control messages: CloudEvents 1.0 in structured mode
// (application/cloudevents+json) or binary mode, by the NATS or the Kafka
// protocol binding. It is strict: a message is rejected, with an error
// wrapping ErrTooLarge, ErrUnsupported or ErrInvalid that says why, when
// it is larger than MaxBytes (checked before anything is parsed), when an
// attribute is missing, repeated or malformed, when specversion is not
// 1.0, the type is not a control type or the data is not JSON, and when
// the data has unknown or duplicate fields or a bad Ref. On error the
// returned Request, when not nil, holds what could be read of the
// attributes (at least the id, so that the status can name the request);
// its Watcher is zero. It never panics. The zero value works; a Decoder
// is safe for concurrent use.
type Decoder struct {
	// MaxBytes bounds a message: its body plus the names and values of its
	// headers. Defaults to DefaultMaxMessageBytes.
	MaxBytes int
}

// DecodeNATS decodes a NATS message by the NATS protocol binding: it is
// structured when its Content-Type starts with "application/cloudevents",
// else binary, with every attribute in a percent-encoded "ce-" header
// (datacontenttype too; a plain Content-Type is accepted in its place).
// Header names are matched case-insensitively; other headers are ignored.
func (d Decoder) DecodeNATS(h nats.Header, data []byte) (*Request, error) {
	hs := make([]header, 0, len(h))
	for k, vs := range h {
		for _, v := range vs {
			hs = append(hs, header{k, v})
		}
	}
	return d.decode(natsBinding, hs, data)
}

// DecodeKafka decodes a Kafka record's headers and value by the Kafka
// protocol binding: structured when its content-type starts with
// "application/cloudevents", else binary, with datacontenttype in
// content-type and the other attributes in "ce_" headers (UTF-8, not
// percent-encoded). A null value (a tombstone) is not a control message;
// the Kafka transport handles it before decoding.
func (d Decoder) DecodeKafka(headers []kafka.Header, value []byte) (*Request, error) {
	hs := make([]header, len(headers))
	for i, h := range headers {
		hs[i] = header{h.Key, string(h.Value)}
	}
	return d.decode(kafkaBinding, hs, value)
}

type bindingKind int

const (
	natsBinding bindingKind = iota
	kafkaBinding
)

type header struct{ name, value string }

// envelope is a message's attributes (extensions included), each as its
// canonical string, and its data.
type envelope struct {
	attrs      map[string]string
	data       []byte
	structured bool
}

func (d Decoder) decode(b bindingKind, hs []header, body []byte) (*Request, error) {
	limit := d.MaxBytes
	if limit <= 0 {
		limit = DefaultMaxMessageBytes
	}
	size := len(body)
	for _, h := range hs {
		size += len(h.name) + len(h.value)
	}
	if size > limit {
		return idOnly(b, hs), fmt.Errorf("%w: %d bytes (body and headers), more than the %d allowed", ErrTooLarge, size, limit)
	}
	ct := ""
	for _, h := range hs {
		if strings.EqualFold(h.name, "content-type") {
			if ct != "" {
				return nil, fmt.Errorf("%w: header %s is repeated", ErrInvalid, h.name)
			}
			ct = h.value
			if ct == "" {
				return nil, fmt.Errorf("%w: header %s is empty", ErrInvalid, h.name)
			}
		}
	}
	var (
		env *envelope
		err error
	)
	if strings.HasPrefix(strings.ToLower(strings.TrimSpace(ct)), "application/cloudevents") {
		env, err = structuredMode(ct, body)
	} else {
		env, err = binaryMode(b, hs, ct, body)
	}
	if err != nil {
		return nil, err
	}
	r, err := env.request()
	if err != nil {
		return env.partial(), err
	}
	return r, nil
}

// idOnly is the partial Request of a message too large to read: only its
// id, when a binary-mode header gives a short one.
func idOnly(b bindingKind, hs []header) *Request {
	name := "ce-id"
	if b == kafkaBinding {
		name = "ce_id"
	}
	for _, h := range hs {
		if strings.EqualFold(h.name, name) && len(h.value) <= 256 {
			v := h.value
			if b == natsBinding {
				var err error
				if v, err = sink.DecodeHeaderValue(v); err != nil {
					return nil
				}
			}
			if v != "" && utf8.ValidString(v) {
				return &Request{ID: v}
			}
		}
	}
	return nil
}

// partial is the Request of a message whose envelope could be read but
// that was rejected: its attributes, with no watcher (nil when it has no
// id).
func (env *envelope) partial() *Request {
	a := env.attrs
	if a["id"] == "" {
		return nil
	}
	return &Request{ID: a["id"], Source: a["source"], Type: a["type"], ReplyTo: a[ExtReplyTo], Structured: env.structured}
}

// structuredMode reads a structured-mode message: the JSON event format, with
// attributes as top-level members and the data in "data" (JSON) or
// "data_base64".
func structuredMode(ct string, body []byte) (*envelope, error) {
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return nil, fmt.Errorf("%w: content type %q: %v", ErrInvalid, ct, err)
	}
	if mt != "application/cloudevents+json" {
		return nil, fmt.Errorf("%w: event format %q: want application/cloudevents+json (batches are not accepted)", ErrUnsupported, mt)
	}
	if err := checkParams(ct, params); err != nil {
		return nil, err
	}
	env := &envelope{attrs: map[string]string{}, structured: true}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("%w: a structured event is a JSON object", ErrInvalid)
	}
	seen := map[string]bool{}
	var data, data64 json.RawMessage
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%w: event JSON: %v", ErrInvalid, err)
		}
		name, _ := tok.(string) // inside an object, a token before a value is its name
		if seen[name] {
			return nil, fmt.Errorf("%w: event member %q is repeated", ErrInvalid, name)
		}
		seen[name] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("%w: event member %q: %v", ErrInvalid, name, err)
		}
		switch name {
		case "data":
			data = raw
			continue
		case "data_base64":
			data64 = raw
			continue
		}
		if err := checkAttrName(name); err != nil {
			return nil, err
		}
		v, ok, err := jsonAttr(name, raw)
		if err != nil {
			return nil, err
		}
		if ok {
			env.attrs[name] = v
		}
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("%w: event JSON: %v", ErrInvalid, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: event JSON: data after the object", ErrInvalid)
	}
	switch {
	case data != nil && data64 != nil:
		return nil, fmt.Errorf("%w: event has both data and data_base64", ErrInvalid)
	case data64 != nil:
		var s string
		if err := json.Unmarshal(data64, &s); err != nil {
			return nil, fmt.Errorf("%w: data_base64 is not a string", ErrInvalid)
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("%w: data_base64: %v", ErrInvalid, err)
		}
		env.data = b
	case data != nil && string(data) != "null":
		env.data = data
	}
	return env, nil
}

// jsonAttr returns the canonical string of an attribute in the JSON
// format; ok is false for null (an absent attribute). The context
// attributes are strings; extensions may also be booleans and integers.
func jsonAttr(name string, raw json.RawMessage) (string, bool, error) {
	if string(raw) == "null" {
		return "", false, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, true, nil
	}
	if _, core := coreAttrs[name]; !core {
		var b bool
		if err := json.Unmarshal(raw, &b); err == nil {
			return fmt.Sprint(b), true, nil
		}
		var n int32
		if err := json.Unmarshal(raw, &n); err == nil {
			return fmt.Sprint(n), true, nil
		}
		return "", false, fmt.Errorf("%w: extension %q: want a string, a boolean or a 32-bit integer", ErrInvalid, name)
	}
	return "", false, fmt.Errorf("%w: attribute %q is not a string", ErrInvalid, name)
}

// coreAttrs are the CloudEvents 1.0 context attributes, all strings.
var coreAttrs = map[string]struct{}{
	"specversion": {}, "id": {}, "source": {}, "type": {}, "subject": {}, "time": {},
	"datacontenttype": {}, "dataschema": {},
}

// binaryMode reads a binary-mode message: attributes from prefixed headers,
// the data from the body.
func binaryMode(b bindingKind, hs []header, ct string, body []byte) (*envelope, error) {
	prefix := "ce-"
	if b == kafkaBinding {
		prefix = "ce_"
	}
	env := &envelope{attrs: map[string]string{}}
	for _, h := range hs {
		if len(h.name) < len(prefix) || !strings.EqualFold(h.name[:len(prefix)], prefix) {
			continue
		}
		name := strings.ToLower(h.name[len(prefix):])
		if err := checkAttrName(name); err != nil {
			return nil, err
		}
		if _, dup := env.attrs[name]; dup {
			return nil, fmt.Errorf("%w: attribute %q is repeated", ErrInvalid, name)
		}
		v := h.value
		if b == natsBinding {
			var err error
			if v, err = sink.DecodeHeaderValue(v); err != nil {
				return nil, fmt.Errorf("%w: header %s: %v", ErrInvalid, h.name, err)
			}
		} else if !utf8.ValidString(v) {
			return nil, fmt.Errorf("%w: header %s is not valid UTF-8", ErrInvalid, h.name)
		}
		env.attrs[name] = v
	}
	if ct != "" {
		if dct, ok := env.attrs["datacontenttype"]; ok && dct != ct {
			return nil, fmt.Errorf("%w: content type %q and datacontenttype %q differ", ErrInvalid, ct, dct)
		}
		env.attrs["datacontenttype"] = ct
	}
	if len(body) > 0 {
		env.data = body
	}
	return env, nil
}

// checkAttrName accepts CloudEvents attribute names: lowercase ASCII
// letters and digits.
func checkAttrName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty attribute name", ErrInvalid)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			return fmt.Errorf("%w: attribute name %q: only lowercase letters and digits are allowed", ErrInvalid, name)
		}
	}
	return nil
}

// checkParams accepts only a charset parameter of UTF-8.
func checkParams(ct string, params map[string]string) error {
	for k, v := range params {
		if k != "charset" || !strings.EqualFold(v, "utf-8") {
			return fmt.Errorf("%w: content type %q: only the parameter charset=utf-8 is accepted", ErrUnsupported, ct)
		}
	}
	return nil
}

// request checks the attributes and decodes the data.
func (env *envelope) request() (*Request, error) {
	a := env.attrs
	switch sv, ok := a["specversion"]; {
	case !ok:
		return nil, fmt.Errorf("%w: specversion is required", ErrInvalid)
	case sv != "1.0":
		return nil, fmt.Errorf("%w: specversion %q: want 1.0", ErrUnsupported, sv)
	}
	r := &Request{ID: a["id"], Source: a["source"], Type: a["type"], ReplyTo: a[ExtReplyTo], Structured: env.structured}
	if r.ID == "" {
		return nil, fmt.Errorf("%w: id is required", ErrInvalid)
	}
	if r.Source == "" {
		return nil, fmt.Errorf("%w: source is required", ErrInvalid)
	}
	if _, err := url.Parse(r.Source); err != nil {
		return nil, fmt.Errorf("%w: source %q is not a URI reference", ErrInvalid, r.Source)
	}
	switch r.Type {
	case "":
		return nil, fmt.Errorf("%w: type is required", ErrInvalid)
	case TypeApply, TypeDelete, TypeQuery:
	default:
		return nil, fmt.Errorf("%w: type %q: want %s, %s or %s", ErrUnsupported, r.Type, TypeApply, TypeDelete, TypeQuery)
	}
	if dct, ok := a["datacontenttype"]; ok {
		mt, params, err := mime.ParseMediaType(dct)
		if err != nil {
			return nil, fmt.Errorf("%w: datacontenttype %q: %v", ErrInvalid, dct, err)
		}
		if mt != "application/json" {
			return nil, fmt.Errorf("%w: datacontenttype %q: want application/json", ErrUnsupported, dct)
		}
		if err := checkParams(dct, params); err != nil {
			return nil, err
		}
	}
	if t, ok := a["time"]; ok {
		ts, err := types.ParseTime(t)
		if err != nil {
			return nil, fmt.Errorf("%w: time %q: %v", ErrInvalid, t, err)
		}
		r.Time = ts
	}
	if len(env.data) == 0 {
		return nil, fmt.Errorf("%w: %s has no data", ErrInvalid, r.Type)
	}
	var err error
	switch r.Type {
	case TypeApply:
		err = r.decodeApply(env.data)
	case TypeDelete:
		err = r.decodeDelete(env.data)
	case TypeQuery:
		err = r.decodeQuery(env.data)
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

// strict decodes data into v, case-sensitively, rejecting unknown and
// duplicate fields.
func strict(data []byte, v any) error {
	strictErrs, err := sigsjson.UnmarshalStrict(data, v)
	if err != nil {
		return fmt.Errorf("%w: data: %v", ErrInvalid, err)
	}
	if len(strictErrs) > 0 {
		return fmt.Errorf("%w: data: %v", ErrInvalid, errors.Join(strictErrs...))
	}
	return nil
}

func (r *Request) decodeApply(data []byte) error {
	var s ApplyData
	if err := strict(data, &s); err != nil {
		return err
	}
	w, err := watcherRef(s.Watcher)
	if err != nil {
		return err
	}
	s.Watcher = w
	if len(s.Watched) == 0 {
		return fmt.Errorf("%w: watched: at least one watched object is required (delete the watcher with %s)", ErrInvalid, TypeDelete)
	}
	if s.Watched, err = refs("watched", s.Watched); err != nil {
		return err
	}
	if s.Debounce.Duration < 0 {
		return fmt.Errorf("%w: debounce %s is negative", ErrInvalid, s.Debounce.Duration)
	}
	r.Watcher, r.Apply = w, &s
	return nil
}

func (r *Request) decodeDelete(data []byte) error {
	var d DeleteData
	if err := strict(data, &d); err != nil {
		return err
	}
	w, err := watcherRef(d.Watcher)
	if err != nil {
		return err
	}
	r.Watcher = w
	return nil
}

func (r *Request) decodeQuery(data []byte) error {
	var q QueryData
	if err := strict(data, &q); err != nil {
		return err
	}
	w, err := watcherRef(q.Watcher)
	if err != nil {
		return err
	}
	q.Watcher = w
	if len(q.Queries) == 0 {
		return fmt.Errorf("%w: queries: at least one query is required (delete the watcher with %s)", ErrInvalid, TypeDelete)
	}
	if q.Queries, err = refs("queries", q.Queries); err != nil {
		return err
	}
	r.Watcher, r.Query = w, &q
	return nil
}

// watcherRef validates a watcher and returns its canonical form. A name
// starting with '?' is refused: its key would be that of a selector
// watcher, and keys name the watcher's Kafka records.
func watcherRef(w cache.Ref) (cache.Ref, error) {
	if w == (cache.Ref{}) {
		return w, fmt.Errorf("%w: watcher is required", ErrInvalid)
	}
	c, err := w.Canonical()
	if err != nil {
		return w, fmt.Errorf("%w: watcher: %s", ErrInvalid, refError(err))
	}
	if strings.HasPrefix(c.Name, "?") {
		return w, fmt.Errorf("%w: watcher name %q: a name cannot start with '?'", ErrInvalid, c.Name)
	}
	return c, nil
}

// refs validates a list of Refs and returns their canonical forms; none
// may appear twice.
func refs(field string, rs []cache.Ref) ([]cache.Ref, error) {
	out := make([]cache.Ref, len(rs))
	seen := make(map[cache.Ref]int, len(rs))
	for i, r := range rs {
		c, err := r.Canonical()
		if err != nil {
			return nil, fmt.Errorf("%w: %s[%d]: %s", ErrInvalid, field, i, refError(err))
		}
		if j, dup := seen[c]; dup {
			return nil, fmt.Errorf("%w: %s[%d]: duplicate of %s[%d]", ErrInvalid, field, i, field, j)
		}
		seen[c] = i
		out[i] = c
	}
	return out, nil
}

func refError(err error) string {
	return strings.TrimPrefix(err.Error(), cache.ErrInvalidInput.Error()+": ")
}
