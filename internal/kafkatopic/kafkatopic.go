// Package kafkatopic sets up and reads the bridge's own Kafka topics: the
// control channel's compacted topic and status topic, and the checkpoint
// store's compacted topic. kafka-go has the wire calls; this is how the
// bridge uses them, in one place.
package kafkatopic

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
)

// Spec is a topic the bridge needs.
type Spec struct {
	Topic string
	// Compacted topics must have cleanup.policy=compact: they keep the
	// last record of each key, which is what the bridge stores in them.
	Compacted bool
	// Partitions when created. Defaults to 1.
	Partitions int
	// ReplicationFactor when created. Defaults to the brokers' default.
	ReplicationFactor int
}

// Ensure checks that the topics exist (compacted ones with compaction),
// creating the missing ones unless noCreate. Errors say what to create.
func Ensure(ctx context.Context, client *kafka.Client, specs []Spec, noCreate bool, log *slog.Logger) error {
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.Topic
	}
	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: names})
	if err != nil {
		return fmt.Errorf("reach brokers: %w", err)
	}
	exists := map[string]bool{}
	for _, tp := range meta.Topics {
		switch {
		case tp.Error == nil:
			exists[tp.Name] = true
		case !errors.Is(tp.Error, kafka.UnknownTopicOrPartition):
			return fmt.Errorf("topic %q: %w", tp.Name, tp.Error)
		}
	}
	var create []kafka.TopicConfig
	for _, s := range specs {
		if exists[s.Topic] {
			if s.Compacted {
				if err := checkCompacted(ctx, client, s.Topic); err != nil {
					return err
				}
			}
			continue
		}
		if noCreate {
			return fmt.Errorf("topic %q does not exist; create it%s", s.Topic, hint(s))
		}
		tc := kafka.TopicConfig{Topic: s.Topic, NumPartitions: max(s.Partitions, 1), ReplicationFactor: s.ReplicationFactor}
		if tc.ReplicationFactor == 0 {
			tc.ReplicationFactor = -1 // the brokers' default
		}
		if s.Compacted {
			tc.ConfigEntries = []kafka.ConfigEntry{{ConfigName: "cleanup.policy", ConfigValue: "compact"}}
		}
		create = append(create, tc)
	}
	if len(create) == 0 {
		return nil
	}
	resp, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: create})
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	for i, tc := range create {
		if err := resp.Errors[tc.Topic]; err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			return fmt.Errorf("create topic %q (or create it yourself%s): %w", tc.Topic, hint(specs[i]), err)
		}
		log.Info("created topic", "name", tc.Topic, "compacted", len(tc.ConfigEntries) > 0)
	}
	return nil
}

func hint(s Spec) string {
	if s.Compacted {
		return " with cleanup.policy=compact"
	}
	return ""
}

// checkCompacted fails unless the topic keeps the last record of every key
// for ever: cleanup.policy=compact, or compact,delete with neither time nor
// size retention (retention.ms and retention.bytes -1). With delete, what
// the bridge keeps there would expire with the topic's retention.
func checkCompacted(ctx context.Context, client *kafka.Client, topic string) error {
	configs, err := describe(ctx, client, topic, "cleanup.policy", "retention.ms", "retention.bytes")
	if err != nil {
		return err
	}
	policy, ok := configs["cleanup.policy"]
	if !ok {
		return fmt.Errorf("topic %q: cleanup.policy not reported", topic)
	}
	var compact, del bool
	for p := range strings.SplitSeq(policy, ",") {
		switch strings.TrimSpace(p) {
		case "compact":
			compact = true
		case "delete":
			del = true
		}
	}
	switch {
	case !compact:
		return fmt.Errorf("topic %q has cleanup.policy=%s; it must be compacted (cleanup.policy=compact), "+
			"or what the bridge keeps in it expires with its retention", topic, policy)
	case del && (configs["retention.ms"] != "-1" || configs["retention.bytes"] != "-1"):
		return fmt.Errorf("topic %q has cleanup.policy=%s with retention.ms=%s and retention.bytes=%s; it must be compacted "+
			"only (cleanup.policy=compact), or what the bridge keeps in it expires with its retention",
			topic, policy, configs["retention.ms"], configs["retention.bytes"])
	}
	return nil
}

// MaxMessageBytes returns the topic's effective max.message.bytes (its
// own, or the brokers' default): the largest record batch its brokers
// take, a whole batch measured against it. It is 0 when not reported.
func MaxMessageBytes(ctx context.Context, client *kafka.Client, topic string) (int, error) {
	configs, err := describe(ctx, client, topic, "max.message.bytes")
	if err != nil {
		return 0, err
	}
	v, ok := configs["max.message.bytes"]
	if !ok || v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("topic %q: max.message.bytes=%q is not a size", topic, v)
	}
	return n, nil
}

// describe returns the effective values of the topic's configs names
// (DescribeConfigs); those not reported are absent.
func describe(ctx context.Context, client *kafka.Client, topic string, names ...string) (map[string]string, error) {
	resp, err := client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, ConfigNames: names,
	}}})
	if err != nil {
		return nil, fmt.Errorf("describe topic %q: %w", topic, err)
	}
	configs := map[string]string{}
	for _, r := range resp.Resources {
		if r.Error != nil {
			return nil, fmt.Errorf("describe topic %q: %w", topic, r.Error)
		}
		for _, c := range r.ConfigEntries {
			configs[c.ConfigName] = c.ConfigValue
		}
	}
	return configs, nil
}

// Partitions returns a topic's partitions, waiting (until ctx is done)
// for a topic just created to be known.
func Partitions(ctx context.Context, client *kafka.Client, topic string) ([]int, error) {
	for {
		meta, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
		if err == nil && len(meta.Topics) == 1 && meta.Topics[0].Error == nil && len(meta.Topics[0].Partitions) > 0 {
			parts := make([]int, len(meta.Topics[0].Partitions))
			for i, p := range meta.Topics[0].Partitions {
				parts[i] = p.ID
			}
			return parts, nil
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("partitions of topic %q: %w", topic, ctx.Err())
		case <-t.C:
		}
	}
}

// Range is what one partition holds: offsets First to Last-1 (Last is the
// high watermark).
type Range struct {
	Partition   int
	First, Last int64
}

// Ranges returns what each partition holds now.
func Ranges(ctx context.Context, client *kafka.Client, topic string, parts []int) ([]Range, error) {
	var reqs []kafka.OffsetRequest
	for _, p := range parts {
		reqs = append(reqs, kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	resp, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("offsets of topic %q: %w", topic, err)
	}
	var out []Range
	for _, po := range resp.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("offsets of topic %q partition %d: %w", topic, po.Partition, po.Error)
		}
		out = append(out, Range{Partition: po.Partition, First: po.FirstOffset, Last: po.LastOffset})
	}
	if len(out) != len(parts) {
		return nil, fmt.Errorf("offsets of topic %q: %d partitions answered, want %d", topic, len(out), len(parts))
	}
	return out, nil
}

// Latest reads a compacted topic as it is now and returns the last value
// of each key; keys whose last record is a tombstone (a null value) are
// absent.
func Latest(ctx context.Context, client *kafka.Client, dialer *kafka.Dialer, brokers []string, topic string) (map[string][]byte, error) {
	parts, err := Partitions(ctx, client, topic)
	if err != nil {
		return nil, err
	}
	ranges, err := Ranges(ctx, client, topic, parts)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, r := range ranges {
		if r.Last <= r.First {
			continue
		}
		if err := readRange(ctx, dialer, brokers, topic, r, func(m kafka.Message) {
			if m.Value == nil {
				delete(out, string(m.Key))
			} else {
				out[string(m.Key)] = m.Value
			}
		}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func readRange(ctx context.Context, dialer *kafka.Dialer, brokers []string, topic string, r Range, fn func(kafka.Message)) error {
	rd := kafka.NewReader(kafka.ReaderConfig{
		Brokers: brokers, Topic: topic, Partition: r.Partition, Dialer: dialer,
		MinBytes: 1, MaxBytes: 10 << 20, // kafka-go panics when MinBytes is set without MaxBytes
		MaxWait: 500 * time.Millisecond,
	})
	defer rd.Close()
	if err := rd.SetOffset(r.First); err != nil {
		return fmt.Errorf("read topic %q partition %d: %w", topic, r.Partition, err)
	}
	for {
		m, err := rd.ReadMessage(ctx)
		if err != nil {
			return fmt.Errorf("read topic %q partition %d: %w", topic, r.Partition, err)
		}
		fn(m)
		if m.Offset+1 >= r.Last {
			return nil
		}
	}
}
