package sink

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"

	ce "github.com/cloudevents/sdk-go/v2/event"
)

// Stdout writes each event as one line of structured-mode JSON, for
// debugging. A nil error means the line was written to the writer, nothing
// more.
type Stdout struct {
	mu       sync.Mutex
	w        io.Writer
	inflight inflight
}

// NewStdout writes to w; nil means os.Stdout.
func NewStdout(w io.Writer) *Stdout {
	if w == nil {
		w = os.Stdout
	}
	return &Stdout{w: w}
}

// Send writes e; t is ignored (stdout is always structured).
func (s *Stdout) Send(_ context.Context, _ Target, e ce.Event) error {
	if err := s.inflight.add(); err != nil {
		return err
	}
	defer s.inflight.done()
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode event %s: %w", e.ID(), err)
	}
	b = append(b, '\n')
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.w.Write(b); err != nil {
		return fmt.Errorf("write event %s: %w", e.ID(), err)
	}
	return nil
}

// Close waits for running Sends. It does not close the writer.
func (s *Stdout) Close(ctx context.Context) error {
	_, err := s.inflight.close(ctx)
	return err
}

var _ Sink = (*Stdout)(nil)
