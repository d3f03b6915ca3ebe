package checkpoint

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// KV keeps records in a JetStream key-value bucket (created if missing,
// one revision per key), so that every replica of the bridge shares them.
// Keys are watcher keys in base64url, which the bucket's key alphabet
// accepts.
type KV struct {
	nc     *nats.Conn
	bucket string
	kv     jetstream.KeyValue
}

var _ Backend = (*KV)(nil)

// NewKV uses the bucket on nc's server; Close closes nc.
func NewKV(nc *nats.Conn, bucket string) *KV {
	return &KV{nc: nc, bucket: bucket}
}

func (k *KV) open(ctx context.Context) (jetstream.KeyValue, error) {
	if k.kv != nil {
		return k.kv, nil
	}
	js, err := jetstream.New(k.nc)
	if err != nil {
		return nil, err
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: k.bucket, History: 1, Storage: jetstream.FileStorage,
		Description: "depbridge checkpoints: what each watcher was told"})
	if err != nil {
		return nil, fmt.Errorf("key-value bucket %q: %w", k.bucket, err)
	}
	k.kv = kv
	return kv, nil
}

// Load implements Backend.
func (k *KV) Load(ctx context.Context) (map[string][]byte, error) {
	kv, err := k.open(ctx)
	if err != nil {
		return nil, err
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("read bucket %q: %w", k.bucket, err)
	}
	defer func() { _ = w.Stop() }()
	out := map[string][]byte{}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e := <-w.Updates():
			if e == nil { // every current value has been delivered
				return out, nil
			}
			key, err := base64.RawURLEncoding.DecodeString(e.Key())
			if err != nil {
				continue // not one of ours
			}
			out[string(key)] = e.Value()
		}
	}
}

// Write implements Backend.
func (k *KV) Write(ctx context.Context, puts map[string][]byte, deletes []string) error {
	kv, err := k.open(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for key, v := range puts {
		if _, err := kv.Put(ctx, base64.RawURLEncoding.EncodeToString([]byte(key)), v); err != nil {
			errs = append(errs, fmt.Errorf("put %s: %w", key, err))
		}
	}
	for _, key := range deletes {
		if err := kv.Purge(ctx, base64.RawURLEncoding.EncodeToString([]byte(key))); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			errs = append(errs, fmt.Errorf("delete %s: %w", key, err))
		}
	}
	return errors.Join(errs...)
}

// Close implements Backend.
func (k *KV) Close() error {
	k.nc.Close()
	return nil
}
