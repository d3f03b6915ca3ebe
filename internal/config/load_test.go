package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/depbridge/depbridge/internal/cache"
)

// env is a fake environment for parseWithEnv.
func env(kv ...string) func(string) (string, bool) {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// errorLines renders the problems in err one per line, as bridge validate
// would print them.
func errorLines(err error) []string {
	var out []string
	for _, fe := range FieldErrors(err) {
		out = append(out, fe.Error())
	}
	return out
}

func TestParse(t *testing.T) {
	yes, no := true, false
	tests := map[string]struct {
		yaml string
		want Config
	}{
		"empty mapping gets every default": {
			yaml: "{}\n",
			want: Config{Cluster: "default", Listen: ":8080", Engine: Engine{Workers: 256, MaxInFlight: 4096}},
		},
		"all kinds of values": {
			yaml: `
cluster: prod
listen: 127.0.0.1:9090
sinks:
  - name: js
    jetstream: {url: "nats://a:4222", stream: S, tls: {caFile: /ca, insecureSkipVerify: true}}
  - name: k
    kafka: {brokers: ["k:9092"], batchTimeout: 250ms, sasl: {mechanism: PLAIN, username: u, password: p}}
  - name: h
    http: {url: "https://x", headers: {X-A: b}}
  - name: out
    stdout: {}
routes:
  - {name: r, sink: js, subject: "a.{{.Name}}", mode: structured, includeObjects: true, includeSecretData: true}
subscriptions:
  - watcher: {group: apps, version: v1, kind: Deployment, namespace: ns, name: web}
    watched: [{version: v1, kind: ConfigMap, namespace: ns, selector: "b=1, a=1"}]
    route: r
    initialReconcile: false
    debounce: 1m30s
control:
  sink: js
  policy: {allow: [{groups: [""], kinds: [ConfigMap], namespaces: ["*"]}], allowSecrets: true}
engine: {workers: 2}
`,
			want: Config{
				Cluster: "prod", Listen: "127.0.0.1:9090",
				Sinks: []Sink{
					{Name: "js", JetStream: &JetStream{NATSConn: NATSConn{URL: "nats://a:4222", TLS: &TLS{CAFile: "/ca", InsecureSkipVerify: true}}, Stream: "S",
						AckTimeout: metav1.Duration{Duration: 5 * time.Second}}},
					{Name: "k", Kafka: &Kafka{Brokers: []string{"k:9092"}, BatchTimeout: metav1.Duration{Duration: 250 * time.Millisecond}, SASL: &SASL{Mechanism: "PLAIN", Username: "u", Password: "p"},
						WriteTimeout: metav1.Duration{Duration: 10 * time.Second}, ClientID: "depbridge"}},
					{Name: "h", HTTP: &HTTP{URL: "https://x", Headers: map[string]string{"X-A": "b"}, Timeout: metav1.Duration{Duration: 10 * time.Second}, MaxConnections: 64}},
					{Name: "out", Stdout: &Stdout{}},
				},
				Routes: []Route{{Name: "r", Sink: "js", Subject: "a.{{.Name}}", Mode: "structured", IncludeObjects: true, IncludeSecretData: true}},
				Subscriptions: []Subscription{{
					Watcher:          cache.Ref{Group: "apps", Version: "v1", Kind: "Deployment", Namespace: "ns", Name: "web"},
					Watched:          []cache.Ref{{Version: "v1", Kind: "ConfigMap", Namespace: "ns", Selector: "b=1, a=1"}},
					Route:            "r",
					InitialReconcile: &no,
					Debounce:         metav1.Duration{Duration: 90 * time.Second},
				}},
				Control: &Control{Sink: "js", Subject: "depbridge.control", Route: "default", MaxMessageBytes: 65536,
					Policy: Policy{Allow: []PolicyRule{{Groups: []string{""}, Kinds: []string{"ConfigMap"}, Namespaces: []string{"*"}}}, AllowSecrets: true}},
				Engine: Engine{Workers: 2, MaxInFlight: 4096},
			},
		},
		"defaults of routes and subscriptions": {
			yaml: `
routes: [{name: default, sink: default}]
subscriptions: [{watcher: {version: v1, kind: A, name: a}, watched: [{version: v1, kind: B, name: b}]}]
`,
			want: Config{
				Cluster: "default", Listen: ":8080", Engine: Engine{Workers: 256, MaxInFlight: 4096},
				Routes: []Route{{Name: "default", Sink: "default", Subject: DefaultSubject, Mode: "binary"}},
				Subscriptions: []Subscription{{
					Watcher: cache.Ref{Version: "v1", Kind: "A", Name: "a"}, Watched: []cache.Ref{{Version: "v1", Kind: "B", Name: "b"}},
					Route: "default", InitialReconcile: &yes,
				}},
			},
		},
		"anchors and aliases": {
			yaml: `
subscriptions:
  - watcher: {version: v1, kind: A, name: a}
    watched: &common [{version: v1, kind: B, name: b}]
  - watcher: {version: v1, kind: A, name: c}
    watched: *common
`,
			want: Config{
				Cluster: "default", Listen: ":8080", Engine: Engine{Workers: 256, MaxInFlight: 4096},
				Subscriptions: []Subscription{
					{Watcher: cache.Ref{Version: "v1", Kind: "A", Name: "a"}, Watched: []cache.Ref{{Version: "v1", Kind: "B", Name: "b"}}, Route: "default", InitialReconcile: &yes},
					{Watcher: cache.Ref{Version: "v1", Kind: "A", Name: "c"}, Watched: []cache.Ref{{Version: "v1", Kind: "B", Name: "b"}}, Route: "default", InitialReconcile: &yes},
				},
			},
		},
		"null values leave defaults; trailing empty document": {
			yaml: "cluster:\nengine: ~\nsinks: null\n---\n",
			want: Config{Cluster: "default", Listen: ":8080", Engine: Engine{Workers: 256, MaxInFlight: 4096}},
		},
		"a duration with no value is left out": {
			yaml: "sinks:\n  - name: h\n    http:\n      url: http://x\n      timeout:\n",
			want: Config{Cluster: "default", Listen: ":8080", Engine: Engine{Workers: 256, MaxInFlight: 4096},
				Sinks: []Sink{{Name: "h", HTTP: &HTTP{URL: "http://x", Timeout: metav1.Duration{Duration: 10 * time.Second}, MaxConnections: 64}}}},
		},
		"JSON is YAML": {
			yaml: `{"cluster": "c", "engine": {"workers": 7}}`,
			want: Config{Cluster: "c", Listen: ":8080", Engine: Engine{Workers: 7, MaxInFlight: 4096}},
		},
		"a date-like string stays as written": {
			yaml: "cluster: 2024-01-02\n",
			want: Config{Cluster: "2024-01-02", Listen: ":8080", Engine: Engine{Workers: 256, MaxInFlight: 4096}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := parseWithEnv("t.yaml", []byte(tc.yaml), env())
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if got.src == nil || got.src.file != "t.yaml" {
				t.Errorf("src = %+v, want the file recorded", got.src)
			}
			got.src = nil
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", *got, tc.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := map[string]struct {
		yaml string
		want []string
	}{
		"syntax error": {
			yaml: "cluster: a\nsinks: [\n",
			want: []string{"t.yaml:2: invalid YAML: did not find expected node content"},
		},
		"tab indentation": {
			yaml: "engine:\n\tworkers: 1\n",
			want: []string{"t.yaml:2: invalid YAML: found character that cannot start any token"},
		},
		"empty file": {
			yaml: "",
			want: []string{"t.yaml: empty configuration; write {} for one with every default"},
		},
		"only comments": {
			yaml: "# nothing yet\n",
			want: []string{"t.yaml: empty configuration; write {} for one with every default"},
		},
		"two documents": {
			yaml: "cluster: a\n---\ncluster: b\n",
			want: []string{"t.yaml:2:1: more than one YAML document; a configuration file holds one"},
		},
		"top level is a list": {
			yaml: "- cluster: a\n",
			want: []string{"t.yaml:1:1: expected a mapping of fields, got a list"},
		},
		"unknown top-level field with suggestion": {
			yaml: "cluster: a\nsubscription: []\n",
			want: []string{`t.yaml:2:1: subscription: unknown field (did you mean "subscriptions"?)`},
		},
		"unknown field without suggestion": {
			yaml: "frobnicate: true\n",
			want: []string{"t.yaml:1:1: frobnicate: unknown field"},
		},
		"field names are case-sensitive": {
			yaml: "Cluster: a\n",
			want: []string{`t.yaml:1:1: Cluster: unknown field (did you mean "cluster"?)`},
		},
		"unknown field deep in a list": {
			yaml: `subscriptions:
  - watcher: {version: v1, kind: A, name: a}
    watched:
      - {version: v1, kind: B, name: b}
      - version: v1
        kind: B
        selecter: "app=x"
`,
			want: []string{`t.yaml:7:9: subscriptions[0].watched[1].selecter: unknown field (did you mean "selector"?)`},
		},
		"inline fields of jetstream": {
			yaml: "sinks:\n  - name: a\n    jetstream:\n      url: nats://x:1\n      natsConn: {}\n",
			want: []string{"t.yaml:5:7: sinks[0].jetstream.natsConn: unknown field"},
		},
		"duplicate keys": {
			yaml: "cluster: a\nlisten: :1\ncluster: b\n",
			want: []string{"t.yaml:3:1: cluster: duplicate key (first at line 1)"},
		},
		"duplicate keys in a header map": {
			yaml: "sinks:\n- name: h\n  http:\n    url: http://x\n    headers:\n      A: b\n      A: c\n",
			want: []string{`t.yaml:7:7: sinks[0].http.headers.A: duplicate key (first at line 6)`},
		},
		"wrong types": {
			yaml: `cluster: 12
listen: [a]
sinks:
  - name: a
    kafka: {brokers: kafka:9092}
routes: {name: x}
subscriptions:
  - watcher: {version: v1, kind: A, name: a}
    watched: [{version: 1, kind: B, name: b}]
    initialReconcile: "no"
    debounce: 10
engine: {workers: "4"}
`,
			want: []string{
				"t.yaml:1:10: cluster: expected a string, got a number (quote it to make it a string)",
				"t.yaml:2:9: listen: expected a string, got a list",
				"t.yaml:5:22: sinks[0].kafka.brokers: expected a list, got a string",
				"t.yaml:6:9: routes: expected a list, got a mapping",
				"t.yaml:9:25: subscriptions[0].watched[0].version: expected a string, got a number (quote it to make it a string)",
				"t.yaml:10:23: subscriptions[0].initialReconcile: expected a boolean (true or false), got a string",
				`t.yaml:11:15: subscriptions[0].debounce: expected a duration such as "500ms" or "1m30s", got a number`,
				"t.yaml:12:19: engine.workers: expected an integer, got a string",
			},
		},
		"yes is a string in YAML 1.2": {
			yaml: "routes: [{name: r, sink: s, includeObjects: yes}]\n",
			want: []string{"t.yaml:1:45: routes[0].includeObjects: expected a boolean (true or false), got a string"},
		},
		"bad durations": {
			yaml: "subscriptions:\n- {debounce: 5x}\n- {debounce: '-'}\n",
			want: []string{
				`t.yaml:2:14: subscriptions[0].debounce: unknown unit "x" in duration "5x"`,
				`t.yaml:3:14: subscriptions[1].debounce: invalid duration "-"`,
			},
		},
		"numbers that do not fit": {
			yaml: "engine: {workers: 1.5}\ncontrol: {sink: s, maxMessageBytes: 1e40}\n",
			want: []string{
				"t.yaml:1:19: engine.workers: expected an integer, got a number with a fraction",
				"t.yaml:2:37: control.maxMessageBytes: expected an integer, got a number out of its range",
			},
		},
		"not a finite number": {
			yaml: "engine: {workers: .nan}\n",
			want: []string{"t.yaml:1:19: engine.workers: expected a finite number"},
		},
		"password type error does not echo the value": {
			yaml: "sinks: [{name: a, nats: {url: 'nats://x:1', user: u, password: 314159}}]\n",
			want: []string{"t.yaml:1:64: sinks[0].nats.password: expected a string, got a number (quote it to make it a string)"},
		},
		"a value that does not fit its explicit tag is not echoed": {
			yaml: "sinks: [{name: a, nats: {url: 'nats://x:1', user: u, password: !!int hunter2}}]\n",
			want: []string{"t.yaml:1:64: sinks[0].nats.password: invalid value for YAML tag !!int"},
		},
		"merge keys are rejected": {
			yaml: "engine: &e {workers: 2}\ncontrol:\n  <<: *e\n",
			want: []string{"t.yaml:3:3: control: merge keys (<<) are not supported; repeat the fields instead"},
		},
		"alias of an enclosing list": {
			yaml: "subscriptions: &s\n  - watched: *s\n",
			want: []string{"t.yaml:2:5: subscriptions[0].watched[0].watched: unknown field"},
		},
		"non-string mapping key": {
			yaml: "? [a]\n: b\n",
			want: []string{"t.yaml:1:3: a mapping key must be a string, got a list"},
		},
		"many problems are all reported in file order": {
			yaml: "engine: {workers: x}\ncluster: 1\nlisten: 2\n",
			want: []string{
				"t.yaml:1:19: engine.workers: expected an integer, got a string",
				"t.yaml:2:10: cluster: expected a string, got a number (quote it to make it a string)",
				"t.yaml:3:9: listen: expected a string, got a number (quote it to make it a string)",
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c, err := parseWithEnv("t.yaml", []byte(tc.yaml), env())
			if err == nil {
				t.Fatalf("parse succeeded: %+v", c)
			}
			if c != nil {
				t.Errorf("parse returned a config with its error")
			}
			if got := errorLines(err); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("errors:\n  got  %q\n  want %q", got, tc.want)
			}
			for _, fe := range FieldErrors(err) {
				if strings.Contains(fe.Msg, "314159") || strings.Contains(fe.Msg, "hunter2") {
					t.Errorf("error echoes a secret: %v", fe)
				}
			}
		})
	}
}

func TestParseAliasBomb(t *testing.T) {
	// Each level doubles the size: 2^40 nodes if expanded.
	var b strings.Builder
	b.WriteString("a0: &a0 [x, x]\n")
	for i := 1; i <= 40; i++ {
		b.WriteString("a" + strconv.Itoa(i) + ": &a" + strconv.Itoa(i) + " [*a" + strconv.Itoa(i-1) + ", *a" + strconv.Itoa(i-1) + "]\n")
	}
	start := time.Now()
	_, err := parseWithEnv("t.yaml", []byte(b.String()), env())
	if err == nil {
		t.Fatal("parse succeeded")
	}
	if !strings.Contains(err.Error(), "unknown field") {
		t.Errorf("err = %v, want unknown fields", err)
	}
	// Under a type that accepts anything the bomb would expand: the
	// budget must stop it.
	d := decoder{file: "t.yaml", pos: map[string]pos{}}
	root, perr := parseYAML("t.yaml", []byte(b.String()))
	if perr != nil {
		t.Fatal(perr)
	}
	var v map[string]any
	errs := d.decodeInto(root, &v)
	if len(errs) == 0 || !strings.Contains(errs[0].Msg, "too many nodes or alias expansions") {
		t.Errorf("errs = %v, want the expansion budget to stop the walk", errs)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("took %v", time.Since(start))
	}
}

func TestDecodeAliasCycle(t *testing.T) {
	// Only a type that accepts anything can follow an alias into itself;
	// Config has none, but the walk must not loop if one is added.
	root, err := parseYAML("t.yaml", []byte("a: &s\n  b: *s\n"))
	if err != nil {
		t.Fatal(err)
	}
	d := decoder{file: "t.yaml", pos: map[string]pos{}}
	var v map[string]any
	errs := d.decodeInto(root, &v)
	var got []string
	for _, e := range errs {
		got = append(got, e.Error())
	}
	want := []string{`t.yaml:2:6: ["a"].b.b: alias *s refers to itself`}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestExpandEnv(t *testing.T) {
	const head = "sinks:\n- name: s\n  "
	tests := map[string]struct {
		yaml    string
		env     func(string) (string, bool)
		want    func(*Config) string
		wantVal string
		wantErr []string
	}{
		"password from the environment": {
			yaml:    head + "nats: {url: 'nats://x:1', user: u, password: '${PW}'}\n",
			env:     env("PW", "s3cret"),
			want:    func(c *Config) string { return c.Sinks[0].NATS.Password },
			wantVal: "s3cret",
		},
		"token inside text": {
			yaml:    head + "jetstream: {url: 'nats://x:1', token: 'pre-${A}-${B}'}\n",
			env:     env("A", "1", "B", "2"),
			want:    func(c *Config) string { return c.Sinks[0].JetStream.Token },
			wantVal: "pre-1-2",
		},
		"empty variable is set": {
			yaml:    head + "nats: {url: 'nats://x:1', user: '${U}', password: p}\n",
			env:     env("U", ""),
			want:    func(c *Config) string { return c.Sinks[0].NATS.User },
			wantVal: "",
		},
		"value is not expanded twice": {
			yaml:    head + "kafka: {brokers: ['k:1'], sasl: {mechanism: PLAIN, username: u, password: '${PW}'}}\n",
			env:     env("PW", "${OTHER}"),
			want:    func(c *Config) string { return c.Sinks[0].Kafka.SASL.Password },
			wantVal: "${OTHER}",
		},
		"header value": {
			yaml:    head + "http: {url: 'http://x', headers: {Authorization: 'Bearer ${TOKEN}'}}\n",
			env:     env("TOKEN", "t0k"),
			want:    func(c *Config) string { return c.Sinks[0].HTTP.Headers["Authorization"] },
			wantVal: "Bearer t0k",
		},
		"dollar without brace is literal": {
			yaml:    head + "nats: {url: 'nats://x:1', user: u, password: 'pa$$w$rd'}\n",
			env:     env(),
			want:    func(c *Config) string { return c.Sinks[0].NATS.Password },
			wantVal: "pa$$w$rd",
		},
		"non-credential fields are not expanded": {
			yaml:    head + "nats: {url: 'nats://${HOST}:1'}\n",
			env:     env("HOST", "h"),
			want:    func(c *Config) string { return c.Sinks[0].NATS.URL },
			wantVal: "nats://${HOST}:1",
		},
		"missing variables": {
			yaml: head + "kafka:\n    brokers: ['k:1']\n    sasl:\n      mechanism: PLAIN\n      username: '${KUSER}'\n      password: '${KPASS}'\n",
			env:  env("KUSER", "u"),
			wantErr: []string{
				"t.yaml:8:17: sinks[0].kafka.sasl.password: environment variable KPASS is not set",
			},
		},
		"malformed references": {
			yaml: head + "http:\n    url: http://x\n    headers: {A: 'x${', B: '${}', C: '${1X}', D: '${a b}'}\n",
			env:  env(),
			wantErr: []string{
				`t.yaml:5:18: sinks[0].http.headers["A"]: "${" without a closing "}"`,
				`t.yaml:5:28: sinks[0].http.headers["B"]: "${...}" must enclose an environment variable name ([A-Za-z_][A-Za-z0-9_]*)`,
				`t.yaml:5:38: sinks[0].http.headers["C"]: "${...}" must enclose an environment variable name ([A-Za-z_][A-Za-z0-9_]*)`,
				`t.yaml:5:50: sinks[0].http.headers["D"]: "${...}" must enclose an environment variable name ([A-Za-z_][A-Za-z0-9_]*)`,
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c, err := parseWithEnv("t.yaml", []byte(tc.yaml), tc.env)
			if tc.wantErr != nil {
				if got := errorLines(err); !reflect.DeepEqual(got, tc.wantErr) {
					t.Errorf("errors:\n  got  %q\n  want %q", got, tc.wantErr)
				}
				if c != nil {
					t.Error("config returned with an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := tc.want(c); got != tc.wantVal {
				t.Errorf("got %q, want %q", got, tc.wantVal)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("cluster: c\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(good)
	if err != nil || c.Cluster != "c" {
		t.Fatalf("Load = %+v, %v", c, err)
	}

	missing := filepath.Join(dir, "missing.yaml")
	_, err = Load(missing)
	if got, want := errorLines(err), []string{missing + ": read configuration: open: no such file or directory"}; !reflect.DeepEqual(got, want) {
		t.Errorf("missing file: got %q, want %q", got, want)
	}
	if !errors.Is(err, os.ErrNotExist) {
		// A caller may want to tell "no file" apart; FieldError keeps
		// only the text, which is enough for the CLI.
		t.Log("missing file error does not wrap os.ErrNotExist")
	}

	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, make([]byte, maxFileBytes+1), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(big)
	if got, want := errorLines(err), []string{big + ": configuration is larger than 16 MiB"}; !reflect.DeepEqual(got, want) {
		t.Errorf("big file: got %q, want %q", got, want)
	}
}

func TestFieldError(t *testing.T) {
	tests := map[string]struct {
		err  FieldError
		want string
	}{
		"everything":   {FieldError{File: "f.yaml", Line: 3, Column: 5, Path: "a.b", Msg: "bad"}, "f.yaml:3:5: a.b: bad"},
		"no column":    {FieldError{File: "f.yaml", Line: 3, Path: "a", Msg: "bad"}, "f.yaml:3: a: bad"},
		"no position":  {FieldError{File: "f.yaml", Msg: "bad"}, "f.yaml: bad"},
		"no file":      {FieldError{Path: "a", Msg: "bad"}, "a: bad"},
		"line no file": {FieldError{Line: 2, Column: 1, Msg: "bad"}, "line 2:1: bad"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := tc.err.Error(); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestFieldErrors(t *testing.T) {
	a := &FieldError{Path: "a", Msg: "x"}
	b := &FieldError{Path: "b", Msg: "y"}
	plain := errors.New("plain")
	got := FieldErrors(errors.Join(a, errors.Join(b, plain)))
	want := []*FieldError{a, b, {Msg: "plain"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if FieldErrors(nil) != nil {
		t.Error("FieldErrors(nil) is not nil")
	}
}
