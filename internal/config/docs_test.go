package config

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// fencedAfter returns the first fenced code block after marker in doc.
func fencedAfter(t *testing.T, doc, marker string) string {
	t.Helper()
	_, rest, ok := strings.Cut(doc, marker)
	if !ok {
		t.Fatalf("%s: no %q", docsPath, marker)
	}
	m := regexp.MustCompile("(?s)```[a-z]*\n(.*?)```").FindStringSubmatch(rest)
	if m == nil {
		t.Fatalf("%s: no code block after %q", docsPath, marker)
	}
	return m[1]
}

// TestDocsErrorExample keeps the example of error messages in
// docs/config.md true.
func TestDocsErrorExample(t *testing.T) {
	data, err := os.ReadFile(docsPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	input := fencedAfter(t, doc, "<!-- error-example:yaml -->")
	want := fencedAfter(t, doc, "<!-- error-example:output -->")
	c, err := parseWithEnv("bad.yaml", []byte(input), env("KAFKA_PASSWORD", "x"))
	if err == nil {
		err = c.Validate()
	}
	got := strings.Join(errorLines(err), "\n") + "\n"
	if got != want {
		t.Errorf("the example output in %s is stale; it is:\n%s", docsPath, got)
	}
}

// TestDocsCoverSchema checks that every property of the schema has a row
// in the reference of docs/config.md, under its type's heading.
func TestDocsCoverSchema(t *testing.T) {
	data, err := os.ReadFile(docsPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	defs := loadSchema(t)["$defs"].(map[string]any)
	for name, d := range defs {
		props, _ := d.(map[string]any)["properties"].(map[string]any)
		if props == nil {
			continue
		}
		_, section, ok := strings.Cut(doc, "\n### "+name+"\n")
		if !ok {
			t.Errorf("%s: no section for %s", docsPath, name)
			continue
		}
		section, _, _ = strings.Cut(section, "\n### ")
		for p := range props {
			if !strings.Contains(section, "| `"+p+"` |") {
				t.Errorf("%s: %s.%s is undocumented", docsPath, name, p)
			}
		}
	}
}
