package sink

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	ce "github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/depbridge/depbridge/internal/config"
)

// receiver is an httptest server that decodes each request with sdk-go's
// own HTTP binding reader and answers as respond says.
type receiver struct {
	*httptest.Server
	mu       sync.Mutex
	events   []ce.Event
	headers  []http.Header
	attempts map[string]int
	respond  func(w http.ResponseWriter, r *http.Request, attempt int) bool // true: accepted
}

func newReceiver(t *testing.T, respond func(w http.ResponseWriter, r *http.Request, attempt int) bool) *receiver {
	rc := &receiver{attempts: map[string]int{}, respond: respond}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		msg := cehttp.NewMessageFromHttpRequest(r)
		e, err := binding.ToEvent(r.Context(), msg)
		if err != nil {
			t.Errorf("receiver cannot decode request: %v", err)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if !strings.HasPrefix(r.Header.Get("Content-Type"), "application/cloudevents") {
			// sdk-go's reader does not percent-decode ce- headers (the
			// binding says it must); do it here.
			if err := percentDecodeAttributes(e); err != nil {
				t.Errorf("receiver: %v", err)
			}
		}
		rc.mu.Lock()
		rc.attempts[e.ID()]++
		attempt := rc.attempts[e.ID()]
		rc.mu.Unlock()
		if rc.respond != nil && !rc.respond(w, r, attempt) {
			return
		}
		rc.mu.Lock()
		rc.events = append(rc.events, *e)
		rc.headers = append(rc.headers, r.Header.Clone())
		rc.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(rc.Close)
	return rc
}

// percentDecodeAttributes decodes the string attributes that sdk-go's HTTP
// reader left percent-encoded.
func percentDecodeAttributes(e *ce.Event) error {
	for _, f := range []struct {
		get func() string
		set func(string)
	}{{e.ID, e.SetID}, {e.Subject, e.SetSubject}} {
		v, err := percentDecode(f.get())
		if err != nil {
			return err
		}
		f.set(v)
	}
	for k, v := range e.Extensions() {
		if s, ok := v.(string); ok {
			d, err := percentDecode(s)
			if err != nil {
				return err
			}
			e.SetExtension(k, d)
		}
	}
	return nil
}

// httpEvent is trickyEvent without a dataschema: sdk-go's HTTP reader
// parses it as a URI, which re-encodes it differently.
func httpEvent(t testing.TB) ce.Event {
	e := trickyEvent(t)
	e.SetDataSchema("")
	return e
}

func newHTTPSink(t *testing.T, url string, timeout time.Duration, logs *logBuffer) *HTTP {
	t.Helper()
	l := testLogger(&logBuffer{})
	if logs != nil {
		l = testLogger(logs)
	}
	s, err := NewHTTP("web", config.HTTP{URL: url, Timeout: durationOf(timeout), Headers: map[string]string{"Authorization": "Bearer secret-token"}}, l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

func TestHTTPBothModes(t *testing.T) {
	rc := newReceiver(t, nil)
	s := newHTTPSink(t, rc.URL+"/events", 5*time.Second, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, mode := range []Mode{Binary, Structured} {
		if err := s.Send(ctx, Target{Mode: mode}, httpEvent(t)); err != nil {
			t.Fatal(err)
		}
	}
	if len(rc.events) != 2 {
		t.Fatalf("received %d events", len(rc.events))
	}
	for i, e := range rc.events {
		assertSameEvent(t, e, httpEvent(t))
		h := rc.headers[i]
		if h.Get("Authorization") != "Bearer secret-token" {
			t.Errorf("configured header not sent: %v", h)
		}
		switch i {
		case 0:
			if h.Get("Content-Type") != "application/json; charset=utf-8" || h.Get("Ce-Id") != "id%201" ||
				h.Get("Ce-Watchername") != "tab%09here%0Anewline" || h.Get("Ce-Datacontenttype") != "" {
				t.Errorf("binary mode headers: %v", h)
			}
		case 1:
			if !strings.HasPrefix(h.Get("Content-Type"), "application/cloudevents+json") || h.Get("Ce-Id") != "" {
				t.Errorf("structured mode headers: %v", h)
			}
		}
	}
}

func TestHTTPRetryAfterOn503(t *testing.T) {
	rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request, attempt int) bool {
		if attempt <= 2 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "draining")
			return false
		}
		return true
	})
	s := newHTTPSink(t, rc.URL, 5*time.Second, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := testEvent(t, 1, 1)

	err := s.Send(ctx, Target{}, e)
	var serr *StatusError
	if !errors.As(err, &serr) || serr.StatusCode != 503 || !serr.Retryable() {
		t.Fatalf("err = %v, want a retryable 503 StatusError", err)
	}
	if d, ok := RetryAfter(err); !ok || d != time.Second {
		t.Errorf("RetryAfter = %v, %v; want 1s", d, ok)
	}
	if !strings.Contains(err.Error(), "draining") || !strings.Contains(err.Error(), e.ID()) {
		t.Errorf("err = %v, want the body and the event id", err)
	}
	start := time.Now()
	failures, err := sendUntilAcked(ctx, s, Target{}, e, time.Second, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if failures != 1 || time.Since(start) < time.Second {
		t.Errorf("%d more failures in %s; want 1 and a wait of Retry-After", failures, time.Since(start))
	}
	if len(rc.events) != 1 || rc.events[0].ID() != e.ID() {
		t.Errorf("received %d events", len(rc.events))
	}
}

func TestHTTPSlowReceiver(t *testing.T) {
	var slow atomic.Bool
	slow.Store(true)
	rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request, attempt int) bool {
		if attempt == 1 {
			select { // slower than the sink's timeout
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
			return false
		}
		return true
	})
	s := newHTTPSink(t, rc.URL, 200*time.Millisecond, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e := testEvent(t, 2, 1)
	err := s.Send(ctx, Target{}, e)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline error from the sink's timeout", err)
	}
	if _, err := sendUntilAcked(ctx, s, Target{}, e, time.Second, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if len(rc.events) != 1 {
		t.Errorf("received %d events, want 1", len(rc.events))
	}
}

func TestHTTPClientError(t *testing.T) {
	rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request, attempt int) bool {
		w.WriteHeader(http.StatusUnprocessableEntity)
		io.WriteString(w, `{"error":"unknown watcher kind"}`+strings.Repeat("x", 4096))
		return false
	})
	logs := &logBuffer{}
	s := newHTTPSink(t, rc.URL, time.Second, logs)
	err := s.Send(context.Background(), Target{}, testEvent(t, 3, 1))
	var serr *StatusError
	if !errors.As(err, &serr) || serr.StatusCode != 422 || serr.Retryable() {
		t.Fatalf("err = %v, want a non-retryable 422", err)
	}
	if !strings.Contains(err.Error(), "unknown watcher kind") || len(serr.Body) != maxErrorBody {
		t.Errorf("err = %v (body %d bytes), want the start of the body, bounded", err, len(serr.Body))
	}
	if _, ok := RetryAfter(err); ok {
		t.Error("RetryAfter set for a 422")
	}
	if l := logs.String(); !strings.Contains(l, "unknown watcher kind") || strings.Contains(l, "secret-token") {
		t.Errorf("log should hold the body and no credentials:\n%s", l)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := map[string]time.Duration{
		"":                              0,
		"3":                             3 * time.Second,
		" 10 ":                          10 * time.Second,
		"0":                             0,
		"-5":                            0,
		"soon":                          0,
		"99999999":                      24 * time.Hour,
		"Thu, 01 Jan 2026 00:00:30 GMT": 30 * time.Second,
		"Wed, 31 Dec 2025 23:00:00 GMT": 0,
	}
	for in, want := range tests {
		if got := parseRetryAfter(in, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestHTTPConfigErrors(t *testing.T) {
	tests := map[string]struct {
		cfg  config.HTTP
		want string
	}{
		"no url":            {config.HTTP{}, "want http:// or https://"},
		"bad scheme":        {config.HTTP{URL: "ftp://x"}, "want http:// or https://"},
		"ce header":         {config.HTTP{URL: "http://x", Headers: map[string]string{"Ce-Id": "1"}}, `header "Ce-Id" is set by the CloudEvents binding`},
		"content type":      {config.HTTP{URL: "http://x", Headers: map[string]string{"content-type": "x"}}, "set by the CloudEvents binding"},
		"password redacted": {config.HTTP{URL: "ftp://u:secret-pw@x"}, "xxxxx"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := NewHTTP("h", tt.cfg, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "secret-pw") {
				t.Fatalf("err = %v, want it to contain %q and no password", err, tt.want)
			}
		})
	}
}

func TestStdout(t *testing.T) {
	var out logBuffer
	s := NewStdout(&out)
	for range 2 {
		if err := s.Send(context.Background(), Target{Mode: Binary}, trickyEvent(t)); err != nil {
			t.Fatal(err)
		}
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2:\n%s", len(lines), out.String())
	}
	for _, l := range lines {
		var e ce.Event
		if err := e.UnmarshalJSON([]byte(l)); err != nil {
			t.Fatalf("line is not a structured event: %v\n%s", err, l)
		}
		assertSameEvent(t, e, trickyEvent(t))
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), Target{}, trickyEvent(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close = %v", err)
	}
}

func TestNewSwitch(t *testing.T) {
	tests := map[string]struct {
		cfg  config.Sink
		want string
	}{
		"none":     {config.Sink{Name: "s"}, `sink "s": set one of nats, jetstream, kafka, http, stdout`},
		"two":      {config.Sink{Name: "s", Stdout: &config.Stdout{}, HTTP: &config.HTTP{URL: "http://x"}}, "set only one"},
		"bad http": {config.Sink{Name: "s", HTTP: &config.HTTP{URL: "x"}}, `sink "s": http: url`},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := New(tt.cfg, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
	for _, cfg := range []config.Sink{
		{Name: "out", Stdout: &config.Stdout{}},
		{Name: "web", HTTP: &config.HTTP{URL: "http://127.0.0.1:1/"}},
		{Name: "k", Kafka: &config.Kafka{Brokers: []string{"127.0.0.1:1"}}},
	} {
		s, err := New(cfg, nil)
		if err != nil {
			t.Fatalf("%s: %v", cfg.Name, err)
		}
		if err := s.Close(context.Background()); err != nil {
			t.Errorf("%s: close: %v", cfg.Name, err)
		}
	}
}

// TestCloseWaitsForInflight checks Close's contract: it waits for a
// running Send and is bounded by its ctx.
func TestCloseWaitsForInflight(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{})
	rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request, attempt int) bool {
		close(entered)
		<-release
		return true
	})
	s := newHTTPSink(t, rc.URL, 10*time.Second, nil)
	sendErr := make(chan error, 1)
	go func() { sendErr <- s.Send(context.Background(), Target{}, testEvent(t, 1, 1)) }()
	<-entered
	short, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Close(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close with a Send in flight and a short ctx = %v, want a deadline error", err)
	}
	close(release)
	if err := <-sendErr; err != nil {
		t.Errorf("in-flight Send = %v, want success", err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if len(rc.events) != 1 {
		t.Errorf("received %d events", len(rc.events))
	}
}

// TestHTTPTLS checks the TLS settings reach the client: the receiver's
// certificate is trusted only through caFile.
func TestHTTPTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tt := range map[string]struct {
		tls *config.TLS
		ok  bool
	}{
		"trusted CA":   {&config.TLS{CAFile: ca}, true},
		"system roots": {nil, false},
	} {
		t.Run(name, func(t *testing.T) {
			s, err := NewHTTP("tls", config.HTTP{URL: srv.URL, TLS: tt.tls}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close(t.Context())
			err = s.Send(t.Context(), Target{}, testEvent(t, 1, 1))
			if tt.ok != (err == nil) {
				t.Errorf("err = %v, want success %v", err, tt.ok)
			}
		})
	}
}

// With many concurrent Sends (the engine's workers), the receiver sees at
// most maxConnections requests at once; the rest wait, none fails.
func TestHTTPMaxConnections(t *testing.T) {
	var cur, peak atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := cur.Add(1)
		defer cur.Add(-1)
		for {
			p := peak.Load()
			if c <= p || peak.CompareAndSwap(p, c) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	s, err := NewHTTP("limited", config.HTTP{URL: srv.URL, MaxConnections: 5}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(t.Context())
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := range 50 {
		wg.Go(func() { errs <- s.Send(t.Context(), Target{}, testEvent(t, i, 1)) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if p := peak.Load(); p > 5 || p < 2 {
		t.Fatalf("peak concurrent requests %d, want 2..5", p)
	}
}

// A redirect is not an acknowledgement: the sink does not follow it (a
// 301/302/303 would turn the POST into a GET of a page that answers 200),
// and the 3xx is a non-retryable StatusError, logged with its Location
// (without its query).
func TestHTTPRedirectIsAnError(t *testing.T) {
	var landed atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/landing", func(w http.ResponseWriter, r *http.Request) { landed.Add(1) })
	for _, code := range []int{301, 302, 303, 307, 308} {
		mux.HandleFunc("/"+strconv.Itoa(code), func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/landing?code=LOCSECRET", code)
		})
	}
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for _, code := range []int{301, 302, 303, 307, 308} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			logs := &logBuffer{}
			s := newHTTPSink(t, srv.URL+"/"+strconv.Itoa(code), 5*time.Second, logs)
			err := s.Send(t.Context(), Target{}, testEvent(t, 1, 1))
			var serr *StatusError
			if !errors.As(err, &serr) || serr.StatusCode != code || serr.Retryable() {
				t.Fatalf("err = %v, want a non-retryable %d StatusError", err, code)
			}
			if l := logs.String(); !strings.Contains(l, srv.URL+"/landing") || strings.Contains(l, "LOCSECRET") {
				t.Errorf("log should hold the Location without its query:\n%s", l)
			}
		})
	}
	if n := landed.Load(); n != 0 {
		t.Errorf("the redirect was followed %d times", n)
	}
}

// An error from the transport names the endpoint, not the configured URL
// with its credentials and query, and keeps the underlying error.
func TestHTTPTransportErrorHidesSecrets(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: connection refused
	s := newHTTPSink(t, "http://tok3n@"+addr+"/hook?code=SUPERSECRET", 5*time.Second, nil)
	err = s.Send(t.Context(), Target{}, testEvent(t, 1, 1))
	if err == nil {
		t.Fatal("Send to a closed port succeeded")
	}
	if msg := err.Error(); strings.Contains(msg, "tok3n") || strings.Contains(msg, "SUPERSECRET") || !strings.Contains(msg, "http://"+addr+"/hook") {
		t.Errorf("err = %q, want the endpoint without credentials or query", msg)
	}
	var uerr *url.Error
	if !errors.As(err, &uerr) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("err = %v, want a *url.Error wrapping connection refused", err)
	}
}

// Over HTTP/2 every request shares one connection, yet the receiver still
// sees at most maxConnections requests at once.
func TestHTTPMaxConnectionsHTTP2(t *testing.T) {
	const limit, senders = 2, 30
	var cur, peak atomic.Int32
	var proto atomic.Value
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proto.Store(r.Proto)
		c := cur.Add(1)
		defer cur.Add(-1)
		for p := peak.Load(); c > p && !peak.CompareAndSwap(p, c); p = peak.Load() {
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := NewHTTP("h2", config.HTTP{URL: srv.URL, TLS: &config.TLS{CAFile: ca}, MaxConnections: limit, Timeout: durationOf(30 * time.Second)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(t.Context())
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	errs := make(chan error, senders)
	for i := range senders {
		go func() { errs <- s.Send(ctx, Target{}, testEvent(t, i, 1)) }()
	}
	// Let one request go each time the receiver holds as many as it may.
	for released := 0; released < senders; released++ {
		want := int32(min(limit, senders-released))
		waitFor(t, ctx, fmt.Sprintf("%d requests at the receiver", want), func() bool { return cur.Load() >= want })
		select {
		case release <- struct{}{}:
		case <-ctx.Done():
			t.Fatal("no request took its release before the deadline")
		}
	}
	for range senders {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if p := peak.Load(); p != limit {
		t.Errorf("peak concurrent requests %d, want %d", p, limit)
	}
	if p, _ := proto.Load().(string); p != "HTTP/2.0" {
		t.Errorf("protocol %q, want HTTP/2.0", p)
	}
}
