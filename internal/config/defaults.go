package config

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Names and values the program needs as well as the loader.
const (
	// EmbeddedSink is the name of the sink the program creates, for an
	// embedded NATS server with JetStream, when the configuration has no
	// sinks.
	EmbeddedSink = "default"
	// DefaultRoute is the route of a subscription that names none. With no
	// sinks and no route of this name, the program creates it, to the
	// embedded sink.
	DefaultRoute = "default"
	// DefaultSubject is the subject template of a route that sets none.
	DefaultSubject = "depbridge.reconcile.{{.Kind}}.{{.Namespace}}.{{.Name}}"
	// ModeBinary and ModeStructured are the CloudEvents content modes of a
	// route.
	ModeBinary     = "binary"
	ModeStructured = "structured"
	// DefaultWorkers is engine.workers when unset (see Engine.Workers);
	// watch.Options.Workers defaults to the same.
	DefaultWorkers = 256
	// DefaultMaxInFlight is engine.maxInFlight when unset (see
	// Engine.MaxInFlight); watch.Options.MaxInFlight defaults to the same.
	DefaultMaxInFlight = 4096
)

// Default sets every field left at its zero value that has a documented
// default to that default. It is the only place defaults are applied; Parse
// calls it, and a program that builds a Config in code should too. Default
// is idempotent. It does not create the embedded sink and its route: with no
// sinks, the program does (see EmbeddedSink).
func (c *Config) Default() {
	setString(&c.Cluster, "default")
	setString(&c.Listen, ":8080")
	for i := range c.Sinks {
		c.Sinks[i].Default()
	}
	for i := range c.Routes {
		r := &c.Routes[i]
		setString(&r.Subject, DefaultSubject)
		setString(&r.Mode, ModeBinary)
	}
	for i := range c.Subscriptions {
		s := &c.Subscriptions[i]
		setString(&s.Route, DefaultRoute)
		if s.InitialReconcile == nil {
			yes := true
			s.InitialReconcile = &yes
		}
	}
	if c.Control != nil {
		c.Control.Default()
	}
	if c.Checkpoint != nil {
		setDuration(&c.Checkpoint.Interval, 500*time.Millisecond)
		if c.Checkpoint.JetStream != nil {
			setString(&c.Checkpoint.JetStream.Bucket, "depbridge_checkpoints")
		}
		if c.Checkpoint.Kafka != nil {
			setString(&c.Checkpoint.Kafka.Topic, "depbridge.checkpoints")
		}
	}
	if c.Engine.Workers == 0 {
		c.Engine.Workers = DefaultWorkers
	}
	if c.Engine.MaxInFlight == 0 {
		c.Engine.MaxInFlight = DefaultMaxInFlight
	}
}

// Default applies the control channel's defaults; the control package
// calls it too, so that a Control built in code behaves the same.
func (c *Control) Default() {
	setString(&c.Subject, "depbridge.control")
	setString(&c.Route, DefaultRoute)
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = 65536
	}
}

// Default applies the documented defaults of the sink's transport; the sink
// package calls it too, so that a sink built in code behaves the same.
func (s *Sink) Default() {
	if s.JetStream != nil {
		s.JetStream.Default()
	}
	if s.Kafka != nil {
		s.Kafka.Default()
	}
	if s.HTTP != nil {
		s.HTTP.Default()
	}
}

// Default applies the JetStream sink's defaults.
func (j *JetStream) Default() {
	setDuration(&j.AckTimeout, 5*time.Second)
}

// Default applies the Kafka sink's defaults.
func (k *Kafka) Default() {
	setDuration(&k.WriteTimeout, 10*time.Second)
	setString(&k.ClientID, "depbridge")
}

// Default applies the HTTP sink's defaults.
func (h *HTTP) Default() {
	setDuration(&h.Timeout, 10*time.Second)
	if h.MaxConnections == 0 {
		h.MaxConnections = 64
	}
}

func setString(s *string, def string) {
	if *s == "" {
		*s = def
	}
}

func setDuration(d *metav1.Duration, def time.Duration) {
	if d.Duration == 0 {
		d.Duration = def
	}
}
