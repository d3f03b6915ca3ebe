package config

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/depbridge/depbridge/internal/cache"
)

// Config is the bridge's configuration file.
type Config struct {
	// Cluster names the cluster in every event's source attribute
	// ("depbridge://<cluster>/<instance>"). Defaults to "default".
	Cluster string `json:"cluster,omitempty"`
	// Listen is the address of /healthz, /readyz and /metrics. Defaults to
	// ":8080".
	Listen string `json:"listen,omitempty"`
	// Sinks are the brokers events can be sent to. With none, the bridge
	// starts an embedded NATS server with JetStream on 127.0.0.1 and a sink
	// named "default" for it.
	Sinks []Sink `json:"sinks,omitempty"`
	// Routes say where and how a subscription's events are published. A
	// route named "default" is created for the embedded sink when there are
	// no sinks.
	Routes []Route `json:"routes,omitempty"`
	// Subscriptions are the watchers and what each depends on.
	Subscriptions []Subscription `json:"subscriptions,omitempty"`
	// Control is the run-time subscription channel on the bus; off when nil.
	Control *Control `json:"control,omitempty"`
	// Engine tunes the watch engine.
	Engine Engine `json:"engine,omitempty"`
	// Checkpoint records what each watcher was told, so that a restarted
	// bridge sends requests only for what changed while it was down. Off
	// when nil: at start every watcher is reconciled (level triggered).
	Checkpoint *Checkpoint `json:"checkpoint,omitempty"`

	// src is the file the Config was loaded from, for the positions in
	// Validate's errors and for Reloader; nil for a Config built in code.
	src *source
}

// Sink is a named broker connection. Exactly one of its transport fields is
// set.
type Sink struct {
	Name      string     `json:"name"`
	NATS      *NATS      `json:"nats,omitempty"`
	JetStream *JetStream `json:"jetstream,omitempty"`
	Kafka     *Kafka     `json:"kafka,omitempty"`
	HTTP      *HTTP      `json:"http,omitempty"`
	Stdout    *Stdout    `json:"stdout,omitempty"`
}

// NATSConn is how to reach a NATS server. Credentials are either literal or
// "${ENV_VAR}" references expanded from the environment at load time.
type NATSConn struct {
	// URL of the server(s), comma-separated: "nats://127.0.0.1:4222".
	URL       string `json:"url"`
	User      string `json:"user,omitempty"`
	Password  string `json:"password,omitempty"`
	Token     string `json:"token,omitempty"`
	CredsFile string `json:"credsFile,omitempty"`
	NKeyFile  string `json:"nkeyFile,omitempty"`
	TLS       *TLS   `json:"tls,omitempty"`
}

// NATS publishes with core NATS: fire and forget, at most once.
type NATS struct {
	NATSConn `json:",inline"`
}

// JetStream publishes to a JetStream stream and waits for its
// acknowledgement: at least once.
type JetStream struct {
	NATSConn `json:",inline"`
	// Stream that must capture the route's subjects; checked at start. When
	// empty, any stream capturing the subjects will do.
	Stream string `json:"stream,omitempty"`
	// AckTimeout bounds the wait for one PubAck; a send whose ack does not
	// come in time fails and is retried with the same Nats-Msg-Id.
	// Defaults to 5s.
	AckTimeout metav1.Duration `json:"ackTimeout,omitempty"`
}

// Kafka publishes with acks from all in-sync replicas.
type Kafka struct {
	Brokers []string `json:"brokers"`
	TLS     *TLS     `json:"tls,omitempty"`
	SASL    *SASL    `json:"sasl,omitempty"`
	// BatchTimeout, when set, holds a partition's next produce request
	// until its first record has waited this long, so that more records
	// share it. Defaults to 0. Without it, a request is sent as soon as
	// the previous one to its partition has returned, with every record
	// that arrived meanwhile.
	BatchTimeout metav1.Duration `json:"batchTimeout,omitempty"`
	// WriteTimeout bounds one produce request to a broker. Defaults to 10s.
	WriteTimeout metav1.Duration `json:"writeTimeout,omitempty"`
	// ClientID is sent to the brokers. Defaults to "depbridge".
	ClientID string `json:"clientID,omitempty"`
}

// SASL authentication for Kafka.
type SASL struct {
	// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
	Mechanism string `json:"mechanism"`
	Username  string `json:"username"`
	Password  string `json:"password"`
}

// HTTP posts each event to URL; any 2xx is the acknowledgement.
type HTTP struct {
	URL string `json:"url"`
	// Timeout of one attempt. Defaults to 10s.
	Timeout metav1.Duration   `json:"timeout,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
	TLS     *TLS              `json:"tls,omitempty"`
	// MaxConnections bounds the requests in flight to the receiver, over
	// HTTP/1.1 and HTTP/2 alike; more wait for one to finish. Defaults to
	// 64.
	MaxConnections int `json:"maxConnections,omitempty"`
}

// Stdout writes one JSON (structured-mode) event per line to standard
// output, for debugging.
type Stdout struct{}

// TLS client settings.
type TLS struct {
	CAFile             string `json:"caFile,omitempty"`
	CertFile           string `json:"certFile,omitempty"`
	KeyFile            string `json:"keyFile,omitempty"`
	ServerName         string `json:"serverName,omitempty"`
	InsecureSkipVerify bool   `json:"insecureSkipVerify,omitempty"`
}

// Route says where and how events are published.
type Route struct {
	Name string `json:"name"`
	// Sink is the name of a sink.
	Sink string `json:"sink"`
	// Subject is a text/template over the watcher (.Group, .Version, .Kind,
	// .Namespace, .Name, .Selector) giving the NATS subject or Kafka topic;
	// ignored by HTTP and stdout. Each value is escaped into one subject
	// token ("my.cm" becomes "my_2Ecm", an empty value "_"; see
	// docs/events.md). Defaults to
	// "depbridge.reconcile.{{.Kind}}.{{.Namespace}}.{{.Name}}".
	Subject string `json:"subject,omitempty"`
	// Mode is the CloudEvents content mode: "binary" (default) or
	// "structured".
	Mode string `json:"mode,omitempty"`
	// IncludeObjects adds the watched objects, from the cache, to each
	// event. An event the sink refuses for its size with them is sent
	// without them, its data marked objectsOmitted.
	IncludeObjects bool `json:"includeObjects,omitempty"`
	// IncludeSecretData keeps Secret data and stringData in included
	// objects; without it they are removed.
	IncludeSecretData bool `json:"includeSecretData,omitempty"`
}

// Subscription is a watcher, what it depends on, and where its reconcile
// requests go.
type Subscription struct {
	Watcher cache.Ref   `json:"watcher"`
	Watched []cache.Ref `json:"watched"`
	// Route is the name of a route. Defaults to "default".
	Route string `json:"route,omitempty"`
	// InitialReconcile sends a request when the watcher starts to depend on
	// objects that exist. Defaults to true.
	InitialReconcile *bool `json:"initialReconcile,omitempty"`
	// Debounce holds a watcher's request this long after a change, so that a
	// burst of changes makes one request. Defaults to 0.
	Debounce metav1.Duration `json:"debounce,omitempty"`
}

// Control is the run-time subscription channel.
type Control struct {
	// Sink is the name of a jetstream or kafka sink whose connection carries
	// the control channel.
	Sink string `json:"sink"`
	// Subject is the NATS subject prefix or Kafka topic of control
	// messages. Defaults to "depbridge.control".
	Subject string `json:"subject,omitempty"`
	// Route is used by subscriptions made on the control channel that name
	// none. Defaults to "default".
	Route string `json:"route,omitempty"`
	// MaxMessageBytes rejects larger control messages. Defaults to 65536.
	MaxMessageBytes int `json:"maxMessageBytes,omitempty"`
	// Policy says what the control channel may subscribe to.
	Policy Policy `json:"policy,omitempty"`
}

// Policy limits control-channel subscriptions and queries. With no rules,
// nothing is allowed.
type Policy struct {
	Allow []PolicyRule `json:"allow,omitempty"`
	// AllowSecrets permits Secrets; without it they are denied even when a
	// rule matches them.
	AllowSecrets bool `json:"allowSecrets,omitempty"`
}

// PolicyRule allows kinds in namespaces. An empty list, or "*", means any.
type PolicyRule struct {
	Groups     []string `json:"groups,omitempty"`
	Kinds      []string `json:"kinds,omitempty"`
	Namespaces []string `json:"namespaces,omitempty"`
}

// Engine tunes the watch engine.
type Engine struct {
	// Workers reconcile different watchers concurrently. On JetStream and
	// Kafka routes a worker builds the event, hands it to the sink and
	// moves on (maxInFlight bounds the events awaiting acks); on HTTP,
	// core NATS and stdout routes it holds the event until the send
	// returns, so workers bound those sends: lower it to spare an HTTP
	// receiver that cannot take that many requests at once. Workers are
	// goroutines, cheap. Defaults to 256.
	Workers int `json:"workers,omitempty"`
	// MaxInFlight bounds the events handed to JetStream and Kafka sinks
	// and not yet acknowledged, across all watchers; one watcher has at
	// most one. Throughput is about maxInFlight / ack latency until the
	// bridge's CPU is the limit. Defaults to 4096.
	MaxInFlight int `json:"maxInFlight,omitempty"`
}

// Checkpoint says where records are kept. Exactly one of File, JetStream
// and Kafka is set.
type Checkpoint struct {
	// File keeps records in a local JSON file: one replica only, and lost
	// with its disk.
	File *CheckpointFile `json:"file,omitempty"`
	// JetStream keeps records in a key-value bucket on the server of a
	// jetstream sink; replicas share it, so a standby resumes from it.
	JetStream *CheckpointJetStream `json:"jetstream,omitempty"`
	// Kafka keeps records in a compacted topic on the brokers of a kafka
	// sink; replicas share it.
	Kafka *CheckpointKafka `json:"kafka,omitempty"`
	// Interval between writes of changed records. Defaults to 500ms.
	Interval metav1.Duration `json:"interval,omitempty"`
}

// CheckpointFile is a local checkpoint file.
type CheckpointFile struct {
	// Path of the file; its directory must be writable.
	Path string `json:"path"`
}

// CheckpointJetStream is a JetStream key-value bucket.
type CheckpointJetStream struct {
	// Sink is the name of a jetstream sink whose server holds the bucket.
	Sink string `json:"sink"`
	// Bucket is created if missing. Defaults to "depbridge_checkpoints".
	Bucket string `json:"bucket,omitempty"`
}

// CheckpointKafka is a compacted Kafka topic.
type CheckpointKafka struct {
	// Sink is the name of a kafka sink whose brokers hold the topic.
	Sink string `json:"sink"`
	// Topic is created (compacted) if missing. Defaults to
	// "depbridge.checkpoints".
	Topic string `json:"topic,omitempty"`
}
