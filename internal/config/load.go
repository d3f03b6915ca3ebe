package config

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"strings"
)

// maxFileBytes bounds the size of a configuration file.
const maxFileBytes = 16 << 20

// source is where a Config was loaded from: what Validate needs to name the
// line of a problem, and what Reloader needs to notice a change.
type source struct {
	file string
	// pos maps field paths present in the file to their positions.
	pos map[string]pos
	// sum is the SHA-256 of the file's contents.
	sum [sha256.Size]byte
}

// position returns the position of path, or of its nearest ancestor present
// in the file (a missing field is reported where its parent is).
func (s *source) position(path string) pos {
	if s == nil {
		return pos{}
	}
	for {
		if p, ok := s.pos[path]; ok {
			return p
		}
		if path == "" {
			return pos{}
		}
		path = parentPath(path)
	}
}

// parentPath drops the last element of a field path:
// "a[0].b" -> "a[0]" -> "a" -> "".
func parentPath(path string) string {
	if strings.HasSuffix(path, "]") {
		// A map key is quoted and may hold "[": find its opening `["`.
		if i := strings.LastIndex(path, `["`); i >= 0 && strings.HasSuffix(path, `"]`) {
			return path[:i]
		}
		if i := strings.LastIndexByte(path, '['); i >= 0 {
			return path[:i]
		}
	}
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		return path[:i]
	}
	return ""
}

// Load reads the configuration file at path: see Parse.
func Load(path string) (*Config, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// readFile reads at most maxFileBytes of the file at path.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &FieldError{File: path, Msg: fmt.Sprintf("read configuration: %v", unwrapPathError(err))}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, &FieldError{File: path, Msg: fmt.Sprintf("read configuration: %v", unwrapPathError(err))}
	}
	if len(data) > maxFileBytes {
		return nil, &FieldError{File: path, Msg: fmt.Sprintf("configuration is larger than %d MiB", maxFileBytes>>20)}
	}
	return data, nil
}

// unwrapPathError drops the path from an *os.PathError, which FieldError
// names already.
func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	return err
}

// Parse decodes data, the contents of the configuration file called name
// (name is used in errors only), expands "${ENV_VAR}" references in
// credential fields (see expandEnv) and applies defaults (see Default). It
// does not validate: call Validate on the result.
//
// Parsing is strict: a syntax error, an unknown field, a duplicate key, a
// value of the wrong type, more than one YAML document, or an empty file is
// an error. Every problem is reported, each as a *FieldError naming the
// file, line, column and field path, joined with errors.Join (see
// FieldErrors). Values get JSON semantics: the json tags of the types name
// the fields, and a YAML value decodes as its JSON form would. On error Parse
// returns a nil Config: nothing is half-applied.
func Parse(name string, data []byte) (*Config, error) {
	return parseWithEnv(name, data, os.LookupEnv)
}

// parseWithEnv is Parse with the environment injected, for tests.
func parseWithEnv(name string, data []byte, lookupEnv func(string) (string, bool)) (*Config, error) {
	root, err := parseYAML(name, data)
	if err != nil {
		return nil, err
	}
	d := decoder{file: name, pos: map[string]pos{"": {root.Line, root.Column}}}
	var c Config
	if errs := d.decodeInto(root, &c); len(errs) > 0 {
		return nil, joinFieldErrors(errs)
	}
	c.src = &source{file: name, pos: d.pos, sum: sha256.Sum256(data)}
	if err := c.expandEnv(lookupEnv); err != nil {
		return nil, err
	}
	c.Default()
	return &c, nil
}
