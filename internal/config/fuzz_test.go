package config

import (
	"encoding/json"
	"strings"
	"testing"
)

// noEnv is an environment with no variables, so that a config that parses
// holds no "${...}" in its credential fields and re-parses the same.
func noEnv(string) (string, bool) { return "", false }

// FuzzParse checks that parsing never panics, that every error is a list of
// FieldErrors naming the file, that Validate accepts or rejects what parses
// without panicking and without changing a config it rejects, and that a
// config Validate accepts marshals to JSON that parses and validates to an
// equal config.
func FuzzParse(f *testing.F) {
	for _, ex := range examples(f) {
		f.Add(ex.data)
	}
	for _, s := range []string{
		"{}",
		"cluster: a\nsinks: [\n",
		"subscriptions:\n- watcher: {version: v1, kind: A, selector: 'b=1, a in (x,y)'}\n  watched: [{version: v1, kind: B, selector: '*'}]\n",
		"routes: [{name: r, sink: default, subject: '{{if .Namespace}}{{.Namespace}}{{end}}.{{.Name}}'}]\n",
		"a: &a [*a, *a]\nb: &b [*a, *a]\n",
		"sinks: [{name: h, http: {url: 'http://x', headers: {A: '${X}'}}}]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseWithEnv("fuzz.yaml", data, noEnv)
		if err != nil {
			if c != nil {
				t.Fatal("config returned with an error")
			}
			checkFieldErrors(t, err)
			return
		}
		before, _ := json.Marshal(c)
		if err := c.Validate(); err != nil {
			checkFieldErrors(t, err)
			if after, _ := json.Marshal(c); string(after) != string(before) {
				t.Fatalf("Validate changed a config it rejected:\n%s\n%s", before, after)
			}
			return
		}
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("marshal a valid config: %v", err)
		}
		c2, err := parseWithEnv("again.yaml", out, noEnv)
		if err != nil {
			t.Fatalf("re-parse %s: %v", out, err)
		}
		if err := c2.Validate(); err != nil {
			t.Fatalf("re-validate %s: %v", out, err)
		}
		if !sameJSON(c, c2) {
			again, _ := json.Marshal(c2)
			t.Fatalf("round trip changed the config:\n%s\n%s", out, again)
		}
		if d := Diff(c, c2); !d.Empty() {
			t.Fatalf("Diff of equal configs: %+v", d)
		}
	})
}

func checkFieldErrors(t *testing.T, err error) {
	t.Helper()
	fes := FieldErrors(err)
	if len(fes) == 0 {
		t.Fatalf("error without FieldErrors: %v", err)
	}
	for _, fe := range fes {
		if fe.File != "fuzz.yaml" {
			t.Fatalf("FieldError without the file: %#v", fe)
		}
		if fe.Msg == "" || strings.HasPrefix(fe.Msg, "cannot decode configuration") {
			// The walk and the JSON decoder disagree.
			t.Fatalf("bad FieldError: %#v", fe)
		}
	}
}
