package deploy

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/depbridge/depbridge/internal/rbac"
)

var update = flag.Bool("update", false, "rewrite config/base/rbac.yaml from config/base/config.yaml")

// baseRBACOptions are those of the base Deployment: ServiceAccount
// depbridge/depbridge, --leader-elect with the default Lease.
var baseRBACOptions = rbac.Options{ServiceAccount: "depbridge", Namespace: "depbridge", LeaderElection: true}

// TestBaseRBAC: config/base/rbac.yaml is what `bridge rbac --config
// config/base/config.yaml --namespace depbridge --leader-elect` prints.
func TestBaseRBAC(t *testing.T) {
	cfg := loadConfig(t, "config/base/config.yaml", read(t, "config/base/config.yaml"))
	res, err := rbac.Generate(context.Background(), cfg, resolveBuiltin, baseRBACOptions)
	if err != nil {
		t.Fatal(err)
	}
	want, err := res.YAML()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(root(t), "config", "base", "rbac.yaml")
	if *update {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", path)
		return
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("config/base/rbac.yaml is stale; regenerate it with `go generate ./internal/deploy`. Want:\n%s", want)
	}
}
