package checkpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// File keeps records in one JSON file, rewritten atomically (a temporary
// file renamed over it) at each write. Fine for thousands of watchers on
// one replica; use a bus-backed store to survive the loss of the disk or to
// hand over between replicas.
type File struct {
	Path string

	mu   sync.Mutex
	recs map[string]json.RawMessage
}

var _ Backend = (*File)(nil)

// Load implements Backend; a missing file is empty.
func (f *File) Load(context.Context) (map[string][]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.recs = map[string]json.RawMessage{}
	b, err := os.ReadFile(f.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string][]byte{}, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &f.recs); err != nil {
		return nil, fmt.Errorf("%s: %w", f.Path, err)
	}
	out := make(map[string][]byte, len(f.recs))
	for k, v := range f.recs {
		out[k] = v
	}
	return out, nil
}

// Write implements Backend.
func (f *File) Write(_ context.Context, puts map[string][]byte, deletes []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.recs == nil {
		f.recs = map[string]json.RawMessage{}
	}
	for k, v := range puts {
		f.recs[k] = v
	}
	for _, k := range deletes {
		delete(f.recs, k)
	}
	b, err := json.Marshal(f.recs)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(f.Path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(f.Path), filepath.Base(f.Path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), f.Path)
}

// Close implements Backend.
func (f *File) Close() error { return nil }
