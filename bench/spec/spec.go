// Package spec is the workload of the comparison: the objects the driver
// creates and the watchers every implementation registers, written by the
// driver as JSON and read by each implementation process. The seed runner
// (module bench/seed) has its own copy of the types it reads; JSON is the
// contract.
package spec

import (
	"encoding/json"
	"fmt"
	"os"
)

// Spec is one workload.
type Spec struct {
	// Namespace holds every watched object.
	Namespace string `json:"namespace"`
	// Subject prefixes every NATS subject an implementation publishes to;
	// the stream captures Subject + ".>".
	Subject string `json:"subject"`
	// Stream is the JetStream stream that captures the subjects.
	Stream string `json:"stream"`
	// Kinds are the watched kinds (core/v1).
	Kinds []Kind `json:"kinds"`
	// Objects are created by the driver before an implementation starts.
	Objects []Object `json:"objects"`
	// Watchers each depend on Names (objects of Kind in Namespace) and on
	// Selector.
	Watchers []Watcher `json:"watchers"`
}

// Kind is a watched core/v1 kind.
type Kind struct {
	Kind     string `json:"kind"`
	Resource string `json:"resource"`
}

// Object is a watched object.
type Object struct {
	Kind   string            `json:"kind"`
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels"`
}

// Watcher is one watcher: a name (the watcher object need not exist) and
// what it depends on.
type Watcher struct {
	Name     string   `json:"name"`
	Kind     string   `json:"kind"`
	Names    []string `json:"names"`
	Selector string   `json:"selector"`
}

// Shape of the workload, as issue 6 asks: five named objects and one
// label selector per watcher, over two kinds. Each object is named by
// NameSharing watchers, and each label group holds GroupSize objects.
const (
	NamesPerWatcher = 5
	NameSharing     = 2
	GroupSize       = 10
)

// New returns the workload for w watchers. Watchers alternate between
// ConfigMaps and Secrets. Of kind k, with w_k watchers, there are
// w_k*5/2 objects, so each object is named by 2 watchers (watcher m names
// objects 5m..5m+4, modulo the count); objects are labelled grp=g<n/10>
// in groups of 10 (so w_k/4 groups), and watcher m selects group
// (m + groups/2) mod groups, away from the group of the objects it names,
// so each group is selected by about 4 watchers. A write to one object
// therefore concerns about 6 watchers (2 by name, 4 by selector), whatever
// W is.
func New(w int) *Spec {
	s := &Spec{
		Namespace: "bench",
		Subject:   "bench",
		Stream:    "BENCH",
		Kinds:     []Kind{{Kind: "ConfigMap", Resource: "configmaps"}, {Kind: "Secret", Resource: "secrets"}},
	}
	prefix := map[string]string{"ConfigMap": "cm", "Secret": "sec"}
	for k, kind := range s.Kinds {
		wk := 0
		for i := range w {
			if i%len(s.Kinds) == k {
				wk++
			}
		}
		if wk == 0 {
			continue
		}
		n := max(NamesPerWatcher, (wk*NamesPerWatcher+NameSharing-1)/NameSharing)
		groups := (n + GroupSize - 1) / GroupSize
		for o := range n {
			s.Objects = append(s.Objects, Object{Kind: kind.Kind, Name: fmt.Sprintf("%s-%d", prefix[kind.Kind], o),
				Labels: map[string]string{"grp": fmt.Sprintf("g%d", o/GroupSize)}})
		}
		m := 0
		for i := range w {
			if i%len(s.Kinds) != k {
				continue
			}
			wt := Watcher{Name: fmt.Sprintf("w%d", i), Kind: kind.Kind,
				Selector: fmt.Sprintf("grp=g%d", (m+groups/2)%groups)}
			for j := range NamesPerWatcher {
				wt.Names = append(wt.Names, fmt.Sprintf("%s-%d", prefix[kind.Kind], (m*NamesPerWatcher+j)%n))
			}
			s.Watchers = append(s.Watchers, wt)
			m++
		}
	}
	return s
}

// Dependents maps "<kind>/<name>" of each object to the watchers that
// depend on it, by name or by selector.
func (s *Spec) Dependents() map[string][]string {
	labels := map[string]map[string]string{}
	byGroup := map[string][]string{} // "<kind>/grp=<g>" -> object keys
	for _, o := range s.Objects {
		key := o.Kind + "/" + o.Name
		labels[key] = o.Labels
		byGroup[o.Kind+"/grp="+o.Labels["grp"]] = append(byGroup[o.Kind+"/grp="+o.Labels["grp"]], key)
	}
	deps := map[string]map[string]bool{}
	add := func(obj, w string) {
		if deps[obj] == nil {
			deps[obj] = map[string]bool{}
		}
		deps[obj][w] = true
	}
	for _, w := range s.Watchers {
		for _, n := range w.Names {
			add(w.Kind+"/"+n, w.Name)
		}
		for _, obj := range byGroup[w.Kind+"/"+w.Selector] {
			add(obj, w.Name)
		}
	}
	out := make(map[string][]string, len(deps))
	for obj, ws := range deps {
		for w := range ws {
			out[obj] = append(out[obj], w)
		}
	}
	return out
}

// Write writes s to path as JSON.
func (s *Spec) Write(path string) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// Read reads a Spec from path.
func Read(path string) (*Spec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("read spec %s: %w", path, err)
	}
	return &s, nil
}
