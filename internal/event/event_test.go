package event

import (
	"bytes"
	"encoding/json"
	"hash/maphash"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/watch"
)

var (
	watcherCM = cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "apps", Name: "web-deps"}
	watchedS  = cache.Ref{Version: "v1", Kind: "Secret", Namespace: "apps", Name: "db"}
	watchedD  = cache.Ref{Group: "apps", Version: "v1", Kind: "Deployment", Namespace: "apps", Selector: "tier=web"}
	enqueued  = time.Date(2026, 3, 4, 5, 6, 7, 890000000, time.UTC)
)

func request() watch.Request {
	return watch.Request{
		Watcher: watcherCM,
		Causes: []watch.Cause{
			{Watched: watchedS, Namespace: "apps", Name: "db", UID: "u-1", ResourceVersion: "41", Op: watch.OpModified},
			{Watched: watchedD, Namespace: "apps", Name: "web", UID: "u-2", ResourceVersion: "42", Op: watch.OpEntered},
		},
		Enqueued: enqueued,
	}
}

func secret() *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Secret",
		"metadata":   map[string]any{"name": "db", "namespace": "apps"},
		"data":       map[string]any{"password": "aHVudGVyMg=="},
		"stringData": map[string]any{"user": "admin"},
		"type":       "Opaque",
	}}
}

func deployment() *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apps/v1", "kind": "Deployment",
		"metadata": map[string]any{"name": "web", "namespace": "apps"},
		"data":     "not a secret: kept",
	}}
}

func TestNewAttributes(t *testing.T) {
	clusterWide := cache.Ref{Group: "example.com", Version: "v2", Kind: "Tenant", Name: "acme"}
	selector := cache.Ref{Version: "v1", Kind: "Pod", Namespace: "ns", Selector: "app=x"}
	tests := map[string]struct {
		req        watch.Request
		opts       Options
		source     string
		subject    string
		time       time.Time
		extensions map[string]any
	}{
		"namespaced watcher": {
			req:     request(),
			opts:    Options{Cluster: "prod", Instance: "bridge-0"},
			source:  "depbridge://prod/bridge-0",
			subject: "v1/ConfigMap/apps/web-deps",
			time:    enqueued,
			extensions: map[string]any{
				"partitionkey": "v1/ConfigMap/apps/web-deps", "watcherapiversion": "v1",
				"watcherkind": "ConfigMap", "watchernamespace": "apps", "watchername": "web-deps",
			},
		},
		"cluster-scoped watcher, defaults": {
			req:     watch.Request{Watcher: clusterWide},
			source:  "depbridge://default/depbridge",
			subject: "example.com/v2/Tenant//acme",
			extensions: map[string]any{
				"partitionkey": "example.com/v2/Tenant//acme", "watcherapiversion": "example.com/v2",
				"watcherkind": "Tenant", "watchername": "acme",
			},
		},
		"selector watcher": {
			req:     watch.Request{Watcher: selector, Enqueued: enqueued},
			opts:    Options{Cluster: "c"},
			source:  "depbridge://c/depbridge",
			subject: "v1/Pod/ns/?app=x",
			time:    enqueued,
			extensions: map[string]any{
				"partitionkey": "v1/Pod/ns/?app=x", "watcherapiversion": "v1",
				"watcherkind": "Pod", "watchernamespace": "ns",
			},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			e, err := New(tt.req, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if got := e.SpecVersion(); got != "1.0" {
				t.Errorf("specversion = %q", got)
			}
			if got := e.Type(); got != "io.depbridge.reconcile.v1" {
				t.Errorf("type = %q", got)
			}
			if got := e.Source(); got != tt.source {
				t.Errorf("source = %q, want %q", got, tt.source)
			}
			if got := e.Subject(); got != tt.subject {
				t.Errorf("subject = %q, want %q", got, tt.subject)
			}
			if got := e.Time(); !got.Equal(tt.time) {
				t.Errorf("time = %v, want %v", got, tt.time)
			}
			if got := e.DataContentType(); got != "application/json" {
				t.Errorf("datacontenttype = %q", got)
			}
			if got := e.ID(); len(got) != 32 || strings.Trim(got, "0123456789abcdef") != "" {
				t.Errorf("id = %q, want 32 lowercase hex digits", got)
			}
			if got := e.Extensions(); !reflect.DeepEqual(got, tt.extensions) {
				t.Errorf("extensions = %v, want %v", got, tt.extensions)
			}
			if err := e.Validate(); err != nil {
				t.Errorf("New built an invalid event: %v", err)
			}
			for name := range e.Extensions() {
				if len(name) > 20 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789") != "" {
					t.Errorf("extension name %q breaks the spec's naming rules", name)
				}
			}
		})
	}
}

func TestIDIsDeterministic(t *testing.T) {
	base := request()
	id := ID("c", base)
	if again := ID("c", request()); again != id {
		t.Fatalf("same request, different ids: %s, %s", id, again)
	}
	later := request()
	later.Enqueued = later.Enqueued.Add(time.Hour)
	if got := ID("c", later); got != id {
		t.Errorf("id depends on the time: %s, %s", id, got)
	}
	e1, _ := New(request(), Options{Cluster: "c", IncludeObjects: true, Objects: []*unstructured.Unstructured{deployment()}})
	e2, _ := New(request(), Options{Cluster: "c", Instance: "other"})
	if e1.ID() != id || e2.ID() != id {
		t.Errorf("id depends on objects or instance: %s, %s, %s", id, e1.ID(), e2.ID())
	}

	// The same object versions, learned another way or listed in another
	// order (a relist after a restart re-announcing what was delivered):
	// the same id, so that JetStream drops the re-announcement.
	same := map[string]func(*watch.Request){
		"causes reordered":      func(r *watch.Request) { slices.Reverse(r.Causes) },
		"relisted, not changed": func(r *watch.Request) { r.Causes[0].Op, r.Causes[1].Op = watch.OpRelisted, watch.OpRelisted },
		"a cause twice":         func(r *watch.Request) { r.Causes = append(r.Causes, r.Causes[0]) },
	}
	for name, change := range same {
		t.Run(name, func(t *testing.T) {
			r := request()
			change(&r)
			if got := ID("c", r); got != id {
				t.Errorf("the same object versions, a different id %s (want %s)", got, id)
			}
		})
	}

	lost := request()
	lost.Causes = []watch.Cause{{Watched: watchedS, Op: watch.OpLost, Reason: "kind removed"}}
	lostID := ID("c", lost)
	lost.Causes[0].Reason = "forbidden"
	if ID("c", lost) == lostID {
		t.Error("lost causes with different reasons share an id")
	}
	resync := request()
	resync.Causes = []watch.Cause{{Op: watch.OpResync}}
	if ID("c", resync) == lostID || ID("c", resync) == id {
		t.Error("a resync shares an id")
	}

	// A request not named by object versions alone is an occurrence: its
	// retry (same Enqueued) has its id, the next one (a resync at the next
	// start, a kind lost again, a requeue) another, which JetStream's
	// duplicate window does not drop.
	occurrences := map[string]watch.Request{
		"resync":    resync,
		"lost":      lost,
		"no causes": {Watcher: base.Watcher, Enqueued: base.Enqueued},
		"truncated": func() watch.Request { r := request(); r.Truncated = 2; return r }(),
		"resync and a change": func() watch.Request {
			r := request()
			r.Causes = append(r.Causes, watch.Cause{Op: watch.OpResync})
			return r
		}(),
	}
	for name, r := range occurrences {
		t.Run("occurrence "+name, func(t *testing.T) {
			retry := r
			retry.Causes = slices.Clone(r.Causes)
			if ID("c", retry) != ID("c", r) {
				t.Error("a retry has another id")
			}
			next := r
			next.Enqueued = r.Enqueued.Add(90 * time.Second)
			if ID("c", next) == ID("c", r) {
				t.Error("the next occurrence has the same id")
			}
		})
	}

	differ := map[string]func(*watch.Request) (cluster string){
		"cluster":              func(*watch.Request) string { return "d" },
		"deleted, not changed": func(r *watch.Request) string { r.Causes[0].Op = watch.OpDeleted; return "c" },
		"gone in a relist": func(r *watch.Request) string {
			r.Causes[0].Op, r.Causes[0].ResourceVersion = watch.OpRelisted, ""
			return "c"
		},
		"cause dropped":     func(r *watch.Request) string { r.Causes = r.Causes[:1]; return "c" },
		"no causes":         func(r *watch.Request) string { r.Causes = nil; return "c" },
		"resourceVersion":   func(r *watch.Request) string { r.Causes[0].ResourceVersion = "43"; return "c" },
		"op":                func(r *watch.Request) string { r.Causes[1].Op = watch.OpLeft; return "c" },
		"truncated":         func(r *watch.Request) string { r.Truncated = 1; return "c" },
		"watcher":           func(r *watch.Request) string { r.Watcher.Name = "other"; return "c" },
		"field boundaries":  func(r *watch.Request) string { r.Causes[0].Namespace, r.Causes[0].Name = "appsd", "b"; return "c" },
		"watched selector":  func(r *watch.Request) string { r.Causes[1].Watched.Selector = "tier=db"; return "c" },
		"uid":               func(r *watch.Request) string { r.Causes[0].UID = "u-9"; return "c" },
		"watched namespace": func(r *watch.Request) string { r.Causes[0].Watched.Namespace = ""; return "c" },
	}
	for name, change := range differ {
		t.Run(name, func(t *testing.T) {
			r := request()
			cluster := change(&r)
			if got := ID(cluster, r); got == id {
				t.Errorf("different request, same id %s", got)
			}
		})
	}
}

func TestNewData(t *testing.T) {
	s, d := secret(), deployment()
	before := s.DeepCopy()
	tests := map[string]struct {
		opts Options
		want []map[string]any
	}{
		"objects not asked for": {
			opts: Options{Objects: []*unstructured.Unstructured{s, d}},
		},
		"secret data removed": {
			opts: Options{IncludeObjects: true, Objects: []*unstructured.Unstructured{s, nil, d}},
			want: []map[string]any{
				{"apiVersion": "v1", "kind": "Secret", "metadata": map[string]any{"name": "db", "namespace": "apps"}, "type": "Opaque"},
				d.Object,
			},
		},
		"secret data kept when asked": {
			opts: Options{IncludeObjects: true, IncludeSecretData: true, Objects: []*unstructured.Unstructured{s}},
			want: []map[string]any{before.Object},
		},
		"a Secret kind of another group is not redacted": {
			opts: Options{IncludeObjects: true, Objects: []*unstructured.Unstructured{{Object: map[string]any{
				"apiVersion": "example.com/v1", "kind": "Secret", "metadata": map[string]any{"name": "x"}, "data": "kept"}}}},
			want: []map[string]any{{"apiVersion": "example.com/v1", "kind": "Secret", "metadata": map[string]any{"name": "x"}, "data": "kept"}},
		},
		"included, none found": {
			opts: Options{IncludeObjects: true},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			e, err := New(request(), tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			var got Data
			if err := json.Unmarshal(e.Data(), &got); err != nil {
				t.Fatal(err)
			}
			want := Data{Watcher: watcherCM, Causes: request().Causes, Objects: tt.want}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("data =\n%+v\nwant\n%+v", got, want)
			}
			if !reflect.DeepEqual(s, before) {
				t.Errorf("the caller's Secret was modified: %v", s.Object)
			}
			if strings.Contains(string(e.Data()), "aHVudGVyMg") != tt.opts.IncludeSecretData {
				t.Errorf("secret data present = %v, want %v", !tt.opts.IncludeSecretData, tt.opts.IncludeSecretData)
			}
		})
	}
}

func TestNewNoCausesIsEmptyArray(t *testing.T) {
	e, err := New(watch.Request{Watcher: watcherCM}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"watcher":{"version":"v1","kind":"ConfigMap","namespace":"apps","name":"web-deps"},"causes":[],"truncated":0}`; string(e.Data()) != want {
		t.Errorf("data = %s\nwant %s", e.Data(), want)
	}
}

func TestNewBadObject(t *testing.T) {
	bad := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "x": make(chan int)}}
	_, err := New(request(), Options{IncludeObjects: true, Objects: []*unstructured.Unstructured{bad}})
	if err == nil || !strings.Contains(err.Error(), "v1/ConfigMap/apps/web-deps") {
		t.Fatalf("err = %v, want an error naming the watcher", err)
	}
}

// TestStructuredRoundTrip checks that the SDK writes data as JSON, not
// base64, and reads back the same event.
func TestStructuredRoundTrip(t *testing.T) {
	e, err := New(request(), Options{Cluster: "c", IncludeObjects: true, Objects: []*unstructured.Unstructured{deployment()}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"data":{"watcher"`)) {
		t.Errorf("data is not inline JSON: %s", b)
	}
	var back ce.Event
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.String() != e.String() {
		t.Errorf("round trip changed the event:\n%s\nwant\n%s", back, e)
	}
}

func compileSchema(t testing.TB) *jsonschema.Schema {
	t.Helper()
	f, err := os.Open("../../docs/events.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("events.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("events.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestDataMatchesSchema(t *testing.T) {
	s := compileSchema(t)
	lost := watch.Request{Watcher: cache.Ref{Version: "v1", Kind: "Namespace", Name: "n"}, Truncated: 3, Causes: []watch.Cause{
		{Watched: cache.Ref{Group: "x.io", Version: "v1", Kind: "Gone", Selector: "*"}, Op: watch.OpLost, Reason: "kind removed"},
	}}
	tests := map[string]struct {
		req  watch.Request
		opts Options
	}{
		"causes":              {req: request()},
		"no causes":           {req: watch.Request{Watcher: watcherCM}},
		"lost, truncated":     {req: lost},
		"objects":             {req: request(), opts: Options{IncludeObjects: true, Objects: []*unstructured.Unstructured{secret(), deployment()}}},
		"objects with secret": {req: request(), opts: Options{IncludeObjects: true, IncludeSecretData: true, Objects: []*unstructured.Unstructured{secret()}}},
		"objects omitted":     {req: request(), opts: Options{ObjectsOmitted: true}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			e, err := New(tt.req, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(e.Data()))
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Validate(inst); err != nil {
				t.Errorf("%s\ndoes not match docs/events.schema.json: %v", e.Data(), err)
			}
		})
	}

	// The schema must reject what the types cannot produce, or it checks
	// nothing.
	for _, bad := range []string{
		`{"watcher":{"version":"v1","kind":"K","name":"n"},"causes":[]}`,
		`{"watcher":{"version":"v1","kind":"K","name":"n","selector":"a=b"},"causes":[],"truncated":0}`,
		`{"watcher":{"version":"v1","kind":"K","name":"n"},"causes":[{"watched":{"version":"v1","kind":"K","name":"n"},"op":"touched"}],"truncated":0}`,
		`{"watcher":{"version":"v1","kind":"K","name":"n"},"causes":[],"truncated":0,"extra":1}`,
	} {
		inst, err := jsonschema.UnmarshalJSON(strings.NewReader(bad))
		if err != nil {
			t.Fatal(err)
		}
		if s.Validate(inst) == nil {
			t.Errorf("schema accepts %s", bad)
		}
	}
}

// TestSchemaMatchesTypes checks that every JSON field of Data (and of the
// types it contains) is in the schema and vice versa, and that the fields
// without omitempty are exactly the required ones.
func TestSchemaMatchesTypes(t *testing.T) {
	raw, err := os.ReadFile("../../docs/events.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	type node struct {
		Ref        string           `json:"$ref"`
		Required   []string         `json:"required"`
		Properties map[string]*node `json:"properties"`
		Items      *node            `json:"items"`
		Defs       map[string]*node `json:"$defs"`
	}
	var root node
	if err := json.Unmarshal(raw, &root); err != nil {
		t.Fatal(err)
	}
	resolve := func(n *node) *node {
		for n != nil && n.Ref != "" {
			n = root.Defs[strings.TrimPrefix(n.Ref, "#/$defs/")]
		}
		return n
	}
	var check func(path string, typ reflect.Type, n *node)
	check = func(path string, typ reflect.Type, n *node) {
		n = resolve(n)
		if n == nil {
			t.Errorf("%s: no schema", path)
			return
		}
		for typ.Kind() == reflect.Slice || typ.Kind() == reflect.Pointer {
			if typ.Kind() == reflect.Slice {
				n = resolve(n.Items)
				if n == nil {
					t.Errorf("%s: no items in schema", path)
					return
				}
			}
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || typ.PkgPath() == "time" {
			return
		}
		fields := map[string]bool{}
		var required []string
		for f := range typ.Fields() {
			tag := f.Tag.Get("json")
			name, opts, _ := strings.Cut(tag, ",")
			if name == "-" || !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			fields[name] = true
			if !strings.Contains(opts, "omitempty") && !strings.Contains(opts, "omitzero") {
				required = append(required, name)
			}
			p, ok := n.Properties[name]
			if !ok {
				t.Errorf("%s.%s: field of %s missing from the schema", path, name, typ)
				continue
			}
			check(path+"."+name, f.Type, p)
		}
		for name := range n.Properties {
			if !fields[name] {
				t.Errorf("%s.%s: in the schema but not a field of %s", path, name, typ)
			}
		}
		slices.Sort(required)
		got := slices.Sorted(slices.Values(n.Required))
		if !slices.Equal(required, got) {
			t.Errorf("%s: schema requires %v, %s always encodes %v", path, got, typ, required)
		}
	}
	check("data", reflect.TypeFor[Data](), &root)
}

// BenchmarkNew measures event.New per event. Each iteration builds
// newBatch events, so -benchtime 1x gives stable per-event numbers.
func BenchmarkNew(b *testing.B) {
	const newBatch = 2000
	req := request()
	for name, opts := range map[string]Options{
		"causes":         {Cluster: "c", Instance: "i"},
		"causes+objects": {Cluster: "c", Instance: "i", IncludeObjects: true, Objects: []*unstructured.Unstructured{secret(), deployment()}},
	} {
		b.Run(name, func(b *testing.B) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			for i := 0; i < b.N; i++ {
				for range newBatch {
					if _, err := New(req, opts); err != nil {
						b.Fatal(err)
					}
				}
			}
			elapsed := time.Since(start)
			runtime.ReadMemStats(&after)
			n := float64(b.N * newBatch)
			b.ReportMetric(float64(elapsed.Nanoseconds())/n, "ns/event")
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/n, "allocs/event")
			b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/n, "B/event")
			b.ReportMetric(0, "ns/op")
		})
	}
}

func TestWatcherKeyAndAPIVersionMatchRef(t *testing.T) {
	for _, r := range []cache.Ref{
		watcherCM, watchedD,
		{Version: "v1", Kind: "Namespace", Name: "n"},
		{Group: "x.io", Version: "v1beta1", Kind: "K", Namespace: "ns", Selector: "*"},
	} {
		if got, want := watcherKey(r), r.Key(); got != want {
			t.Errorf("watcherKey(%v) = %q, want %q", r, got, want)
		}
		if got, want := apiVersion(r), r.APIVersion(); got != want {
			t.Errorf("apiVersion(%v) = %q, want %q", r, got, want)
		}
	}
}

// TestNewWatcherAttributesShared builds events for more watchers than
// recentWatchers has slots, from several goroutines at once, so that slots
// are taken over while others read them: each event must carry its own
// watcher's key and extensions. It also checks the contract on sharing: a
// clone's extensions can be changed without changing the original's.
func TestNewWatcherAttributesShared(t *testing.T) {
	const goroutines = 4
	n := 2 * len(recentWatchers)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range n {
				w := cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "ns-" + strconv.Itoa(i%3), Name: "w-" + strconv.Itoa((i+g*n/goroutines)%n)}
				e, err := New(watch.Request{Watcher: w}, Options{})
				if err != nil {
					t.Error(err)
					return
				}
				exts := e.Extensions()
				if e.Subject() != w.Key() || exts[ExtPartitionKey] != w.Key() || exts[ExtWatcherName] != w.Name ||
					exts[ExtWatcherNamespace] != w.Namespace || exts[ExtWatcherKind] != w.Kind || exts[ExtWatcherAPIVersion] != "v1" {
					t.Errorf("event of %s: subject %q, extensions %v", w.Key(), e.Subject(), exts)
					return
				}
			}
		})
	}
	wg.Wait()

	a, err := New(request(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := a.Clone()
	b.SetExtension(ExtWatcherName, "changed")
	if got := b.Extensions()[ExtWatcherName]; got != "changed" {
		t.Fatalf("clone's watchername = %v after SetExtension", got)
	}
	c, err := New(request(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []ce.Event{a, c} {
		if got := e.Extensions()[ExtWatcherName]; got != watcherCM.Name {
			t.Errorf("watchername = %v after a clone's was changed, want %q", got, watcherCM.Name)
		}
	}
}

// Two watchers whose first slots in recentWatchers are the same, and whose
// second slots are not, keep their shared attributes while their events
// alternate: neither evicts the other (one slot each did, so that both
// built new attributes for every event).
func TestRecentWatchersCollisions(t *testing.T) {
	slotsOf := func(r cache.Ref) (uint64, uint64) {
		h := maphash.Comparable(recentWatcherSeed, r)
		return h % uint64(len(recentWatchers)), (h >> 32) % uint64(len(recentWatchers))
	}
	ref := func(i int) cache.Ref {
		return cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "collide", Name: "w-" + strconv.Itoa(i)}
	}
	first := map[uint64]int{}
	var a, b cache.Ref
	for i := 0; ; i++ {
		p, s := slotsOf(ref(i))
		if j, ok := first[p]; ok {
			if _, sj := slotsOf(ref(j)); sj != s && s != p && sj != p {
				a, b = ref(j), ref(i)
				break
			}
		}
		first[p] = i
	}
	// Empty their slots, which earlier tests may have filled.
	for _, r := range []cache.Ref{a, b} {
		p, s := slotsOf(r)
		recentWatchers[p].Store(nil)
		recentWatchers[s].Store(nil)
	}
	wa, wb := watcherOf(a), watcherOf(b)
	for range 10 {
		if watcherOf(a) != wa || watcherOf(b) != wb {
			t.Fatalf("%s and %s, whose first slots collide, evicted each other", a.Key(), b.Key())
		}
	}
}
