package config_test

import (
	"fmt"

	"github.com/depbridge/depbridge/internal/config"
)

// This is what "bridge validate FILE" does: load, validate, and print every
// problem on a line of its own.
func Example_validate() {
	data := []byte(`sinks:
  - name: bus
    jetstream: {url: "nats://nats:4222"}
routes:
  - {name: default, sink: bus, mode: binery}
subscriptions:
  - watcher: {group: apps, version: v1, kind: Deployment, namespace: demo, name: web}
    watched:
      - {version: v1, kind: ConfigMap, namespace: demo, selector: "app=web,,"}
`)
	// config.Load(path) reads the file and calls Parse.
	cfg, err := config.Parse("bridge.yaml", data)
	if err == nil {
		err = cfg.Validate()
	}
	for _, fe := range config.FieldErrors(err) {
		fmt.Println(fe)
	}
	// Output:
	// bridge.yaml:5:38: routes[0].mode: "binery" is not "binary" or "structured"
	// bridge.yaml:9:67: subscriptions[0].watched[0].selector: selector "app=web,,": found ',', expected: identifier after ','
}

// A reload applies only what changed.
func ExampleDiff() {
	load := func(s string) *config.Config {
		c, err := config.Parse("bridge.yaml", []byte(s))
		if err == nil {
			err = c.Validate()
		}
		if err != nil {
			panic(err)
		}
		return c
	}
	old := load(`subscriptions:
  - {watcher: {version: v1, kind: ConfigMap, namespace: a, name: x}, watched: [{version: v1, kind: Secret, namespace: a, name: s}]}
  - {watcher: {version: v1, kind: ConfigMap, namespace: a, name: y}, watched: [{version: v1, kind: Secret, namespace: a, name: s}]}
`)
	new := load(`subscriptions:
  - {watcher: {version: v1, kind: ConfigMap, namespace: a, name: x}, watched: [{version: v1, kind: Secret, namespace: a, selector: "*"}]}
  - {watcher: {version: v1, kind: ConfigMap, namespace: a, name: z}, watched: [{version: v1, kind: Secret, namespace: a, name: s}]}
`)
	ch := config.Diff(old, new)
	for _, s := range ch.Added {
		fmt.Println("added", s.Watcher.Key())
	}
	for _, s := range ch.Changed {
		fmt.Println("changed", s.Watcher.Key())
	}
	for _, s := range ch.Removed {
		fmt.Println("removed", s.Watcher.Key())
	}
	fmt.Println("sinks or routes changed:", ch.Sinks || ch.Routes)
	// Output:
	// added v1/ConfigMap/a/z
	// changed v1/ConfigMap/a/x
	// removed v1/ConfigMap/a/y
	// sinks or routes changed: false
}
