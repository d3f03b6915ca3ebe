package control

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	ce "github.com/cloudevents/sdk-go/v2/event"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
)

// TestDocs keeps docs/control.md true: its example messages decode, its
// status examples have the fields StatusData has, and its subjects, keys
// and rejection reason are what the code produces.
func TestDocs(t *testing.T) {
	raw, err := os.ReadFile("../../docs/control.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	var examples []string
	for _, part := range strings.Split(doc, "<!-- control-example -->")[1:] {
		body, ok := strings.CutPrefix(strings.TrimSpace(part), "```json\n")
		end := strings.Index(body, "```")
		if !ok || end < 0 {
			t.Fatalf("a control-example marker is not followed by a json block")
		}
		examples = append(examples, body[:end])
	}
	if len(examples) != 5 {
		t.Errorf("%d examples, want 5 (apply, delete, query, status, rejection)", len(examples))
	}
	var reason string
	for i, ex := range examples {
		var e ce.Event
		if err := json.Unmarshal([]byte(ex), &e); err != nil {
			t.Fatalf("example %d is not a CloudEvent: %v", i, err)
		}
		if e.Type() == TypeStatus {
			dec := json.NewDecoder(bytes.NewReader(e.Data()))
			dec.DisallowUnknownFields()
			var st StatusData
			if err := dec.Decode(&st); err != nil {
				t.Errorf("status example %d: %v", i, err)
			}
			if e.Extensions()[ExtCorrelationID] != st.RequestID {
				t.Errorf("status example %d: correlationid %v, requestId %q", i, e.Extensions()[ExtCorrelationID], st.RequestID)
			}
			if !st.Accepted {
				reason = st.Reason
			}
			continue
		}
		if _, err := (Decoder{}).DecodeNATS(structuredCT, []byte(ex)); err != nil {
			t.Errorf("example %d (%s) does not decode: %v", i, e.Type(), err)
		}
	}

	// The rejection example's reason is the processor's.
	req, err := Decoder{}.DecodeNATS(structuredCT, []byte(structuredBody(TypeApply,
		`{"watcher":{"group":"example.com","version":"v1","kind":"Function","namespace":"demo","name":"resize"},`+
			`"watched":[{"version":"v1","kind":"Secret","namespace":"team-a","name":"db"}]}`)))
	if err != nil {
		t.Fatal(err)
	}
	p := newProcessor(config.Control{Policy: config.Policy{Allow: []config.PolicyRule{{}}}}, &fakeSubs{}, Options{}.withDefaults())
	st, _ := p.handle(context.Background(), req)
	if st.Reason != reason {
		t.Errorf("documented reason\n  %s\nactual\n  %s", reason, st.Reason)
	}

	w := cache.Ref{Group: "example.com", Version: "v1", Kind: "Function", Namespace: "demo", Name: "resize"}
	for _, want := range []string{
		"\n" + WatcherSubject("depbridge.control", w) + "\n",
		"\n" + StatusSubject("depbridge.control", w) + "\n",
		"W=" + WatcherSubject("depbridge.control", w) + "\n",
		"K=" + w.Key() + "\n",
		"`" + cache.Ref{Version: "v1", Kind: "ConfigMap", Selector: "app=web"}.Key() + "`",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("docs/control.md does not show %q", strings.TrimSpace(want))
		}
	}
}

func ExampleWatcherSubject() {
	w := cache.Ref{Group: "example.com", Version: "v1", Kind: "Function", Namespace: "demo", Name: "resize"}
	sel := cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "team-a", Selector: "tier=web,app=shop"}
	sel, _ = sel.Canonical()
	fmt.Println(WatcherSubject("depbridge.control", w))
	fmt.Println(StatusSubject("depbridge.control", w))
	fmt.Println(WatcherSubject("depbridge.control", sel))
	fmt.Println(sel.Key())
	// Output:
	// depbridge.control.watcher.example_2Ecom.v1.Function.demo.resize._
	// depbridge.control.status.example_2Ecom.v1.Function.demo.resize._
	// depbridge.control.watcher._.v1.ConfigMap.team-a._.app_3Dshop_2Ctier_3Dweb
	// v1/ConfigMap/team-a/?app=shop,tier=web
}
