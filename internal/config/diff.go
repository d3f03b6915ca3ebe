package config

import (
	"cmp"
	"encoding/json"
	"reflect"
	"slices"

	"github.com/depbridge/depbridge/internal/cache"
)

// Changes is what differs between two configurations, for a hot reload.
type Changes struct {
	// Added are the subscriptions of the new configuration whose watcher
	// the old one does not have; Changed those whose watcher both have but
	// whose watched set, route, initialReconcile or debounce differ (as in
	// the new configuration); Removed those of the old configuration whose
	// watcher the new one does not have. Each is sorted by watcher key, and
	// holds canonical Refs.
	Added, Changed, Removed []Subscription
	// Sinks, Routes and Control say whether the sinks, the routes or the
	// control channel differ. A program that cannot swap them at run time
	// may refuse the reload or restart.
	Sinks, Routes, Control bool
	// Settings says whether cluster, listen, engine or checkpoint differ.
	Settings bool
}

// Empty reports whether nothing changed.
func (c Changes) Empty() bool {
	return len(c.Added) == 0 && len(c.Changed) == 0 && len(c.Removed) == 0 &&
		!c.Sinks && !c.Routes && !c.Control && !c.Settings
}

// Diff compares two configurations, normally both validated, so that the
// program can apply a reload: subscriptions are matched by canonical watcher
// Ref, and compared with their watched Refs as a set (order and duplicates
// do not matter) and their defaults applied. A nil old (or new) is an empty
// configuration. Diff does not modify its arguments.
func Diff(old, new *Config) Changes {
	if old == nil {
		old = &Config{}
	}
	if new == nil {
		new = &Config{}
	}
	var ch Changes
	before := subscriptionsByWatcher(old)
	after := subscriptionsByWatcher(new)
	for w, s := range after {
		o, ok := before[w]
		switch {
		case !ok:
			ch.Added = append(ch.Added, s)
		case !sameJSON(o, s):
			ch.Changed = append(ch.Changed, s)
		}
	}
	for w, s := range before {
		if _, ok := after[w]; !ok {
			ch.Removed = append(ch.Removed, s)
		}
	}
	for _, l := range [][]Subscription{ch.Added, ch.Changed, ch.Removed} {
		slices.SortFunc(l, func(a, b Subscription) int { return cmp.Compare(a.Watcher.Key(), b.Watcher.Key()) })
	}
	ch.Sinks = !sameJSON(orNil(old.Sinks), orNil(new.Sinks))
	ch.Routes = !sameJSON(orNil(old.Routes), orNil(new.Routes))
	ch.Control = !sameJSON(old.Control, new.Control)
	ch.Settings = old.Cluster != new.Cluster || old.Listen != new.Listen || old.Engine != new.Engine ||
		!reflect.DeepEqual(old.Checkpoint, new.Checkpoint)
	return ch
}

// subscriptionsByWatcher indexes the subscriptions of c by canonical
// watcher, each normalised: defaults applied, watched Refs canonical,
// sorted and without duplicates. Of two subscriptions with one watcher
// (which Validate rejects) the first wins.
func subscriptionsByWatcher(c *Config) map[cache.Ref]Subscription {
	out := make(map[cache.Ref]Subscription, len(c.Subscriptions))
	for _, s := range c.Subscriptions {
		n := Subscription{
			Watcher:          canonical(s.Watcher),
			Route:            cmp.Or(s.Route, DefaultRoute),
			InitialReconcile: s.InitialReconcile,
			Debounce:         s.Debounce,
		}
		if n.InitialReconcile == nil {
			yes := true
			n.InitialReconcile = &yes
		}
		for _, r := range s.Watched {
			n.Watched = append(n.Watched, canonical(r))
		}
		slices.SortFunc(n.Watched, func(a, b cache.Ref) int { return cmp.Compare(a.Key(), b.Key()) })
		n.Watched = slices.Compact(n.Watched)
		if _, dup := out[n.Watcher]; !dup {
			out[n.Watcher] = n
		}
	}
	return out
}

// canonical is r.Canonical(), or r itself when r is invalid.
func canonical(r cache.Ref) cache.Ref {
	if c, err := r.Canonical(); err == nil {
		return c
	}
	return r
}

// orNil makes an empty slice nil, so that "sinks: []" equals no sinks.
func orNil[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return s
}

// sameJSON compares two values by their JSON form, which is what a
// configuration is: it ignores unexported fields (where a Config was loaded
// from) and the order of map keys.
func sameJSON(a, b any) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && string(ja) == string(jb)
}
