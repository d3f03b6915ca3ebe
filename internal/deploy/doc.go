// Package deploy has no code of its own: its tests hold the repository's
// deployment files to the code they deploy.
//
//   - config/base/rbac.yaml is what internal/rbac generates for
//     config/base/config.yaml (TestBaseRBAC; regenerate with go generate).
//   - Every kustomization under config/ (base, overlays, components) builds
//     with kustomize, every object decodes strictly with client-go's scheme,
//     and the Deployment keeps its invariants: two replicas with
//     --leader-elect and a PodDisruptionBudget, probes, non-root and
//     read-only, resources, JSON logs, a configuration that loads and
//     validates, and RBAC equal to what internal/rbac generates for it
//     (TestKustomize).
//   - docker-compose.yml has its services, ports, health checks and files,
//     and its bridge configuration validates; the Dockerfile builds what
//     the compose file runs, from a context .dockerignore does not empty
//     (TestCompose, TestDockerfile).
//   - Every metric that docs/operations.md and the Prometheus rules name is
//     one the bridge exports (TestMetricNames).
package deploy

//go:generate go test -run TestBaseRBAC -update .
