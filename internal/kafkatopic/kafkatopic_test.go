package kafkatopic

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// startBroker runs a one-broker kfake cluster for the test and returns a
// client of it, and a context that bounds the test.
func startBroker(t *testing.T) (*kafka.Client, context.Context) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return &kafka.Client{Addr: kafka.TCP(c.ListenAddrs()...), Timeout: 10 * time.Second}, ctx
}

// A compacted topic must keep the last record of every key for ever:
// compact, or compact,delete with no retention; anything that deletes by
// time or size is refused, saying why.
func TestEnsureChecksCompaction(t *testing.T) {
	client, ctx := startBroker(t)
	for name, tt := range map[string]struct {
		configs map[string]string
		want    string // "" for no error
	}{
		"compact":                  {configs: map[string]string{"cleanup.policy": "compact"}},
		"compact,delete, kept":     {configs: map[string]string{"cleanup.policy": "compact,delete", "retention.ms": "-1", "retention.bytes": "-1"}},
		"delete":                   {configs: map[string]string{"cleanup.policy": "delete"}, want: "has cleanup.policy=delete; it must be compacted"},
		"compact,delete":           {configs: map[string]string{"cleanup.policy": "compact,delete", "retention.ms": "604800000"}, want: "retention.ms=604800000"},
		"compact,delete, by bytes": {configs: map[string]string{"cleanup.policy": "delete,compact", "retention.ms": "-1", "retention.bytes": "1000000"}, want: "retention.bytes=1000000"},
	} {
		t.Run(name, func(t *testing.T) {
			topic := "t-" + strings.NewReplacer(",", "-", " ", "").Replace(name)
			var entries []kafka.ConfigEntry
			for k, v := range tt.configs {
				entries = append(entries, kafka.ConfigEntry{ConfigName: k, ConfigValue: v})
			}
			resp, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
				Topic: topic, NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: entries}}})
			if err != nil || resp.Errors[topic] != nil {
				t.Fatalf("create %s: %v %v", topic, err, resp.Errors[topic])
			}
			err = Ensure(ctx, client, []Spec{{Topic: topic, Compacted: true}}, true, slog.New(slog.DiscardHandler))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Ensure: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Ensure = %v, want an error saying %q", err, tt.want)
			}
		})
	}
}

// MaxMessageBytes reads a topic's own max.message.bytes, or the brokers'
// default when the topic sets none.
func TestMaxMessageBytes(t *testing.T) {
	client, ctx := startBroker(t)
	resp, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{
		{Topic: "small", NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: []kafka.ConfigEntry{{ConfigName: "max.message.bytes", ConfigValue: "20000"}}},
		{Topic: "default", NumPartitions: 1, ReplicationFactor: 1},
	}})
	if err != nil || resp.Errors["small"] != nil || resp.Errors["default"] != nil {
		t.Fatalf("create topics: %v %v", err, resp.Errors)
	}
	if n, err := MaxMessageBytes(ctx, client, "small"); err != nil || n != 20000 {
		t.Errorf("MaxMessageBytes of a topic with max.message.bytes=20000 = %d, %v", n, err)
	}
	if n, err := MaxMessageBytes(ctx, client, "default"); err != nil || n < 1<<20 {
		t.Errorf("MaxMessageBytes of a topic with the default = %d, %v; want the brokers' (1 MiB and a little)", n, err)
	}
	if _, err := MaxMessageBytes(ctx, client, "missing"); err == nil || !strings.Contains(err.Error(), `"missing"`) {
		t.Errorf("MaxMessageBytes of a missing topic = %v", err)
	}
}
