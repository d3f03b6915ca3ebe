package sink

import (
	"crypto/tls"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"

	"github.com/depbridge/depbridge/internal/config"
)

// Connection helpers for other packages (the control channel) that need a
// broker connection configured exactly as the sinks configure theirs.

// DialNATS connects to the NATS server of cfg as the NATS and JetStream
// sinks do: reconnecting forever, with cfg's credentials and TLS, and with
// only the redacted URL in the log. name identifies the connection
// ("depbridge/<name>"). log may be nil (discard). The caller owns the
// connection and closes it.
func DialNATS(name string, cfg config.NATSConn, log *slog.Logger) (*nats.Conn, error) {
	return connectNATS(name, cfg, orDiscard(log))
}

// KafkaTransport returns a kafka-go transport, for a kafka.Client or
// kafka.Writer, with cfg's TLS, SASL and client id and the Kafka sink's
// timeouts. cfg's defaults are applied to a copy. Nothing is dialed until
// first use.
func KafkaTransport(cfg config.Kafka) (*kafka.Transport, error) {
	cfg.Default()
	t, mech, err := kafkaSecurity(cfg)
	if err != nil {
		return nil, err
	}
	return &kafka.Transport{
		DialTimeout: 5 * time.Second,
		IdleTimeout: 30 * time.Second,
		MetadataTTL: kafkaMetadataTTL,
		ClientID:    cfg.ClientID,
		TLS:         t,
		SASL:        mech,
	}, nil
}

// kafkaSecurity is cfg's TLS configuration and SASL mechanism (nil when
// unset).
func kafkaSecurity(cfg config.Kafka) (*tls.Config, sasl.Mechanism, error) {
	t, err := tlsConfig(cfg.TLS)
	if err != nil {
		return nil, nil, err
	}
	mech, err := saslMechanism(cfg.SASL)
	if err != nil {
		return nil, nil, err
	}
	return t, mech, nil
}

// KafkaDialer returns a kafka-go dialer, for a kafka.Reader, with the same
// TLS, SASL and client id as KafkaTransport.
func KafkaDialer(cfg config.Kafka) (*kafka.Dialer, error) {
	cfg.Default()
	t, mech, err := kafkaSecurity(cfg)
	if err != nil {
		return nil, err
	}
	return &kafka.Dialer{
		Timeout:       5 * time.Second,
		DualStack:     true,
		ClientID:      cfg.ClientID,
		TLS:           t,
		SASLMechanism: mech,
	}, nil
}
