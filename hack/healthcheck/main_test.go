package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			w.Write([]byte("ok\n"))
		case "/slow":
			time.Sleep(200 * time.Millisecond)
		default:
			http.Error(w, "not ready: watches are still syncing", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	tests := map[string]struct {
		path    string
		wantErr string
	}{
		"2xx":     {path: "/healthz"},
		"503":     {path: "/readyz", wantErr: "503 Service Unavailable: not ready: watches are still syncing"},
		"timeout": {path: "/slow", wantErr: "context deadline exceeded"},
		"bad url": {path: "\x00", wantErr: "invalid control character"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := check(srv.URL+tc.path, 100*time.Millisecond)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
	if err := check("http://127.0.0.1:1/healthz", time.Second); err == nil {
		t.Fatal("no error from a closed port")
	}
}
