package sink

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/nats-io/nats.go"
)

// trickyEvent has attribute values that need percent-encoding: spaces,
// quotes, '%', control and non-ASCII characters.
func trickyEvent(t testing.TB) ce.Event {
	t.Helper()
	e := ce.New()
	e.SetID("id 1")
	e.SetSource("depbridge://c/i")
	e.SetType("io.depbridge.reconcile.v1")
	e.SetSubject(`v1/ConfigMap/ns/"quoted" 100% €uro 😀`)
	e.SetTime(time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC))
	e.SetDataSchema("https://example.com/schema?a=b c")
	e.SetExtension("partitionkey", "v1/ConfigMap/ns/name")
	e.SetExtension("watchername", "tab\there\nnewline")
	e.SetExtension("count", 42)
	e.SetExtension("flag", true)
	e.SetDataContentType("application/json; charset=utf-8")
	e.DataEncoded = []byte(`{"x":"ü"}`)
	return e
}

func TestPercentEncode(t *testing.T) {
	tests := map[string]struct{ in, want string }{
		"plain":              {"io.depbridge.reconcile.v1", "io.depbridge.reconcile.v1"},
		"space":              {"a b", "a%20b"},
		"double quote":       {`say "hi"`, "say%20%22hi%22"},
		"percent":            {"100%", "100%25"},
		"percent-like":       {"%41", "%2541"},
		"tab, newline, DEL":  {"a\tb\nc\x7f", "a%09b%0Ac%7F"},
		"NUL":                {"\x00", "%00"},
		"non-ASCII (spec)":   {"Euro € 😀", "Euro%20%E2%82%AC%20%F0%9F%98%80"},
		"printable kept":     {"!#$&'()*+,-./:;<=>?@[\\]^_`{|}~", "!#$&'()*+,-./:;<=>?@[\\]^_`{|}~"},
		"empty":              {"", ""},
		"invalid UTF-8 byte": {"a\xffb", "a%FFb"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := percentEncode(tt.in); got != tt.want {
				t.Errorf("percentEncode(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestPercentDecode(t *testing.T) {
	tests := map[string]struct {
		in, want string
		err      bool
	}{
		"plain":                      {in: "abc", want: "abc"},
		"encoded":                    {in: "Euro%20%E2%82%AC%20%F0%9F%98%80", want: "Euro € 😀"},
		"lowercase hex":              {in: "%e2%82%ac", want: "€"},
		"unnecessarily encoded":      {in: "%61%62", want: "ab"},
		"legacy quoted string":       {in: `"hello world"`, want: "hello world"},
		"legacy quoted with escapes": {in: `"a \"b\" \\ c"`, want: `a "b" \ c`},
		"quoted then percent":        {in: `"a%20b"`, want: "a b"},
		"overlong space rejected":    {in: "%C0%A0", err: true},
		"invalid UTF-8 rejected":     {in: "%FF", err: true},
		"truncated sequence":         {in: "%E2%82", err: true},
		"raw invalid UTF-8":          {in: "a\xffb", err: true},
		"bad escape":                 {in: "%zz", err: true},
		"short escape":               {in: "ab%4", err: true},
		"quote inside quoted":        {in: `"a"b"`, err: true},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := percentDecode(tt.in)
			if tt.err {
				if err == nil {
					t.Errorf("percentDecode(%q) = %q, want an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("percentDecode(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestEncodeNATSBinary(t *testing.T) {
	e := trickyEvent(t)
	m, err := encodeNATS("subj.a", Binary, &e)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "subj.a" {
		t.Errorf("subject = %q", m.Subject)
	}
	want := map[string]string{
		"ce-specversion":     "1.0",
		"ce-id":              "id%201",
		"ce-source":          "depbridge://c/i",
		"ce-type":            "io.depbridge.reconcile.v1",
		"ce-subject":         "v1/ConfigMap/ns/%22quoted%22%20100%25%20%E2%82%ACuro%20%F0%9F%98%80",
		"ce-time":            "2026-01-02T03:04:05.000006Z",
		"ce-dataschema":      "https://example.com/schema?a=b%20c",
		"ce-datacontenttype": "application/json;%20charset=utf-8",
		"ce-partitionkey":    "v1/ConfigMap/ns/name",
		"ce-watchername":     "tab%09here%0Anewline",
		"ce-count":           "42",
		"ce-flag":            "true",
	}
	got := map[string]string{}
	for k, v := range m.Header {
		if len(v) != 1 {
			t.Errorf("header %s has %d values", k, len(v))
		}
		got[k] = v[0]
	}
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if got[k] != want[k] {
			t.Errorf("header %s = %q, want %q", k, got[k], want[k])
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected header %s: %q (binary mode has ce- headers only; no Content-Type)", k, got[k])
		}
	}
	for k, v := range got {
		for i := 0; i < len(v); i++ {
			if v[i] <= ' ' || v[i] >= 0x7F || v[i] == '"' {
				t.Errorf("header %s value %q has byte %q that must be percent-encoded", k, v, v[i])
			}
		}
	}
	if string(m.Data) != `{"x":"ü"}` {
		t.Errorf("body = %q, want the data as-is", m.Data)
	}
	back, err := decodeNATS(m)
	if err != nil {
		t.Fatal(err)
	}
	assertSameEvent(t, back, e)
}

func TestEncodeNATSStructured(t *testing.T) {
	e := trickyEvent(t)
	m, err := encodeNATS("subj.a", Structured, &e)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Header.Get("Content-Type"); got != "application/cloudevents+json; charset=UTF-8" {
		t.Errorf("Content-Type = %q", got)
	}
	if len(m.Header) != 1 {
		t.Errorf("headers = %v, want Content-Type only", m.Header)
	}
	var raw map[string]any
	if err := json.Unmarshal(m.Data, &raw); err != nil {
		t.Fatalf("body is not JSON: %v\n%s", err, m.Data)
	}
	if raw["specversion"] != "1.0" || raw["datacontenttype"] != "application/json; charset=utf-8" || raw["watchername"] != "tab\there\nnewline" {
		t.Errorf("body = %s", m.Data)
	}
	if _, ok := raw["data"].(map[string]any); !ok {
		t.Errorf("data is not inline JSON: %s", m.Data)
	}
	back, err := decodeNATS(m)
	if err != nil {
		t.Fatal(err)
	}
	assertSameEvent(t, back, e)
}

// decodeNATS is a NATS binding decoder written from the spec, independent
// of the encoder: structured iff Content-Type starts with
// "application/cloudevents", else binary, where every ce- header is an
// attribute (percent-decoded, legacy quoted strings accepted, invalid
// UTF-8 rejected) and the body is the data.
func decodeNATS(m *nats.Msg) (ce.Event, error) {
	e := ce.New()
	if strings.HasPrefix(m.Header.Get("Content-Type"), "application/cloudevents") {
		err := json.Unmarshal(m.Data, &e)
		return e, err
	}
	for k, vs := range m.Header {
		name, ok := strings.CutPrefix(k, "ce-")
		if !ok {
			continue
		}
		v, err := percentDecode(vs[0])
		if err != nil {
			return e, fmt.Errorf("header %s: %w", k, err)
		}
		if err := setAttribute(&e, name, v); err != nil {
			return e, err
		}
	}
	e.DataEncoded = m.Data
	return e, e.Validate()
}

func setAttribute(e *ce.Event, name, v string) error {
	var err error
	switch name {
	case "specversion":
		if v != "1.0" {
			return fmt.Errorf("specversion %q", v)
		}
	case "id":
		e.SetID(v)
	case "source":
		e.SetSource(v)
	case "type":
		e.SetType(v)
	case "subject":
		e.SetSubject(v)
	case "time":
		var ts time.Time
		ts, err = types.ParseTime(v)
		e.SetTime(ts)
	case "dataschema":
		e.SetDataSchema(v)
	case "datacontenttype":
		e.SetDataContentType(v)
	default:
		err = e.Context.SetExtension(name, v)
	}
	return err
}

// assertSameEvent compares attributes by their canonical string forms
// (binary mode carries extension values as strings) and data bytes.
func assertSameEvent(t *testing.T, got, want ce.Event) {
	t.Helper()
	if got.SpecVersion() != want.SpecVersion() || got.ID() != want.ID() || got.Source() != want.Source() ||
		got.Type() != want.Type() || got.Subject() != want.Subject() || !got.Time().Equal(want.Time()) ||
		got.DataSchema() != want.DataSchema() || got.DataContentType() != want.DataContentType() {
		t.Errorf("attributes differ:\ngot  %s\nwant %s", got.Context, want.Context)
	}
	canon := func(m map[string]any) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			s, _ := types.Format(v)
			out[k] = s
		}
		return out
	}
	if g, w := canon(got.Extensions()), canon(want.Extensions()); !maps.Equal(g, w) {
		t.Errorf("extensions = %v, want %v", g, w)
	}
	if string(got.Data()) != string(want.Data()) {
		t.Errorf("data = %q, want %q", got.Data(), want.Data())
	}
}

// FuzzNATSHeaders checks that every valid UTF-8 attribute value survives
// percent-encoding and decoding unchanged, that encoded values are always
// legal header bytes, and that invalid UTF-8 is rejected by the decoder.
func FuzzNATSHeaders(f *testing.F) {
	for _, s := range []string{"", "plain", "a b", `"q"`, "100%", "%41", "Euro € 😀", "\x00\x7f\xff", `"legacy"`, "%C0%A0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		enc := percentEncode(s)
		for i := 0; i < len(enc); i++ {
			if c := enc[i]; c <= ' ' || c >= 0x7F || c == '"' {
				t.Fatalf("percentEncode(%q) = %q keeps byte %q", s, enc, c)
			}
		}
		dec, err := percentDecode(enc)
		if utf8.ValidString(s) {
			if err != nil || dec != s {
				t.Fatalf("round trip of %q: %q, %v", s, dec, err)
			}
		} else if err == nil {
			t.Fatalf("invalid UTF-8 %q decoded without error to %q", s, dec)
		}
		// Through a real message and the binding decoder too.
		if !utf8.ValidString(s) {
			return
		}
		e := ce.New()
		e.SetID("x")
		e.SetSource("s")
		e.SetType("t")
		e.SetSubject(s)
		m, err := encodeNATS("a", Binary, &e)
		if err != nil {
			t.Fatal(err)
		}
		back, err := decodeNATS(m)
		if err != nil {
			t.Fatal(err)
		}
		// sdk-go trims the subject it stores; compare with what it holds.
		if back.Subject() != e.Subject() {
			t.Fatalf("subject %q came back as %q", e.Subject(), back.Subject())
		}
	})
}

// percentDecode reverses percentEncode for a received header value, by the
// binding's decoding rules: a value in double quotes (the legacy
// quoted-string form of RFC 7230 §3.2.6) is unquoted first; percent
// escapes are decoded, whether or not they were needed; the result must be
// valid UTF-8 (so "%C0%A0", an overlong space, is rejected).
func percentDecode(v string) (string, error) {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		var b strings.Builder
		for i := 1; i < len(v)-1; i++ {
			c := v[i]
			if c == '\\' {
				if i+1 >= len(v)-1 {
					return "", fmt.Errorf("header value %q: quoted string ends in a backslash", v)
				}
				i++
				c = v[i]
			} else if c == '"' {
				return "", fmt.Errorf("header value %q: unescaped quote inside a quoted string", v)
			}
			b.WriteByte(c)
		}
		v = b.String()
	}
	if strings.IndexByte(v, '%') < 0 {
		if !utf8.ValidString(v) {
			return "", fmt.Errorf("header value %q is not valid UTF-8", v)
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
			return "", fmt.Errorf("header value %q: truncated percent escape", v)
		}
		h, ok1 := specUnhex(v[i+1])
		l, ok2 := specUnhex(v[i+2])
		if !ok1 || !ok2 {
			return "", fmt.Errorf("header value %q: bad percent escape %q", v, v[i:i+3])
		}
		out = append(out, h<<4|l)
		i += 2
	}
	if !utf8.Valid(out) {
		return "", fmt.Errorf("header value %q does not decode to valid UTF-8", v)
	}
	return string(out), nil
}

func specUnhex(c byte) (byte, bool) {
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

// TestEncodeBinaryNeedsSpecVersion1 checks that binary mode refuses an
// event of another spec version rather than writing 1.0 headers for it
// (the bridge builds 1.0 events only).
func TestEncodeBinaryNeedsSpecVersion1(t *testing.T) {
	e := ce.New(ce.CloudEventsVersionV03)
	e.SetID("1")
	e.SetSource("s")
	e.SetType("t")
	if _, err := encodeNATS("a", Binary, &e); err == nil || !strings.Contains(err.Error(), `specversion "0.3"`) {
		t.Errorf("encodeNATS of a 0.3 event: %v", err)
	}
	if _, err := encodeKafka("a", Binary, &e); err == nil || !strings.Contains(err.Error(), `specversion "0.3"`) {
		t.Errorf("encodeKafka of a 0.3 event: %v", err)
	}
}
