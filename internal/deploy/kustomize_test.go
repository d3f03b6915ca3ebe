package deploy

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/depbridge/depbridge/internal/rbac"
)

// Kinds outside client-go's scheme that the components may hold, checked
// as unstructured objects.
var extraKinds = []string{"monitoring.coreos.com/v1/PodMonitor", "monitoring.coreos.com/v1/PrometheusRule"}

// built is the output of one kustomization, decoded.
type built struct {
	typed        []runtime.Object
	unstructured []*unstructured.Unstructured // extraKinds
}

// kustomize builds the kustomization in dir and decodes every object
// strictly (unknown or duplicate fields are errors).
func kustomize(t *testing.T, dir string) built {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	decoder := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	var out built
	for _, r := range m.Resources() {
		data, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		gvk := r.GetGvk()
		if slices.Contains(extraKinds, gvk.ApiVersion()+"/"+gvk.Kind) {
			u := &unstructured.Unstructured{}
			if err := yaml.UnmarshalStrict(data, &u.Object); err != nil {
				t.Fatalf("%s: %s %s: %v", dir, gvk.Kind, r.GetName(), err)
			}
			out.unstructured = append(out.unstructured, u)
			continue
		}
		obj, _, err := decoder.Decode(data, nil, nil)
		if err != nil {
			t.Fatalf("%s: decode %s %s strictly: %v\n%s", dir, gvk.Kind, r.GetName(), err, data)
		}
		out.typed = append(out.typed, obj)
	}
	return out
}

// kustomizations lists every buildable kustomization under config/, and
// for every component a temporary kustomization of the base with it.
func kustomizations(t *testing.T) map[string]string {
	t.Helper()
	dirs := map[string]string{}
	cfgDir := filepath.Join(root(t), "config")
	err := filepath.WalkDir(cfgDir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "kustomization.yaml" {
			return err
		}
		dir := filepath.Dir(path)
		rel, _ := filepath.Rel(root(t), dir)
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var k struct{ Kind string }
		if err := yaml.Unmarshal(data, &k); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if k.Kind != "Component" {
			dirs[rel] = dir
			return nil
		}
		tmp := t.TempDir()
		base, _ := filepath.Rel(tmp, filepath.Join(cfgDir, "base"))
		comp, _ := filepath.Rel(tmp, dir)
		kust := fmt.Sprintf("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [%q]\ncomponents: [%q]\n", base, comp)
		if err := os.WriteFile(filepath.Join(tmp, "kustomization.yaml"), []byte(kust), 0o644); err != nil {
			return err
		}
		dirs["config/base + "+rel] = tmp
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"config/base", "config/overlays/nats", "config/overlays/kafka", "config/base + config/components/prometheus"} {
		if dirs[want] == "" {
			t.Errorf("no kustomization %s", want)
		}
	}
	return dirs
}

func TestKustomize(t *testing.T) {
	for name, dir := range kustomizations(t) {
		t.Run(name, func(t *testing.T) {
			checkBuild(t, kustomize(t, dir))
		})
	}
}

// checkBuild holds one built kustomization to the invariants.
func checkBuild(t *testing.T, b built) {
	var (
		deps     []*appsv1.Deployment
		cms      = map[string]*corev1.ConfigMap{}
		sas      = map[string]bool{}
		nss      = map[string]*corev1.Namespace{}
		rbacObjs []runtime.Object
		pdbs     []*policyv1.PodDisruptionBudget
	)
	for _, o := range b.typed {
		switch o := o.(type) {
		case *appsv1.Deployment:
			deps = append(deps, o)
		case *corev1.ConfigMap:
			cms[o.Namespace+"/"+o.Name] = o
		case *corev1.ServiceAccount:
			sas[o.Namespace+"/"+o.Name] = true
		case *corev1.Namespace:
			nss[o.Name] = o
		case *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding, *rbacv1.Role, *rbacv1.RoleBinding:
			rbacObjs = append(rbacObjs, o)
		case *policyv1.PodDisruptionBudget:
			pdbs = append(pdbs, o)
		default:
			t.Errorf("unexpected %T", o)
		}
	}
	if len(deps) != 1 {
		t.Fatalf("%d Deployments, want 1", len(deps))
	}
	d := deps[0]
	ns := d.Namespace
	if ns != "depbridge" || nss[ns] == nil {
		t.Errorf("Deployment in namespace %q; want depbridge, created here", ns)
	} else if nss[ns].Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("namespace %s does not enforce the restricted Pod Security Standard", ns)
	}
	if r := d.Spec.Replicas; r == nil || *r != 2 {
		t.Errorf("replicas = %v, want 2", ptrString(r))
	}
	if ru := d.Spec.Strategy.RollingUpdate; ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("rolling update %+v: want maxUnavailable 0, so that the standby stays while the leader is replaced", ru)
	}
	if len(pdbs) != 1 || pdbs[0].Namespace != ns || pdbs[0].Spec.MaxUnavailable == nil || pdbs[0].Spec.MaxUnavailable.IntValue() != 1 ||
		pdbs[0].Spec.Selector == nil || !maps.Equal(pdbs[0].Spec.Selector.MatchLabels, d.Spec.Selector.MatchLabels) {
		t.Errorf("want one PodDisruptionBudget of the Deployment's pods with maxUnavailable 1, got %+v", pdbs)
	}
	spec := d.Spec.Template.Spec
	if !sas[ns+"/"+spec.ServiceAccountName] {
		t.Errorf("ServiceAccount %q is not in the build", spec.ServiceAccountName)
	}
	if psc := spec.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext %+v: want runAsNonRoot and the RuntimeDefault seccomp profile", psc)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	if c.Image == "" || c.Image == "depbridge" {
		t.Errorf("image %q: want a tag", c.Image)
	}
	if !slices.Contains(c.Args, "--leader-elect") || len(c.Args) == 0 || c.Args[0] != "run" {
		t.Errorf("args %q: want run ... --leader-elect", c.Args)
	}
	configPath := ""
	for _, a := range c.Args {
		if p, ok := strings.CutPrefix(a, "--config="); ok {
			configPath = p
		}
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	if env["DEPBRIDGE_LOG_FORMAT"] != "json" {
		t.Errorf("DEPBRIDGE_LOG_FORMAT = %q, want json", env["DEPBRIDGE_LOG_FORMAT"])
	}
	sc := c.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil ||
		!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("container securityContext %+v: want runAsNonRoot, readOnlyRootFilesystem, no privilege escalation, drop ALL", sc)
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[r]; !ok {
			t.Errorf("no %s request", r)
		}
		if _, ok := c.Resources.Limits[r]; !ok {
			t.Errorf("no %s limit", r)
		}
	}
	var metricsPort int32
	for _, p := range c.Ports {
		if p.Name == "metrics" {
			metricsPort = p.ContainerPort
		}
	}
	if metricsPort == 0 {
		t.Errorf("no container port named metrics")
	}
	// Liveness and readiness on /healthz (see the comment in
	// config/base/deployment.yaml for why not /readyz).
	for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != "metrics" {
			t.Errorf("%s probe %+v: want GET /healthz on port metrics", name, p)
		}
	}

	// The configuration: mounted from a ConfigMap of the build, loads and
	// validates, listens on the metrics port, has a sink.
	var mountDir, volume string
	for _, m := range c.VolumeMounts {
		if strings.HasPrefix(configPath, m.MountPath+"/") {
			mountDir, volume = m.MountPath, m.Name
		}
	}
	var cm *corev1.ConfigMap
	for _, v := range spec.Volumes {
		if v.Name == volume && v.ConfigMap != nil {
			cm = cms[ns+"/"+v.ConfigMap.Name]
		}
	}
	if cm == nil {
		t.Fatalf("--config=%s is not in a ConfigMap volume of the build", configPath)
	}
	key := strings.TrimPrefix(configPath, mountDir+"/")
	cfg := loadConfig(t, "ConfigMap "+cm.Name+" "+key, []byte(cm.Data[key]))
	if len(cfg.Sinks) == 0 {
		t.Errorf("the configuration has no sinks: the bridge would start an embedded NATS on 127.0.0.1, useless in a cluster")
	}
	_, port, err := net.SplitHostPort(cfg.Listen)
	if cfg.Listen == "" {
		port, err = "8080", nil
	}
	if err != nil || port != fmt.Sprint(metricsPort) {
		t.Errorf("listen %q, metrics port %d: want the same port", cfg.Listen, metricsPort)
	}

	// The RBAC is what the generator gives for this configuration.
	res, err := rbac.Generate(context.Background(), cfg, resolveBuiltin,
		rbac.Options{ServiceAccount: spec.ServiceAccountName, Namespace: ns, LeaderElection: true})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rbacByName(t, rbacObjs), rbacByName(t, res.Objects); !mapsEqual(got, want) {
		t.Errorf("RBAC differs from what internal/rbac generates for the configuration (regenerate config/base/rbac.yaml "+
			"or patch it in the overlay):\ngot:\n%s\nwant:\n%s", values(got), values(want))
	}

	// Prometheus Operator objects select the bridge's pods and port.
	for _, u := range b.unstructured {
		if u.GetNamespace() != ns {
			t.Errorf("%s %s in namespace %q, want %s", u.GetKind(), u.GetName(), u.GetNamespace(), ns)
		}
		if u.GetKind() != "PodMonitor" {
			continue
		}
		sel, _, _ := unstructured.NestedStringMap(u.Object, "spec", "selector", "matchLabels")
		for k, v := range sel {
			if d.Spec.Template.Labels[k] != v {
				t.Errorf("PodMonitor selects %s=%s; the pods are labelled %v", k, v, d.Spec.Template.Labels)
			}
		}
		eps, _, _ := unstructured.NestedSlice(u.Object, "spec", "podMetricsEndpoints")
		if len(eps) != 1 || eps[0].(map[string]any)["port"] != "metrics" {
			t.Errorf("PodMonitor endpoints %v, want port metrics", eps)
		}
	}
}

// rbacByName renders RBAC objects by kind, namespace and name.
func rbacByName(t *testing.T, objs []runtime.Object) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, o := range objs {
		// Objects decoded from YAML have no TypeMeta; set it for rendering.
		gvks, _, err := scheme.Scheme.ObjectKinds(o)
		if err != nil {
			t.Fatal(err)
		}
		o = o.DeepCopyObject()
		o.GetObjectKind().SetGroupVersionKind(gvks[0])
		data, err := rbac.YAML([]runtime.Object{o})
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(data, &u.Object); err != nil {
			t.Fatal(err)
		}
		out[u.GetKind()+" "+u.GetNamespace()+"/"+u.GetName()] = string(data)
	}
	return out
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func values(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString("--- # " + k + "\n" + m[k])
	}
	return b.String()
}

func ptrString[T any](p *T) string {
	if p == nil {
		return "unset"
	}
	return fmt.Sprint(*p)
}
