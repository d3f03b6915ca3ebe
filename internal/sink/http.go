package sink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	ce "github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/depbridge/depbridge/internal/config"
)

const (
	// maxErrorBody bounds how much of a failed response's body goes into
	// the error and the log.
	maxErrorBody = 512
)

// HTTP posts each event to a URL with sdk-go's HTTP protocol binding (plus
// the percent-encoding of ce- header values that sdk-go omits). Any
// 2xx response is the acknowledgement. A 429 or 5xx response gives a
// *StatusError whose RetryAfter holds the server's Retry-After (see
// RetryAfter); any other status gives a *StatusError with the start of the
// response body, which is also logged.
//
// Redirects are not followed: a 3xx is a non-retryable *StatusError,
// logged with its Location, because following it would turn the POST of
// a 301, 302 or 303 into a GET whose 2xx acknowledges nothing. A receiver
// that moved is a configuration to fix, not a condition to wait out.
//
// At most maxConnections Sends have a request out at once, over HTTP/1.1
// (one request per connection) as over HTTP/2 (many on one connection);
// the others wait, within their ctx and the sink's timeout.
type HTTP struct {
	client   *http.Client
	url      string
	endpoint string // url without credentials or query, for errors and logs
	headers  http.Header
	timeout  time.Duration
	log      *slog.Logger
	inflight inflight
	// slots holds a token per request in flight; its capacity is
	// maxConnections.
	slots chan struct{}
}

// NewHTTP checks cfg and prepares a client; it sends nothing.
func NewHTTP(name string, cfg config.HTTP, log *slog.Logger) (*HTTP, error) {
	log = orDiscard(log)
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("http: url: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("http: url %q: want http:// or https:// and a host", u.Redacted())
	}
	headers := make(http.Header, len(cfg.Headers))
	for k, v := range cfg.Headers {
		lk := strings.ToLower(k)
		if strings.HasPrefix(lk, "ce-") || lk == "content-type" || lk == "content-length" {
			return nil, fmt.Errorf("http: header %q is set by the CloudEvents binding, not by configuration", k)
		}
		headers.Set(k, v)
	}
	t, err := tlsConfig(cfg.TLS)
	if err != nil {
		return nil, fmt.Errorf("http: %w", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = t
	cfg.Default()
	if cfg.MaxConnections < 1 {
		return nil, fmt.Errorf("http: maxConnections %d: want at least 1", cfg.MaxConnections)
	}
	// Send bounds the requests in flight (slots); the transport keeps
	// as many connections, which over HTTP/2 share one.
	tr.MaxConnsPerHost = cfg.MaxConnections
	tr.MaxIdleConnsPerHost = cfg.MaxConnections
	client := &http.Client{
		Transport: tr,
		// Hand the 3xx to Send, which makes it an error.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	endpoint := redactedURL(u)
	return &HTTP{
		client:   client,
		url:      cfg.URL,
		endpoint: endpoint,
		headers:  headers,
		timeout:  cfg.Timeout.Duration,
		log:      log.With("endpoint", endpoint),
		slots:    make(chan struct{}, cfg.MaxConnections),
	}, nil
}

// redactedURL is u without credentials, query or fragment, for errors and
// logs: a token may hide in the user name or the query (Azure Functions'
// ?code=).
func redactedURL(u *url.URL) string { return u.Scheme + "://" + u.Host + u.Path }

// Send posts e in t.Mode and waits for the response, for at most the
// sink's timeout.
func (s *HTTP) Send(ctx context.Context, t Target, e ce.Event) error {
	if err := s.inflight.add(); err != nil {
		return err
	}
	defer s.inflight.done()
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	case <-ctx.Done():
		return fmt.Errorf("publish %s to %s: wait for a free connection: %w", e.ID(), s.endpoint, context.Cause(ctx))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, nil)
	if err != nil {
		return fmt.Errorf("publish %s to %s: %w", e.ID(), s.endpoint, err)
	}
	for k, v := range s.headers {
		req.Header[k] = v
	}
	wctx := ctx
	if t.Mode == Structured {
		wctx = binding.WithForceStructured(ctx)
	}
	if err := cehttp.WriteRequest(wctx, binding.ToMessage(&e), req); err != nil {
		return fmt.Errorf("encode event %s for HTTP (%s mode): %w", e.ID(), t.Mode, err)
	}
	if t.Mode == Binary {
		percentEncodeCEHeaders(req.Header)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		// The *url.Error holds s.url, credentials and query included.
		if uerr, ok := errors.AsType[*url.Error](err); ok {
			uerr.URL = s.endpoint
		}
		return fmt.Errorf("publish %s to %s: %w", e.ID(), s.endpoint, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		// Drain a little so the connection can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	serr := &StatusError{StatusCode: resp.StatusCode, Body: string(body)}
	switch {
	case serr.Retryable():
		serr.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		var location string
		if u, err := resp.Location(); err == nil {
			location = redactedURL(u)
		}
		s.log.Warn("receiver redirected event; not followed: fix the sink's url", "event_id", e.ID(), "status", resp.StatusCode, "location", location)
	default:
		s.log.Warn("receiver rejected event", "event_id", e.ID(), "status", resp.StatusCode, "body", serr.Body)
	}
	return fmt.Errorf("publish %s to %s: %w", e.ID(), s.endpoint, serr)
}

// Close waits for running Sends and closes idle connections.
func (s *HTTP) Close(ctx context.Context) error {
	_, err := s.inflight.close(ctx)
	s.client.CloseIdleConnections()
	if err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

// percentEncodeCEHeaders percent-encodes the values of the ce- headers as
// the HTTP binding requires (§3.1.3.2: space, '"', '%' and bytes outside
// printable ASCII). sdk-go's HTTP writer puts values in raw, so a selector
// watcher's subject would go out with spaces and a control character would
// make net/http refuse the request; Content-Type (datacontenttype) is an
// HTTP header with its own syntax and is left alone.
func percentEncodeCEHeaders(h http.Header) {
	for k, vs := range h {
		if len(k) > 3 && (k[:3] == "Ce-" || k[:3] == "ce-") {
			for i, v := range vs {
				vs[i] = percentEncode(v)
			}
		}
	}
}

// StatusError is an HTTP response that is not a 2xx.
type StatusError struct {
	StatusCode int
	// RetryAfter is the server's Retry-After for a retryable status; zero
	// when absent or unparsable.
	RetryAfter time.Duration
	// Body is the start of the response body (at most 512 bytes).
	Body string
}

// Retryable reports a status that says "try again later": 408, 429, 5xx.
// Other statuses are errors too, and the engine retries them as well (it
// never drops), but they need someone to fix the receiver or the route.
func (e *StatusError) Retryable() bool {
	return e.StatusCode == http.StatusTooManyRequests || e.StatusCode == http.StatusRequestTimeout || e.StatusCode >= 500
}

// Is makes a 413 Content Too Large match ErrTooLarge.
func (e *StatusError) Is(target error) bool {
	return target == ErrTooLarge && e.StatusCode == http.StatusRequestEntityTooLarge
}

func (e *StatusError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	if body := strings.TrimSpace(e.Body); body != "" {
		fmt.Fprintf(&b, ": %q", body)
	}
	return b.String()
}

// RetryDelay is how long the receiver asked the caller to wait before
// retrying (a Retry-After header), if it did. The watch engine waits at
// least that long before retrying a reconcile that failed with e (see
// watch.RetryDelayer).
func (e *StatusError) RetryDelay() (time.Duration, bool) {
	return e.RetryAfter, e.RetryAfter > 0
}

// RetryAfter returns how long the receiver asked the caller to wait before
// retrying, when err carries such a request (an HTTP 429 or 5xx with a
// Retry-After header).
func RetryAfter(err error) (time.Duration, bool) {
	var serr *StatusError
	if errors.As(err, &serr) {
		return serr.RetryDelay()
	}
	return 0, false
}

// parseRetryAfter reads a Retry-After value (RFC 9110 §10.2.3): a number of
// seconds or an HTTP date. It returns 0 for an absent, invalid or past
// value.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, int64(24*time.Hour/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

var _ Sink = (*HTTP)(nil)
