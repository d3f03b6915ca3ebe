package watch

import (
	"cmp"
	"slices"
	"time"
)

// SourceStatus describes one list+watch source, one kind waiting to be
// served (State pending, no Resource), or a source that failed for good
// (State failed, with Error).
type SourceStatus struct {
	Group     string
	Version   string
	Kind      string
	Resource  string
	Namespace string // "" for cluster-wide
	State     SourceState
	// Full: objects are cached whole; else metadata only.
	Full bool
	// Lists counts the lists stored (the first, then one per relist).
	Lists int
	// Watched is the number of watched Refs of the kind.
	Watched int
	// Error is the last list or watch error, if the source is retrying.
	Error string
	Since time.Time
}

// Sources returns the state of every source and pending kind, sorted.
func (e *Engine) Sources() []SourceStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []SourceStatus
	for _, k := range e.kinds {
		for _, s := range k.sources {
			st := SourceStatus{Group: k.gvk.Group, Version: k.gvk.Version, Kind: k.gvk.Kind, Resource: k.res.Resource,
				Namespace: s.ns, State: s.state, Full: s.full, Lists: s.lists, Watched: len(k.refs), Since: s.since}
			if s.err != nil {
				st.Error = s.err.Error()
			}
			out = append(out, st)
		}
	}
	for _, f := range e.failed {
		out = append(out, f)
	}
	for gvk, refs := range e.pending {
		out = append(out, SourceStatus{Group: gvk.Group, Version: gvk.Version, Kind: gvk.Kind, State: StatePending, Watched: len(refs)})
	}
	slices.SortFunc(out, func(a, b SourceStatus) int {
		return cmp.Or(cmp.Compare(a.Group, b.Group), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Version, b.Version), cmp.Compare(a.Namespace, b.Namespace))
	})
	return out
}

// Synced reports whether every source has listed and is watching (none is
// still in its first sync). Pending kinds do not count: waiting for a CRD
// is a steady state.
func (e *Engine) Synced() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.state != running {
		return false
	}
	for _, k := range e.kinds {
		for _, s := range k.sources {
			if !s.ready {
				return false
			}
		}
	}
	return true
}
