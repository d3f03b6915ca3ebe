// Package proc is what the implementation processes share: flags, the
// stats endpoint the driver polls, and the Go heap sampler. The seed runner
// (module bench/seed) has a copy; the JSON of Stats is the contract.
package proc

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"
)

// Flags every implementation takes.
type Flags struct {
	Kubeconfig string
	NATS       string
	Spec       string
}

// ParseFlags parses the command line.
func ParseFlags() Flags {
	// A flag set of its own: controller-runtime, linked in through
	// depbridge, defines -kubeconfig on the global one.
	var f Flags
	fs := flag.NewFlagSet(os.Args[0], flag.ExitOnError)
	fs.StringVar(&f.Kubeconfig, "kubeconfig", "", "kubeconfig of the API server")
	fs.StringVar(&f.NATS, "nats", "", "NATS URL")
	fs.StringVar(&f.Spec, "spec", "", "workload spec (JSON)")
	_ = fs.Parse(os.Args[1:])
	if f.Kubeconfig == "" || f.NATS == "" || f.Spec == "" {
		fmt.Fprintln(os.Stderr, "-kubeconfig, -nats and -spec are required")
		os.Exit(2)
	}
	return f
}

// Stats is what an implementation reports to the driver.
type Stats struct {
	// Lists and Watches count LIST and WATCH requests sent, in the
	// process's own client transport.
	Lists   int64 `json:"lists"`
	Watches int64 `json:"watches"`
	// OpenWatches is the number of watch streams open now.
	OpenWatches int `json:"openWatches"`
	// HeapInuse is the Go heap in use now, HeapPeak its largest sample
	// (every 100ms) since start.
	HeapInuse uint64 `json:"heapInuse"`
	HeapPeak  uint64 `json:"heapPeak"`
	// Published and Failed count publishes acknowledged and failed.
	Published int64 `json:"published"`
	Failed    int64 `json:"failed"`
	// Ready is set once every watcher is registered (or, for the bare
	// watch, every informer synced).
	Ready bool `json:"ready"`
}

// Counters the implementation updates.
var (
	Published atomic.Int64
	Failed    atomic.Int64
	Ready     atomic.Bool
)

// Serve samples the heap and serves Stats on a free loopback port; it
// prints "STATS <url>" on stdout for the driver. counts returns the
// transport's counts.
func Serve(counts func() (lists, watches int64, open int)) {
	var peak atomic.Uint64
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
	var mu sync.Mutex // guards sample
	heap := func() uint64 {
		mu.Lock()
		metrics.Read(sample)
		h := sample[0].Value.Uint64() + sample[1].Value.Uint64()
		mu.Unlock()
		for {
			p := peak.Load()
			if h <= p || peak.CompareAndSwap(p, h) {
				return h
			}
		}
	}
	go func() {
		for range time.Tick(100 * time.Millisecond) {
			heap()
		}
	}()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go func() {
		_ = http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			lists, watches, open := counts()
			h := heap()
			_ = json.NewEncoder(w).Encode(Stats{Lists: lists, Watches: watches, OpenWatches: open,
				HeapInuse: h, HeapPeak: peak.Load(), Published: Published.Load(), Failed: Failed.Load(), Ready: Ready.Load()})
		}))
	}()
	fmt.Printf("STATS http://%s\n", l.Addr())
}
