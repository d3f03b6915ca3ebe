package sink

import (
	"context"
	"errors"
	"strings"
	"testing"

	ce "github.com/cloudevents/sdk-go/v2/event"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
)

var (
	natsSinkCfg  = config.Sink{Name: "bus", JetStream: &config.JetStream{}}
	kafkaSinkCfg = config.Sink{Name: "bus", Kafka: &config.Kafka{}}
	httpSinkCfg  = config.Sink{Name: "bus", HTTP: &config.HTTP{}}
)

func TestEscapeToken(t *testing.T) {
	tests := map[string]struct{ in, want string }{
		"plain":         {"web-deps", "web-deps"},
		"empty":         {"", "_"},
		"dot":           {"my.config", "my_2Econfig"},
		"wildcards":     {"*>", "_2A_3E"},
		"underscore":    {"_", "_5F"},
		"whitespace":    {"a b\tc", "a_20b_09c"},
		"selector":      {"app=web,tier in (a,b)", "app_3Dweb_2Ctier_20in_20_28a_2Cb_29"},
		"non-ASCII":     {"é", "_C3_A9"},
		"percent":       {"%", "_25"},
		"uppercase hex": {"\xff", "_FF"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := EscapeToken(tt.in); got != tt.want {
				t.Errorf("EscapeToken(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestRouteTarget(t *testing.T) {
	cm := cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "apps", Name: "web.deps"}
	ns := cache.Ref{Version: "v1", Kind: "Namespace", Name: "prod"}
	sel := cache.Ref{Group: "apps", Version: "v1", Kind: "Deployment", Namespace: "x", Selector: "tier>1"}
	tests := map[string]struct {
		route   config.Route
		sink    config.Sink
		watcher cache.Ref
		want    string
		pattern string
		mode    Mode
	}{
		"default NATS subject": {
			route: config.Route{Name: "r", Sink: "bus"}, sink: natsSinkCfg, watcher: cm,
			want: "depbridge.reconcile.ConfigMap.apps.web_2Edeps", pattern: "depbridge.reconcile.*.*.*",
		},
		"cluster-scoped watcher": {
			route: config.Route{Name: "r", Sink: "bus"}, sink: natsSinkCfg, watcher: ns,
			want: "depbridge.reconcile.Namespace._.prod", pattern: "depbridge.reconcile.*.*.*",
		},
		"selector watcher": {
			route: config.Route{Name: "r", Sink: "bus", Subject: "w.{{.Group}}.{{.Kind}}.{{.Name}}.{{.Selector}}"}, sink: natsSinkCfg, watcher: sel,
			want: "w.apps.Deployment._.tier_3E1", pattern: "w.*.*.*.*",
		},
		"value inside a literal token": {
			route: config.Route{Name: "r", Sink: "bus", Subject: "events.ns-{{.Namespace}}.all", Mode: "structured"}, sink: natsSinkCfg, watcher: cm,
			want: "events.ns-apps.all", pattern: "events.*.all", mode: Structured,
		},
		"template with logic": {
			route: config.Route{Name: "r", Sink: "bus", Subject: `x.{{if .Namespace}}{{.Namespace}}{{else}}none{{end}}.{{printf "%s" .Kind}}`}, sink: natsSinkCfg, watcher: cm,
			want: "x.apps.ConfigMap", pattern: "x.*.*",
		},
		"fixed NATS subject": {
			route: config.Route{Name: "r", Sink: "bus", Subject: "depbridge.events"}, sink: natsSinkCfg, watcher: cm,
			want: "depbridge.events", pattern: "depbridge.events",
		},
		"fixed Kafka topic": {
			route: config.Route{Name: "r", Sink: "bus", Subject: "depbridge.reconcile"}, sink: kafkaSinkCfg, watcher: cm,
			want: "depbridge.reconcile", pattern: "depbridge.reconcile",
		},
		"templated Kafka topic": {
			route: config.Route{Name: "r", Sink: "bus", Subject: "reconcile_{{.Namespace}}"}, sink: kafkaSinkCfg, watcher: ns,
			want: "reconcile__", pattern: "reconcile_*",
		},
		"HTTP takes no subject": {
			route: config.Route{Name: "r", Sink: "bus", Subject: "ignored {{"}, sink: httpSinkCfg, watcher: cm,
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			r, err := NewRoute(tt.route, tt.sink, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := r.Target(tt.watcher)
			if err != nil {
				t.Fatal(err)
			}
			if got.Subject != tt.want || got.Mode != tt.mode {
				t.Errorf("Target = %+v, want subject %q, mode %v", got, tt.want, tt.mode)
			}
			// The compiled fast path and text/template must agree.
			if r.parts != nil {
				slow := *r
				slow.parts = nil
				if sg, err := slow.Target(tt.watcher); err != nil || sg != got {
					t.Errorf("text/template gives %+v, %v; compiled %+v", sg, err, got)
				}
			}
			if p := r.Pattern(); p != tt.pattern {
				t.Errorf("Pattern = %q, want %q", p, tt.pattern)
			}
			if tt.pattern != "" && tt.sink.Kafka == nil && !subjectCovers(r.Pattern(), got.Subject) {
				t.Errorf("pattern %q does not cover subject %q", r.Pattern(), got.Subject)
			}
		})
	}
}

func TestNewRouteErrors(t *testing.T) {
	tests := map[string]struct {
		route config.Route
		sink  config.Sink
		want  string
	}{
		"unparsable template": {config.Route{Name: "r1", Sink: "bus", Subject: "a.{{.Kind"}, natsSinkCfg, `route "r1": subject template "a.{{.Kind"`},
		"unknown field":       {config.Route{Name: "r2", Sink: "bus", Subject: "a.{{.Colour}}"}, natsSinkCfg, `route "r2": subject template "a.{{.Colour}}": template: r2:1:4: executing "r2" at <.Colour>: can't evaluate field Colour`},
		"wildcard literal":    {config.Route{Name: "r3", Sink: "bus", Subject: "a.*.{{.Kind}}"}, natsSinkCfg, `route "r3": subject template "a.*.{{.Kind}}": NATS subject "a.*.Sample" contains '*'`},
		"empty token":         {config.Route{Name: "r4", Sink: "bus", Subject: "a..{{.Kind}}"}, natsSinkCfg, "empty token"},
		"space":               {config.Route{Name: "r5", Sink: "bus", Subject: "a b.{{.Kind}}"}, natsSinkCfg, "not allowed"},
		"bad Kafka topic":     {config.Route{Name: "r6", Sink: "bus", Subject: "a/{{.Kind}}"}, kafkaSinkCfg, "Kafka topic"},
		"long Kafka topic":    {config.Route{Name: "r7", Sink: "bus", Subject: strings.Repeat("a", 250)}, kafkaSinkCfg, "longer than 249"},
		"unsupported mode":    {config.Route{Name: "r8", Sink: "bus", Mode: "batched"}, natsSinkCfg, `route "r8": mode: unsupported content mode "batched"`},
		"wrong sink":          {config.Route{Name: "r9", Sink: "other"}, natsSinkCfg, `route "r9": names sink "other"`},
		"empty template":      {config.Route{Name: "r10", Sink: "bus", Subject: "{{if false}}x{{end}}"}, natsSinkCfg, "empty NATS subject"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := NewRoute(tt.route, tt.sink, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestSubjectCovers(t *testing.T) {
	tests := []struct {
		filter, pattern string
		want            bool
	}{
		{"depbridge.>", "depbridge.reconcile.*.*.*", true},
		{"depbridge.reconcile.>", "depbridge.reconcile.*.*.*", true},
		{"depbridge.reconcile.*.*.*", "depbridge.reconcile.*.*.*", true},
		{"depbridge.reconcile.ConfigMap.>", "depbridge.reconcile.*.*.*", false},
		{"depbridge.reconcile.*.*", "depbridge.reconcile.*.*.*", false},
		{"depbridge.reconcile.>", "depbridge.reconcile", false},
		{">", "a", true},
		{"a.b", "a.b", true},
		{"a.*", "a.b", true},
		{"a.b", "a.*", false},
		{"other.>", "depbridge.x", false},
	}
	for _, tt := range tests {
		if got := subjectCovers(tt.filter, tt.pattern); got != tt.want {
			t.Errorf("subjectCovers(%q, %q) = %v, want %v", tt.filter, tt.pattern, got, tt.want)
		}
	}
}

func TestSuggestSubjects(t *testing.T) {
	for pattern, want := range map[string]string{
		"depbridge.reconcile.*.*.*": "depbridge.reconcile.>",
		"depbridge.events":          "depbridge.events",
		"*.x":                       ">",
	} {
		if got := suggestSubjects(pattern); got != want {
			t.Errorf("suggestSubjects(%q) = %q, want %q", pattern, got, want)
		}
	}
}

type checkFunc func(ctx context.Context, patterns []string) error

func (f checkFunc) Send(context.Context, Target, ce.Event) error { return nil }
func (f checkFunc) Close(context.Context) error                  { return nil }
func (f checkFunc) Check(ctx context.Context, p []string) error  { return f(ctx, p) }

func TestCheckRoutes(t *testing.T) {
	var got []string
	ok := checkFunc(func(_ context.Context, p []string) error { got = append(got, p...); return nil })
	bad := checkFunc(func(context.Context, []string) error { return errors.New("no stream") })
	r1, _ := NewRoute(config.Route{Name: "a", Sink: "bus"}, natsSinkCfg, ok)
	r2, _ := NewRoute(config.Route{Name: "b", Sink: "bus", Subject: "x.y"}, natsSinkCfg, ok)
	r3, _ := NewRoute(config.Route{Name: "c", Sink: "web"}, config.Sink{Name: "web", HTTP: &config.HTTP{}}, NewStdout(nil))
	if err := CheckRoutes(context.Background(), []*Route{r1, r2, r3}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != "depbridge.reconcile.*.*.* x.y" {
		t.Errorf("checked %v", got)
	}
	r4, _ := NewRoute(config.Route{Name: "d", Sink: "js2"}, config.Sink{Name: "js2", JetStream: &config.JetStream{}}, bad)
	if err := CheckRoutes(context.Background(), []*Route{r1, r4}); err == nil || !strings.Contains(err.Error(), `sink "js2": no stream`) {
		t.Errorf("err = %v", err)
	}
}

// FuzzEscapeToken checks that any value substituted into the default
// template gives a valid NATS subject with exactly the template's tokens
// and a valid Kafka topic character set, and that escaping is injective.
func FuzzEscapeToken(f *testing.F) {
	for _, s := range []string{"", "a", "a.b", "*", ">", "_", "_2E", " ", "é", "\x00", "a..b"} {
		f.Add(s, "x")
	}
	r, err := NewRoute(config.Route{Name: "f", Sink: "bus"}, natsSinkCfg, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		ea := EscapeToken(a)
		if err := validKafkaTopic(ea); err != nil && len(ea) <= maxTopicLength {
			t.Fatalf("EscapeToken(%q) = %q: %v", a, ea, err)
		}
		if a != b && ea == EscapeToken(b) {
			t.Fatalf("EscapeToken(%q) == EscapeToken(%q) == %q", a, b, ea)
		}
		tgt, err := r.Target(cache.Ref{Version: "v1", Kind: a, Namespace: b, Name: a + b})
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(tgt.Subject, "."); n != 4 {
			t.Fatalf("subject %q has %d dots, want 4", tgt.Subject, n)
		}
		if err := validNATSSubject(tgt.Subject); err != nil {
			t.Fatal(err)
		}
	})
}
