package pgctl

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/replctl/replctl/config"

	"github.com/replctl/replctl/topology"
)

// The SQL fence's final position is the end of the last record: an insert
// position just past a page header (the last record ended on a page
// boundary) is never flushed, nor replayed by any standby.
func TestRecordEnd(t *testing.T) {
	t.Parallel()
	const bs, seg = 8192, 16 << 20
	for _, c := range []struct{ in, want topology.LSN }{
		{0x5039FA8, 0x5039FA8},
		{0x503A018, 0x503A000},       // short header after a page boundary
		{0x6000028, 0x6000000},       // long header at a segment start
		{0x503A000 + 100, 0x503A064}, // in a page
	} {
		if got := recordEnd(c.in, bs, seg); got != c.want {
			t.Errorf("recordEnd(%s) = %s, want %s", c.in, got, c.want)
		}
	}
}

// A replica reaches the primary secured as replctl does, and no secret of
// the DSN reaches primary_conninfo.
func TestReplicaConninfoTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := filepath.Join(dir, "my ca.crt")
	if err := os.WriteFile(ca, testCA(t), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ dsn, want string }{
		{"host=10.0.0.1 port=5433 user=replctl password=hunter22 dbname=postgres",
			"host=10.0.0.1 port=5433 user=replctl application_name=pg2"},
		{"host=db1 port=5432 user=replctl sslmode=verify-full sslrootcert='" + ca + "' sslpassword=hunter22 sslcrl=/etc/crl.pem",
			"host=db1 port=5432 user=replctl sslmode=verify-full sslrootcert='" + ca + "' sslcrl=/etc/crl.pem application_name=pg2"},
		{"postgres://replctl:hunter22@db1:5432/postgres?sslmode=require",
			"host=db1 port=5432 user=replctl sslmode=require application_name=pg2"},
	} {
		got, err := ReplicaConninfo(config.Node{Name: "pg1", DSN: tc.dsn}, "pg2")
		if err != nil {
			t.Fatalf("%s: %v", tc.dsn, err)
		}
		if got != tc.want {
			t.Errorf("ReplicaConninfo(%q)\n got %s\nwant %s", tc.dsn, got, tc.want)
		}
		if strings.Contains(got, "hunter22") {
			t.Errorf("a secret in %s", got)
		}
		// libpq must read it back as written.
		if _, err := pgconn.ParseConfig(got); err != nil {
			t.Errorf("%s: %v", got, err)
		}
	}
}

// testCA returns a self-signed certificate in PEM, which
// pgconn.ParseConfig accepts as sslrootcert.
func testCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// Only a server's "cannot connect now" (57P03: shutting down, starting
// up) counts as a server still there.
func TestShuttingDown(t *testing.T) {
	t.Parallel()
	now := &pgconn.PgError{Code: "57P03", Message: "the database system is shutting down"}
	if !ShuttingDown(fmt.Errorf("pg1: %w", now)) {
		t.Error("57P03: want shutting down")
	}
	for _, err := range []error{nil, ErrConnect, &pgconn.PgError{Code: "57P01"}} {
		if ShuttingDown(err) {
			t.Errorf("%v: want not shutting down", err)
		}
	}
}

// A condition's Fatal error ends the wait at once, unmarked.
func TestPollUntilFatal(t *testing.T) {
	t.Parallel()
	calls := 0
	cause := errors.New("cannot get better")
	err := PollUntil(t.Context(), nil, time.Millisecond, func(context.Context) (bool, error) {
		calls++
		return false, Fatal(cause)
	}, "timed out")
	if err != cause || calls != 1 {
		t.Errorf("err %v after %d calls, want %v after 1", err, calls, cause)
	}
}

// Promote repeats the promote request when the node's startup process
// dozes (at most every promoteStall), and otherwise only every
// promoteBlind.
func TestPromoteNudge(t *testing.T) {
	never := 24 * time.Hour // not repeated yet
	for _, tc := range []struct {
		dozing            bool
		sinceSent, sinceN time.Duration
		want              bool
	}{
		{true, time.Millisecond, never, true},
		{true, 30 * time.Millisecond, 5 * time.Millisecond, false},
		{true, 30 * time.Millisecond, promoteStall, true},
		{false, time.Millisecond, never, false},
		{false, 60 * time.Millisecond, never, false},
		{false, promoteBlind, never, true},
		{false, 3 * promoteBlind, promoteBlind / 2, false},
		{false, 3 * promoteBlind, promoteBlind, true},
	} {
		if got := promoteNudge(tc.dozing, tc.sinceSent, tc.sinceN); got != tc.want {
			t.Errorf("promoteNudge(dozing %v, sent %s ago, repeated %s ago) = %v, want %v", tc.dozing, tc.sinceSent, tc.sinceN, got, tc.want)
		}
	}
}
