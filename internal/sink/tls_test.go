package sink

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/depbridge/depbridge/internal/config"
)

// pki is a test CA with a server certificate for 127.0.0.1 and a client
// certificate, written as PEM files.
type pki struct {
	caFile, certFile, keyFile string // the client's
	server                    tls.Certificate
	pool                      *x509.CertPool
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(name string, usage x509.ExtKeyUsage, ip net.IP) ([]byte, *ecdsa.PrivateKey) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature,
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		if ip != nil {
			tmpl.IPAddresses = []net.IP{ip}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, key
	}
	pemOf := func(typ string, b []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}) }
	srvDER, srvKey := issue("server", x509.ExtKeyUsageServerAuth, net.ParseIP("127.0.0.1"))
	srvKeyDER, _ := x509.MarshalECPrivateKey(srvKey)
	server, err := tls.X509KeyPair(pemOf("CERTIFICATE", srvDER), pemOf("EC PRIVATE KEY", srvKeyDER))
	if err != nil {
		t.Fatal(err)
	}
	cliDER, cliKey := issue("bridge", x509.ExtKeyUsageClientAuth, nil)
	cliKeyDER, _ := x509.MarshalECPrivateKey(cliKey)
	p := &pki{caFile: filepath.Join(dir, "ca.pem"), certFile: filepath.Join(dir, "client.pem"), keyFile: filepath.Join(dir, "client-key.pem"),
		server: server, pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	for file, data := range map[string][]byte{p.caFile: pemOf("CERTIFICATE", caDER), p.certFile: pemOf("CERTIFICATE", cliDER),
		p.keyFile: pemOf("EC PRIVATE KEY", cliKeyDER)} {
		if err := os.WriteFile(file, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// serverTLS requires a client certificate from the test CA.
func (p *pki) serverTLS() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{p.server}, ClientCAs: p.pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
}

// The JetStream and Kafka sinks speak TLS with a client certificate, and
// fail without one or without the CA.
func TestBrokerTLS(t *testing.T) {
	p := newPKI(t)
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(),
		TLS: true, TLSVerify: true, TLSConfig: p.serverTLS(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	defer ns.Shutdown()
	admin, err := nats.Connect(ns.ClientURL(), nats.Secure(&tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS12}),
		nats.ClientCert(p.certFile, p.keyFile))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	js, _ := jetstream.New(admin)
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "TLS", Subjects: []string{"tls.>"}}); err != nil {
		t.Fatal(err)
	}
	kf, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.TLS(p.serverTLS()), kfake.SeedTopics(1, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	defer kf.Close()

	full := &config.TLS{CAFile: p.caFile, CertFile: p.certFile, KeyFile: p.keyFile}
	tests := map[string]struct {
		tls *config.TLS
		ok  bool
	}{
		"CA and client certificate": {full, true},
		"no client certificate":     {&config.TLS{CAFile: p.caFile}, false},
		"unknown CA":                {&config.TLS{CertFile: p.certFile, KeyFile: p.keyFile}, false},
	}
	for name, tc := range tests {
		t.Run("jetstream/"+name, func(t *testing.T) {
			s, err := NewJetStream("tls", config.JetStream{NATSConn: config.NATSConn{URL: ns.ClientURL(), TLS: tc.tls}, AckTimeout: durationOf(2 * time.Second)}, nil)
			if err != nil {
				if tc.ok {
					t.Fatal(err)
				}
				return // refused at connect: as it should be
			}
			defer s.Close(context.Background())
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err = s.Send(ctx, Target{Subject: "tls.w"}, testEvent(t, 1, 1))
			if tc.ok != (err == nil) {
				t.Fatalf("send: %v, want success %v", err, tc.ok)
			}
		})
		t.Run("kafka/"+name, func(t *testing.T) {
			s, err := NewKafka("tls", config.Kafka{Brokers: kf.ListenAddrs(), TLS: tc.tls, WriteTimeout: durationOf(2 * time.Second)}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close(context.Background())
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err = s.Send(ctx, Target{Subject: "tls"}, testEvent(t, 1, 1))
			if tc.ok != (err == nil) {
				t.Fatalf("send: %v, want success %v", err, tc.ok)
			}
		})
	}
}
