package config

import (
	"reflect"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/depbridge/depbridge/internal/cache"
)

// validate parses yaml (which must parse) and validates it.
func validate(t *testing.T, yaml string) (*Config, error) {
	t.Helper()
	c, err := parseWithEnv("t.yaml", []byte(yaml), env())
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return c, c.Validate()
}

func TestValidateAccepts(t *testing.T) {
	tests := map[string]string{
		"empty":                                "{}",
		"checkpoint in a file":                 "checkpoint: {file: {path: /var/lib/depbridge/checkpoints.json}}\n",
		"checkpoint on the embedded jetstream": "checkpoint: {jetstream: {sink: default}, interval: 1s}\n",
		"checkpoint on kafka":                  "sinks: [{name: k, kafka: {brokers: [\"a:9092\"]}}]\nroutes: [{name: default, sink: k}]\ncheckpoint: {kafka: {sink: k}}\n",
		"no sinks: the embedded sink and route default exist": `
subscriptions:
  - watcher: {version: v1, kind: A, name: a}
    watched: [{version: v1, kind: B, name: b}]
  - watcher: {version: v1, kind: A, name: c}
    watched: [{version: v1, kind: B, name: b}]
    route: default
control: {sink: default}
`,
		"no sinks: a route default to the embedded sink replaces the implicit one": `
routes: [{name: default, sink: default, includeObjects: true, includeSecretData: true}]
subscriptions: [{watcher: {version: v1, kind: A, name: a}, watched: [{version: v1, kind: B, selector: "*"}]}]
`,
		"no sinks: other routes to the embedded sink": `
routes: [{name: objects, sink: default, includeObjects: true}]
subscriptions:
  - {watcher: {version: v1, kind: A, name: a}, watched: [{version: v1, kind: B, name: b}], route: objects}
  - {watcher: {version: v1, kind: A, name: b}, watched: [{version: v1, kind: B, name: b}]}
`,
		"every sink kind": `
sinks:
  - {name: n, nats: {url: "nats://a:4222, tls://b:4222", token: t}}
  - {name: j, jetstream: {url: "nats://a:4222", credsFile: /c, stream: S, tls: {certFile: /c, keyFile: /k}}}
  - {name: k, kafka: {brokers: ["a:9092", "[::1]:9092"], sasl: {mechanism: SCRAM-SHA-256, username: u, password: p}, tls: {}}}
  - {name: h, http: {url: "https://x/y", headers: {Authorization: "Bearer x", X-Custom: "1"}}}
  - {name: s, stdout: {}}
routes:
  - {name: default, sink: n, subject: "{{.Group}}.{{.Version}}.{{.Kind}}.{{if .Namespace}}{{.Namespace}}{{else}}_{{end}}.{{.Name}}"}
  - {name: k, sink: k, subject: "topic-{{$.Kind | printf \"%s\"}}"}
  - {name: s, sink: s, mode: structured}
control:
  sink: k
  subject: depbridge-control
  route: k
  policy:
    allow:
      - {groups: ["", apps], kinds: [ConfigMap, Deployment], namespaces: [a, b]}
      - {groups: ["*"], kinds: ["*"], namespaces: ["*"]}
      - {kinds: [Secret]}
    allowSecrets: true
`,
		"subject with the selector": `
sinks: [{name: n, nats: {url: "nats://a:4222"}}, {name: k, kafka: {brokers: ["a:9092"]}}]
routes:
  - {name: default, sink: n, subject: "a.{{.Kind}}.{{.Selector}}"}
  - {name: k, sink: k, subject: "topic-{{if .Selector}}{{.Selector}}{{else}}{{.Name}}{{end}}"}
  - {name: s, sink: n, subject: "{{.Selector}}"}
subscriptions:
  - watcher: {version: v1, kind: ConfigMap, namespace: ns, selector: "app=web,tier in (a,b)"}
    watched: [{version: v1, kind: Secret, name: s}]
`,
		"cluster-wide and selector watchers": `
subscriptions:
  - watcher: {version: v1, kind: Namespace, name: prod}
    watched: [{group: rbac.authorization.k8s.io, version: v1, kind: ClusterRole, name: "system:admin"}]
  - watcher: {version: v1, kind: ConfigMap, namespace: ns, selector: "app=web"}
    watched: [{version: v1, kind: Secret, selector: "!legacy,env notin (dev)"}]
`,
	}
	for name, yaml := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := validate(t, yaml); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

var validateErrorCases = map[string]struct {
	yaml string
	want []string
}{
	"checkpoint: none or several stores": {
		yaml: "checkpoint: {interval: -1s}\n",
		want: []string{
			"t.yaml:1:1: checkpoint: set one of file, jetstream or kafka",
			"t.yaml:1:24: checkpoint.interval: must not be negative",
		},
	},
	"checkpoint: stores and their sinks": {
		yaml: `sinks: [{name: k, kafka: {brokers: ["a:9092"]}}, {name: s, stdout: {}}]
checkpoint:
  file: {path: ""}
  jetstream: {sink: k, bucket: "no spaces"}
  kafka: {sink: nowhere, topic: "bad topic"}
`,
		want: []string{
			"t.yaml:2:1: checkpoint: set only one of file, jetstream or kafka, not file and jetstream and kafka",
			`t.yaml:3:16: checkpoint.file.path: is required`,
			`t.yaml:4:21: checkpoint.jetstream.sink: sink "k" is not a jetstream sink`,
			`t.yaml:4:32: checkpoint.jetstream.bucket: a bucket name is letters, digits, '_' or '-'`,
			`t.yaml:5:17: checkpoint.kafka.sink: sink "nowhere" does not exist`,
			`t.yaml:5:33: checkpoint.kafka.topic: a Kafka topic is 1 to 249 letters, digits, '.', '_' or '-'`,
		},
	},
	"settings": {
		yaml: "cluster: Prod_1\nlisten: localhost\nengine: {workers: -1, maxInFlight: -2}\n",
		want: []string{
			"t.yaml:1:10: cluster: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
			`t.yaml:2:9: listen: must be host:port (for example ":8080")`,
			`t.yaml:3:19: engine.workers: must not be negative`,
			`t.yaml:3:36: engine.maxInFlight: must not be negative`,
		},
	},
	"sink names and transports": {
		yaml: `sinks:
  - name: a
    stdout: {}
  - name: a
    stdout: {}
  - stdout: {}
  - name: b
  - name: c
    stdout: {}
    http: {url: "http://x"}
  - name: "d e"
    stdout: null
`,
		want: []string{
			`t.yaml:4:11: sinks[1].name: duplicate sink name "a": sinks[0] has it too`,
			`t.yaml:6:5: sinks[2].name: is required`,
			`t.yaml:7:5: sinks[3]: one of nats, jetstream, kafka, http, stdout is required (write "stdout: {}" for stdout)`,
			`t.yaml:8:5: sinks[4]: exactly one of nats, jetstream, kafka, http, stdout may be set, got http and stdout`,
			`t.yaml:11:5: sinks[5]: one of nats, jetstream, kafka, http, stdout is required (write "stdout: {}" for stdout)`,
			`t.yaml:11:11: sinks[5].name: a name cannot contain whitespace or control characters`,
		},
	},
	"nats": {
		yaml: `sinks:
  - name: a
    nats:
      user: u
      token: t
  - name: b
    jetstream:
      url: "nats://u:hunter2@host:4222,http://h:1, nats://"
      password: hunter2
      credsFile: /c
      stream: a.b
      tls: {certFile: /c}
  - name: c
    nats: {url: "nats://h:1", tls: {keyFile: /k}}
`,
		want: []string{
			`t.yaml:3:5: sinks[0].nats.url: is required (for example "nats://127.0.0.1:4222")`,
			`t.yaml:3:5: sinks[0].nats.password: is required with user`,
			`t.yaml:3:5: sinks[0].nats: set at most one of user/password, token, credsFile and nkeyFile, got user/password and token`,
			`t.yaml:7:5: sinks[1].jetstream.user: is required with password`,
			`t.yaml:7:5: sinks[1].jetstream: set at most one of user/password, token, credsFile and nkeyFile, got user/password and credsFile`,
			`t.yaml:8:12: sinks[1].jetstream.url: server 2: the scheme must be one of nats, tls, ws, wss (as in nats://host:port)`,
			`t.yaml:8:12: sinks[1].jetstream.url: server 3: the host is missing`,
			"t.yaml:11:15: sinks[1].jetstream.stream: a stream name cannot contain whitespace, \".\", \"*\", \">\", \"/\" or \"\\\"",
			`t.yaml:12:7: sinks[1].jetstream.tls.keyFile: is required with certFile`,
			`t.yaml:14:31: sinks[2].nats.tls.certFile: is required with keyFile`,
		},
	},
	"kafka": {
		yaml: `sinks:
  - name: a
    kafka: {brokers: []}
  - name: b
    kafka:
      brokers: ["k:9092", "k", ":1", "k:x"]
      batchTimeout: -1s
      sasl: {mechanism: scram-sha-256}
  - name: c
    kafka:
      brokers: ["k:1"]
      sasl: {username: u, password: p}
`,
		want: []string{
			`t.yaml:3:13: sinks[0].kafka.brokers: at least one broker is required (for example "kafka:9092")`,
			`t.yaml:6:27: sinks[1].kafka.brokers[1]: must be host:port (for example "kafka:9092")`,
			`t.yaml:6:32: sinks[1].kafka.brokers[2]: host is missing (for example "kafka:9092")`,
			`t.yaml:6:38: sinks[1].kafka.brokers[3]: port must be a number from 0 to 65535 (for example "kafka:9092")`,
			`t.yaml:7:21: sinks[1].kafka.batchTimeout: must not be negative`,
			`t.yaml:8:7: sinks[1].kafka.sasl.username: is required`,
			`t.yaml:8:7: sinks[1].kafka.sasl.password: is required`,
			`t.yaml:8:25: sinks[1].kafka.sasl.mechanism: "scram-sha-256" is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512`,
			`t.yaml:12:7: sinks[2].kafka.sasl.mechanism: is required: one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512`,
		},
	},
	"negative durations": {
		yaml: `sinks:
  - {name: j, jetstream: {url: "nats://a:4222", ackTimeout: -1s}}
  - {name: k, kafka: {brokers: ["a:9092"], writeTimeout: -5s, batchTimeout: -1ms}}
  - {name: h, http: {url: "http://a", timeout: -1s}}
routes: [{name: default, sink: j}]
subscriptions:
  - {watcher: {version: v1, kind: A, name: a}, watched: [{version: v1, kind: B, name: b}], debounce: -1s}
checkpoint: {jetstream: {sink: j}, interval: -1m}
`,
		want: []string{
			`t.yaml:2:61: sinks[0].jetstream.ackTimeout: must not be negative`,
			`t.yaml:3:58: sinks[1].kafka.writeTimeout: must not be negative`,
			`t.yaml:3:77: sinks[1].kafka.batchTimeout: must not be negative`,
			`t.yaml:4:48: sinks[2].http.timeout: must not be negative`,
			`t.yaml:7:102: subscriptions[0].debounce: must not be negative`,
			`t.yaml:8:46: checkpoint.interval: must not be negative`,
		},
	},
	"http": {
		yaml: `sinks:
  - name: a
    http: {timeout: -1s}
  - name: b
    http:
      url: "ftp://x"
      headers: {"Bad Name": x, Content-Type: y, ce-id: z, X-Ok: "line\nbreak s3cret"}
  - name: c
    http: {url: "http://"}
  - name: d
    http: {url: "http://a b"}
`,
		want: []string{
			`t.yaml:3:5: sinks[0].http.url: is required (for example "http://broker-ingress.knative-eventing.svc/ns/default")`,
			`t.yaml:3:21: sinks[0].http.timeout: must not be negative`,
			`t.yaml:6:12: sinks[1].http.url: the scheme must be one of http, https (as in http://host:port)`,
			`t.yaml:7:29: sinks[1].http.headers["Bad Name"]: invalid header name`,
			`t.yaml:7:46: sinks[1].http.headers["Content-Type"]: is set by the CloudEvents HTTP binding and cannot be configured`,
			`t.yaml:7:56: sinks[1].http.headers["ce-id"]: is set by the CloudEvents HTTP binding and cannot be configured`,
			`t.yaml:7:65: sinks[1].http.headers["X-Ok"]: invalid header value (control characters or line breaks)`,
			`t.yaml:9:17: sinks[2].http.url: the host is missing`,
			`t.yaml:11:17: sinks[3].http.url: invalid URL: invalid character " " in host name`,
		},
	},
	"routes": {
		yaml: `sinks: [{name: s, stdout: {}}]
routes:
  - {name: r, sink: s}
  - {name: r, sink: nope}
  - {sink: s, mode: Binary}
  - {name: t, sink: s, includeSecretData: true}
  - {name: u}
`,
		want: []string{
			`t.yaml:4:12: routes[1].name: duplicate route name "r": routes[0] has it too`,
			`t.yaml:4:21: routes[1].sink: sink "nope" does not exist`,
			`t.yaml:5:5: routes[2].name: is required`,
			`t.yaml:5:21: routes[2].mode: "Binary" is not "binary" or "structured"`,
			`t.yaml:6:43: routes[3].includeSecretData: has no effect without includeObjects`,
			`t.yaml:7:5: routes[4].sink: is required`,
		},
	},
	"route to a missing sink without sinks": {
		yaml: "routes: [{name: r, sink: nats}]\n",
		want: []string{
			`t.yaml:1:26: routes[0].sink: sink "nats" does not exist (with no sinks, the only sink is the embedded "default")`,
		},
	},
	"subject templates": {
		yaml: `routes:
  - {name: a, sink: default, subject: "x.{{.Kind"}
  - {name: b, sink: default, subject: "x.{{.Labels}}"}
  - {name: c, sink: default, subject: "x.{{.Kind.Foo}}"}
  - {name: d, sink: default, subject: "{{range .Kind}}x{{end}}"}
  - {name: e, sink: default, subject: "{{with .Kind}}{{.Name}}{{end}}"}
  - {name: f, sink: default, subject: "{{if false}}x{{end}}"}
  - {name: g, sink: default, subject: "{{$.Spec}}"}
  - {name: h, sink: default, subject: "{{define \"t\"}}{{.Bad}}{{end}}x"}
  - {name: i, sink: default, subject: "{{(.Kind).Foo}}"}
  - {name: j, sink: default, subject: "{{template \"t\"}}"}
  - {name: k, sink: default, subject: "{{printf \"%5000s\" .Name}}"}
`,
		want: []string{
			`t.yaml:2:39: routes[0].subject: invalid template: subject:1: unclosed action`,
			`t.yaml:3:39: routes[1].subject: invalid template: unknown field .Labels; the fields are .Group, .Version, .Kind, .Namespace, .Name and .Selector`,
			`t.yaml:4:39: routes[2].subject: invalid template: .Kind is a string and has no field .Foo`,
			`t.yaml:5:39: routes[3].subject: invalid template: range is not supported in a subject`,
			`t.yaml:6:39: routes[4].subject: invalid template: subject:1:16: executing "subject" at <.Name>: can't evaluate field Name in type string`,
			`t.yaml:7:39: routes[5].subject: renders an empty subject`,
			`t.yaml:8:39: routes[6].subject: invalid template: unknown field .Spec; the fields are .Group, .Version, .Kind, .Namespace, .Name and .Selector`,
			`t.yaml:9:39: routes[7].subject: invalid template: define and block are not supported in a subject`,
			`t.yaml:10:39: routes[8].subject: invalid template: field chains ((.Kind).Foo) are not supported`,
			`t.yaml:11:39: routes[9].subject: invalid template: template calls are not supported in a subject`,
			`t.yaml:12:39: routes[10].subject: renders a subject longer than 4096 bytes`,
		},
	},
	"subscription refs": {
		yaml: `subscriptions:
  - watcher: {version: v1, kind: A, name: a}
    watched:
      - {version: v1, kind: B, selector: "app in (a"}
      - {kind: B, name: b}
      - {version: v1, name: b}
      - {version: v1, kind: B}
      - {version: v1, kind: B, name: b, selector: "x=y"}
      - {group: Apps, version: V1, kind: config-map, namespace: Demo, name: b}
      - {}
  - watched: []
  - watcher: {version: v1, kind: A, selector: "  "}
`,
		want: []string{
			`t.yaml:4:42: subscriptions[0].watched[0].selector: selector "app in (a": unable to parse requirement: found '', expected: ',' or ')'`,
			`t.yaml:5:9: subscriptions[0].watched[1].version: is required`,
			`t.yaml:6:9: subscriptions[0].watched[2].kind: is required`,
			`t.yaml:7:9: subscriptions[0].watched[3]: one of name or selector is required (selector "*" selects everything)`,
			`t.yaml:8:9: subscriptions[0].watched[4]: name and selector are mutually exclusive`,
			"t.yaml:9:17: subscriptions[0].watched[5].group: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
			`t.yaml:9:32: subscriptions[0].watched[5].version: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`,
			`t.yaml:9:42: subscriptions[0].watched[5].kind: a kind is CamelCase letters and digits, such as ConfigMap (not the resource name configmaps)`,
			`t.yaml:9:65: subscriptions[0].watched[5].namespace: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`,
			`t.yaml:10:9: subscriptions[0].watched[6]: is required`,
			`t.yaml:11:5: subscriptions[1].watcher: is required`,
			`t.yaml:11:5: subscriptions[1].watched: at least one watched object is required`,
			`t.yaml:12:5: subscriptions[2].watcher: one of name or selector is required (selector "*" selects everything)`,
			`t.yaml:12:5: subscriptions[2].watched: at least one watched object is required`,
		},
	},
	"duplicates after canonicalisation": {
		yaml: `subscriptions:
  - watcher: {version: v1, kind: A, selector: "b=1,a=1"}
    watched:
      - {version: v1, kind: B, selector: "x=1, y=2"}
      - {version: v1, kind: B, selector: "y=2,x=1"}
  - watcher: {version: v1, kind: A, selector: "a=1, b=1"}
    watched: [{version: v1, kind: B, name: b}]
`,
		want: []string{
			`t.yaml:5:9: subscriptions[0].watched[1]: duplicate of watched[0]`,
			`t.yaml:6:5: subscriptions[1].watcher: duplicate watcher: subscriptions[0] has it too`,
		},
	},
	"subscription route and debounce": {
		yaml: `sinks: [{name: s, stdout: {}}]
routes: [{name: r, sink: s}]
subscriptions:
  - {watcher: {version: v1, kind: A, name: a}, watched: [{version: v1, kind: B, name: b}]}
  - {watcher: {version: v1, kind: A, name: b}, watched: [{version: v1, kind: B, name: b}], route: x, debounce: -5s}
`,
		want: []string{
			`t.yaml:4:5: subscriptions[0].route: route "default" does not exist`,
			`t.yaml:5:99: subscriptions[1].route: route "x" does not exist`,
			`t.yaml:5:112: subscriptions[1].debounce: must not be negative`,
		},
	},
	"control": {
		yaml: `sinks: [{name: s, stdout: {}}, {name: k, kafka: {brokers: ["k:1"]}}, {name: j, jetstream: {url: "nats://x:1"}}]
routes: [{name: r, sink: s}]
control:
  sink: s
  maxMessageBytes: -1
  policy:
    allow:
      - groups: ["*", apps, Bad_Group]
        kinds: [configmaps, "", Secret, Secret]
        namespaces: ["*", "a b"]
`,
		want: []string{
			`t.yaml:3:1: control.route: route "default" does not exist`,
			`t.yaml:4:9: control.sink: sink "s" is not a jetstream or kafka sink, which the control channel needs to keep subscriptions durably`,
			`t.yaml:5:20: control.maxMessageBytes: must be positive`,
			`t.yaml:8:18: control.policy.allow[0].groups[0]: "*" must be the only entry`,
			"t.yaml:8:29: control.policy.allow[0].groups[2]: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
			`t.yaml:9:9: control.policy.allow[0].kinds: Secrets are denied unless policy.allowSecrets is true`,
			`t.yaml:9:17: control.policy.allow[0].kinds[0]: a kind is CamelCase letters and digits, such as ConfigMap (not the resource name configmaps)`,
			`t.yaml:9:29: control.policy.allow[0].kinds[1]: a kind is CamelCase letters and digits, such as ConfigMap (not the resource name configmaps)`,
			`t.yaml:9:41: control.policy.allow[0].kinds[3]: duplicate entry "Secret"`,
			`t.yaml:10:22: control.policy.allow[0].namespaces[0]: "*" must be the only entry`,
			`t.yaml:10:27: control.policy.allow[0].namespaces[1]: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')`,
		},
	},
	"control subjects": {
		yaml: `sinks: [{name: k, kafka: {brokers: ["k:1"]}}, {name: j, jetstream: {url: "nats://x:1"}}]
routes: [{name: default, sink: k}]
control: {sink: j, subject: "a..b"}
`,
		want: []string{
			`t.yaml:3:29: control.subject: a NATS subject has no empty tokens (no leading, trailing or double '.')`,
		},
	},
	"control kafka topic": {
		yaml: `sinks: [{name: k, kafka: {brokers: ["k:1"]}}]
routes: [{name: default, sink: k}]
control: {sink: k, subject: "a/b"}
`,
		want: []string{
			`t.yaml:3:29: control.subject: a Kafka topic is 1 to 249 letters, digits, '.', '_' or '-'`,
		},
	},
	"control without a sink": {
		yaml: "control: {subject: 'x.>'}\n",
		want: []string{
			`t.yaml:1:1: control.sink: is required: the name of a jetstream or kafka sink`,
		},
	},
	"control on a missing sink": {
		yaml: "control: {sink: bus}\n",
		want: []string{
			`t.yaml:1:17: control.sink: sink "bus" does not exist (with no sinks, the only sink is the embedded "default")`,
		},
	},
}

func TestValidateErrors(t *testing.T) {
	for name, tc := range validateErrorCases {
		t.Run(name, func(t *testing.T) {
			c, err := validate(t, tc.yaml)
			if got := errorLines(err); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("errors:\n  got  %q\n  want %q", got, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "s3cret") {
				t.Errorf("an error echoes a secret: %v", err)
			}
			_ = c
		})
	}
}

func TestValidateCanonicalisesOnlyWhenValid(t *testing.T) {
	const good = `subscriptions:
  - watcher: {version: v1, kind: A, namespace: n, selector: "b=1, a=1"}
    watched: [{version: v1, kind: B, selector: " * "}, {version: v1, kind: B, selector: "z in (2,1)"}]
`
	c, err := validate(t, good)
	if err != nil {
		t.Fatal(err)
	}
	s := c.Subscriptions[0]
	if got, want := s.Watcher.Selector, "a=1,b=1"; got != want {
		t.Errorf("watcher selector = %q, want %q", got, want)
	}
	if got, want := []string{s.Watched[0].Selector, s.Watched[1].Selector}, []string{"*", "z in (1,2)"}; !reflect.DeepEqual(got, want) {
		t.Errorf("watched selectors = %q, want %q", got, want)
	}

	c, err = validate(t, good+"engine: {workers: -1}\n")
	if err == nil {
		t.Fatal("Validate accepted negative workers")
	}
	if got := c.Subscriptions[0].Watcher.Selector; got != "b=1, a=1" {
		t.Errorf("an invalid config was changed: watcher selector = %q", got)
	}
}

func TestValidateConfigBuiltInCode(t *testing.T) {
	// No file: errors have a path but no position; zero values that have
	// defaults are valid without Default.
	c := &Config{
		Subscriptions: []Subscription{{
			Watcher: cache.Ref{Version: "v1", Kind: "A", Name: "a"},
			Watched: []cache.Ref{{Version: "v1", Kind: "B", Name: "b"}},
		}},
		Routes: []Route{{Name: "x", Sink: "default"}},
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	c.Subscriptions[0].Debounce = metav1.Duration{Duration: -time.Second}
	err := c.Validate()
	want := []*FieldError{{Path: "subscriptions[0].debounce", Msg: "must not be negative"}}
	if got := FieldErrors(err); !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestExamples(t *testing.T) {
	for _, ex := range examples(t) {
		t.Run(ex.name, func(t *testing.T) {
			c, err := parseWithEnv(ex.name, ex.data, anyEnv)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if err := c.Validate(); err != nil {
				t.Fatalf("validate: %v", err)
			}
		})
	}
}
