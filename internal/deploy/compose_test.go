package deploy

import (
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// compose is the part of the Compose specification the tests read.
type compose struct {
	Services map[string]service `yaml:"services"`
	Volumes  map[string]any     `yaml:"volumes"`
}

type service struct {
	Image       string            `yaml:"image"`
	Build       *build            `yaml:"build"`
	Command     any               `yaml:"command"`
	Entrypoint  any               `yaml:"entrypoint"`
	Ports       []string          `yaml:"ports"`
	Volumes     []string          `yaml:"volumes"`
	Environment map[string]string `yaml:"environment"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
	User string `yaml:"user"`
}

type build struct {
	Context    string            `yaml:"context"`
	Dockerfile string            `yaml:"dockerfile"`
	Args       map[string]string `yaml:"args"`
}

// words flattens a command or entrypoint (a string or a list) into text.
func words(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case []any:
		var s []string
		for _, x := range v {
			s = append(s, words(x))
		}
		return strings.Join(s, " ")
	}
	return ""
}

// interpolation matches Compose's ${VAR}, ${VAR:-default} and the like.
var interpolation = regexp.MustCompile(`\$\{[^}]*\}`)

func TestCompose(t *testing.T) {
	var c compose
	dec := yaml.NewDecoder(strings.NewReader(string(read(t, "docker-compose.yml"))))
	dec.KnownFields(false)
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}

	// Services, ports, health checks.
	for name, ports := range map[string][]string{"nats": {"4222", "8222"}, "kafka": {"9094"}, "bridge": {"8080"}} {
		s, ok := c.Services[name]
		if !ok {
			t.Errorf("no service %s", name)
			continue
		}
		for _, p := range ports {
			if !slices.ContainsFunc(s.Ports, func(m string) bool { return strings.HasSuffix(m, ":"+p) }) {
				t.Errorf("service %s: port %s is not mapped (ports %q)", name, p, s.Ports)
			}
		}
		if s.Healthcheck == nil || len(s.Healthcheck.Test) < 2 {
			t.Errorf("service %s: no health check", name)
		}
	}
	nats, kafka, bridge := c.Services["nats"], c.Services["kafka"], c.Services["bridge"]
	if cmd := words(nats.Command); !strings.Contains(cmd, "--jetstream") && !strings.Contains(cmd, "-js") {
		t.Errorf("nats runs %q, without JetStream", cmd)
	}
	if !strings.Contains(strings.Join(nats.Healthcheck.Test, " "), ":8222/healthz") {
		t.Errorf("nats health check %q: want the monitoring port's /healthz", nats.Healthcheck.Test)
	}
	if kafka.Environment["KAFKA_PROCESS_ROLES"] != "broker,controller" {
		t.Errorf("kafka: KAFKA_PROCESS_ROLES = %q, want one KRaft node (broker,controller)", kafka.Environment["KAFKA_PROCESS_ROLES"])
	}
	if !strings.Contains(strings.Join(bridge.Healthcheck.Test, " "), ":8080/healthz") {
		t.Errorf("bridge health check %q: want /healthz", bridge.Healthcheck.Test)
	}

	// Every image is pinned or built.
	for name, s := range c.Services {
		if s.Build == nil && (s.Image == "" || !strings.Contains(s.Image, ":") || strings.HasSuffix(s.Image, ":latest")) {
			t.Errorf("service %s: image %q is not pinned to a version", name, s.Image)
		}
	}

	// The bridge is built from the Dockerfile, after the streams and the
	// topic exist.
	if bridge.Build == nil {
		t.Fatal("bridge: not built from the repository")
	}
	ctx := filepath.Join(root(t), bridge.Build.Context)
	dockerfile := bridge.Build.Dockerfile
	if dockerfile == "" {
		dockerfile = "Dockerfile"
	}
	exists(t, "bridge build context", ctx)
	exists(t, "bridge Dockerfile", filepath.Join(ctx, dockerfile))
	for _, dep := range []string{"nats-init", "kafka-init"} {
		if bridge.DependsOn[dep].Condition != "service_completed_successfully" {
			t.Errorf("bridge: depends_on %s = %+v, want service_completed_successfully", dep, bridge.DependsOn[dep])
		}
		if _, ok := c.Services[dep]; !ok {
			t.Errorf("no service %s", dep)
		}
	}

	// Mounts: every repository path exists; the user's kubeconfig is the
	// only path from outside, and the bridge is told where it is.
	mounts := map[string]string{} // container path -> host path
	for name, s := range c.Services {
		for _, v := range s.Volumes {
			// Split at the colons outside ${...}.
			masked := interpolation.ReplaceAllStringFunc(v, func(s string) string { return strings.Repeat("_", len(s)) })
			i := strings.Index(masked, ":")
			if i < 0 {
				t.Errorf("service %s: volume %q has no target", name, v)
				continue
			}
			src := v[:i]
			dst, _, _ := strings.Cut(v[i+1:], ":")
			if name == "bridge" {
				mounts[dst] = src
			}
			switch {
			case interpolation.MatchString(src):
				if name != "bridge" || dst != "/etc/depbridge/kubeconfig" || !strings.HasPrefix(src, "${KUBECONFIG") {
					t.Errorf("service %s: volume %q from outside the repository; only the kubeconfig may be", name, v)
				}
			case strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/"):
				exists(t, "service "+name+" volume", filepath.Join(root(t), src))
			default:
				if _, ok := c.Volumes[src]; !ok {
					t.Errorf("service %s: named volume %q is not declared", name, src)
				}
			}
		}
	}
	if env := bridge.Environment["DEPBRIDGE_KUBECONFIG"]; env == "" || mounts[env] == "" {
		t.Errorf("bridge: DEPBRIDGE_KUBECONFIG = %q is not a mounted file", env)
	}

	// The bridge's configuration: at the image's default path, valid, and
	// using the compose services, the stream and the topic made by the
	// init services.
	cfgSrc := mounts["/etc/depbridge/config.yaml"]
	if cfgSrc == "" {
		t.Fatal("bridge: nothing mounted at /etc/depbridge/config.yaml")
	}
	cfg := loadConfig(t, cfgSrc, read(t, cfgSrc))
	initScripts := words(c.Services["nats-init"].Command) + " " + words(c.Services["kafka-init"].Command)
	kinds := map[string]bool{}
	for _, s := range cfg.Sinks {
		var hosts []string
		switch {
		case s.JetStream != nil:
			kinds["jetstream"] = true
			u, err := url.Parse(s.JetStream.URL)
			if err != nil {
				t.Fatal(err)
			}
			hosts = append(hosts, u.Host)
			if s.JetStream.Stream == "" || !strings.Contains(initScripts, "stream add "+s.JetStream.Stream+" ") {
				t.Errorf("sink %s: stream %q is not created by nats-init", s.Name, s.JetStream.Stream)
			}
		case s.Kafka != nil:
			kinds["kafka"] = true
			hosts = s.Kafka.Brokers
		default:
			t.Errorf("sink %s: want jetstream or kafka", s.Name)
		}
		for _, h := range hosts {
			host, _, err := net.SplitHostPort(h)
			if _, ok := c.Services[host]; err != nil || !ok {
				t.Errorf("sink %s: %s is not a compose service", s.Name, h)
			}
		}
	}
	if !kinds["jetstream"] || !kinds["kafka"] {
		t.Errorf("sinks %v: want a jetstream and a kafka sink", kinds)
	}
	routed := map[string]bool{}
	for _, r := range cfg.Routes {
		routed[r.Sink] = true
		for _, s := range cfg.Sinks {
			if s.Name == r.Sink && s.Kafka != nil && !strings.Contains(initScripts, "--topic "+r.Subject+" ") {
				t.Errorf("route %s: topic %q is not created by kafka-init", r.Name, r.Subject)
			}
		}
	}
	for _, s := range cfg.Sinks {
		if !routed[s.Name] {
			t.Errorf("sink %s: no route", s.Name)
		}
	}
	if len(cfg.Subscriptions) < 2 {
		t.Errorf("%d subscriptions, want a couple of examples", len(cfg.Subscriptions))
	}
	if cfg.Control == nil {
		t.Fatal("no control channel")
	}
	for _, s := range cfg.Sinks {
		if s.Name == cfg.Control.Sink && s.JetStream == nil {
			t.Errorf("control channel on sink %s, want JetStream", s.Name)
		}
	}
}

func exists(t *testing.T, what, p string) {
	t.Helper()
	if _, err := os.Stat(p); err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

// TestDockerfile checks the Dockerfile against the module and
// docker-compose.yml, and that .dockerignore keeps what the build needs.
func TestDockerfile(t *testing.T) {
	df := string(read(t, "Dockerfile"))
	goMod := string(read(t, "go.mod"))
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(goMod)
	if goVersion == nil {
		t.Fatal("go.mod has no go directive")
	}
	for _, want := range []string{
		"FROM --platform=$BUILDPLATFORM golang:" + goVersion[1] + " AS build",
		"CGO_ENABLED=0",
		"go build -trimpath -ldflags \"-s -w -X github.com/depbridge/depbridge/internal/version.Version=$VERSION\"",
		"./cmd/bridge",
		"FROM gcr.io/distroless/static-debian12:nonroot",
		"USER 65532:65532",
		"EXPOSE 8080",
		`ENTRYPOINT ["/usr/local/bin/bridge"]`,
		`CMD ["run", "--config", "/etc/depbridge/config.yaml"]`,
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	// The compose health check's binary is built and copied.
	if !strings.Contains(df, "./hack/healthcheck") || !strings.Contains(df, "/out/healthcheck /usr/local/bin/") {
		t.Errorf("Dockerfile does not install hack/healthcheck in /usr/local/bin (docker-compose.yml's bridge health check)")
	}

	ignore := strings.Split(string(read(t, ".dockerignore")), "\n")
	for p, want := range map[string]bool{
		"go.mod":                         true,
		"go.sum":                         true,
		"cmd/bridge/main.go":             true,
		"internal/config/config.go":      true,
		"internal/watch/engine.go":       true,
		"hack/healthcheck/main.go":       true,
		"internal/rbac/rbac_test.go":     false,
		"internal/config/testdata/x":     false,
		"docs/config.md":                 false,
		".git/HEAD":                      false,
		"bin/bridge":                     false,
		"hack/k8s-binaries.sh":           false,
		"config/base/kustomization.yaml": false,
	} {
		if got := included(ignore, p); got != want {
			t.Errorf(".dockerignore: %s in the build context = %v, want %v", p, got, want)
		}
	}
	// Every package of the module outside cmd/ and internal/ is a program
	// the bridge does not import; the context holds all the bridge needs.
	err := filepath.WalkDir(root(t), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root(t), p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() && (rel == ".git" || rel == "bin" || rel == ".demo") {
			return filepath.SkipDir
		}
		if d.IsDir() && rel != "." {
			if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
				return filepath.SkipDir // another module (bench/): not part of the bridge's build
			}
		}
		if d.IsDir() || !strings.HasSuffix(rel, ".go") || strings.HasSuffix(rel, "_test.go") {
			return nil
		}
		dir := path.Dir(rel)
		if !strings.HasPrefix(dir, "cmd/") && !strings.HasPrefix(dir, "internal/") && !included(ignore, rel) &&
			!strings.HasPrefix(dir, "examples/") && !strings.HasPrefix(dir, "hack/") && !strings.HasPrefix(dir, "test/") {
			t.Errorf("package %s is neither in the build context nor a program or test suite (examples/, hack/, test/)", dir)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// included says whether .dockerignore keeps p in the build context: the
// last pattern matching p or one of its parent directories decides, "!"
// re-includes, "**/" matches any number of directories. (Enough for
// our patterns; not the whole of Docker's syntax.)
func included(patterns []string, p string) bool {
	in := true
	for _, pat := range patterns {
		pat = strings.TrimSpace(pat)
		if pat == "" || strings.HasPrefix(pat, "#") {
			continue
		}
		neg := strings.HasPrefix(pat, "!")
		pat = strings.TrimSuffix(strings.TrimPrefix(pat, "!"), "/")
		if matches(pat, p) {
			in = neg
		}
	}
	return in
}

// matches says whether pat matches p or one of its parents.
func matches(pat, p string) bool {
	parts := strings.Split(p, "/")
	for i := 1; i <= len(parts); i++ {
		prefix := strings.Join(parts[:i], "/")
		if rest, ok := strings.CutPrefix(pat, "**/"); ok {
			for j := 0; j < i; j++ {
				if ok, _ := path.Match(rest, strings.Join(parts[j:i], "/")); ok {
					return true
				}
			}
			continue
		}
		if ok, _ := path.Match(pat, prefix); ok {
			return true
		}
	}
	return false
}
