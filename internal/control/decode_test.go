package control

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/segmentio/kafka-go"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/sink"
)

const (
	watcherJSON = `{"group":"example.com","version":"v1","kind":"Function","namespace":"ns","name":"fn"}`
	cmJSON      = `{"version":"v1","kind":"ConfigMap","namespace":"ns","name":"a"}`
	applyJSON   = `{"watcher":` + watcherJSON + `,"watched":[` + cmJSON + `],"route":"fast","initialReconcile":false,"debounce":"250ms"}`
	queryJSON   = `{"watcher":` + watcherJSON + `,"queries":[{"version":"v1","kind":"ConfigMap","namespace":"ns","selector":"b=1, a=1"}]}`
	deleteJSON  = `{"watcher":` + watcherJSON + `}`
)

// natsHeader builds a header from name, value pairs.
func natsHeader(kv ...string) nats.Header {
	h := nats.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h[kv[i]] = append(h[kv[i]], kv[i+1])
	}
	return h
}

func binaryHeader(typ string, extra ...string) nats.Header {
	return natsHeader(append([]string{"ce-specversion", "1.0", "ce-id", "id-1", "ce-source", "test://x", "ce-type", typ,
		"ce-datacontenttype", "application/json"}, extra...)...)
}

func structuredBody(typ, data string, extra ...string) string {
	s := `{"specversion":"1.0","id":"id-1","source":"test://x","type":"` + typ + `","datacontenttype":"application/json"`
	for i := 0; i+1 < len(extra); i += 2 {
		s += `,"` + extra[i] + `":` + extra[i+1]
	}
	return s + `,"data":` + data + `}`
}

var structuredCT = natsHeader("Content-Type", "application/cloudevents+json; charset=UTF-8")

func TestDecodeNATS(t *testing.T) {
	w := cache.Ref{Group: "example.com", Version: "v1", Kind: "Function", Namespace: "ns", Name: "fn"}
	tests := map[string]struct {
		h     nats.Header
		body  string
		check func(t *testing.T, r *Request)
	}{
		"binary apply": {binaryHeader(TypeApply, "ce-replyto", "team.replies", "ce-time", "2024-01-02T03:04:05Z", "Nats-Msg-Id", "x"), applyJSON, func(t *testing.T, r *Request) {
			if r.Type != TypeApply || r.Watcher != w || r.Apply == nil || r.Apply.Route != "fast" || *r.Apply.InitialReconcile ||
				r.Apply.Debounce.Duration != 250*time.Millisecond || r.ReplyTo != "team.replies" || r.Structured ||
				!r.Time.Equal(time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)) {
				t.Errorf("%+v %+v", r, r.Apply)
			}
		}},
		"percent-encoded and case-insensitive headers": {natsHeader("CE-SpecVersion", "1.0", "ce-id", "id%20%C3%A9", "ce-source", `"test://x"`, "ce-type", TypeDelete), deleteJSON,
			func(t *testing.T, r *Request) {
				if r.ID != "id é" || r.Source != "test://x" || r.Watcher != w {
					t.Errorf("%+v", r)
				}
			}},
		"plain Content-Type as datacontenttype": {natsHeader("Content-Type", "application/json", "ce-specversion", "1.0", "ce-id", "i", "ce-source", "s", "ce-type", TypeDelete), deleteJSON, nil},
		"no datacontenttype is JSON":            {natsHeader("ce-specversion", "1.0", "ce-id", "i", "ce-source", "s", "ce-type", TypeDelete), deleteJSON, nil},
		"structured query": {structuredCT, structuredBody(TypeQuery, queryJSON, "replyto", `"r.s"`, "count", "3", "flag", "true"), func(t *testing.T, r *Request) {
			if !r.Structured || r.Query == nil || r.Query.Queries[0].Selector != "a=1,b=1" || r.ReplyTo != "r.s" {
				t.Errorf("selector not canonical or mode lost: %+v %+v", r, r.Query)
			}
		}},
		"structured data_base64": {structuredCT, `{"specversion":"1.0","id":"i","source":"s","type":"` + TypeDelete + `","data_base64":"` +
			base64.StdEncoding.EncodeToString([]byte(deleteJSON)) + `"}`, nil},
		"structured null extension is absent": {structuredCT, structuredBody(TypeDelete, deleteJSON, "replyto", "null"), func(t *testing.T, r *Request) {
			if r.ReplyTo != "" {
				t.Errorf("replyto %q", r.ReplyTo)
			}
		}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, err := Decoder{}.DecodeNATS(tc.h, []byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.check != nil {
				tc.check(t, r)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	hdr := func(kv ...string) nats.Header { return natsHeader(kv...) }
	base := func(extra ...string) nats.Header {
		return hdr(append([]string{"ce-specversion", "1.0", "ce-id", "i", "ce-source", "s", "ce-type", TypeApply}, extra...)...)
	}
	apply := binaryHeader(TypeApply)
	replace := func(old, new string) string { return strings.Replace(applyJSON, old, new, 1) }
	tests := map[string]struct {
		h        nats.Header
		body     string
		sentinel error
		want     string
	}{
		"too large":                      {apply, `{"watcher":` + strings.Repeat(" ", 70000) + `}`, ErrTooLarge, "more than the 65536 allowed"},
		"headers count in the size":      {base("ce-big", strings.Repeat("x", 70000)), applyJSON, ErrTooLarge, "allowed"},
		"no specversion":                 {hdr("ce-id", "i", "ce-source", "s", "ce-type", TypeApply), applyJSON, ErrInvalid, "specversion is required"},
		"specversion 0.3":                {hdr("ce-specversion", "0.3", "ce-id", "i", "ce-source", "s", "ce-type", TypeApply), applyJSON, ErrUnsupported, `specversion "0.3"`},
		"no id":                          {hdr("ce-specversion", "1.0", "ce-source", "s", "ce-type", TypeApply), applyJSON, ErrInvalid, "id is required"},
		"no source":                      {hdr("ce-specversion", "1.0", "ce-id", "i", "ce-type", TypeApply), applyJSON, ErrInvalid, "source is required"},
		"no type":                        {hdr("ce-specversion", "1.0", "ce-id", "i", "ce-source", "s"), applyJSON, ErrInvalid, "type is required"},
		"unknown type":                   {binaryHeader("io.depbridge.reconcile.v1"), applyJSON, ErrUnsupported, "io.depbridge.reconcile.v1"},
		"a status is not a request":      {binaryHeader(TypeStatus), `{}`, ErrUnsupported, TypeStatus},
		"wrong datacontenttype":          {base("ce-datacontenttype", "text/plain"), applyJSON, ErrUnsupported, "text/plain"},
		"wrong charset":                  {base("ce-datacontenttype", "application/json; charset=latin1"), applyJSON, ErrUnsupported, "charset=utf-8"},
		"conflicting content type":       {base("Content-Type", "application/xml", "ce-datacontenttype", "application/json"), applyJSON, ErrInvalid, "differ"},
		"repeated header":                {base("ce-id", "j"), applyJSON, ErrInvalid, `"id" is repeated`},
		"repeated by letter case":        {base("CE-ID", "j"), applyJSON, ErrInvalid, "repeated"},
		"bad percent escape":             {base("ce-subject", "a%4"), applyJSON, ErrInvalid, "truncated percent escape"},
		"overlong UTF-8":                 {base("ce-subject", "%C0%A0"), applyJSON, ErrInvalid, "UTF-8"},
		"bad time":                       {base("ce-time", "yesterday"), applyJSON, ErrInvalid, "time"},
		"bad extension name":             {base("ce-reply_to", "x"), applyJSON, ErrInvalid, "attribute name"},
		"no data":                        {apply, ``, ErrInvalid, "has no data"},
		"malformed JSON":                 {apply, `{"watcher":`, ErrInvalid, "data:"},
		"data not an object":             {apply, `"{}"`, ErrInvalid, "data:"},
		"trailing data":                  {apply, applyJSON + `{}`, ErrInvalid, "data:"},
		"unknown field":                  {apply, replace(`"route"`, `"bogus":1,"route"`), ErrInvalid, `unknown field "bogus"`},
		"unknown field in a ref":         {apply, replace(`"name":"a"`, `"name":"a","nmae":"b"`), ErrInvalid, `unknown field "watched[0].nmae"`},
		"field names are case-sensitive": {apply, replace(`"route"`, `"Route"`), ErrInvalid, `unknown field "Route"`},
		"duplicate field":                {apply, replace(`"route":"fast"`, `"route":"fast","route":"slow"`), ErrInvalid, `duplicate field "route"`},
		"no watcher":                     {apply, `{"watched":[` + cmJSON + `]}`, ErrInvalid, "watcher is required"},
		"watcher without kind":           {apply, replace(`"kind":"Function",`, ``), ErrInvalid, "watcher: GroupVersion=example.com/v1, Kind=, Namespace=ns, Name=fn: kind is required"},
		"watcher name starting ?":        {apply, replace(`"name":"fn"`, `"name":"?x"`), ErrInvalid, "cannot start with '?'"},
		"no watched":                     {apply, `{"watcher":` + watcherJSON + `,"watched":[]}`, ErrInvalid, "at least one watched"},
		"duplicate watched":              {apply, `{"watcher":` + watcherJSON + `,"watched":[` + cmJSON + `,` + cmJSON + `]}`, ErrInvalid, "watched[1]: duplicate of watched[0]"},
		"bad selector":                   {apply, `{"watcher":` + watcherJSON + `,"watched":[{"version":"v1","kind":"ConfigMap","selector":"app in (web"}]}`, ErrInvalid, "watched[0]"},
		"name and selector":              {apply, `{"watcher":` + watcherJSON + `,"watched":[{"version":"v1","kind":"ConfigMap","name":"a","selector":"x=1"}]}`, ErrInvalid, "mutually exclusive"},
		"negative debounce":              {apply, replace(`"250ms"`, `"-1s"`), ErrInvalid, "negative"},
		"bad debounce":                   {apply, replace(`"250ms"`, `"soon"`), ErrInvalid, "data:"},
		"no queries":                     {binaryHeader(TypeQuery), `{"watcher":` + watcherJSON + `,"queries":[]}`, ErrInvalid, "at least one query"},
		"query with a field of apply":    {binaryHeader(TypeQuery), `{"watcher":` + watcherJSON + `,"watched":[` + cmJSON + `]}`, ErrInvalid, `unknown field "watched"`},
		"delete with extra data":         {binaryHeader(TypeDelete), applyJSON, ErrInvalid, "unknown field"},
		"structured batch":               {hdr("Content-Type", "application/cloudevents-batch+json"), `[]`, ErrUnsupported, "batches"},
		"structured not an object":       {structuredCT, `[]`, ErrInvalid, "JSON object"},
		"structured member twice":        {structuredCT, `{"specversion":"1.0","id":"a","id":"b"}`, ErrInvalid, `"id" is repeated`},
		"structured trailing data":       {structuredCT, structuredBody(TypeDelete, deleteJSON) + `{}`, ErrInvalid, "after the object"},
		"structured id not string":       {structuredCT, `{"specversion":"1.0","id":1,"source":"s","type":"` + TypeDelete + `","data":` + deleteJSON + `}`, ErrInvalid, `"id" is not a string`},
		"structured bad extension":       {structuredCT, structuredBody(TypeDelete, deleteJSON, "ext", `{"a":1}`), ErrInvalid, `extension "ext"`},
		"structured both datas":          {structuredCT, structuredBody(TypeDelete, deleteJSON, "data_base64", `"e30="`), ErrInvalid, "both data and data_base64"},
		"structured bad base64":          {structuredCT, `{"specversion":"1.0","id":"i","source":"s","type":"` + TypeDelete + `","data_base64":"!!"}`, ErrInvalid, "data_base64"},
		"structured null data":           {structuredCT, structuredBody(TypeDelete, `null`), ErrInvalid, "has no data"},
		"structured repeated member":     {structuredCT, structuredBody(TypeDelete, deleteJSON, "datacontenttype", `"application/yaml"`), ErrInvalid, "repeated"},
		"structured data not JSON":       {structuredCT, `{"specversion":"1.0","id":"i","source":"s","type":"` + TypeDelete + `","datacontenttype":"application/yaml","data":"x"}`, ErrUnsupported, "application/yaml"},
		"structured bad source":          {structuredCT, `{"specversion":"1.0","id":"i","source":"%zz","type":"` + TypeDelete + `","data":` + deleteJSON + `}`, ErrInvalid, "URI reference"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, err := Decoder{}.DecodeNATS(tc.h, []byte(tc.body))
			if !errors.Is(err, tc.sentinel) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %v saying %q", err, tc.sentinel, tc.want)
			}
			if r != nil && r.Watcher != (cache.Ref{}) {
				t.Errorf("a rejected message's partial request has a watcher: %+v", r)
			}
		})
	}
}

// TestDecodePartial: a rejected message still names its request when it
// can, so that its status can be correlated.
func TestDecodePartial(t *testing.T) {
	r, err := Decoder{}.DecodeNATS(binaryHeader("io.example.other"), []byte(applyJSON))
	if err == nil || r == nil || r.ID != "id-1" || r.Type != "io.example.other" {
		t.Errorf("unsupported type: %+v, %v", r, err)
	}
	r, err = Decoder{MaxBytes: 100}.DecodeNATS(binaryHeader(TypeApply), []byte(applyJSON))
	if !errors.Is(err, ErrTooLarge) || r == nil || r.ID != "id-1" || r.Type != "" {
		t.Errorf("too large: %+v, %v", r, err)
	}
	if r, _ = (Decoder{}).DecodeNATS(natsHeader("ce-specversion", "1.0"), []byte(applyJSON)); r != nil {
		t.Errorf("no id: %+v", r)
	}
}

// TestDecodeRoundTrip decodes what sink's binding writers encode, in both
// modes on both transports.
func TestDecodeRoundTrip(t *testing.T) {
	w := cache.Ref{Group: "example.com", Version: "v1", Kind: "Function", Namespace: "ns", Name: "fn é"}
	q := QueryData{Watcher: w, Queries: []cache.Ref{{Version: "v1", Kind: "ConfigMap", Namespace: "ns", Selector: "tier in (a,b),app=web"}}, InitialReconcile: boolPtr(false)}
	for _, mode := range []sink.Mode{sink.Binary, sink.Structured} {
		e := newEvent(t, "id \"quoted\" %", TypeQuery, q)
		e.SetExtension(ExtReplyTo, "replies.x")
		e.SetSubject("subject with spaces")
		check := func(t *testing.T, r *Request, err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
			if r.ID != e.ID() || r.Watcher != w || r.ReplyTo != "replies.x" || r.Structured != (mode == sink.Structured) ||
				r.Query.Queries[0].Selector != "app=web,tier in (a,b)" || *r.Query.InitialReconcile {
				t.Errorf("%+v %+v", r, r.Query)
			}
		}
		t.Run("nats "+mode.String(), func(t *testing.T) {
			m, err := sink.EncodeNATS(context.Background(), "s", mode, &e)
			if err != nil {
				t.Fatal(err)
			}
			r, err := Decoder{}.DecodeNATS(m.Header, m.Data)
			check(t, r, err)
		})
		t.Run("kafka "+mode.String(), func(t *testing.T) {
			m, err := sink.EncodeKafka(context.Background(), "s", mode, &e)
			if err != nil {
				t.Fatal(err)
			}
			r, err := Decoder{}.DecodeKafka(m.Headers, m.Value)
			check(t, r, err)
		})
	}
}

func TestDecodeKafka(t *testing.T) {
	h := func(kv ...string) []kafka.Header {
		var out []kafka.Header
		for i := 0; i+1 < len(kv); i += 2 {
			out = append(out, kafka.Header{Key: kv[i], Value: []byte(kv[i+1])})
		}
		return out
	}
	base := []string{"ce_specversion", "1.0", "ce_id", "i", "ce_source", "s", "ce_type", TypeDelete}
	if _, err := (Decoder{}).DecodeKafka(h(append(base, "content-type", "application/json")...), []byte(deleteJSON)); err != nil {
		t.Errorf("binary: %v", err)
	}
	// Kafka header values are not percent-encoded.
	r, err := Decoder{}.DecodeKafka(h(append(base, "ce_subject", "100%")...), []byte(deleteJSON))
	if err != nil || r.ID != "i" {
		t.Errorf("percent sign: %+v %v", r, err)
	}
	if _, err := (Decoder{}).DecodeKafka(h(append(base, "ce_subject", "\xff")...), []byte(deleteJSON)); !errors.Is(err, ErrInvalid) {
		t.Errorf("invalid UTF-8: %v", err)
	}
	if _, err := (Decoder{}).DecodeKafka(h(append(base, "content-type", "application/json", "Content-Type", "application/json")...), []byte(deleteJSON)); !errors.Is(err, ErrInvalid) {
		t.Errorf("repeated content-type: %v", err)
	}
	// ce- is NATS's prefix, not Kafka's: those headers are ignored.
	if _, err := (Decoder{}).DecodeKafka(h("ce-specversion", "1.0", "ce-id", "i", "ce-source", "s", "ce-type", TypeDelete), []byte(deleteJSON)); err == nil {
		t.Error("ce- headers were read on Kafka")
	}
	if _, err := (Decoder{}).DecodeKafka(h("content-type", "application/cloudevents+json"), []byte(structuredBody(TypeDelete, deleteJSON))); err != nil {
		t.Errorf("structured: %v", err)
	}
}
