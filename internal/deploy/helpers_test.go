package deploy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
)

// root is the repository's root directory.
func root(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller information")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// read returns the contents of a file of the repository.
func read(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root(t), path))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// loadConfig parses and validates a bridge configuration.
func loadConfig(t *testing.T, name string, data []byte) *config.Config {
	t.Helper()
	cfg, err := config.Parse(name, data)
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		t.Fatalf("configuration %s: %v", name, err)
	}
	return cfg
}

// builtinKinds is where the kinds of the checked-in configurations are
// served in every cluster. internal/rbac's integration test generates the
// same RBAC from a real API server's discovery.
var builtinKinds = map[schema.GroupKind]cache.Resource{
	{Kind: "ConfigMap"}:                 {GroupVersionResource: schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}, Namespaced: true},
	{Kind: "Service"}:                   {GroupVersionResource: schema.GroupVersionResource{Version: "v1", Resource: "services"}, Namespaced: true},
	{Kind: "Secret"}:                    {GroupVersionResource: schema.GroupVersionResource{Version: "v1", Resource: "secrets"}, Namespaced: true},
	{Kind: "Namespace"}:                 {GroupVersionResource: schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}},
	{Group: "apps", Kind: "Deployment"}: {GroupVersionResource: schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}, Namespaced: true},
}

// resolveBuiltin is an rbac.Resolver over builtinKinds; other kinds are
// not served.
func resolveBuiltin(_ context.Context, gvk schema.GroupVersionKind) (cache.Resource, error) {
	if r, ok := builtinKinds[gvk.GroupKind()]; ok {
		return r, nil
	}
	return cache.Resource{}, fmt.Errorf("%w: %s", cache.ErrNoVersionedResource, gvk)
}
