package etcdlock_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/etcdlock"
)

// tlsFiles are PEM files for a CA, a server certificate for 127.0.0.1 and a
// client certificate, all signed by the CA.
type tlsFiles struct{ ca, serverCert, serverKey, clientCert, clientKey string }

func writeTLSFiles(t *testing.T) tlsFiles {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey := newKey()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, usage x509.ExtKeyUsage, name string) (string, string) {
		k := newKey()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kd, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(name+".crt", "CERTIFICATE", der), write(name+".key", "EC PRIVATE KEY", kd)
	}
	f := tlsFiles{ca: write("ca.crt", "CERTIFICATE", caDER)}
	f.serverCert, f.serverKey = leaf(2, x509.ExtKeyUsageServerAuth, "server")
	f.clientCert, f.clientKey = leaf(3, x509.ExtKeyUsageClientAuth, "client")
	return f
}

// startTLSEtcd starts an etcd that requires client certificates.
func startTLSEtcd(t *testing.T, f tlsFiles) string {
	t.Helper()
	for range 5 {
		port := func() int {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			return l.Addr().(*net.TCPAddr).Port
		}
		cp, pp := port(), port()
		cfg := embed.NewConfig()
		cfg.Dir = filepath.Join(t.TempDir(), "etcd")
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cfg.UnsafeNoFsync = true
		cu := url.URL{Scheme: "https", Host: "127.0.0.1:" + strconv.Itoa(cp)}
		pu := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(pp)}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: f.serverCert, KeyFile: f.serverKey, TrustedCAFile: f.ca, ClientCertAuth: true}
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			if strings.Contains(err.Error(), "address already in use") {
				continue
			}
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		select {
		case <-e.Server.ReadyNotify():
			return cu.Host
		case <-time.After(30 * time.Second):
			t.Fatal("TLS etcd not ready")
		}
	}
	t.Fatal("no free port for the TLS etcd")
	return ""
}

func TestConnectTLS(t *testing.T) {
	skipShort(t)
	t.Parallel()
	f := writeTLSFiles(t)
	addr := startTLSEtcd(t, f)
	full := config.TLS{CAFile: f.ca, CertFile: f.clientCert, KeyFile: f.clientKey}
	tests := []struct {
		name      string
		endpoint  string
		tls       config.TLS
		wantErr   string // "" for success
		wantFast  bool   // fails before dialing
		wantTyped bool   // *UnreachableError
	}{
		{"client certificate", addr, full, "", false, false},
		{"https scheme", "https://" + addr, full, "", false, false},
		{"no client certificate", addr, config.TLS{CAFile: f.ca}, "etcd unreachable at " + addr + " within 1s: " + addr + " refused the TLS connection: remote error: tls: certificate required", false, true},
		{"unknown CA", addr, config.TLS{CertFile: f.clientCert, KeyFile: f.clientKey}, "etcd unreachable at " + addr + " within 1s: TLS handshake with " + addr + " failed: tls: failed to verify certificate: x509: certificate signed by unknown authority", false, true},
		{"TLS server, no TLS configured", addr, config.TLS{}, "etcd unreachable at " + addr + " within 1s: " + addr + " accepts connections but did not answer", false, true},
		{"missing CA file", addr, config.TLS{CAFile: f.ca + ".missing"}, "etcd.tls.ca_file", true, false},
		{"key is not a certificate", addr, config.TLS{CAFile: f.clientKey}, "holds no PEM certificate", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := config.Etcd{Endpoints: []string{tt.endpoint}, Prefix: "/replctl", DialTimeout: time.Second, TLS: tt.tls}
			start := time.Now()
			cli, err := etcdlock.Connect(t.Context(), cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				defer cli.Close()
				l, err := etcdlock.Acquire(t.Context(), cli, opts(clusterName(t), "alice", 3*time.Second))
				if err != nil {
					t.Fatal(err)
				}
				if err := l.Release(t.Context()); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				cli.Close()
				t.Fatal("connected")
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q, want %q", err, tt.wantErr)
			}
			var ue *etcdlock.UnreachableError
			if errors.As(err, &ue) != tt.wantTyped {
				t.Errorf("error %T, typed unreachable %v", err, tt.wantTyped)
			}
			if d := time.Since(start); d > 1500*time.Millisecond || tt.wantFast && d > 100*time.Millisecond {
				t.Errorf("took %s", d)
			}
		})
	}
}
