package checkpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// File keeps records in one JSON file, rewritten atomically (a temporary
// file renamed over it) at each write. Fine for thousands of watchers on
// one replica; use a bus-backed store to survive the loss of the disk or to
// hand over between replicas. One process at a time uses the file.
type File struct {
	Path string
	// Logger defaults to the logger of the Store given the File (New),
	// else to discarding.
	Logger *slog.Logger

	mu   sync.Mutex
	recs map[string]json.RawMessage
}

var _ Backend = (*File)(nil)

func (f *File) defaultLogger(l *slog.Logger) {
	if f.Logger == nil {
		f.Logger = l
	}
}

func (f *File) log() *slog.Logger {
	if f.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return f.Logger
}

// Load implements Backend; a missing file is empty. A file that does not
// decode (truncated, empty, corrupt) is renamed "<Path>.corrupt-<unix
// time>" and loads empty, so every watcher is treated as new, rather than
// failing every load. Temporary files left by an interrupted Write are
// removed.
func (f *File) Load(context.Context) (map[string][]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.recs = map[string]json.RawMessage{}
	f.removeTemporaries()
	b, err := os.ReadFile(f.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string][]byte{}, nil
	}
	if err != nil {
		return nil, err
	}
	var recs map[string]json.RawMessage
	if err := json.Unmarshal(b, &recs); err != nil {
		aside := fmt.Sprintf("%s.corrupt-%d", f.Path, time.Now().Unix())
		if rerr := os.Rename(f.Path, aside); rerr != nil {
			return nil, fmt.Errorf("%s does not decode (%w); moving it aside: %w", f.Path, err, rerr)
		}
		f.log().Error("checkpoint file does not decode; moved aside, every watcher is treated as new",
			"path", f.Path, "moved_to", aside, "error", err)
		return map[string][]byte{}, nil
	}
	maps.Copy(f.recs, recs)
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

// removeTemporaries removes the temporary files of interrupted writes:
// Path, a dot and the digits os.CreateTemp puts for the "*" of Write's
// pattern.
func (f *File) removeTemporaries() {
	dir, base := filepath.Dir(f.Path), filepath.Base(f.Path)+"."
	entries, err := os.ReadDir(dir)
	if err != nil {
		return // missing: nothing to remove; otherwise Load fails next
	}
	for _, e := range entries {
		digits, ok := strings.CutPrefix(e.Name(), base)
		if !ok || digits == "" || strings.Trim(digits, "0123456789") != "" || !e.Type().IsRegular() {
			continue
		}
		name := filepath.Join(dir, e.Name())
		if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			f.log().Warn("removing a temporary checkpoint file", "path", name, "error", err)
			continue
		}
		f.log().Info("removed the temporary file of an interrupted checkpoint write", "path", name)
	}
}

// MaxRecordBytes implements Backend: no limit.
func (f *File) MaxRecordBytes() int { return 0 }

// Close implements Backend.
func (f *File) Close() error { return nil }
