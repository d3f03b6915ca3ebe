package cache

import (
	"errors"
	"testing"
)

// AC-03, AC-Δ6.
func TestRefCanonical(t *testing.T) {
	tests := map[string]struct {
		ref     Ref
		wantErr bool
		want    string // canonical selector
	}{
		"name":                  {ref: Ref{Version: "v1", Kind: "ConfigMap", Name: "x"}},
		"no version":            {ref: Ref{Kind: "ConfigMap", Name: "x"}, wantErr: true},
		"no kind":               {ref: Ref{Version: "v1", Name: "x"}, wantErr: true},
		"neither":               {ref: Ref{Version: "v1", Kind: "ConfigMap"}, wantErr: true},
		"blank selector":        {ref: Ref{Version: "v1", Kind: "ConfigMap", Selector: "  "}, wantErr: true},
		"both":                  {ref: Ref{Version: "v1", Kind: "ConfigMap", Name: "x", Selector: "a=b"}, wantErr: true},
		"prefixed key":          {ref: Ref{Version: "v1", Kind: "ConfigMap", Selector: "example.test/label=foo"}, want: "example.test/label=foo"},
		"incomplete !=":         {ref: Ref{Version: "v1", Kind: "ConfigMap", Selector: "something-random!="}, wantErr: true},
		"garbage":               {ref: Ref{Version: "v1", Kind: "ConfigMap", Selector: "a in (b"}, wantErr: true},
		"sorted":                {ref: Ref{Version: "v1", Kind: "ConfigMap", Selector: "b=1,a=1"}, want: "a=1,b=1"},
		"spaces":                {ref: Ref{Version: "v1", Kind: "ConfigMap", Selector: " a = 1 , b=1"}, want: "a=1,b=1"},
		"set values sorted":     {ref: Ref{Version: "v1", Kind: "ConfigMap", Selector: "tier in (z,a)"}, want: "tier in (a,z)"},
		"not equals":            {ref: Ref{Version: "v1", Kind: "ConfigMap", Selector: "a!=b"}, want: "a!=b"},
		"everything":            {ref: Ref{Version: "v1", Kind: "ConfigMap", Selector: " * "}, want: "*"},
		"existence and absence": {ref: Ref{Version: "v1", Kind: "ConfigMap", Selector: "!b,a"}, want: "a,!b"},
	}
	for name, tc := range tests {
		got, err := tc.ref.Canonical()
		if tc.wantErr {
			if !errors.Is(err, ErrInvalidInput) {
				t.Errorf("%s: err = %v, want ErrInvalidInput", name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got.Selector != tc.want {
			t.Errorf("%s: selector %q, want %q", name, got.Selector, tc.want)
		}
		if again, _ := got.Canonical(); again != got {
			t.Errorf("%s: canonical form is not stable: %+v -> %+v", name, got, again)
		}
	}
}

// AC-04 and the compact key.
func TestRefString(t *testing.T) {
	r := Ref{Version: "v1", Kind: "ConfigMap", Namespace: "test-ns", Name: "watcher"}
	if got, want := r.String(), "GroupVersion=v1, Kind=ConfigMap, Namespace=test-ns, Name=watcher"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	s := Ref{Group: "apps", Version: "v1", Kind: "Deployment", Selector: "a=b"}
	if got, want := s.String(), "GroupVersion=apps/v1, Kind=Deployment, Namespace=, Name=, Selector=a=b"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got, want := r.Key(), "v1/ConfigMap/test-ns/watcher"; got != want {
		t.Errorf("Key() = %q, want %q", got, want)
	}
	if got, want := s.Key(), "apps/v1/Deployment//?a=b"; got != want {
		t.Errorf("Key() = %q, want %q", got, want)
	}
}
