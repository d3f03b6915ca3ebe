package control

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/segmentio/kafka-go"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/sink"
)

// FuzzDecode feeds the decoder arbitrary messages: headers (one "name:
// value" per line), a body, and the transport. It must never panic; every
// error must wrap one of the decoder's sentinels; every message it accepts
// must be well formed (a control type, an id, canonical Refs, the data of
// its type), must pass through the policy and the status builder, and its
// data, encoded again, must decode to the same request.
func FuzzDecode(f *testing.F) {
	bin := "ce-specversion: 1.0\nce-id: id-1\nce-source: test://x\nce-type: %s\nce-datacontenttype: application/json"
	kbin := "ce_specversion: 1.0\nce_id: id-1\nce_source: test://x\nce_type: %s\ncontent-type: application/json"
	for _, seed := range []struct {
		kafka   bool
		headers string
		body    string
	}{
		{false, strings.Replace(bin, "%s", TypeApply, 1), applyJSON},
		{false, strings.Replace(bin, "%s", TypeQuery, 1) + "\nce-replyto: a.b", queryJSON},
		{false, strings.Replace(bin, "%s", TypeDelete, 1), deleteJSON},
		{true, strings.Replace(kbin, "%s", TypeApply, 1), applyJSON},
		{true, strings.Replace(kbin, "%s", TypeDelete, 1), deleteJSON},
		{false, "Content-Type: application/cloudevents+json", structuredBody(TypeApply, applyJSON)},
		{true, "content-type: application/cloudevents+json; charset=utf-8", structuredBody(TypeQuery, queryJSON, "replyto", `"r"`)},
		{false, "Content-Type: application/cloudevents+json", `{"specversion":"1.0","id":"i","source":"s","type":"` + TypeDelete + `","data_base64":"eyJ3YXRjaGVyIjp7InZlcnNpb24iOiJ2MSIsImtpbmQiOiJLIiwibmFtZSI6Im4ifX0="}`},
		{false, strings.Replace(bin, "%s", TypeApply, 1), `{"watcher":{"version":"v1","kind":"K","selector":"a in (x, y), !b"},"watched":[{"version":"v1","kind":"ConfigMap","selector":"*"}],"debounce":"1s"}`},
		{false, "ce-id: %C3%A9\nce-specversion: \"1.0\"", `{}`},
		{false, "", `{"watcher":`},
	} {
		f.Add(seed.kafka, seed.headers, []byte(seed.body))
	}
	f.Fuzz(func(t *testing.T, useKafka bool, headers string, body []byte) {
		var hs []header
		for line := range strings.SplitSeq(headers, "\n") {
			k, v, _ := strings.Cut(line, ":")
			hs = append(hs, header{k, strings.TrimSpace(v)})
		}
		d := Decoder{MaxBytes: 4096}
		var (
			r   *Request
			err error
		)
		if useKafka {
			kh := make([]kafka.Header, len(hs))
			for i, h := range hs {
				kh[i] = kafka.Header{Key: h.name, Value: []byte(h.value)}
			}
			r, err = d.DecodeKafka(kh, body)
		} else {
			nh := nats.Header{}
			for _, h := range hs {
				nh[h.name] = append(nh[h.name], h.value)
			}
			r, err = d.DecodeNATS(nh, body)
		}
		size := len(body)
		for _, h := range hs {
			size += len(h.name) + len(h.value)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			if size > d.MaxBytes && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("%d bytes: %v, want ErrTooLarge", size, err)
			}
			if r != nil && (r.ID == "" || r.Watcher != (cache.Ref{}) || r.Apply != nil || r.Query != nil) {
				t.Fatalf("partial request carries more than attributes: %+v", r)
			}
			return
		}
		if size > d.MaxBytes {
			t.Fatalf("accepted %d bytes", size)
		}
		check(t, r)
		// The data, encoded again, decodes to the same request.
		var data any = DeleteData{Watcher: r.Watcher}
		switch r.Type {
		case TypeApply:
			data = r.Apply
		case TypeQuery:
			data = r.Query
		}
		b, err := json.Marshal(data)
		if err != nil {
			t.Fatal(err)
		}
		again := &Request{Type: r.Type}
		switch r.Type {
		case TypeApply:
			err = again.decodeApply(b)
		case TypeQuery:
			err = again.decodeQuery(b)
		case TypeDelete:
			err = again.decodeDelete(b)
		}
		if err != nil {
			t.Fatalf("re-encoded data %s: %v", b, err)
		}
		if again.Watcher != r.Watcher || !reflect.DeepEqual(again.Apply, r.Apply) || !reflect.DeepEqual(again.Query, r.Query) {
			t.Fatalf("round trip changed the request:\n%+v %+v %+v\n%+v %+v %+v", r, r.Apply, r.Query, again, again.Apply, again.Query)
		}
		// So does the whole event, written by the sinks' binding writers in
		// either mode on either transport.
		e := ce.New(ce.CloudEventsVersionV1)
		e.SetID(r.ID)
		e.SetSource(r.Source)
		e.SetType(r.Type)
		if r.ReplyTo != "" {
			e.SetExtension(ExtReplyTo, r.ReplyTo)
		}
		if err := e.SetData("application/json", b); err != nil {
			t.Fatal(err)
		}
		if err := e.Validate(); err != nil {
			return // sdk-go is stricter about some attributes than the binding
		}
		for _, mode := range []sink.Mode{sink.Binary, sink.Structured} {
			nm, err := sink.EncodeNATS(context.Background(), "s", mode, &e)
			if err != nil {
				t.Fatal(err)
			}
			km, err := sink.EncodeKafka(context.Background(), "t", mode, &e)
			if err != nil {
				t.Fatal(err)
			}
			for name, got := range map[string]func() (*Request, error){
				"nats":  func() (*Request, error) { return Decoder{}.DecodeNATS(nm.Header, nm.Data) },
				"kafka": func() (*Request, error) { return Decoder{}.DecodeKafka(km.Headers, km.Value) },
			} {
				back, err := got()
				if err != nil {
					t.Fatalf("%s %s: re-encoded event does not decode: %v", name, mode, err)
				}
				if back.ID != r.ID || back.Source != r.Source || back.ReplyTo != r.ReplyTo || back.Watcher != r.Watcher ||
					!reflect.DeepEqual(back.Apply, r.Apply) || !reflect.DeepEqual(back.Query, r.Query) {
					t.Fatalf("%s %s: event round trip changed the request:\n%+v\n%+v", name, mode, r, back)
				}
			}
		}
	})
}

// check asserts what every accepted request satisfies.
func check(t *testing.T, r *Request) {
	t.Helper()
	if r == nil || r.ID == "" || r.Source == "" {
		t.Fatalf("accepted without id or source: %+v", r)
	}
	canonical := func(what string, ref cache.Ref) {
		c, err := ref.Canonical()
		if err != nil || c != ref {
			t.Fatalf("%s %+v is not canonical (%+v, %v)", what, ref, c, err)
		}
	}
	canonical("watcher", r.Watcher)
	var refs []cache.Ref
	switch r.Type {
	case TypeApply:
		if r.Apply == nil || r.Query != nil || r.Apply.Watcher != r.Watcher || len(r.Apply.Watched) == 0 || r.Apply.Debounce.Duration < 0 {
			t.Fatalf("bad apply: %+v %+v", r, r.Apply)
		}
		refs = r.Apply.Watched
	case TypeQuery:
		if r.Query == nil || r.Apply != nil || r.Query.Watcher != r.Watcher || len(r.Query.Queries) == 0 {
			t.Fatalf("bad query: %+v %+v", r, r.Query)
		}
		refs = r.Query.Queries
	case TypeDelete:
		if r.Apply != nil || r.Query != nil {
			t.Fatalf("bad delete: %+v", r)
		}
	default:
		t.Fatalf("accepted type %q", r.Type)
	}
	seen := map[cache.Ref]bool{}
	for _, ref := range refs {
		canonical("ref", ref)
		if seen[ref] {
			t.Fatalf("duplicate ref %+v", ref)
		}
		seen[ref] = true
		_ = CheckPolicy(testPolicy(false), ref)
	}
	if err := checkSubjectPrefix(WatcherSubject(prefix, r.Watcher)); err != nil {
		t.Fatalf("subject of %+v: %v", r.Watcher, err)
	}
	w := r.Watcher
	st := &StatusData{RequestID: r.ID, RequestType: r.Type, Watcher: &w, Accepted: true}
	if _, err := statusEvent("depbridge://c/i", r.Source, time.Unix(0, 0), st, w.Key()); err != nil {
		t.Fatalf("status event: %v", err)
	}
}
