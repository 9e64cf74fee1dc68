package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serverOnlyBinDir makes a bin directory with the default server's initdb,
// pg_ctl, postgres and pg_controldata and nothing else, as the npm builds
// of pgdist.go are: no pg_basebackup, no pg_rewind, no psql. PostgreSQL
// resolves the symlinks to find its share and lib directories.
func serverOnlyBinDir(t *testing.T) string {
	t.Helper()
	in, err := findInstall(t.Context())
	if err != nil {
		t.Skip(err)
	}
	dir := filepath.Join(t.TempDir(), "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"initdb", "pg_ctl", "postgres", "pg_controldata"} {
		if err := os.Symlink(in.bin(p), filepath.Join(dir, p)); err != nil {
			t.Fatal(err)
		}
	}
	// t.TempDir's parents are 0700: the postgres user (as root) must reach it.
	for p := dir; p != os.TempDir() && p != filepath.Dir(p); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestCloneWithoutClientTools builds a TLS cluster, a cascade and a rejoin
// from server binaries alone: replicas are cloned with the low-level
// backup API (from the primary and from a standby), and the rejoin
// command re-clones through this test binary (clone.go's init).
func TestCloneWithoutClientTools(t *testing.T) {
	integration(t)
	ctx := t.Context()
	bin := serverOnlyBinDir(t)
	c := Start(t, Options{PGBinDir: bin, TLS: true})
	if c.in.hasTool("pg_basebackup") || c.in.hasTool("pg_rewind") {
		t.Fatalf("%s has client tools", bin)
	}
	if err := c.Write(ctx, 10); err != nil {
		t.Fatal(err)
	}
	// A cascading replica: the backup runs on a standby.
	if _, err := c.AddReplica(ctx, "pg4", "pg2"); err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"pg2", "pg3", "pg4"} {
		eventually(t, 10*time.Second, func() error {
			var rows int
			err := c.QueryRow(ctx, n, "SELECT count(*) FROM "+WriteTable).Scan(&rows)
			if err == nil && rows != 15 {
				err = fmt.Errorf("%s has %d rows, want 15", n, rows)
			}
			return err
		})
	}

	// pg2 takes over; pg1 diverges and crashes: the re-clone makes it a
	// standby of pg2 all the same.
	if err := c.Exec(ctx, "pg2", "SELECT pg_promote()"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "pg1", "INSERT INTO "+WriteTable+" (payload) VALUES ('lost')"); err != nil {
		t.Fatal(err)
	}
	if err := c.KillNode(ctx, "pg1"); err != nil {
		t.Fatal(err)
	}
	if err := c.StopNode(ctx, "pg3"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "pg2", "INSERT INTO "+WriteTable+" (payload) VALUES ('after failover')"); err != nil {
		t.Fatal(err)
	}
	conninfo := c.conninfo(c.Node("pg2").Port)
	for _, name := range []string{"pg1", "pg3"} {
		rejoin := c.Commands(c.Node(name)).Rejoin
		if !strings.Contains(rejoin, "testenv clone") {
			t.Fatalf("rejoin command without pg_rewind: %s", rejoin)
		}
		cmd := exec.CommandContext(ctx, "sh", "-c", rejoin)
		cmd.Env = append(os.Environ(), "REPLCTL_NODE="+name, "REPLCTL_PRIMARY_CONNINFO="+conninfo, "REPLCTL_PRIMARY_SLOT="+name)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("rejoin %s: %v\n%s", name, err, out)
		}
		if !strings.Contains(string(out), "re-cloning "+name) {
			t.Errorf("rejoin %s does not say it re-clones:\n%s", name, out)
		}
		t.Logf("rejoin %s:\n%s", name, out)
	}
	if err := c.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}
	if p, err := c.Primary(ctx); err != nil || p.Name != "pg2" {
		t.Fatalf("primary %v, %v", p, err)
	}
	eventually(t, 10*time.Second, func() error {
		var lost, after int
		err := c.QueryRow(ctx, "pg1", "SELECT count(*) FILTER (WHERE payload = 'lost'), count(*) FILTER (WHERE payload = 'after failover') FROM "+WriteTable).Scan(&lost, &after)
		if err == nil && (lost != 0 || after != 1) {
			err = fmt.Errorf("pg1 has %d diverged and %d new rows, want 0 and 1", lost, after)
		}
		return err
	})
	var port int
	var slot string
	if err := c.QueryRow(ctx, "pg1", "SELECT current_setting('port')::int, current_setting('primary_slot_name')").Scan(&port, &slot); err != nil ||
		port != c.Node("pg1").Port || slot != "pg1" {
		t.Errorf("pg1 runs on port %d with slot %q (%v), want %d and pg1", port, slot, err, c.Node("pg1").Port)
	}
}

// TestCopyDataDirSkips checks the files a backup copy leaves out.
func TestCopyDataDirSkips(t *testing.T) {
	t.Parallel()
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "copy")
	files := map[string]string{
		"PG_VERSION": "keep", "postgresql.auto.conf": "keep", "base/1/1259": "keep", "global/pg_control": "keep",
		"postmaster.pid": "", "postmaster.opts": "", "backup_label": "", "current_logfiles": "", "standby.signal": "",
		"pg_wal/000000010000000000000001": "", "pg_wal/archive_status/x.done": "", "pg_replslot/pg2/state": "",
		"pg_stat_tmp/x": "", "pg_subtrans/0000": "", "pg_notify/0000": "", "base/pgsql_tmp/pgsql_tmp1.0": "",
		"global/pg_internal.init": "", "base/1/pg_internal.init": "", "pg_dynshmem/x": "", "pg_serial/x": "", "pg_snapshots/x": "",
	}
	for name := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(name), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	in := &install{} // the current user: no chown
	if err := os.Mkdir(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := in.copyDataDir(t.Context(), src, dst+"/"); err == nil || !strings.Contains(err.Error(), "exist") {
		// The destination root must not exist: like pg_basebackup -D.
		t.Fatalf("copy into an existing directory: %v", err)
	}
	os.Remove(dst)
	if err := in.copyDataDir(t.Context(), src, dst); err != nil {
		t.Fatal(err)
	}
	for name, want := range files {
		_, err := os.Stat(filepath.Join(dst, name))
		if got := err == nil; got != (want == "keep") {
			t.Errorf("%s copied = %v, want %v", name, got, want == "keep")
		}
	}
	for _, d := range []string{"pg_wal", "pg_wal/archive_status", "pg_replslot", "pg_stat_tmp", "pg_subtrans", "pg_notify", "base/pgsql_tmp"} {
		fi, err := os.Stat(filepath.Join(dst, d))
		want := d != "base/pgsql_tmp"
		if got := err == nil && fi.IsDir(); got != want {
			t.Errorf("directory %s made = %v, want %v", d, got, want)
		}
	}
}
