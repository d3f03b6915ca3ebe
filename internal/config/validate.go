package config

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"
	"unicode"

	"golang.org/x/net/http/httpguts"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/depbridge/depbridge/internal/cache"
)

// Validate reports every problem of c, each as a *FieldError naming the
// field path and, for a Config that Load or Parse returned, the file, line
// and column; the problems are joined with errors.Join (see FieldErrors).
// A field left empty that has a default is valid: Validate does not need
// Default to have run.
//
// When there are no problems, Validate canonicalises the watcher and
// watched Refs of every subscription in place (see cache.Ref.Canonical);
// when there are, it changes nothing.
//
// What it checks:
//   - cluster is a DNS-1123 subdomain; listen is host:port.
//   - Sinks: names are non-empty and unique; exactly one transport is set;
//     nats and jetstream have a url, user and password together, at most
//     one of user/password, token, credsFile and nkeyFile; kafka has at
//     least one host:port broker, a SASL mechanism of PLAIN, SCRAM-SHA-256
//     or SCRAM-SHA-512 with a username and password; http has an http(s)
//     url and valid header names that the CloudEvents binding does not set
//     itself; tls has certFile and keyFile both or neither; durations
//     (jetstream ackTimeout, kafka batchTimeout and writeTimeout, http
//     timeout) are not negative.
//   - Routes: names are non-empty and unique; the sink exists; mode is
//     binary or structured; subject is a text/template that uses only
//     .Group, .Version, .Kind, .Namespace, .Name and .Selector (no range,
//     define or template calls), and renders a non-empty subject;
//     includeSecretData needs includeObjects.
//   - Subscriptions: the watcher and every watched Ref are valid (version
//     and kind set, exactly one of name and selector, a selector that
//     parses), with a sane group, version, kind and namespace; at least one
//     watched Ref and none twice; no watcher in two subscriptions; the route
//     exists; debounce is not negative.
//   - Control: the sink exists and is a jetstream or kafka sink; the
//     subject is a valid NATS subject or Kafka topic for it; the route
//     exists; maxMessageBytes is not negative; policy rules list sane
//     groups, kinds and namespaces, with "*" alone; a rule naming Secrets
//     needs allowSecrets.
//   - engine.workers is not negative;
//   - checkpoint sets exactly one of file (with a path), jetstream (a
//     jetstream sink, a valid bucket name) and kafka (a kafka sink, a
//     valid topic), and a non-negative interval.
//
// With no sinks the program adds the embedded sink "default" (a JetStream
// sink) and, when no route is named "default", a route "default" to it; so
// Validate then accepts routes whose sink is "default", subscriptions (and
// the control channel) whose route is "default" or omitted, and a control
// channel whose sink is "default". With sinks, only the sinks and routes
// written in the file exist.
func (c *Config) Validate() error {
	v := validator{c: c, sinks: map[string]int{}, routes: map[string]int{}}
	v.config()
	if len(v.errs) > 0 {
		return joinFieldErrors(v.errs)
	}
	for i := range c.Subscriptions {
		s := &c.Subscriptions[i]
		s.Watcher, _ = s.Watcher.Canonical()
		for j := range s.Watched {
			s.Watched[j], _ = s.Watched[j].Canonical()
		}
	}
	return nil
}

// fieldError is a FieldError at path, with its position in the file c was
// loaded from (or that of the nearest ancestor present in the file).
func (c *Config) fieldError(path, msg string) *FieldError {
	p := c.src.position(path)
	fe := &FieldError{Line: p.line, Column: p.col, Path: path, Msg: msg}
	if c.src != nil {
		fe.File = c.src.file
	}
	return fe
}

type validator struct {
	c    *Config
	errs []*FieldError
	// sinks and routes index the first sink and route of each name.
	sinks, routes map[string]int
}

func (v *validator) errorf(path, format string, args ...any) {
	v.errs = append(v.errs, v.c.fieldError(path, fmt.Sprintf(format, args...)))
}

func (v *validator) config() {
	c := v.c
	if c.Cluster != "" {
		if msgs := validation.IsDNS1123Subdomain(c.Cluster); len(msgs) > 0 {
			v.errorf("cluster", "%s", strings.Join(msgs, "; "))
		}
	}
	if c.Listen != "" {
		if err := checkHostPort(c.Listen, true); err != nil {
			v.errorf("listen", `%v (for example ":8080")`, err)
		}
	}
	for i := range c.Sinks {
		v.sink(fmt.Sprintf("sinks[%d]", i), i, &c.Sinks[i])
	}
	// Index routes first, so that subscriptions and control are checked
	// against every route whatever the order.
	for i, r := range c.Routes {
		if _, dup := v.routes[r.Name]; r.Name != "" && !dup {
			v.routes[r.Name] = i
		}
	}
	for i := range c.Routes {
		v.route(fmt.Sprintf("routes[%d]", i), i, &c.Routes[i])
	}
	watchers := map[cache.Ref]int{}
	for i := range c.Subscriptions {
		v.subscription(fmt.Sprintf("subscriptions[%d]", i), i, &c.Subscriptions[i], watchers)
	}
	if c.Control != nil {
		v.control("control", c.Control)
	}
	if c.Engine.Workers < 0 {
		v.errorf("engine.workers", "must not be negative")
	}
	if c.Engine.MaxInFlight < 0 {
		v.errorf("engine.maxInFlight", "must not be negative")
	}
	if c.Checkpoint != nil {
		v.checkpoint("checkpoint", c.Checkpoint)
	}
}

var kvBucket = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

func (v *validator) checkpoint(p string, cp *Checkpoint) {
	var set []string
	if cp.File != nil {
		set = append(set, "file")
		if cp.File.Path == "" {
			v.errorf(p+".file.path", "is required")
		}
	}
	if cp.JetStream != nil {
		set = append(set, "jetstream")
		v.checkpointSink(p+".jetstream.sink", cp.JetStream.Sink, "jetstream", func(s *Sink) bool { return s.JetStream != nil })
		if b := cp.JetStream.Bucket; b != "" && !kvBucket.MatchString(b) {
			v.errorf(p+".jetstream.bucket", "a bucket name is letters, digits, '_' or '-'")
		}
	}
	if cp.Kafka != nil {
		set = append(set, "kafka")
		v.checkpointSink(p+".kafka.sink", cp.Kafka.Sink, "kafka", func(s *Sink) bool { return s.Kafka != nil })
		if t := cp.Kafka.Topic; t != "" && !kafkaTopic.MatchString(t) {
			v.errorf(p+".kafka.topic", "a Kafka topic is 1 to 249 letters, digits, '.', '_' or '-'")
		}
	}
	switch len(set) {
	case 0:
		v.errorf(p, "set one of file, jetstream or kafka")
	case 1:
	default:
		v.errorf(p, "set only one of file, jetstream or kafka, not %s", strings.Join(set, " and "))
	}
	if cp.Interval.Duration < 0 {
		v.errorf(p+".interval", "must not be negative")
	}
}

// checkpointSink checks that name is a sink of the kind a checkpoint store
// needs (the embedded JetStream sink counts when there are no sinks).
func (v *validator) checkpointSink(path, name, kind string, ok func(*Sink) bool) {
	switch i, found := v.sinks[name]; {
	case name == "":
		v.errorf(path, "is required: the name of a %s sink", kind)
	case len(v.c.Sinks) == 0 && name == EmbeddedSink && kind == "jetstream":
	case !found:
		v.errorf(path, "sink %q does not exist%s", name, v.sinkHint())
	case !ok(&v.c.Sinks[i]):
		v.errorf(path, "sink %q is not a %s sink", name, kind)
	}
}

// sinkKinds names the transport fields of a sink in the order of Sink.
var sinkKinds = []string{"nats", "jetstream", "kafka", "http", "stdout"}

func transports(s *Sink) []string {
	set := []bool{s.NATS != nil, s.JetStream != nil, s.Kafka != nil, s.HTTP != nil, s.Stdout != nil}
	var out []string
	for i, ok := range set {
		if ok {
			out = append(out, sinkKinds[i])
		}
	}
	return out
}

func (v *validator) sink(p string, i int, s *Sink) {
	switch j, dup := v.sinks[s.Name]; {
	case s.Name == "":
		v.errorf(p+".name", "is required")
	case dup:
		v.errorf(p+".name", "duplicate sink name %q: sinks[%d] has it too", s.Name, j)
	default:
		if err := checkName(s.Name); err != nil {
			v.errorf(p+".name", "%v", err)
		}
		v.sinks[s.Name] = i
	}
	switch set := transports(s); len(set) {
	case 0:
		v.errorf(p, `one of %s is required (write "stdout: {}" for stdout)`, strings.Join(sinkKinds, ", "))
	case 1:
	default:
		v.errorf(p, "exactly one of %s may be set, got %s", strings.Join(sinkKinds, ", "), strings.Join(set, " and "))
	}
	if s.NATS != nil {
		v.natsConn(p+".nats", &s.NATS.NATSConn)
	}
	if js := s.JetStream; js != nil {
		v.natsConn(p+".jetstream", &js.NATSConn)
		if js.Stream != "" && strings.ContainsFunc(js.Stream, func(r rune) bool {
			return unicode.IsSpace(r) || unicode.IsControl(r) || strings.ContainsRune(`.*>/\`, r)
		}) {
			v.errorf(p+".jetstream.stream", `a stream name cannot contain whitespace, ".", "*", ">", "/" or "\"`)
		}
		// A non-positive timeout disables the PubAck timer, so a lost ack
		// would keep a watcher's request in flight forever.
		if js.AckTimeout.Duration < 0 {
			v.errorf(p+".jetstream.ackTimeout", "must not be negative")
		}
	}
	if s.Kafka != nil {
		v.kafka(p+".kafka", s.Kafka)
	}
	if s.HTTP != nil {
		v.http(p+".http", s.HTTP)
	}
}

func (v *validator) natsConn(p string, c *NATSConn) {
	if strings.TrimSpace(c.URL) == "" {
		v.errorf(p+".url", `is required (for example "nats://127.0.0.1:4222")`)
	} else {
		for i, u := range strings.Split(c.URL, ",") {
			if err := checkURL(strings.TrimSpace(u), "nats", "tls", "ws", "wss"); err != nil {
				v.errorf(p+".url", "server %d: %v", i+1, err)
			}
		}
	}
	if c.Password != "" && c.User == "" {
		v.errorf(p+".user", "is required with password")
	}
	if c.User != "" && c.Password == "" {
		v.errorf(p+".password", "is required with user")
	}
	var methods []string
	for _, m := range []struct {
		name string
		set  bool
	}{{"user/password", c.User != "" || c.Password != ""}, {"token", c.Token != ""}, {"credsFile", c.CredsFile != ""}, {"nkeyFile", c.NKeyFile != ""}} {
		if m.set {
			methods = append(methods, m.name)
		}
	}
	if len(methods) > 1 {
		v.errorf(p, "set at most one of user/password, token, credsFile and nkeyFile, got %s", strings.Join(methods, " and "))
	}
	v.tls(p+".tls", c.TLS)
}

// saslMechanisms are the SASL mechanisms of Kafka sinks.
var saslMechanisms = []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}

func (v *validator) kafka(p string, k *Kafka) {
	if len(k.Brokers) == 0 {
		v.errorf(p+".brokers", `at least one broker is required (for example "kafka:9092")`)
	}
	for i, b := range k.Brokers {
		if err := checkHostPort(b, false); err != nil {
			v.errorf(fmt.Sprintf("%s.brokers[%d]", p, i), `%v (for example "kafka:9092")`, err)
		}
	}
	if s := k.SASL; s != nil {
		switch {
		case s.Mechanism == "":
			v.errorf(p+".sasl.mechanism", "is required: one of %s", strings.Join(saslMechanisms, ", "))
		case !slices.Contains(saslMechanisms, s.Mechanism):
			v.errorf(p+".sasl.mechanism", "%q is not one of %s", s.Mechanism, strings.Join(saslMechanisms, ", "))
		}
		if s.Username == "" {
			v.errorf(p+".sasl.username", "is required")
		}
		if s.Password == "" {
			v.errorf(p+".sasl.password", "is required")
		}
	}
	if k.BatchTimeout.Duration < 0 {
		v.errorf(p+".batchTimeout", "must not be negative")
	}
	if k.WriteTimeout.Duration < 0 {
		v.errorf(p+".writeTimeout", "must not be negative")
	}
	v.tls(p+".tls", k.TLS)
}

func (v *validator) http(p string, h *HTTP) {
	if strings.TrimSpace(h.URL) == "" {
		v.errorf(p+".url", `is required (for example "http://broker-ingress.knative-eventing.svc/ns/default")`)
	} else if err := checkURL(h.URL, "http", "https"); err != nil {
		v.errorf(p+".url", "%v", err)
	}
	if h.Timeout.Duration < 0 {
		v.errorf(p+".timeout", "must not be negative")
	}
	if h.MaxConnections < 0 {
		v.errorf(p+".maxConnections", "must not be negative")
	}
	for _, k := range sortedKeys(h.Headers) {
		hp := fmt.Sprintf("%s.headers[%q]", p, k)
		lk := strings.ToLower(k)
		switch {
		case !httpguts.ValidHeaderFieldName(k):
			v.errorf(hp, "invalid header name")
		case lk == "content-type" || strings.HasPrefix(lk, "ce-"):
			v.errorf(hp, "is set by the CloudEvents HTTP binding and cannot be configured")
		}
		if !httpguts.ValidHeaderFieldValue(h.Headers[k]) {
			// Never echo the value: it is often a credential.
			v.errorf(hp, "invalid header value (control characters or line breaks)")
		}
	}
	v.tls(p+".tls", h.TLS)
}

func (v *validator) tls(p string, t *TLS) {
	switch {
	case t == nil:
	case t.CertFile != "" && t.KeyFile == "":
		v.errorf(p+".keyFile", "is required with certFile")
	case t.KeyFile != "" && t.CertFile == "":
		v.errorf(p+".certFile", "is required with keyFile")
	}
}

func (v *validator) route(p string, i int, r *Route) {
	switch j := v.routes[r.Name]; {
	case r.Name == "":
		v.errorf(p+".name", "is required")
	case j != i:
		v.errorf(p+".name", "duplicate route name %q: routes[%d] has it too", r.Name, j)
	default:
		if err := checkName(r.Name); err != nil {
			v.errorf(p+".name", "%v", err)
		}
	}
	if r.Sink == "" {
		v.errorf(p+".sink", "is required")
	} else if !v.sinkExists(r.Sink) {
		v.errorf(p+".sink", "sink %q does not exist%s", r.Sink, v.sinkHint())
	}
	switch r.Mode {
	case "", ModeBinary, ModeStructured:
	default:
		v.errorf(p+".mode", "%q is not %q or %q", r.Mode, ModeBinary, ModeStructured)
	}
	if r.Subject != "" {
		if err := checkSubject(r.Subject); err != nil {
			v.errorf(p+".subject", "%v", err)
		}
	}
	if r.IncludeSecretData && !r.IncludeObjects {
		v.errorf(p+".includeSecretData", "has no effect without includeObjects")
	}
}

func (v *validator) sinkExists(name string) bool {
	if len(v.c.Sinks) == 0 {
		return name == EmbeddedSink
	}
	_, ok := v.sinks[name]
	return ok
}

func (v *validator) sinkHint() string {
	if len(v.c.Sinks) == 0 {
		return fmt.Sprintf(" (with no sinks, the only sink is the embedded %q)", EmbeddedSink)
	}
	return ""
}

func (v *validator) routeExists(name string) bool {
	if _, ok := v.routes[name]; ok {
		return true
	}
	return len(v.c.Sinks) == 0 && name == DefaultRoute
}

func (v *validator) subscription(p string, i int, s *Subscription, watchers map[cache.Ref]int) {
	if w, ok := v.ref(p+".watcher", s.Watcher, watcherKindPattern); ok {
		if j, dup := watchers[w]; dup {
			v.errorf(p+".watcher", "duplicate watcher: subscriptions[%d] has it too", j)
		} else {
			watchers[w] = i
		}
	}
	if len(s.Watched) == 0 {
		v.errorf(p+".watched", "at least one watched object is required")
	}
	seen := map[cache.Ref]int{}
	for j, r := range s.Watched {
		wp := fmt.Sprintf("%s.watched[%d]", p, j)
		if cr, ok := v.ref(wp, r, kindPattern); ok {
			if k, dup := seen[cr]; dup {
				v.errorf(wp, "duplicate of watched[%d]", k)
			} else {
				seen[cr] = j
			}
		}
	}
	if route := cmp.Or(s.Route, DefaultRoute); !v.routeExists(route) {
		v.errorf(p+".route", "route %q does not exist", route)
	}
	if s.Debounce.Duration < 0 {
		v.errorf(p+".debounce", "must not be negative")
	}
}

var (
	// kindPattern is what a watched kind looks like: CamelCase, as in
	// ConfigMap, not the resource name configmaps.
	kindPattern = regexp.MustCompile(`^[A-Z][A-Za-z0-9]*$`)
	// watcherKindPattern is looser: a watcher need not be a Kubernetes
	// object.
	watcherKindPattern = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]*$`)
)

const kindMsg = "a kind is CamelCase letters and digits, such as ConfigMap (not the resource name configmaps)"

// ref checks r and returns its canonical form; ok is false when r has a
// problem, each reported at the field it concerns.
func (v *validator) ref(p string, r cache.Ref, kinds *regexp.Regexp) (canonical cache.Ref, ok bool) {
	if r == (cache.Ref{}) {
		v.errorf(p, "is required")
		return r, false
	}
	n := len(v.errs)
	if r.Group != "" {
		if msgs := validation.IsDNS1123Subdomain(r.Group); len(msgs) > 0 {
			v.errorf(p+".group", "%s", strings.Join(msgs, "; "))
		}
	}
	if r.Version == "" {
		v.errorf(p+".version", "is required")
	} else if msgs := validation.IsDNS1123Label(r.Version); len(msgs) > 0 {
		v.errorf(p+".version", "%s", strings.Join(msgs, "; "))
	}
	if r.Kind == "" {
		v.errorf(p+".kind", "is required")
	} else if !kinds.MatchString(r.Kind) {
		if kinds == kindPattern {
			v.errorf(p+".kind", kindMsg)
		} else {
			v.errorf(p+".kind", "a kind is a letter followed by letters and digits")
		}
	}
	if r.Namespace != "" {
		if msgs := validation.IsDNS1123Label(r.Namespace); len(msgs) > 0 {
			v.errorf(p+".namespace", "%s", strings.Join(msgs, "; "))
		}
	}
	switch {
	case r.Name == "" && strings.TrimSpace(r.Selector) == "":
		v.errorf(p, "one of name or selector is required (selector %q selects everything)", cache.Everything)
	case r.Name != "" && r.Selector != "":
		v.errorf(p, "name and selector are mutually exclusive")
	case r.Selector != "":
		if _, err := cache.ParseSelector(r.Selector); err != nil {
			v.errorf(p+".selector", "%v", err)
		}
	}
	if len(v.errs) > n {
		return r, false
	}
	cr, err := r.Canonical()
	if err != nil {
		v.errorf(p, "%s", strings.TrimPrefix(err.Error(), cache.ErrInvalidInput.Error()+": "))
		return r, false
	}
	return cr, true
}

var kafkaTopic = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)

func (v *validator) control(p string, ctl *Control) {
	var transport string
	switch i, ok := v.sinks[ctl.Sink]; {
	case ctl.Sink == "":
		v.errorf(p+".sink", "is required: the name of a jetstream or kafka sink")
	case len(v.c.Sinks) == 0 && ctl.Sink == EmbeddedSink:
		transport = "jetstream"
	case !ok:
		v.errorf(p+".sink", "sink %q does not exist%s", ctl.Sink, v.sinkHint())
	default:
		s := &v.c.Sinks[i]
		switch {
		case s.JetStream != nil:
			transport = "jetstream"
		case s.Kafka != nil:
			transport = "kafka"
		default:
			v.errorf(p+".sink", "sink %q is not a jetstream or kafka sink, which the control channel needs to keep subscriptions durably", ctl.Sink)
		}
	}
	if ctl.Subject != "" {
		switch transport {
		case "kafka":
			if !kafkaTopic.MatchString(ctl.Subject) {
				v.errorf(p+".subject", "a Kafka topic is 1 to 249 letters, digits, '.', '_' or '-'")
			}
		case "jetstream":
			if err := checkSubjectPrefix(ctl.Subject); err != nil {
				v.errorf(p+".subject", "%v", err)
			}
		}
	}
	if route := cmp.Or(ctl.Route, DefaultRoute); !v.routeExists(route) {
		v.errorf(p+".route", "route %q does not exist", route)
	}
	if ctl.MaxMessageBytes < 0 {
		v.errorf(p+".maxMessageBytes", "must be positive")
	}
	for i, rule := range ctl.Policy.Allow {
		rp := fmt.Sprintf("%s.policy.allow[%d]", p, i)
		v.policyList(rp+".groups", rule.Groups, func(g string) error {
			if g == "" {
				return nil // the core group
			}
			if msgs := validation.IsDNS1123Subdomain(g); len(msgs) > 0 {
				return errors.New(strings.Join(msgs, "; "))
			}
			return nil
		})
		v.policyList(rp+".kinds", rule.Kinds, func(k string) error {
			if !kindPattern.MatchString(k) {
				return errors.New(kindMsg)
			}
			return nil
		})
		v.policyList(rp+".namespaces", rule.Namespaces, func(ns string) error {
			if msgs := validation.IsDNS1123Label(ns); len(msgs) > 0 {
				return errors.New(strings.Join(msgs, "; "))
			}
			return nil
		})
		if !ctl.Policy.AllowSecrets && slices.Contains(rule.Kinds, "Secret") {
			v.errorf(rp+".kinds", "Secrets are denied unless policy.allowSecrets is true")
		}
	}
}

// policyList checks a list of a policy rule: "*" alone, or entries that
// pass check, none twice.
func (v *validator) policyList(p string, list []string, check func(string) error) {
	seen := map[string]bool{}
	for i, s := range list {
		ip := fmt.Sprintf("%s[%d]", p, i)
		switch {
		case s == cache.Everything:
			if len(list) > 1 {
				v.errorf(ip, `"*" must be the only entry`)
			}
		case seen[s]:
			v.errorf(ip, "duplicate entry %q", s)
		default:
			if err := check(s); err != nil {
				v.errorf(ip, "%v", err)
			}
		}
		seen[s] = true
	}
}

// checkName checks the name of a sink or route: printable, no spaces.
func checkName(s string) error {
	if strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) {
		return errors.New("a name cannot contain whitespace or control characters")
	}
	return nil
}

// checkHostPort checks "host:port"; the host may be empty when emptyHost.
func checkHostPort(s string, emptyHost bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("must be host:port")
	}
	if host == "" && !emptyHost {
		return errors.New("host is missing")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return errors.New("port must be a number from 0 to 65535")
	}
	return nil
}

// checkURL checks that s is an absolute URL with a host and one of schemes.
// Errors never quote the URL, which may hold a password.
func checkURL(s string, schemes ...string) error {
	if s == "" {
		return errors.New("is empty")
	}
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("invalid URL: %v", err)
	}
	if !slices.Contains(schemes, u.Scheme) {
		return fmt.Errorf("the scheme must be one of %s (as in %s://host:port)", strings.Join(schemes, ", "), schemes[0])
	}
	if u.Host == "" {
		return errors.New("the host is missing")
	}
	return nil
}

// subjectFields are the fields a route's subject template may use.
type subjectFields struct{ Group, Version, Kind, Namespace, Name, Selector string }

// maxSubjectBytes bounds a rendered subject; Kafka topics have at most 249.
const maxSubjectBytes = 4096

// checkSubject checks a route's subject template: it parses, uses only the
// fields of subjectFields, and renders a non-empty subject for a sample
// watcher.
func checkSubject(s string) error {
	t, err := template.New("subject").Option("missingkey=error").Parse(s)
	if err != nil {
		return fmt.Errorf("invalid template: %s", strings.TrimPrefix(err.Error(), "template: "))
	}
	if len(t.Templates()) > 1 {
		return errors.New("invalid template: define and block are not supported in a subject")
	}
	if err := checkTemplateNode(t.Tree.Root); err != nil {
		return err
	}
	w := &limitedWriter{n: maxSubjectBytes}
	// The sample watcher has a name, so its selector is empty, which the
	// sink escapes to "_" (see sink.EscapeToken).
	err = t.Execute(w, subjectFields{Group: "apps", Version: "v1", Kind: "Deployment", Namespace: "ns", Name: "name", Selector: "_"})
	switch {
	case err != nil && w.n < 0:
		return fmt.Errorf("renders a subject longer than %d bytes", maxSubjectBytes)
	case err != nil:
		return fmt.Errorf("invalid template: %s", strings.TrimPrefix(err.Error(), "template: "))
	case strings.TrimSpace(w.b.String()) == "":
		return errors.New("renders an empty subject")
	}
	return nil
}

// checkTemplateNode reports a field other than those of subjectFields, a
// range (which could loop without bound) or a template call, anywhere
// under n.
func checkTemplateNode(n parse.Node) error {
	switch n := n.(type) {
	case *parse.ListNode:
		if n == nil {
			return nil
		}
		for _, c := range n.Nodes {
			if err := checkTemplateNode(c); err != nil {
				return err
			}
		}
	case *parse.ActionNode:
		return checkTemplateNode(n.Pipe)
	case *parse.PipeNode:
		if n == nil {
			return nil
		}
		for _, c := range n.Cmds {
			if err := checkTemplateNode(c); err != nil {
				return err
			}
		}
	case *parse.CommandNode:
		for _, a := range n.Args {
			if err := checkTemplateNode(a); err != nil {
				return err
			}
		}
	case *parse.FieldNode:
		return checkTemplateFields(n.Ident)
	case *parse.VariableNode:
		if len(n.Ident) > 1 {
			if n.Ident[0] != "$" {
				return fmt.Errorf("invalid template: fields of variables (%s) are not supported", n)
			}
			return checkTemplateFields(n.Ident[1:])
		}
	case *parse.ChainNode:
		return fmt.Errorf("invalid template: field chains (%s) are not supported", n)
	case *parse.IfNode:
		return checkBranch(&n.BranchNode)
	case *parse.WithNode:
		return checkBranch(&n.BranchNode)
	case *parse.RangeNode:
		return errors.New("invalid template: range is not supported in a subject")
	case *parse.TemplateNode:
		// Templates that call themselves run 100000 levels deep before
		// text/template stops them; a subject needs none.
		return errors.New("invalid template: template calls are not supported in a subject")
	}
	return nil
}

func checkBranch(b *parse.BranchNode) error {
	for _, n := range []parse.Node{b.Pipe, b.List, b.ElseList} {
		if err := checkTemplateNode(n); err != nil {
			return err
		}
	}
	return nil
}

func checkTemplateFields(ident []string) error {
	switch ident[0] {
	case "Group", "Version", "Kind", "Namespace", "Name", "Selector":
	default:
		return fmt.Errorf("invalid template: unknown field .%s; the fields are .Group, .Version, .Kind, .Namespace, .Name and .Selector", ident[0])
	}
	if len(ident) > 1 {
		return fmt.Errorf("invalid template: .%s is a string and has no field .%s", ident[0], ident[1])
	}
	return nil
}

// checkSubjectPrefix checks a NATS subject used as a prefix: dot-separated
// non-empty tokens of printable characters other than space, '*' and '>'.
func checkSubjectPrefix(s string) error {
	for tok := range strings.SplitSeq(s, ".") {
		if tok == "" {
			return errors.New("a NATS subject has no empty tokens (no leading, trailing or double '.')")
		}
		if strings.ContainsFunc(tok, func(r rune) bool { return r == '*' || r == '>' || unicode.IsSpace(r) || !unicode.IsPrint(r) }) {
			return errors.New("a NATS subject prefix cannot contain whitespace or the wildcards '*' and '>'")
		}
	}
	return nil
}

// limitedWriter keeps the first n bytes written and fails past them.
type limitedWriter struct {
	b strings.Builder
	n int
}

func (w *limitedWriter) Write(p []byte) (int, error) {
	w.n -= len(p)
	if w.n < 0 {
		return 0, errors.New("too long")
	}
	return w.b.Write(p)
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
