package cmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/replctl/replctl/runbooks"
	"github.com/replctl/replctl/testenv"
)

// tlsSecret is a key password written into every DSN of the TLS test's
// configuration: the keys are not encrypted, so the drivers ignore it, and
// it must show up nowhere (output, primary_conninfo, node commands).
const tlsSecret = "s3cr3t-key-pw"

// withSecret adds tlsSecret to every verify-full DSN of s.
func withSecret(s string) string {
	return strings.ReplaceAll(s, "sslmode=verify-full", "sslmode=verify-full sslpassword="+tlsSecret)
}

// TestIntegrationTLS runs the operator's day over TLS on one cluster built
// with testenv.Options{TLS: true} (verify-full DSNs, client certificates,
// hostssl-only PostgreSQL, etcd with client-certificate auth): status, the
// ways a TLS setup goes wrong, a planned switchover, an emergency failover
// and a drill, checking that replication stays on TLS throughout.
func TestIntegrationTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	ctx := t.Context()
	c := testenv.Start(t, testenv.Options{Replicas: 2, TLS: true})
	// Every DSN also carries a key password, which must never be printed.
	cfgPath := emConfig(t, c, withSecret, "")

	d := statusJSON(t, cfgPath)
	if d.Primary == nil || *d.Primary != "pg1" || d.Etcd != "ok" || len(d.Warnings) != 0 {
		t.Fatalf("status over TLS: %+v", d)
	}
	for _, n := range d.Nodes {
		if !n.Reachable {
			t.Fatalf("%s unreachable over TLS: %+v", n.Name, d)
		}
	}
	assertReplicationTLS(t, c, "pg1", 2)

	t.Run("errors", func(t *testing.T) { tlsErrorCases(t, c, cfgPath) })
	if t.Failed() {
		t.FailNow()
	}

	// A planned switchover: stop fence, then pg1 rejoins through rejoin.sh,
	// whose pg_rewind reaches pg2 over TLS.
	// Its plan shows the primary_conninfo the replicas will get: verified
	// TLS, no key password.
	tl := timelineOf(t, c, "pg1")
	dry := emExpect(t, 0, cfgPath, "promote", "pg2", "--dry-run")
	noSecret(t, "promote --dry-run", dry.stdout+dry.stderr)
	if !strings.Contains(dry.stdout, "sslmode=verify-full sslrootcert="+c.TLS.CAFile) {
		t.Errorf("the plan's primary_conninfo does not verify the new primary:\n%s", dry)
	}
	switchover(t, c, cfgPath, "pg1", "pg2", nil)
	awaitTopology(t, c, "pg2", tl+1, "pg1", "pg3")
	assertConninfoTLS(t, c, "pg1", "pg3")
	assertReplicationTLS(t, c, "pg2", 2)

	// An emergency failover from a crashed pg2, then pg2 rejoins.
	emCrash(t, c, "pg2")
	r := emExpect(t, 0, cfgPath, "promote", "--emergency", "--yes")
	noSecret(t, "promote --emergency", r.stdout+r.stderr)
	chosen := ""
	for _, n := range []string{"pg1", "pg3"} {
		if strings.Contains(r.stdout, "Failover done: "+n+" is the primary.") {
			chosen = n
		}
	}
	if chosen == "" {
		t.Fatalf("no new primary named:\n%s", r)
	}
	other := emOther(chosen, "pg1", "pg3")
	awaitTopology(t, c, chosen, tl+2, other)
	r = emExpect(t, 0, cfgPath, "rejoin", "pg2", "--yes")
	noSecret(t, "rejoin", r.stdout+r.stderr)
	awaitTopology(t, c, chosen, tl+2, other, "pg2")
	assertConninfoTLS(t, c, other, "pg2")
	assertReplicationTLS(t, c, chosen, 2)

	// A drill: switch over and back with the write probe, which connects
	// through the same verify-full settings.
	rj := filepath.Join(t.TempDir(), "drill.json")
	out, errOut, code := runIO(t, "--config", cfgPath, "runbook", "run", ex2("switchover-and-back"), "--yes", "--report-json", rj)
	if code != 0 {
		t.Fatalf("drill: exit %d\n%s\n%s", code, out, errOut)
	}
	noSecret(t, "runbook run", out+errOut)
	if !strings.Contains(out, "Drill switchover-and-back PASSED") {
		t.Errorf("drill output:\n%s\n%s", out, errOut)
	}
	if rep := readReport(t, rj); rep.Outcome != runbooks.Passed || rep.FinalPrimary != chosen {
		t.Errorf("drill report: %+v", rep)
	}
	b, err := os.ReadFile(rj)
	if err != nil {
		t.Fatal(err)
	}
	noSecret(t, "drill report", string(b))
	assertReplicationTLS(t, c, chosen, 2)
	if err := c.WaitStreaming(ctx); err != nil {
		t.Error(err)
	}
}

// TestTestenvCommandTLS runs `replctl testenv up --tls` as a user would,
// with the real binary (etcd then runs in its detached etcd-serve child,
// with the TLS flags), and `replctl status` against the sandbox.
func TestTestenvCommandTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	bin := buildReplctl(t)
	base, err := os.MkdirTemp("", "replctl-cli-tls-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "sandbox")
	run := func(args ...string) (string, int) {
		t.Helper()
		// Not t.Context(): the cleanup's "down" runs after it is cancelled.
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "REPLCTL_CONFIG="+filepath.Join(dir, "replctl.yaml"))
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("%v: %v", args, err)
		}
		return string(out), cmd.ProcessState.ExitCode()
	}
	t.Cleanup(func() {
		if out, code := run("testenv", "down", "--dir", dir); code != 0 {
			t.Errorf("testenv down: exit %d\n%s", code, out)
		}
		os.RemoveAll(base)
	})

	out, code := run("testenv", "up", "--tls", "--replicas", "1", "--dir", dir)
	ca := filepath.Join(dir, "tls", "ca.crt")
	if code != 0 || !strings.Contains(out, "TLS: CA "+ca) {
		t.Fatalf("testenv up --tls: exit %d\n%s", code, out)
	}
	cfg, err := os.ReadFile(filepath.Join(dir, "replctl.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(cfg), "sslmode=verify-full sslrootcert="+ca) != 2 || !strings.Contains(string(cfg), "  tls:\n    ca_file: \""+ca+"\"") {
		t.Errorf("replctl.yaml does not verify every node and etcd:\n%s", cfg)
	}
	out, code = run("status", "-o", "json")
	var st statusDoc
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 {
		t.Fatalf("status: exit %d, %v\n%s", code, err, out)
	}
	if st.Primary == nil || *st.Primary != "pg1" || st.Etcd != "ok" || len(st.Nodes) != 2 || !st.Nodes[0].Reachable || st.Nodes[1].State != "streaming" {
		t.Errorf("status over TLS: %s", out)
	}
}

// tlsErrorCases: each way a TLS setup goes wrong gives one clear error that
// names the node or etcd, while the other nodes answer; never a stack
// trace, and never a connection that quietly went plain.
func tlsErrorCases(t *testing.T, c *testenv.Cluster, cfgPath string) {
	ctx := t.Context()
	base, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	pg3 := c.Node("pg3")
	variant := func(t *testing.T, edit func(string) string) string {
		p := filepath.Join(t.TempDir(), "replctl.yaml")
		if err := os.WriteFile(p, []byte(edit(string(base))), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// withDSN gives pg3 another DSN.
	withDSN := func(t *testing.T, dsn string) string {
		cur := withSecret(pg3.DSN)
		if !strings.Contains(string(base), cur) {
			t.Fatalf("pg3's DSN %s is not in the configuration", cur)
		}
		return variant(t, func(s string) string { return strings.Replace(s, cur, dsn, 1) })
	}
	plainBase := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres", pg3.Port)

	otherCA, err := testenv.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	otherCAFile := filepath.Join(t.TempDir(), "other-ca.crt")
	if err := os.WriteFile(otherCAFile, otherCA.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("wrong CA", func(t *testing.T) {
		cfg := withDSN(t, strings.Replace(withSecret(pg3.DSN), "sslrootcert="+c.TLS.CAFile, "sslrootcert="+otherCAFile, 1))
		expectNodeError(t, cfg, "pg3", "certificate signed by unknown authority")
	})
	t.Run("no client certificate", func(t *testing.T) {
		cfg := withDSN(t, plainBase+" sslmode=verify-full sslrootcert="+c.TLS.CAFile)
		expectNodeError(t, cfg, "pg3", "connection requires a valid client certificate")
	})
	t.Run("expired certificate", func(t *testing.T) {
		now := time.Now()
		cert, key, err := c.TLS.CA.Issue(testenv.CertSpec{CommonName: "pg3", Hosts: []string{"127.0.0.1", "localhost"}, Server: true,
			NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		serveCert(t, c, "pg3", cert, key)
		expectNodeError(t, cfgPath, "pg3", "certificate has expired")
	})
	t.Run("wrong host", func(t *testing.T) {
		cert, key, err := c.TLS.CA.Issue(testenv.CertSpec{CommonName: "pg3", Hosts: []string{"10.0.0.9", "db9.example.com"}, Server: true})
		if err != nil {
			t.Fatal(err)
		}
		serveCert(t, c, "pg3", cert, key)
		// The sandbox names nodes by address, or by localhost where libpq
		// (before 15) cannot match an address in a certificate.
		host := "127.0.0.1"
		if strings.Contains(c.Node("pg3").DSN, "host=localhost") {
			host = "localhost"
		}
		expectNodeError(t, cfgPath, "pg3", "not "+host)
		expectNodeError(t, cfgPath, "pg3", "certificate is valid for")
	})
	t.Run("sslmode=require against a plain server", func(t *testing.T) {
		if err := c.SetPlainText(ctx, "pg3", true); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := c.SetPlainText(context.WithoutCancel(ctx), "pg3", false); err != nil {
				t.Error(err)
			}
		})
		// The server does serve plain text: a client that fell back to it
		// would have got in.
		if d := statusJSON(t, withDSN(t, plainBase+" sslmode=disable")); !d.Nodes[d.node(t, "pg3")].Reachable {
			t.Fatalf("pg3 does not serve plain text: %+v", d.Nodes)
		}
		expectNodeError(t, withDSN(t, plainBase+" sslmode=require"), "pg3", "server refused TLS connection")
		expectNodeError(t, cfgPath, "pg3", "server refused TLS connection")
	})

	// etcd: status reports it and goes on; a command that needs it stops
	// with one line naming it. The dial timeout keeps each case short.
	etcdVariant := func(t *testing.T, edit func(string) string) string {
		return variant(t, func(s string) string {
			s = strings.Replace(s, "  prefix: /replctl\n", "  prefix: /replctl\n  dial_timeout: 1s\n", 1)
			return edit(s)
		})
	}
	t.Run("etcd wrong CA", func(t *testing.T) {
		cfg := etcdVariant(t, func(s string) string {
			return strings.Replace(s, "ca_file: \""+c.TLS.CAFile+"\"", "ca_file: \""+otherCAFile+"\"", 1)
		})
		expectEtcdError(t, cfg, "certificate signed by unknown authority")
	})
	t.Run("etcd without client certificate", func(t *testing.T) {
		cfg := etcdVariant(t, func(s string) string {
			s = strings.Replace(s, "    cert_file: \""+c.TLS.ClientCert+"\"\n", "", 1)
			return strings.Replace(s, "    key_file: \""+c.TLS.ClientKey+"\"\n", "", 1)
		})
		expectEtcdError(t, cfg, "certificate required")
	})

	// Restored: the cluster is whole again for what follows.
	if d := statusJSON(t, cfgPath); len(d.Warnings) != 0 || d.Etcd != "ok" {
		t.Fatalf("after the error cases: %+v", d)
	}
}

// serveCert makes the node serve cert until the test ends, then a valid
// certificate again.
func serveCert(t *testing.T, c *testenv.Cluster, name string, cert, key []byte) {
	t.Helper()
	ctx := t.Context()
	if err := c.SetServerCert(ctx, name, cert, key); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// t.Context() is done by the time cleanups run.
		if err := c.SetServerCert(context.WithoutCancel(ctx), name, nil, nil); err != nil {
			t.Error(err)
		}
	})
}

// expectNodeError runs status (table and JSON) and wants node reported
// unreachable for want, in one warning line naming it, with every other
// node reachable.
func expectNodeError(t *testing.T, cfgPath, node, want string) {
	t.Helper()
	r := emCLI(t.Context(), cfgPath, "status")
	if r.code != 0 {
		t.Fatalf("status: %s", r)
	}
	var lines []string
	for _, l := range strings.Split(r.stdout+r.stderr, "\n") {
		if strings.Contains(l, want) {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "unreachable: "+node+" is unreachable: connect to "+node+":") {
		t.Errorf("want one warning naming %s for %q, got %q:\n%s", node, want, lines, r)
	}
	noStackTrace(t, r.stdout+r.stderr)
	noSecret(t, "status", r.stdout+r.stderr)

	j := emCLI(t.Context(), cfgPath, "status", "-o", "json")
	var d statusDoc
	if err := json.Unmarshal([]byte(j.stdout), &d); err != nil {
		t.Fatalf("%v: %s", err, j)
	}
	for _, n := range d.Nodes {
		if n.Name == node && n.Reachable {
			t.Errorf("%s reachable: the client got in some other way", node)
		}
		if n.Name != node && !n.Reachable {
			t.Errorf("%s unreachable too: %s", n.Name, j.stdout)
		}
	}
	t.Logf("%s", lines)
}

// expectEtcdError wants status to report etcd unavailable for want and go
// on, and a command that needs etcd to fail with one line naming it.
func expectEtcdError(t *testing.T, cfgPath, want string) {
	t.Helper()
	j := emCLI(t.Context(), cfgPath, "status", "-o", "json")
	var d statusDoc
	if err := json.Unmarshal([]byte(j.stdout), &d); err != nil || j.code != 0 {
		t.Fatalf("%v: %s", err, j)
	}
	if !strings.HasPrefix(d.Etcd, "unavailable: etcd") || !strings.Contains(d.Etcd, want) || d.Primary == nil {
		t.Errorf("status etcd = %q, want unavailable for %q, and the topology still read", d.Etcd, want)
	}
	r := emCLI(t.Context(), cfgPath, "lock", "status")
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if r.code != ExitFailed || r.stdout != "" || len(lines) != 1 || !strings.HasPrefix(lines[0], "error: etcd") || !strings.Contains(lines[0], want) {
		t.Errorf("lock status: want exit 1 and one error line about etcd and %q:\n%s", want, r)
	}
	noStackTrace(t, j.stdout+j.stderr+r.stdout+r.stderr)
	t.Logf("%s", lines)
}

func noStackTrace(t *testing.T, out string) {
	t.Helper()
	for _, s := range []string{"goroutine ", "panic:", ".go:"} {
		if strings.Contains(out, s) {
			t.Errorf("output has %q:\n%s", s, out)
		}
	}
}

func noSecret(t *testing.T, what, out string) {
	t.Helper()
	if strings.Contains(out, tlsSecret) {
		t.Errorf("%s shows the key password:\n%s", what, out)
	}
}

// assertReplicationTLS checks that primary has want walsenders, every one
// over TLS.
func assertReplicationTLS(t *testing.T, c *testenv.Cluster, primary string, want int) {
	t.Helper()
	var all, ssl int
	err := c.QueryRow(t.Context(), primary, `SELECT count(*), count(*) FILTER (WHERE s.ssl)
		FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)`).Scan(&all, &ssl)
	if err != nil || all != want || ssl != want {
		t.Errorf("%s: %d of %d walsenders over TLS, want %d (%v)", primary, ssl, all, want, err)
	}
}

// assertConninfoTLS checks that the replicas' primary_conninfo, as replctl
// wrote it, verifies the upstream with the CA and presents the client
// certificate, and holds no secret.
func assertConninfoTLS(t *testing.T, c *testenv.Cluster, replicas ...string) {
	t.Helper()
	for _, r := range replicas {
		var ci string
		if err := c.QueryRow(t.Context(), r, "SELECT current_setting('primary_conninfo')").Scan(&ci); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"sslmode=verify-full", "sslrootcert=" + c.TLS.CAFile, "sslcert=" + c.TLS.ClientCert, "sslkey=" + c.TLS.ClientKey} {
			if !strings.Contains(ci, want) {
				t.Errorf("%s: primary_conninfo %q lacks %s", r, ci, want)
			}
		}
		noSecret(t, r+"'s primary_conninfo", ci)
	}
}
