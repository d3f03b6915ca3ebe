// Package testenv runs a real kube-apiserver and etcd for integration tests,
// through controller-runtime's envtest, with binaries built by
// `make k8s-binaries`. A test that needs them fails, never skips, when they
// are missing, with a message saying how to get them.
package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Versions of the binaries `make k8s-binaries` builds; keep in step with the
// Makefile.
const (
	K8sVersion  = "v1.37.1"
	EtcdVersion = "v3.7.3"
)

// AssetsDir returns the directory holding kube-apiserver and etcd:
// $KUBEBUILDER_ASSETS, else the per-machine cache the Makefile builds into.
func AssetsDir() (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("no KUBEBUILDER_ASSETS and no user cache directory: %w", err)
		}
		dir = filepath.Join(cache, "depbridge", "k8s-"+K8sVersion+"-etcd-"+EtcdVersion)
	}
	var missing []error
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.Mode()&0o111 == 0 {
			missing = append(missing, fmt.Errorf("%s not found in %s", b, dir))
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("%w\nintegration tests need a real kube-apiserver %s and etcd %s: run 'make k8s-binaries' "+
			"(builds them from the Go module proxy, about 8 minutes once per machine) or 'make test', "+
			"or set KUBEBUILDER_ASSETS to a directory holding them", errors.Join(missing...), K8sVersion, EtcdVersion)
	}
	return dir, nil
}

// Env is a running control plane.
type Env struct {
	env *envtest.Environment
	// Config is an admin (system:masters) client configuration.
	Config  *rest.Config
	certDir string
}

// Options change how Start runs the control plane. The zero value is
// Start's.
type Options struct {
	// APIServerFlags are extra kube-apiserver flags, by name without the
	// dashes ("watch-cache": "false"); they override the defaults.
	APIServerFlags map[string]string
}

// Start starts etcd and kube-apiserver on loopback, on free ports.
func Start() (*Env, error) {
	return StartWith(Options{})
}

// StartWith is Start with options.
func StartWith(opts Options) (*Env, error) {
	dir, err := AssetsDir()
	if err != nil {
		return nil, err
	}
	certDir, err := os.MkdirTemp("", "depbridge-apiserver-certs-")
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory:    dir,
		ControlPlaneStartTimeout: 60 * time.Second,
		ControlPlaneStopTimeout:  60 * time.Second,
	}
	api := env.ControlPlane.GetAPIServer()
	// A fixed certificate directory survives RestartAPIServer, so clients
	// keep trusting the restarted server.
	api.CertDir = certDir
	// Needs no network interface but loopback. Without a watch termination
	// grace period, a SIGTERMed kube-apiserver waits more than a minute for
	// open watches to end, and StopAPIServer times out.
	api.Configure().Set("advertise-address", "127.0.0.1").Set("endpoint-reconciler-type", "none").
		Set("shutdown-watch-termination-grace-period", "2s")
	for k, v := range opts.APIServerFlags {
		api.Configure().Set(k, v)
	}
	cfg, err := env.Start()
	if err != nil {
		_ = os.RemoveAll(certDir)
		return nil, fmt.Errorf("start kube-apiserver and etcd from %s: %w", dir, err)
	}
	cfg.QPS, cfg.Burst = 1000, 2000
	return &Env{env: env, Config: cfg, certDir: certDir}, nil
}

// Stop stops the control plane and removes its files.
func (e *Env) Stop() error {
	err := e.env.Stop()
	return errors.Join(err, os.RemoveAll(e.certDir))
}

// StopAPIServer stops kube-apiserver only; etcd keeps its data.
func (e *Env) StopAPIServer() error {
	return e.env.ControlPlane.GetAPIServer().Stop()
}

// StartAPIServer starts a stopped kube-apiserver again on the same address.
func (e *Env) StartAPIServer() error {
	return e.env.ControlPlane.GetAPIServer().Start()
}

// User returns a client configuration authenticating as name in groups
// (no permissions unless RBAC grants some).
func (e *Env) User(name string, groups ...string) (*rest.Config, error) {
	u, err := e.env.AddUser(envtest.User{Name: name, Groups: groups}, e.Config)
	if err != nil {
		return nil, fmt.Errorf("add user %s: %w", name, err)
	}
	cfg := u.Config()
	cfg.QPS, cfg.Burst = 1000, 2000
	return cfg, nil
}

// EtcdURL is the client URL of etcd.
func (e *Env) EtcdURL() string {
	return e.env.ControlPlane.Etcd.URL.String()
}

// WriteKubeconfig writes an admin kubeconfig for the control plane to
// path, for programs run as separate processes.
func (e *Env) WriteKubeconfig(path string) error {
	return WriteKubeconfig(e.Config, path)
}

// WriteKubeconfig writes cfg's server, CA and credentials to path as a
// kubeconfig (for a client configuration pointed elsewhere, such as
// through a Proxy).
func WriteKubeconfig(cfg *rest.Config, path string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	return clientcmd.WriteToFile(*kc, path)
}

// Main runs a package's tests around one shared control plane: it starts
// it into *env, runs the tests, stops it, and exits. A control plane that
// cannot start fails the run with testenv's message (never a skip).
func Main(m *testing.M, env **Env) {
	os.Exit(func() int {
		e, err := Start()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		*env = e
		defer func() {
			if err := e.Stop(); err != nil {
				fmt.Fprintln(os.Stderr, "stop the control plane:", err)
			}
		}()
		return m.Run()
	}())
}
