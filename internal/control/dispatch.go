package control

import (
	"context"
	"sync"
)

// serializer runs functions keyed by watcher: those of one key one at a
// time, in the order they were added; those of different keys
// concurrently, on the workers that call run. At most capacity functions
// are queued or running; add waits past it, so a slow watcher holds back
// the reader only once the queue is full, and never other watchers'
// running work.
type serializer struct {
	sem   chan struct{}
	ready chan string // keys with work and no worker; at most capacity
	mu    sync.Mutex
	queue map[string][]func(context.Context)
	busy  map[string]bool // a worker owns the key, or it is in ready
}

func newSerializer(capacity int) *serializer {
	return &serializer{
		sem:   make(chan struct{}, capacity),
		ready: make(chan string, capacity),
		queue: map[string][]func(context.Context){},
		busy:  map[string]bool{},
	}
}

// add queues fn under key. It waits while the serializer is full, until
// ctx is done.
func (s *serializer) add(ctx context.Context, key string, fn func(context.Context)) error {
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queue[key] = append(s.queue[key], fn)
	if !s.busy[key] {
		s.busy[key] = true
		s.ready <- key // never blocks: each ready key holds a slot of sem
	}
	return nil
}

// run is one worker: it runs the functions of ready keys until ctx is
// done. Functions still queued then are dropped (the bus keeps their
// messages).
func (s *serializer) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case key := <-s.ready:
			if !s.drain(ctx, key) {
				return
			}
		}
	}
}

// drain runs the functions of key until it has none; false when ctx ended
// first. None starts once ctx is done.
func (s *serializer) drain(ctx context.Context, key string) bool {
	for {
		if ctx.Err() != nil {
			return false
		}
		s.mu.Lock()
		q := s.queue[key]
		if len(q) == 0 {
			delete(s.queue, key)
			delete(s.busy, key)
			s.mu.Unlock()
			return true
		}
		fn := q[0]
		q[0] = nil
		s.queue[key] = q[1:]
		s.mu.Unlock()
		fn(ctx)
		<-s.sem
	}
}

// replayTracker says when the messages that were on the bus at start have
// all been read and handled.
type replayTracker struct {
	mu      sync.Mutex
	readers int // readers still reading what was there at start
	pending int // replayed messages read and not handled yet
	synced  chan struct{}
	closed  bool
}

func newReplayTracker(readers int) *replayTracker {
	t := &replayTracker{readers: readers, synced: make(chan struct{})}
	t.check()
	return t
}

// addReaders counts n more readers; call it before the reader count can
// reach zero (while a setup reader is still counted).
func (t *replayTracker) addReaders(n int) {
	t.mu.Lock()
	t.readers += n
	t.mu.Unlock()
}

// add counts one more replayed message to handle.
func (t *replayTracker) add() {
	t.mu.Lock()
	t.pending++
	t.mu.Unlock()
}

// handled counts one replayed message handled (or dropped).
func (t *replayTracker) handled() {
	t.mu.Lock()
	t.pending--
	t.mu.Unlock()
	t.check()
}

// readerDone says one reader has read everything that was there at start.
func (t *replayTracker) readerDone() {
	t.mu.Lock()
	t.readers--
	t.mu.Unlock()
	t.check()
}

func (t *replayTracker) check() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closed && t.readers <= 0 && t.pending <= 0 {
		t.closed = true
		close(t.synced)
	}
}
