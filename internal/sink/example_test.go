package sink_test

import (
	"fmt"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/sink"
)

// Each value a subject template substitutes is escaped into one token.
func ExampleRoute_Target() {
	route, err := sink.NewRoute(
		config.Route{Name: "default", Sink: "bus"},
		config.Sink{Name: "bus", JetStream: &config.JetStream{}},
		nil, // the sink itself; not needed to render subjects
	)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, w := range []cache.Ref{
		{Version: "v1", Kind: "ConfigMap", Namespace: "apps", Name: "web-deps"},
		{Version: "v1", Kind: "ConfigMap", Namespace: "apps", Name: "web.deps"},
		{Version: "v1", Kind: "Namespace", Name: "prod"},
	} {
		t, _ := route.Target(w)
		fmt.Println(t.Subject)
	}
	fmt.Println(route.Pattern())
	// Output:
	// depbridge.reconcile.ConfigMap.apps.web-deps
	// depbridge.reconcile.ConfigMap.apps.web_2Edeps
	// depbridge.reconcile.Namespace._.prod
	// depbridge.reconcile.*.*.*
}

// A template that cannot give a valid subject fails when the route is
// built, naming the route.
func ExampleNewRoute_error() {
	_, err := sink.NewRoute(
		config.Route{Name: "audit", Sink: "bus", Subject: "audit.*.{{.Name}}"},
		config.Sink{Name: "bus", NATS: &config.NATS{}},
		nil,
	)
	fmt.Println(err)
	// Output:
	// route "audit": subject template "audit.*.{{.Name}}": NATS subject "audit.*.name" contains '*', which is not allowed in a subject to publish to
}
