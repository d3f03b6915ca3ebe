package testenv

import (
	"fmt"
	"os"
	"strconv"
	"sync"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Kafka is an in-process Kafka-protocol broker (kfake) on loopback, which
// kafka-go reaches over TCP, that can be stopped and started again on the
// same port with its log kept, as a broker outage.
type Kafka struct {
	mu      sync.Mutex
	port    int
	dir     string
	opts    []kfake.Opt
	cluster *kfake.Cluster
}

// StartKafka starts a one-broker cluster on a free port. opts (topics,
// partitions) apply to every start.
func StartKafka(opts ...kfake.Opt) (*Kafka, error) {
	dir, err := os.MkdirTemp("", "depbridge-kafka-")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	k := &Kafka{port: port, dir: dir, opts: opts}
	if err := k.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return k, nil
}

// Addr is the broker's host:port (the same across restarts).
func (k *Kafka) Addr() string { return "127.0.0.1:" + strconv.Itoa(k.port) }

// Start starts a stopped broker again with its log.
func (k *Kafka) Start() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cluster != nil {
		return nil
	}
	opts := append([]kfake.Opt{kfake.NumBrokers(1), kfake.Ports(k.port), kfake.DataDir(k.dir)}, k.opts...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return fmt.Errorf("kfake on port %d: %w", k.port, err)
	}
	k.cluster = c
	return nil
}

// Stop shuts the broker down; its log stays for Start.
func (k *Kafka) Stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cluster != nil {
		k.cluster.Close()
		k.cluster = nil
	}
}

// Close stops the broker and removes its log.
func (k *Kafka) Close() {
	k.Stop()
	_ = os.RemoveAll(k.dir)
}
