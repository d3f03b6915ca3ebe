package config

import (
	"os"
	"path/filepath"
	"testing"
)

// Paths from this package to the generated and example files.
const (
	examplesDir = "../../config/examples"
	schemaPath  = "../../config/schema.json"
	docsPath    = "../../docs/config.md"
)

type example struct {
	name string
	data []byte
}

// examples returns the example configurations; there must be some.
func examples(t testing.TB) []example {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(examplesDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples in %s: %v", examplesDir, err)
	}
	var out []example
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, example{name: filepath.Base(f), data: data})
	}
	return out
}

// anyEnv sets every environment variable, to a value of its own name.
func anyEnv(name string) (string, bool) { return "value-of-" + name, true }
