package testenv

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"k8s.io/client-go/rest"
)

// Faults sits in a client's transport, in the process, in front of the real
// API server: it counts LIST and WATCH requests, and can cut watch streams,
// refuse new watches (as a server that is down), answer the next watches
// with 410 Gone (as after etcd compaction) so that clients must relist, or
// hold requests back (as a slow server) until released.
type Faults struct {
	lists, watches atomic.Int64
	held           chan string

	mu       sync.Mutex
	open     map[*trackedBody]struct{}
	refuse   bool
	expire   int
	matchFn  func(*http.Request) bool
	holdFn   func(*http.Request) bool
	released chan struct{}
}

// NewFaults returns a Faults that passes everything through.
func NewFaults() *Faults {
	return &Faults{open: map[*trackedBody]struct{}{}, held: make(chan string, 100)}
}

// Wrap returns a copy of cfg whose requests go through f.
func (f *Faults) Wrap(cfg *rest.Config) *rest.Config {
	c := rest.CopyConfig(cfg)
	prev := c.WrapTransport
	c.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		if prev != nil {
			rt = prev(rt)
		}
		return &faultTransport{f: f, next: rt}
	}
	return c
}

// Only limits faults (not counts) to requests for which match is true, e.g.
// one resource's path.
func (f *Faults) Only(match func(*http.Request) bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.matchFn = match
}

// Counts returns how many LIST and WATCH requests went through.
func (f *Faults) Counts() (lists, watches int64) {
	return f.lists.Load(), f.watches.Load()
}

// Open is the number of watch streams open now.
func (f *Faults) Open() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.open)
}

// CutWatches closes every open watch stream, as a dropped connection would.
func (f *Faults) CutWatches() {
	f.mu.Lock()
	bodies := make([]*trackedBody, 0, len(f.open))
	for b := range f.open {
		bodies = append(bodies, b)
	}
	f.mu.Unlock()
	for _, b := range bodies {
		_ = b.Close()
	}
}

// RefuseWatches makes new watch requests fail with "connection refused"
// while on.
func (f *Faults) RefuseWatches(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refuse = on
}

// ExpireWatches answers the next n watch requests with a 410 Gone event.
func (f *Faults) ExpireWatches(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expire = n
}

// Hold holds back every request (of any kind, Only aside) for which match
// is true, from now until Release or the request's context ends. A
// Reflector's first list may be a watch (sendInitialEvents), so match
// both when a list is meant.
func (f *Faults) Hold(match func(*http.Request) bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.holdFn = match
	f.released = make(chan struct{})
}

// Release lets the held requests, and later ones, through.
func (f *Faults) Release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.holdFn != nil {
		f.holdFn = nil
		close(f.released)
	}
}

// Held receives the path of each request Hold holds, as it is held (the
// first 100 until received).
func (f *Faults) Held() <-chan string { return f.held }

type faultTransport struct {
	f    *Faults
	next http.RoundTripper
}

const goneEvent = `{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",` +
	`"message":"too old resource version (injected by testenv.Faults)","reason":"Expired","code":410}}` + "\n"

func (t *faultTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	f := t.f
	isWatch := req.Method == http.MethodGet && req.URL.Query().Get("watch") == "true"
	isList := req.Method == http.MethodGet && !isWatch && isCollection(req.URL.Path)
	switch {
	case isWatch:
		f.watches.Add(1)
	case isList:
		f.lists.Add(1)
	}
	f.mu.Lock()
	hold, released := f.holdFn != nil && f.holdFn(req), f.released
	f.mu.Unlock()
	if hold {
		select {
		case f.held <- req.URL.Path:
		default:
		}
		select {
		case <-released:
		case <-req.Context().Done():
			return nil, req.Context().Err()
		}
	}
	if !isWatch {
		return t.next.RoundTrip(req)
	}
	f.mu.Lock()
	applies := f.matchFn == nil || f.matchFn(req)
	refuse := applies && f.refuse
	expire := applies && f.expire > 0
	if expire {
		f.expire--
	}
	f.mu.Unlock()
	if refuse {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	}
	if expire {
		return &http.Response{StatusCode: http.StatusOK, Status: "200 OK", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header:  http.Header{"Content-Type": []string{"application/json"}},
			Body:    io.NopCloser(bytes.NewBufferString(goneEvent)),
			Request: req}, nil
	}
	resp, err := t.next.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	b := &trackedBody{ReadCloser: resp.Body, f: f}
	f.mu.Lock()
	f.open[b] = struct{}{}
	f.mu.Unlock()
	resp.Body = b
	return resp, nil
}

// isCollection tells a list (…/configmaps) from a get (…/configmaps/name):
// resource paths are /api/v1[/namespaces/ns]/resource[/name] and
// /apis/group/version[/namespaces/ns]/resource[/name].
func isCollection(path string) bool {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	if len(parts) < 2 {
		return false
	}
	if parts[0] == "api" {
		parts = parts[2:]
	} else if parts[0] == "apis" && len(parts) >= 3 {
		parts = parts[3:]
	} else {
		return false
	}
	if len(parts) >= 2 && parts[0] == "namespaces" {
		if len(parts) == 2 {
			return false // GET of one namespace
		}
		parts = parts[2:]
	}
	return len(parts) == 1
}

type trackedBody struct {
	io.ReadCloser
	f    *Faults
	once sync.Once
}

func (b *trackedBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(func() {
		b.f.mu.Lock()
		delete(b.f.open, b)
		b.f.mu.Unlock()
	})
	return err
}
