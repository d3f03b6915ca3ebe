package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"

	"github.com/depbridge/depbridge/internal/event"
	"github.com/depbridge/depbridge/internal/sink"
)

// tail prints the CloudEvents published on a NATS subject, one readable
// block per event (or the event as JSON with --json), until interrupted.
func tail(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("nats", nats.DefaultURL, "NATS server URL")
	subject := fs.String("subject", "depbridge.reconcile.>", "subject to subscribe to")
	asJSON := fs.Bool("json", false, "print each event as one line of JSON (structured mode)")
	if err := parse(fs, args); err != nil {
		return err
	}
	nc, err := nats.Connect(*url, nats.Name("bridge tail"), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", *url, err)
	}
	defer nc.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	msgs := make(chan *nats.Msg, 256)
	sub, err := nc.ChanSubscribe(*subject, msgs)
	if err != nil {
		return fmt.Errorf("subscribe to %s: %w", *subject, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	fmt.Fprintf(stderr, "listening on %s for %s (Ctrl-C to stop)\n", *url, *subject)
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-msgs:
			e, err := sink.DecodeNATS(ctx, m)
			if err != nil {
				fmt.Fprintf(stderr, "skipping a message on %s: %v\n", m.Subject, err)
				continue
			}
			if *asJSON {
				b, _ := json.Marshal(e)
				fmt.Fprintln(stdout, string(b))
				continue
			}
			fmt.Fprint(stdout, describe(e, m.Subject))
		}
	}
}

// describe renders a reconcile request event for people.
func describe(e *ce.Event, subject string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %s  reconcile %s\n", e.Time().Local().Format(time.TimeOnly), e.Type(), e.Subject())
	fmt.Fprintf(&b, "          id %s  on %s\n", e.ID(), subject)
	var d event.Data
	if err := json.Unmarshal(e.Data(), &d); err != nil {
		fmt.Fprintf(&b, "          (data is not a reconcile request: %v)\n", err)
		return b.String()
	}
	if len(d.Causes) == 0 {
		b.WriteString("          because: requeued\n")
	}
	for _, c := range d.Causes {
		obj := c.Namespace + "/" + c.Name
		if c.Namespace == "" {
			obj = c.Name
		}
		switch {
		case c.Reason != "":
			fmt.Fprintf(&b, "          because: %-8s %s %s (%s)\n", c.Op, c.Watched.Kind, c.Watched.Key(), c.Reason)
		case c.ResourceVersion == "":
			fmt.Fprintf(&b, "          because: %-8s %s %s\n", c.Op, c.Watched.Kind, obj)
		default:
			fmt.Fprintf(&b, "          because: %-8s %s %s (resourceVersion %s)\n", c.Op, c.Watched.Kind, obj, c.ResourceVersion)
		}
	}
	if d.Truncated > 0 {
		fmt.Fprintf(&b, "          and %d more causes\n", d.Truncated)
	}
	for _, o := range d.Objects {
		if md, ok := o["metadata"].(map[string]any); ok {
			fmt.Fprintf(&b, "          object:  %v %v/%v\n", o["kind"], md["namespace"], md["name"])
		}
	}
	return b.String()
}
