package testenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/replctl/replctl/config"
)

// TestTLS builds a TLS cluster the way `replctl testenv up --tls` does
// (detached etcd, in a child that is this test binary, see TestMain) and
// checks that TLS is the only way in: PostgreSQL and replication over TLS
// with client certificates, no plain text, etcd refusing clients without a
// certificate, and a generated replctl.yaml that verifies everything.
func TestTLS(t *testing.T) {
	integration(t)
	ctx := t.Context()
	dir, err := os.MkdirTemp("", TempPrefix+"tls-*")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Down(dir, false); err != nil && !errors.Is(err, ErrNotUp) {
			t.Error(err)
		}
		os.RemoveAll(dir)
	})
	st, err := UpDetached(ctx, Options{Dir: dir, Replicas: 1, TLS: true}, []string{os.Args[0], etcdServeArg})
	if err != nil {
		t.Fatal(err)
	}
	if st.TLS == nil || st.TLS.CAFile == "" || st.Etcd == nil {
		t.Fatalf("state: %+v", st)
	}

	cfg, err := config.Load(st.Config)
	if err != nil {
		t.Fatal(err)
	}
	tf := st.TLS
	if cfg.Etcd.TLS != (config.TLS{CAFile: tf.CAFile, CertFile: tf.ClientCert, KeyFile: tf.ClientKey}) {
		t.Errorf("etcd tls block %+v, want the CA and the client certificate", cfg.Etcd.TLS)
	}
	for _, n := range cfg.Nodes {
		set := config.DSNSettings(n.DSN)
		if set["sslmode"] != "verify-full" || set["sslrootcert"] != tf.CAFile || set["sslcert"] != tf.ClientCert || set["sslkey"] != tf.ClientKey {
			t.Errorf("%s: DSN %s does not verify the server with the client certificate", n.Name, n.DSN)
		}
	}

	// Keys: 0600, and those PostgreSQL reads belong to its OS user.
	pgUID := os.Getuid()
	if in, err := findInstall(ctx); err == nil && in.user != nil {
		pgUID = int(in.user.uid)
	}
	for path, uid := range map[string]int{
		tf.ClientKey:                             pgUID,
		filepath.Join(dir, "pg1", serverKeyFile): pgUID,
		filepath.Join(dir, "pg2", serverKeyFile): pgUID,
		tf.EtcdKey:                               os.Getuid(),
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 || int(fi.Sys().(*syscall.Stat_t).Uid) != uid {
			t.Errorf("%s: mode %v uid %d, want 0600 and uid %d", path, fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Uid, uid)
		}
	}

	// Our session and the replica's WAL sender both use TLS, and the
	// replica was told to verify its upstream.
	pg1, pg2 := cfg.Nodes[0], cfg.Nodes[1]
	conn, err := pgx.Connect(ctx, pg1.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var mine bool
	var senders, overTLS int
	err = conn.QueryRow(ctx, `SELECT (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()),
		count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)`).Scan(&mine, &senders, &overTLS)
	if err != nil || !mine || senders != 1 || overTLS != 1 {
		t.Errorf("TLS: this session %v, %d of %d walsenders (%v)", mine, overTLS, senders, err)
	}
	var ci string
	if err := pgxQueryRow(t, pg2.DSN, "SELECT current_setting('primary_conninfo')", &ci); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ci, "sslmode=verify-full") || !strings.Contains(ci, "sslrootcert="+tf.CAFile) || !strings.Contains(ci, "sslcert="+tf.ClientCert) {
		t.Errorf("pg2's primary_conninfo does not verify pg1: %s", ci)
	}

	// No way in without TLS and a client certificate.
	base := strings.Fields(pg1.DSN)[:4] // host port user dbname
	for dsn, want := range map[string]string{
		strings.Join(base, " ") + " sslmode=disable":                                  "no pg_hba.conf entry",
		strings.Join(base, " ") + " sslmode=verify-full sslrootcert=" + tf.CAFile:     "requires a valid client certificate",
		strings.Join(base, " ") + " sslmode=verify-full sslrootcert=" + tf.ClientCert: "certificate signed by unknown authority",
	} {
		c, err := pgx.Connect(ctx, dsn)
		if err == nil {
			c.Close(ctx)
			t.Errorf("%s: connected", dsn)
		} else if !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", dsn, err, want)
		}
	}

	// etcd: the configured client works; one without a certificate, or
	// without TLS, does not.
	if err := pingEtcd(ctx, st.Etcd.Endpoint, tf); err != nil {
		t.Errorf("etcd with the client certificate: %v", err)
	}
	full, err := tf.clientConfig()
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]*tls.Config{"plain": nil, "no client certificate": {RootCAs: full.RootCAs}} {
		if err := pingWith(t, st.Etcd.Endpoint, tc); err == nil {
			t.Errorf("etcd %s: answered", name)
		}
	}

	rep, err := Status(dir)
	if err != nil || !rep.Running() || !rep.Etcd.Running {
		t.Fatalf("status: %+v, %v", rep, err)
	}
	if rep.State.TLS == nil || rep.State.TLS.ClientCert != tf.ClientCert {
		t.Errorf("testenv.json TLS: %+v", rep.State.TLS)
	}
}

func pgxQueryRow(t *testing.T, dsn, sql string, dest ...any) error {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		return err
	}
	defer conn.Close(t.Context())
	return conn.QueryRow(t.Context(), sql).Scan(dest...)
}

func pingWith(t *testing.T, endpoint string, tc *tls.Config) error {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: time.Second, Logger: zap.NewNop(), TLS: tc})
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	_, err = cli.Get(ctx, "replctl-testenv-ping")
	return err
}

// Certificates from the CA verify for the names the sandbox uses, and an
// expired or wrong-host one does not.
func TestCAIssue(t *testing.T) {
	t.Parallel()
	ca, err := NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	now := time.Now()
	for _, tc := range []struct {
		spec    CertSpec
		host    string
		wantErr string
	}{
		{CertSpec{CommonName: "pg1", Hosts: tlsHosts, Server: true}, "127.0.0.1", ""},
		{CertSpec{CommonName: "pg1", Hosts: tlsHosts, Server: true}, "localhost", ""},
		{CertSpec{CommonName: "pg1", Hosts: []string{"10.0.0.9", "db9.example.com"}, Server: true}, "127.0.0.1", "valid for 10.0.0.9, not 127.0.0.1"},
		{CertSpec{CommonName: "pg1", Hosts: tlsHosts, Server: true, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)}, "127.0.0.1", "expired"},
	} {
		certPEM, keyPEM, err := ca.Issue(tc.spec)
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: tc.host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%v for %s: %v", tc.spec.Hosts, tc.host, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%v for %s: %v, want %q", tc.spec.Hosts, tc.host, err, tc.wantErr)
		}
	}
}

func TestRenderConfigTLS(t *testing.T) {
	t.Parallel()
	tf := &TLSFiles{CAFile: "/d/tls/ca.crt", ClientCert: "/d/tls/client.crt", ClientKey: "/d/tls/client.key"}
	c := &Cluster{TLS: tf}
	nodes := []*Node{{Name: "pg1", Port: 5432, DSN: c.nodeDSN(5432), DataDir: "/d/pg1/data", LogPath: "/d/pg1/server.log"}}
	got := string(renderConfig(configInput{cluster: "demo", dir: "/d", etcd: []string{"127.0.0.1:2379"}, nodes: nodes, in: &install{binDir: "/b"}, tls: tf}))
	for _, want := range []string{
		`dsn: "host=127.0.0.1 port=5432 user=postgres dbname=postgres sslmode=verify-full sslrootcert=/d/tls/ca.crt sslcert=/d/tls/client.crt sslkey=/d/tls/client.key"`,
		"  prefix: /replctl\n  tls:\n    ca_file: \"/d/tls/ca.crt\"\n    cert_file: \"/d/tls/client.crt\"\n    key_file: \"/d/tls/client.key\"\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("config lacks %s:\n%s", want, got)
		}
	}
}

// Half a TLS configuration must never start a plain etcd.
func TestRunEtcdServeTLSFlags(t *testing.T) {
	t.Parallel()
	err := RunEtcdServe(t.Context(), []string{"--dir", t.TempDir(), "--client-port", "1", "--peer-port", "2", "--ca-file", "/ca.crt"})
	if err == nil || !strings.Contains(err.Error(), "go together") {
		t.Errorf("err = %v", err)
	}
}
