package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"

	"github.com/depbridge/depbridge/internal/config"
)

// flushTimeout bounds a flush when the caller's ctx has no deadline (nats.go
// refuses to flush without one).
const flushTimeout = 10 * time.Second

// NATS publishes with core NATS. Delivery is at most once: Send returns
// after a flush, when the server has received the message, but the server
// stores nothing and sends no acknowledgement, so a subscriber that is not
// connected at that moment never sees the event, and an outage can lose
// events that Send reported as sent. Use JetStream for at least once.
type NATS struct {
	nc       *nats.Conn
	log      *slog.Logger
	inflight inflight
	closed   chan struct{} // closed when the first Close has finished
}

// NewNATS connects to the NATS server of cfg. name identifies the sink in
// logs and in the connection name.
func NewNATS(name string, cfg config.NATS, log *slog.Logger) (*NATS, error) {
	log = orDiscard(log)
	nc, err := connectNATS(name, cfg.NATSConn, log)
	if err != nil {
		return nil, err
	}
	log.Warn("core NATS sink delivers at most once: events are lost while no subscriber listens; use jetstream for at least once")
	return &NATS{nc: nc, log: log, closed: make(chan struct{})}, nil
}

// Send publishes e to t.Subject and flushes. A nil error means only that
// the server received it.
func (s *NATS) Send(ctx context.Context, t Target, e ce.Event) error {
	if err := s.inflight.add(); err != nil {
		return err
	}
	defer s.inflight.done()
	m, err := encodeNATS(t.Subject, t.Mode, &e)
	if err != nil {
		return err
	}
	if err := s.nc.PublishMsg(m); err != nil {
		return fmt.Errorf("publish %s to %q: %w", e.ID(), t.Subject, natsError(m, err))
	}
	if err := flush(ctx, s.nc); err != nil {
		return fmt.Errorf("publish %s to %q: flush: %w", e.ID(), t.Subject, err)
	}
	return nil
}

// Close waits for running Sends, flushes and closes the connection.
func (s *NATS) Close(ctx context.Context) error {
	return closeNATS(ctx, s.nc, &s.inflight, s.closed, nil)
}

func flush(ctx context.Context, nc *nats.Conn) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, flushTimeout)
		defer cancel()
	}
	return nc.FlushWithContext(ctx)
}

// closeNATS is Close of the NATS sinks. The first call refuses new sends,
// waits for running ones until ctx is done, flushes and closes nc, then
// calls leftovers (when not nil) and closes closed. A later call only waits
// for closed, until its own ctx is done: it neither returns while the
// first is still at work nor fails the sends the first is waiting for.
func closeNATS(ctx context.Context, nc *nats.Conn, f *inflight, closed chan struct{}, leftovers func()) error {
	first, err := f.close(ctx)
	if !first {
		select {
		case <-closed:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("close: wait for the first Close: %w", context.Cause(ctx))
		}
	}
	defer close(closed)
	if nc.IsConnected() {
		err = errors.Join(err, flush(ctx, nc))
	}
	nc.Close()
	if leftovers != nil {
		leftovers()
	}
	if err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

// connectNATS dials the server of cfg with reconnection forever, so that a
// server restart costs retries, not the sink. Credentials never reach the
// log: only the redacted connected URL does.
func connectNATS(name string, cfg config.NATSConn, log *slog.Logger) (*nats.Conn, error) {
	if cfg.URL == "" {
		return nil, errors.New("nats: url is required")
	}
	opts := []nats.Option{
		nats.Name("depbridge/" + name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.Timeout(5 * time.Second),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			log.Warn("disconnected from NATS", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("reconnected to NATS", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn("NATS asynchronous error", "err", err)
		}),
	}
	switch {
	case cfg.User != "" && cfg.Token != "":
		return nil, errors.New("nats: set user/password or token, not both")
	case cfg.User != "":
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	case cfg.Password != "":
		return nil, errors.New("nats: password without user")
	case cfg.Token != "":
		opts = append(opts, nats.Token(cfg.Token))
	}
	if cfg.CredsFile != "" && cfg.NKeyFile != "" {
		return nil, errors.New("nats: set credsFile or nkeyFile, not both")
	}
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.NKeyFile != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("nats: nkeyFile: %w", err)
		}
		opts = append(opts, o)
	}
	t, err := tlsConfig(cfg.TLS)
	if err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	if t != nil {
		opts = append(opts, nats.Secure(t))
	}
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("nats: connect: %w", err)
	}
	log.Info("connected to NATS", "url", nc.ConnectedUrlRedacted())
	return nc, nil
}

var _ Sink = (*NATS)(nil)
