package pgctl_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/testenv"
)

// A standby whose primary has gone sleeps out wal_retrieve_retry_interval
// between attempts to reach it. Promote's poll must see that doze in the
// startup process's wait event: it repeats the promote request only then
// (or rarely), and a promote request that falls into the doze waits it out
// otherwise.
func TestIntegrationPromotePollSeesTheDoze(t *testing.T) {
	c, _ := watchCluster(t)
	var rec, dozing, again bool
	poll := func() error {
		// Neither when dozing nor otherwise: look, never nudge.
		return c.QueryRow(t.Context(), "pg2", pgctl.PromotePollSQL, false, false).Scan(&rec, &dozing, &again)
	}
	if err := poll(); err != nil {
		t.Fatal(err)
	}
	if !rec || dozing || again {
		t.Fatalf("pg2 streaming: in recovery %v, dozing %v, nudged %v; want true, false, false", rec, dozing, again)
	}
	if err := c.StopNode(t.Context(), "pg1"); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() (bool, string) {
		if err := poll(); err != nil {
			return false, err.Error()
		}
		return rec && dozing && !again, fmt.Sprintf("pg2 with pg1 stopped: in recovery %v, dozing %v, nudged %v; want true, true, false", rec, dozing, again)
	})
}

// The doze that a promote request itself causes: its stream failed a
// moment ago, the standby's startup process has asked for a new WAL
// receiver and waits for it, and the promote request that wakes it there,
// before the postmaster has started that receiver, counts as one more
// failure: it sleeps out wal_retrieve_retry_interval (10 minutes here)
// before it promotes, and the request's wakeup is spent. Under load that
// window is hit about one switchover in three; here pg2's postmaster is
// stopped (SIGSTOP) to hold it open, and the test relays Promote's first
// request to the startup process as the postmaster would. Promote must
// then wake it, with nothing but the promote request: a setting the
// operator left unreloaded on the node stays unreloaded (a reload's SIGHUP
// would wake it too, and did until this test).
func TestIntegrationPromoteWakesTheDoze(t *testing.T) {
	c, pg := watchCluster(t)
	ctx := t.Context()
	for _, q := range []string{
		"ALTER SYSTEM SET wal_retrieve_retry_interval = '10min'",
		"SELECT pg_reload_conf()",
	} {
		if err := c.Exec(ctx, "pg2", q); err != nil {
			t.Fatal(err)
		}
	}
	// With the postmaster stopped no connection can be opened: Promote
	// and the test use the ones they hold.
	look, err := pgx.Connect(ctx, c.Node("pg2").DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer look.Close(context.WithoutCancel(ctx))
	eventually(t, func() (bool, string) {
		var v string
		err := look.QueryRow(ctx, "SHOW wal_retrieve_retry_interval").Scan(&v)
		return err == nil && v == "10min", fmt.Sprintf("pg2's wal_retrieve_retry_interval: %q, %v; want 10min", v, err)
	})
	if _, err := pg.Setting(ctx, "pg2", "server_version"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "pg2", "ALTER SYSTEM SET log_min_duration_statement = '12345'"); err != nil {
		t.Fatal(err)
	}
	var startup, receiver int
	if err := look.QueryRow(ctx, "SELECT (SELECT pid FROM pg_stat_activity WHERE backend_type = 'startup'), (SELECT pid FROM pg_stat_wal_receiver)").Scan(&startup, &receiver); err != nil {
		t.Fatal(err)
	}

	pm := postmasterPID(t, c, "pg2")
	if err := syscall.Kill(pm, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := syscall.Kill(pm, syscall.SIGCONT); err != nil {
				t.Error(err)
			}
		}
	}
	defer resume()
	// The stream fails; the startup process asks for a new receiver,
	// which the stopped postmaster cannot start, and waits for it.
	if err := syscall.Kill(receiver, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	startupWaits := func() (string, bool, error) {
		var ev string
		var rec bool
		err := look.QueryRow(ctx, "SELECT coalesce((SELECT wait_event FROM pg_stat_activity WHERE backend_type = 'startup'), ''), pg_is_in_recovery()").Scan(&ev, &rec)
		return ev, rec, err
	}
	eventually(t, func() (bool, string) {
		var gone bool
		if err := look.QueryRow(ctx, "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_wal_receiver)").Scan(&gone); err != nil {
			return false, err.Error()
		}
		ev, _, err := startupWaits()
		return err == nil && gone && ev == "RecoveryWalStream", fmt.Sprintf("pg2's receiver gone %v, its startup process waits for %q (want RecoveryWalStream), %v", gone, ev, err)
	})

	done := make(chan error, 1)
	go func() {
		// Generous: the doze would last 10 minutes.
		pctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		done <- pg.Promote(pctx, "pg2")
	}()
	signalFile := filepath.Join(c.Node("pg2").DataDir, "promote")
	eventually(t, func() (bool, string) {
		_, err := os.Stat(signalFile)
		return err == nil, fmt.Sprintf("no %s: %v", signalFile, err)
	})
	if err := syscall.Kill(startup, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() (bool, string) {
		ev, rec, err := startupWaits()
		return err == nil && (ev == "RecoveryRetrieveRetryInterval" || !rec), fmt.Sprintf("pg2 after the promote request: in recovery %v, its startup process waits for %q, %v; want RecoveryRetrieveRetryInterval", rec, ev, err)
	})
	if _, rec, _ := startupWaits(); !rec {
		t.Log("pg2 promoted before it dozed: this run proves nothing about the nudge")
	}
	resume()
	if err := <-done; err != nil {
		t.Fatalf("promote pg2: %v", err)
	}
	var v string
	if err := look.QueryRow(ctx, "SHOW log_min_duration_statement").Scan(&v); err != nil {
		t.Fatal(err)
	}
	if v != "-1" {
		t.Errorf("pg2's log_min_duration_statement is %s after the promotion, want -1: promoting reloaded its configuration", v)
	}
}

// postmasterPID reads the PID of node's postmaster from its postmaster.pid.
func postmasterPID(t *testing.T, c *testenv.Cluster, node string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.Node(node).DataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}
