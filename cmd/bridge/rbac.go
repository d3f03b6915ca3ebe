package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"k8s.io/client-go/discovery"

	"github.com/depbridge/depbridge/internal/rbac"
)

// rbacCommand prints the least-privilege RBAC a configuration needs:
// get/list/watch on exactly the watched kinds and namespaces, and the
// Lease for leader election. It asks the cluster's discovery which
// resource serves each kind.
func rbacCommand(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rbac", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		configPath     = fs.String("config", "", "configuration file (required)")
		kubeconfig     = fs.String("kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
		kubeContext    = fs.String("context", "", "kubeconfig context (default: the current context)")
		serviceAccount = fs.String("service-account", "depbridge", "ServiceAccount the roles are bound to")
		namespace      = fs.String("namespace", "depbridge", "namespace of the ServiceAccount")
		name           = fs.String("name", "depbridge", "name of the roles and bindings")
		leaderElect    = fs.Bool("leader-elect", false, "also grant what --leader-elect needs")
		leName         = fs.String("leader-elect-name", "depbridge", "name of the leader election Lease")
		leNamespace    = fs.String("leader-elect-namespace", "", "namespace of the Lease (default: --namespace)")
		crds           = fs.Bool("crds", false, "grant list and watch on CustomResourceDefinitions even when every watched kind is served")
		wildcards      = fs.Bool("allow-wildcards", false, "grant control-policy rules that allow any kind or group with RBAC wildcards (else refused)")
	)
	if err := parse(fs, args); err != nil {
		return err
	}
	if *configPath == "" {
		fmt.Fprintln(stderr, "bridge rbac: --config is required")
		fs.Usage()
		return errUsage
	}
	cfg, err := loadConfig(*configPath, stderr)
	if err != nil {
		return err
	}
	rc, err := restConfig(*kubeconfig, *kubeContext)
	if err != nil {
		return err
	}
	dc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := rbac.Generate(ctx, cfg, rbac.DiscoveryResolver(dc), rbac.Options{
		ServiceAccount: *serviceAccount, Namespace: *namespace, Name: *name,
		LeaderElection: *leaderElect, LeaseName: *leName, LeaseNamespace: *leNamespace,
		CRDs: *crds, Wildcards: *wildcards,
	})
	if err != nil {
		return err
	}
	out, err := res.YAML()
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}
