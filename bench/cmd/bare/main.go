// Command bare is the floor of the comparison: one client-go informer per
// kind (metadata only, the namespace of the workload) that publishes every
// event it sees to JetStream, one message per event, and counts the acks.
// It knows nothing of watchers: it shows what the API server and the broker
// allow, not a dependency watcher.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"

	"github.com/depbridge/depbridge/bench/internal/proc"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bare:", err)
		os.Exit(1)
	}
}

// object is one entry of a message: the bench message format shared with
// the seed runner ({"objects":[{"name","resourceVersion","op"}]}).
type object struct {
	Name            string `json:"name"`
	ResourceVersion string `json:"resourceVersion"`
	Op              string `json:"op"`
}

type message struct {
	Objects []object `json:"objects"`
}

func run() error {
	f, s, rest, _, err := proc.Setup()
	if err != nil {
		return err
	}
	nc, err := nats.Connect(f.NATS, nats.MaxReconnects(-1))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	acks := make(chan jetstream.PubAckFuture, 4096)
	go func() {
		for fut := range acks {
			select {
			case <-fut.Ok():
				proc.Published.Add(1)
			case <-fut.Err():
				proc.Failed.Add(1)
			}
		}
	}()
	publish := func(kind, op string, obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		m, ok := obj.(*metav1.PartialObjectMetadata)
		if !ok {
			return
		}
		b, _ := json.Marshal(message{Objects: []object{{Name: m.Name, ResourceVersion: m.ResourceVersion, Op: op}}})
		fut, err := js.PublishAsync(s.Subject+".obj."+kind+"."+m.Name, b)
		if err != nil {
			proc.Failed.Add(1)
			return
		}
		acks <- fut
	}

	mc, err := metadata.NewForConfig(rest)
	if err != nil {
		return err
	}
	factory := metadatainformer.NewFilteredSharedInformerFactory(mc, 0, s.Namespace, nil)
	for _, k := range s.Kinds {
		inf := factory.ForResource(schema.GroupVersionResource{Version: "v1", Resource: k.Resource}).Informer()
		kind := k.Kind
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { publish(kind, "added", obj) },
			UpdateFunc: func(_, obj any) { publish(kind, "modified", obj) },
			DeleteFunc: func(obj any) { publish(kind, "deleted", obj) },
		}); err != nil {
			return err
		}
	}
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	proc.Ready.Store(true)
	<-ctx.Done()
	factory.Shutdown()
	return nil
}
