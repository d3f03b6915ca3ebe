package sink

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/depbridge/depbridge/internal/config"
)

// startAuthNATS runs a nats-server that requires the given authentication.
func startAuthNATS(t *testing.T, opts server.Options) string {
	t.Helper()
	opts.Host, opts.Port, opts.NoLog, opts.NoSigs = "127.0.0.1", server.RANDOM_PORT, true, true
	s, err := server.NewServer(&opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(s.Shutdown)
	return s.ClientURL()
}

func TestNATSAuthentication(t *testing.T) {
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	seedFile := filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	other, _ := nkeys.CreateUser()
	otherSeed, _ := other.Seed()
	otherFile := filepath.Join(t.TempDir(), "other.nk")
	if err := os.WriteFile(otherFile, otherSeed, 0o600); err != nil {
		t.Fatal(err)
	}

	passwordURL := startAuthNATS(t, server.Options{Username: "bridge", Password: "s3cret-pw"})
	tokenURL := startAuthNATS(t, server.Options{Authorization: "s3cret-token"})
	nkeyURL := startAuthNATS(t, server.Options{Nkeys: []*server.NkeyUser{{Nkey: pub}}})

	tests := map[string]struct {
		conn config.NATSConn
		ok   bool
	}{
		"user and password": {config.NATSConn{URL: passwordURL, User: "bridge", Password: "s3cret-pw"}, true},
		"wrong password":    {config.NATSConn{URL: passwordURL, User: "bridge", Password: "wrong-pw"}, false},
		"token":             {config.NATSConn{URL: tokenURL, Token: "s3cret-token"}, true},
		"wrong token":       {config.NATSConn{URL: tokenURL, Token: "nope"}, false},
		"nkey seed file":    {config.NATSConn{URL: nkeyURL, NKeyFile: seedFile}, true},
		"unknown nkey":      {config.NATSConn{URL: nkeyURL, NKeyFile: otherFile}, false},
		"no credentials":    {config.NATSConn{URL: passwordURL}, false},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			logs := &logBuffer{}
			s, err := NewJetStream("js", config.JetStream{NATSConn: tt.conn}, testLogger(logs))
			if tt.ok != (err == nil) {
				t.Fatalf("err = %v, want success %v", err, tt.ok)
			}
			if err == nil {
				defer s.Close(t.Context())
			}
			for _, secret := range []string{"s3cret", "wrong-pw", string(seed)} {
				if strings.Contains(logs.String(), secret) || (err != nil && strings.Contains(err.Error(), secret)) {
					t.Errorf("credential %q leaked: %v\n%s", secret, err, logs)
				}
			}
		})
	}
}
