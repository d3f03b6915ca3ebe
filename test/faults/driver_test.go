package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/depbridge/depbridge/internal/cache"
)

// Shape of each phase's world: watchers, each depending on a few of the
// named ConfigMaps and on a label selector over the team ConfigMaps.
const (
	numWatchers = 24
	numNamed    = 12
	numTeams    = 5
	maxDynamic  = 30 // team ConfigMaps alive at once
	minDynamic  = 8
	driveEvery  = 100 * time.Millisecond
)

// subscription is one watcher of a phase and what it depends on.
type subscription struct {
	watcher  cache.Ref
	key      string
	named    map[string]bool
	selector string
	sel      labels.Selector
	route    string
}

// subscriptions of a phase in namespace ns: overlapping named
// dependencies, and selectors on team and state that several watchers
// share. Even watchers publish to JetStream, odd ones to Kafka.
func subscriptions(ns string) []subscription {
	subs := make([]subscription, numWatchers)
	for i := range subs {
		w := cache.Ref{Group: "example.com", Version: "v1", Kind: "App", Namespace: ns, Name: fmt.Sprintf("app-%02d", i)}
		s := subscription{watcher: w, key: w.Key(), named: map[string]bool{}, route: "js"}
		for _, n := range []int{i % numNamed, (i*7 + 3) % numNamed, (i*5 + 1) % numNamed} {
			s.named[fmt.Sprintf("cfg-%02d", n)] = true
		}
		s.selector = fmt.Sprintf("team=t%d,state=in", i%numTeams)
		if i%2 == 1 {
			s.selector = fmt.Sprintf("team in (t%d,t%d),state=in", i%numTeams, (i+1)%numTeams)
			s.route = "kafka"
		}
		sel, err := labels.Parse(s.selector)
		if err != nil {
			panic(err)
		}
		s.sel = sel
		subs[i] = s
	}
	return subs
}

// subscriptionsYAML is the subscriptions section of the bridge's
// configuration.
func subscriptionsYAML(subs []subscription) string {
	var b strings.Builder
	b.WriteString("subscriptions:\n")
	for _, s := range subs {
		w := s.watcher
		fmt.Fprintf(&b, "  - watcher: {group: %s, version: %s, kind: %s, namespace: %s, name: %s}\n", w.Group, w.Version, w.Kind, w.Namespace, w.Name)
		fmt.Fprintf(&b, "    route: %s\n    watched:\n", s.route)
		for n := range s.named {
			fmt.Fprintf(&b, "      - {version: v1, kind: ConfigMap, namespace: %s, name: %s}\n", w.Namespace, n)
		}
		fmt.Fprintf(&b, "      - {version: v1, kind: ConfigMap, namespace: %s, selector: %q}\n", w.Namespace, s.selector)
	}
	return b.String()
}

// dynObj is a team ConfigMap as the driver last wrote it.
type dynObj struct {
	name   string
	uid    types.UID
	labels labels.Set
	everIn bool // it matched state=in once: it never enters again
	stale  bool // a write failed: read it back before the next one
}

// driver changes the objects of one phase at a steady pace and records
// each change with the watchers that depend on it. Writes that fail (the
// API server is down) are not recorded; the object is read back before
// it is written again, so that the driver's view stays true.
type driver struct {
	cs   kubernetes.Interface
	ns   string
	subs []subscription
	l    *ledger
	rnd  *rand.Rand

	dyn    map[string]*dynObj
	nextID int
	writes int
	errors int

	cancel context.CancelFunc
	done   chan struct{}
}

func newDriver(cs kubernetes.Interface, ns string, subs []subscription, l *ledger, seed uint64) *driver {
	return &driver{cs: cs, ns: ns, subs: subs, l: l, rnd: rand.New(rand.NewPCG(seed, 5)), dyn: map[string]*dynObj{}}
}

// watchersOf are the keys of the watchers that depend on an object with
// this name and these labels (nil: does not exist) before or after.
func (d *driver) watchersOf(name string, before, after labels.Set) []string {
	var out []string
	for _, s := range d.subs {
		dep := s.named[name]
		if before != nil && s.sel.Matches(before) {
			dep = true
		}
		if after != nil && s.sel.Matches(after) {
			dep = true
		}
		if dep {
			out = append(out, s.key)
		}
	}
	return out
}

// seed creates the named ConfigMaps and a first set of team ConfigMaps,
// recording them (their initial reconciles cover them).
func (d *driver) seed(ctx context.Context) error {
	for i := range numNamed {
		if err := d.createNamed(ctx, fmt.Sprintf("cfg-%02d", i)); err != nil {
			return err
		}
	}
	for range minDynamic + 4 {
		if err := d.create(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (d *driver) createNamed(ctx context.Context, name string) error {
	cm, err := d.cs.CoreV1().ConfigMaps(d.ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name},
		Data: map[string]string{"v": "0"}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create %s/%s: %w", d.ns, name, err)
	}
	d.recordObj(cm, "create", nil, labels.Set{})
	return nil
}

// start runs the driver until stop.
func (d *driver) start() {
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel, d.done = cancel, make(chan struct{})
	go func() {
		defer close(d.done)
		t := time.NewTicker(driveEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_ = d.step(wctx)
				cancel()
			}
		}
	}()
}

// stop stops the driver and waits for its last write.
func (d *driver) stop() {
	if d.cancel != nil {
		d.cancel()
		<-d.done
		d.cancel = nil
	}
}

// step makes one change: mostly updates of named and team ConfigMaps,
// some creations (in or out of the selectors), label changes that enter
// or leave them, and deletions.
func (d *driver) step(ctx context.Context) error {
	d.writes++
	p := d.rnd.IntN(100)
	switch {
	case p < 45:
		return d.updateNamed(ctx, fmt.Sprintf("cfg-%02d", d.rnd.IntN(numNamed)))
	case p < 58 && len(d.dyn) < maxDynamic:
		return d.create(ctx)
	case p < 90 || len(d.dyn) <= minDynamic:
		o := d.pick(ctx)
		if o == nil {
			return nil
		}
		if p < 75 || (o.labels["state"] == "out" && o.everIn) {
			return d.updateDyn(ctx, o)
		}
		return d.relabel(ctx, o)
	default:
		o := d.pick(ctx)
		if o == nil {
			return nil
		}
		return d.delete(ctx, o)
	}
}

// pick returns a random team ConfigMap, read back first if stale (nil if
// it cannot be read or is gone).
func (d *driver) pick(ctx context.Context) *dynObj {
	if len(d.dyn) == 0 {
		return nil
	}
	names := make([]string, 0, len(d.dyn))
	for n := range d.dyn {
		names = append(names, n)
	}
	// Map order is random but not from d.rnd; sort for a reproducible pick.
	slices.Sort(names)
	o := d.dyn[names[d.rnd.IntN(len(names))]]
	if !o.stale {
		return o
	}
	cm, err := d.cs.CoreV1().ConfigMaps(d.ns).Get(ctx, o.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		delete(d.dyn, o.name)
		return nil
	case err != nil:
		return nil
	}
	o.uid, o.labels, o.stale = cm.UID, labels.Set(cm.Labels), false
	if o.labels["state"] == "in" {
		o.everIn = true
	}
	return o
}

func (d *driver) failed(o *dynObj, err error) error {
	d.errors++
	if o != nil {
		o.stale = true
	}
	return err
}

func (d *driver) updateNamed(ctx context.Context, name string) error {
	patch := fmt.Sprintf(`{"data":{"v":%q}}`, strconv.Itoa(d.writes))
	cm, err := d.cs.CoreV1().ConfigMaps(d.ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	if err != nil {
		return d.failed(nil, err)
	}
	d.recordObj(cm, "update", labels.Set{}, labels.Set{})
	return nil
}

func (d *driver) create(ctx context.Context) error {
	d.nextID++
	name := fmt.Sprintf("team-%04d", d.nextID)
	lbls := labels.Set{"team": fmt.Sprintf("t%d", d.rnd.IntN(numTeams)), "state": "out"}
	if d.rnd.IntN(2) == 0 {
		lbls["state"] = "in"
	}
	o := &dynObj{name: name, labels: lbls, everIn: lbls["state"] == "in"}
	d.dyn[name] = o
	cm, err := d.cs.CoreV1().ConfigMaps(d.ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls},
		Data: map[string]string{"v": "0"}}, metav1.CreateOptions{})
	if err != nil {
		return d.failed(o, err)
	}
	o.uid = cm.UID
	d.recordObj(cm, "create", nil, lbls)
	return nil
}

func (d *driver) updateDyn(ctx context.Context, o *dynObj) error {
	patch := fmt.Sprintf(`{"data":{"v":%q}}`, strconv.Itoa(d.writes))
	cm, err := d.cs.CoreV1().ConfigMaps(d.ns).Patch(ctx, o.name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	if err != nil {
		return d.failed(o, err)
	}
	d.recordObj(cm, "update", o.labels, o.labels)
	return nil
}

// relabel moves an object into its selectors (once) or out of them.
func (d *driver) relabel(ctx context.Context, o *dynObj) error {
	state, op := "in", "enter"
	if o.labels["state"] == "in" {
		state, op = "out", "leave"
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{"state":%q}}}`, state)
	cm, err := d.cs.CoreV1().ConfigMaps(d.ns).Patch(ctx, o.name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	if err != nil {
		return d.failed(o, err)
	}
	before := o.labels
	o.labels = labels.Set(cm.Labels)
	o.everIn = true
	d.recordObj(cm, op, before, o.labels)
	return nil
}

func (d *driver) delete(ctx context.Context, o *dynObj) error {
	uid := o.uid
	err := d.cs.CoreV1().ConfigMaps(d.ns).Delete(ctx, o.name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil {
		return d.failed(o, err)
	}
	delete(d.dyn, o.name)
	d.l.record(change{obj: objKey{d.ns, o.name}, uid: uid, op: "delete", watchers: d.watchersOf(o.name, o.labels, nil)})
	return nil
}

func (d *driver) recordObj(cm *corev1.ConfigMap, op string, before, after labels.Set) {
	rv, err := strconv.ParseInt(cm.ResourceVersion, 10, 64)
	if err != nil {
		panic(fmt.Sprintf("resourceVersion %q of %s/%s: %v", cm.ResourceVersion, cm.Namespace, cm.Name, err))
	}
	d.l.record(change{obj: objKey{cm.Namespace, cm.Name}, uid: cm.UID, rv: rv, op: op, watchers: d.watchersOf(cm.Name, before, after)})
}
