package bridge

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/depbridge/depbridge/internal/cache"
	"github.com/depbridge/depbridge/internal/config"
	"github.com/depbridge/depbridge/internal/sink"
)

// While a watcher's subscription is being registered, its requests wait
// to learn which route the registration leaves: the new one if the engine
// takes it, the one it had if the engine refuses it.
func TestRouteWaitsForRegistration(t *testing.T) {
	w := cache.Ref{Version: "v1", Kind: "ConfigMap", Namespace: "fn", Name: "w"}
	before, asked := &sink.Route{Name: "before"}, &sink.Route{Name: "asked"}
	for name, tt := range map[string]struct {
		had     bool
		refused error
		want    *sink.Route // nil: no subscription, a terminal error
	}{
		"new, taken":        {want: asked},
		"new, refused":      {refused: errors.New("forbidden")},
		"replaced":          {had: true, want: asked},
		"replaced, refused": {had: true, refused: errors.New("forbidden"), want: before},
	} {
		t.Run(name, func(t *testing.T) {
			s := newSubscriptions(nil, nil, slog.New(slog.DiscardHandler))
			if tt.had {
				s.subs[w] = entry{sub: config.Subscription{Watcher: w}, route: before}
			}
			registering, finish := make(chan struct{}), make(chan struct{})
			changed := make(chan error, 1)
			go func() {
				changed <- s.change(entry{sub: config.Subscription{Watcher: w}, route: asked}, func() error {
					close(registering)
					<-finish
					return tt.refused
				})
			}()
			<-registering
			type routed struct {
				r   *sink.Route
				err error
			}
			got := make(chan routed, 1)
			go func() { r, err := s.Route(w); got <- routed{r, err} }()
			// A request routed meanwhile waits (it would be at once:
			// Route only reads a map).
			select {
			case g := <-got:
				t.Fatalf("Route returned %v, %v during the registration", g.r, g.err)
			case <-time.After(100 * time.Millisecond):
			}
			close(finish)
			if err := <-changed; !errors.Is(err, tt.refused) {
				t.Fatalf("change returned %v, want %v", err, tt.refused)
			}
			var g routed
			select {
			case g = <-got:
			case <-time.After(10 * time.Second):
				t.Fatal("Route still waits after the registration ended")
			}
			if g.r != tt.want || (tt.want == nil) != (g.err != nil) {
				t.Fatalf("Route = %v, %v; want %v", g.r, g.err, tt.want)
			}
			if r, _ := s.Route(w); r != tt.want {
				t.Fatalf("a later Route = %v, want %v", r, tt.want)
			}
		})
	}
}
