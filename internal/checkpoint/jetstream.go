package checkpoint

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// KV keeps records in a JetStream key-value bucket, so that every replica
// of the bridge shares them. A missing bucket is created (file storage, one
// revision per key); an existing one is used as it is, its settings left
// to whoever created it (replicas, storage, history), unless it is sealed
// or has a TTL (its records would expire): then opening it fails. Keys are
// watcher keys in base64url, which the bucket's key alphabet accepts.
type KV struct {
	nc         *nats.Conn
	bucket     string
	kv         jetstream.KeyValue
	maxMsgSize atomic.Int64 // the bucket's limit on a value, 0 if none or not known yet
}

// recordMargin is what the bus backends keep, below their broker's limit
// on a message, for what a message carries besides the record (key,
// headers, framing).
const recordMargin = 4 << 10

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
	kv, err := js.KeyValue(ctx, k.bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: k.bucket, History: 1, Storage: jetstream.FileStorage,
			Description: "depbridge checkpoints: what each watcher was told"})
		if errors.Is(err, jetstream.ErrBucketExists) { // created meanwhile (another replica)
			kv, err = js.KeyValue(ctx, k.bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("key-value bucket %q: %w", k.bucket, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("key-value bucket %q: %w", k.bucket, err)
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok {
		cfg := bs.StreamInfo().Config
		if cfg.Sealed {
			return nil, fmt.Errorf("key-value bucket %q is sealed: it takes no writes", k.bucket)
		}
		if cfg.MaxAge > 0 {
			return nil, fmt.Errorf("key-value bucket %q has a TTL of %s; it must keep values for ever (no TTL: "+
				"set max age 0 on its stream %q, or name a bucket without one), or what the bridge keeps in it expires",
				k.bucket, cfg.MaxAge, cfg.Name)
		}
		k.maxMsgSize.Store(int64(max(cfg.MaxMsgSize, 0)))
	}
	k.kv = kv
	return kv, nil
}

// MaxRecordBytes implements Backend: the server's maximum payload (1 MiB
// by default), or the bucket's maximum value size if smaller, less a
// margin.
func (k *KV) MaxRecordBytes() int {
	limit := k.nc.MaxPayload()
	if limit <= 0 { // not connected yet
		limit = 1 << 20
	}
	if m := k.maxMsgSize.Load(); m > 0 && m < limit {
		limit = m
	}
	return int(max(limit-recordMargin, 1))
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
