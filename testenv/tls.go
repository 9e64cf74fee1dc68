package testenv

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// TLS material of a cluster built with Options.TLS. Everything is made with
// Go's crypto at Up, so that the sandbox needs no openssl; the CA's private
// key lives only in memory (Cluster.TLS.CA) and is never written.
const (
	tlsDirName = "tls"
	// serverCertFile and serverKeyFile sit next to each node's data
	// directory, like its log: pg_basebackup and pg_rewind copy the data
	// directory, and a node must keep serving its own certificate.
	serverCertFile = "server.crt"
	serverKeyFile  = "server.key"
	// tlsValidity is how long the sandbox's certificates are valid: a
	// `testenv up --tls` may stay up for a while.
	tlsValidity = 365 * 24 * time.Hour
)

// Hosts the server certificates are valid for: the sandbox only listens on
// loopback, reached as an address or by name.
var tlsHosts = []string{"127.0.0.1", "localhost"}

// TLSFiles are the files of a TLS cluster (Options.TLS), all under DIR/tls
// but the nodes' own server certificates, which sit in DIR/<node>/. Key
// files have mode 0600 and belong to the OS user that runs PostgreSQL, who
// reads the client key too (replicas, pg_rewind).
type TLSFiles struct {
	// CA issues certificates, e.g. for tests of an expired one; nil when
	// the state was read back from testenv.json.
	CA *CA `json:"-"`
	// CAFile is the CA certificate every server and client trusts.
	CAFile string `json:"ca_file"`
	// ClientCert and ClientKey are the client certificate of the database
	// user postgres (its common name, which pg_hba's cert method matches),
	// used by replctl, the replicas, pg_rewind and for etcd.
	ClientCert string `json:"client_cert"`
	ClientKey  string `json:"client_key"`
	// EtcdCert and EtcdKey are etcd's server certificate and key.
	EtcdCert string `json:"etcd_cert"`
	EtcdKey  string `json:"etcd_key"`
}

// CA is a throwaway certificate authority.
type CA struct {
	// Cert is the CA's certificate; CertPEM the same in PEM.
	Cert    *x509.Certificate
	CertPEM []byte
	key     *ecdsa.PrivateKey
}

// NewCA makes a self-signed CA valid from an hour ago for a year.
func NewCA(commonName string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("testenv: CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"replctl testenv"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(tlsValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("testenv: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key}, nil
}

// CertSpec describes a certificate for CA.Issue.
type CertSpec struct {
	// CommonName is the subject's CN: for a PostgreSQL client certificate,
	// the database user.
	CommonName string
	// Hosts are the subject alternative names, IP addresses or DNS names,
	// that a verify-full client checks.
	Hosts []string
	// Server and Client choose the extended key usages; etcd's server
	// certificate needs both, since etcd dials itself with it.
	Server, Client bool
	// NotBefore and NotAfter bound the validity; zero values mean an hour
	// ago and a year from now. A NotAfter in the past makes an expired
	// certificate.
	NotBefore, NotAfter time.Time
}

// Issue makes a certificate signed by the CA and its new private key, both
// in PEM (the key as PKCS #8, which libpq, the server and Go all read).
func (ca *CA) Issue(spec CertSpec) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("testenv: key for %s: %w", spec.CommonName, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: spec.CommonName, Organization: []string{"replctl testenv"}},
		NotBefore:    spec.NotBefore,
		NotAfter:     spec.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = now.Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = now.Add(tlsValidity)
	}
	if spec.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if spec.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	for _, h := range spec.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("testenv: certificate for %s: %w", spec.CommonName, err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), nil
}

func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("testenv: serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// setupTLS makes the CA, etcd's certificate and the client certificate in
// DIR/tls. Server certificates of the nodes are made with each node.
func (c *Cluster) setupTLS() error {
	ca, err := NewCA("replctl testenv CA")
	if err != nil {
		return err
	}
	dir := filepath.Join(c.Dir, tlsDirName)
	// 0755: the postgres user must reach the CA and the client key.
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	f := &TLSFiles{
		CA: ca, CAFile: filepath.Join(dir, "ca.crt"),
		ClientCert: filepath.Join(dir, "client.crt"), ClientKey: filepath.Join(dir, "client.key"),
		EtcdCert: filepath.Join(dir, "etcd.crt"), EtcdKey: filepath.Join(dir, "etcd.key"),
	}
	if err := os.WriteFile(f.CAFile, ca.CertPEM, 0o644); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	cert, key, err := ca.Issue(CertSpec{CommonName: pgUser, Client: true})
	if err != nil {
		return err
	}
	// The client key is read by replctl and by the postgres user (a
	// replica's WAL receiver, pg_rewind): it belongs to the latter, with
	// mode 0600, since libpq refuses a key of its own user that others
	// may read (replctl, as root or as that same user, can read it too).
	if err := c.writeCertPair(f.ClientCert, f.ClientKey, cert, key, true); err != nil {
		return err
	}
	cert, key, err = ca.Issue(CertSpec{CommonName: "etcd", Hosts: tlsHosts, Server: true, Client: true})
	if err != nil {
		return err
	}
	// etcd runs as this process's user, in it or in a child.
	if err := c.writeCertPair(f.EtcdCert, f.EtcdKey, cert, key, false); err != nil {
		return err
	}
	c.TLS = f
	return nil
}

// writeCertPair writes a certificate (0644) and its key (0600, owned by
// the postgres user when forPG).
func (c *Cluster) writeCertPair(certPath, keyPath string, cert, key []byte, forPG bool) error {
	if err := os.WriteFile(certPath, cert, 0o644); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	if err := os.WriteFile(keyPath, key, 0o600); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	if forPG {
		if err := c.in.own(keyPath, 0o600); err != nil {
			return fmt.Errorf("testenv: %w", err)
		}
	} else if err := os.Chmod(keyPath, 0o600); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	return nil
}

// serverCertPaths are where a node's server certificate and key live.
func serverCertPaths(n *Node) (cert, key string) {
	d := filepath.Dir(n.DataDir)
	return filepath.Join(d, serverCertFile), filepath.Join(d, serverKeyFile)
}

// writeServerCert installs a node's server certificate: a fresh one for
// 127.0.0.1 and localhost when cert is nil.
func (c *Cluster) writeServerCert(n *Node, cert, key []byte) error {
	if cert == nil {
		var err error
		if cert, key, err = c.TLS.CA.Issue(CertSpec{CommonName: n.Name, Hosts: tlsHosts, Server: true}); err != nil {
			return err
		}
	}
	certPath, keyPath := serverCertPaths(n)
	// The server refuses a key that others may read, and must own it.
	if err := c.in.writeFile(certPath, cert); err != nil {
		return fmt.Errorf("testenv: %s: %w", n.Name, err)
	}
	if err := c.in.writeFile(keyPath, key); err != nil {
		return fmt.Errorf("testenv: %s: %w", n.Name, err)
	}
	return nil
}

// conninfo is what every libpq connection string of a TLS cluster ends
// with: verify the server against the CA, by name, and present the client
// certificate. Empty without TLS.
func (f *TLSFiles) conninfo() string {
	if f == nil {
		return ""
	}
	return " sslmode=verify-full sslrootcert=" + kvValue(f.CAFile) +
		" sslcert=" + kvValue(f.ClientCert) + " sslkey=" + kvValue(f.ClientKey)
}

// clientConfig is the Go TLS configuration of a client of the cluster's
// etcd: the CA and the client certificate.
func (f *TLSFiles) clientConfig() (*tls.Config, error) {
	if f == nil {
		return nil, nil
	}
	ca, err := os.ReadFile(f.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("%s holds no certificate", f.CAFile)
	}
	cert, err := tls.LoadX509KeyPair(f.ClientCert, f.ClientKey)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// kvValue quotes a libpq keyword/value connection string value when needed.
func kvValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " '\\\t\n") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// errPlainText is what probeTLS reports for a server that declines TLS.
var errPlainText = errors.New("the server declines TLS")

// probeTLS asks the server on port for TLS the way libpq does (an
// SSLRequest) and returns the certificate it presents, without verifying
// anything: it is how the tests see what a server serves after a reload.
func probeTLS(ctx context.Context, port int) (*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	// Length 8, then the SSLRequest code 1234.5679.
	if _, err := conn.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}); err != nil {
		return nil, err
	}
	var answer [1]byte
	if _, err := io.ReadFull(conn, answer[:]); err != nil {
		return nil, err
	}
	switch answer[0] {
	case 'N':
		return nil, errPlainText
	case 'S':
	default:
		return nil, fmt.Errorf("unexpected answer %q to an SSLRequest", answer[0])
	}
	// Nothing is trusted here: the certificate is only looked at.
	tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true})
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return nil, errors.New("no certificate presented")
	}
	return certs[0], nil
}

// SetServerCert replaces a node's server certificate and key (PEM) and
// reloads the node, which re-reads them: tests give it an expired or a
// wrong-host certificate to see what clients say. Nil cert installs a new
// valid one from the cluster's CA. It returns once the node serves the new
// certificate. The cluster must have been built with Options.TLS.
func (c *Cluster) SetServerCert(ctx context.Context, name string, cert, key []byte) error {
	n, err := c.tlsNode(name)
	if err != nil {
		return err
	}
	if err := c.writeServerCert(n, cert, key); err != nil {
		return err
	}
	certPath, _ := serverCertPaths(n)
	b, err := os.ReadFile(certPath)
	if err != nil {
		return err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return fmt.Errorf("testenv: %s: no PEM certificate", name)
	}
	if err := c.in.run(ctx, "pg_ctl", "-D", n.DataDir, "reload"); err != nil {
		return fmt.Errorf("testenv: reload %s: %w", name, err)
	}
	return c.awaitServed(ctx, n, func(got *x509.Certificate, err error) bool {
		return err == nil && bytes.Equal(got.Raw, blk.Bytes)
	}, "serve its new certificate")
}

// SetPlainText makes a node of a TLS cluster serve plain text only
// (ssl = off, and pg_hba host rules in place of the hostssl ones), as a
// server configured without TLS would, or (plain false) TLS again. It
// reloads the node and returns once the change is in effect. Tests use it
// to show that a client demanding TLS refuses such a server rather than
// falling back to plain text.
func (c *Cluster) SetPlainText(ctx context.Context, name string, plain bool) error {
	n, err := c.tlsNode(name)
	if err != nil {
		return err
	}
	hba, drop, set := hbaTLSConf, []string{"ssl"}, []setting(nil)
	if plain {
		hba, drop, set = hbaConf, nil, []setting{{"ssl", "off"}}
	}
	if err := c.in.writeFile(filepath.Join(n.DataDir, "pg_hba.conf"), []byte(hba)); err != nil {
		return fmt.Errorf("testenv: %s: %w", name, err)
	}
	if err := c.in.setAutoConf(n.DataDir, set, drop...); err != nil {
		return fmt.Errorf("testenv: %s: %w", name, err)
	}
	if err := c.in.run(ctx, "pg_ctl", "-D", n.DataDir, "reload"); err != nil {
		return fmt.Errorf("testenv: reload %s: %w", name, err)
	}
	what := "serve TLS again"
	if plain {
		what = "decline TLS"
	}
	return c.awaitServed(ctx, n, func(_ *x509.Certificate, err error) bool {
		if plain {
			return errors.Is(err, errPlainText)
		}
		return err == nil
	}, what)
}

func (c *Cluster) tlsNode(name string) (*Node, error) {
	if c.TLS == nil {
		return nil, errors.New("testenv: the cluster was built without Options.TLS")
	}
	return c.node(name)
}

// awaitServed probes the node until ok holds: a reload is asynchronous.
func (c *Cluster) awaitServed(ctx context.Context, n *Node, ok func(*x509.Certificate, error) bool, what string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		got, err := probeTLS(ctx, n.Port)
		if ok(got, err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testenv: %s did not %s after a reload (last probe: %v)\n%s:\n%s",
				n.Name, what, err, n.LogPath, fileTail(n.LogPath, 10))
		case <-time.After(20 * time.Millisecond):
		}
	}
}
