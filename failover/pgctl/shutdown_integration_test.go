package pgctl_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/testenv"
	"github.com/replctl/replctl/topology"
)

func watchCluster(t *testing.T) (*testenv.Cluster, *pgctl.PG) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL")
	}
	t.Parallel()
	c := testenv.Start(t, testenv.Options{Replicas: 1})
	cfg, err := config.Load(c.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	pg := pgctl.NewPG(cfg, 5*time.Second)
	t.Cleanup(pg.Close)
	return c, pg
}

// startWatch follows pg1's WAL until the test ends.
func startWatch(t *testing.T, pg *pgctl.PG) *pgctl.ShutdownWatch {
	t.Helper()
	w, err := pg.WatchShutdown(t.Context(), "pg1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	return w
}

func receiveLSN(t *testing.T, c *testenv.Cluster, node string) topology.LSN {
	t.Helper()
	var s string
	if err := c.QueryRow(t.Context(), node, "SELECT pg_last_wal_receive_lsn()::text").Scan(&s); err != nil {
		t.Fatal(err)
	}
	l, err := topology.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// eventually fails the test with cond's message unless cond holds within
// a generous 10 s.
func eventually(t *testing.T, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The stream of a cleanly stopped primary ends where its WAL ends: past
// its shutdown checkpoint, exactly what its connected standby received.
func TestIntegrationShutdownWatchEndsAtTheShutdownCheckpoint(t *testing.T) {
	c, pg := watchCluster(t)
	ctx := t.Context()
	w := startWatch(t, pg)
	if err := c.Write(ctx, 50); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.Done():
		end, err := w.End()
		t.Fatalf("the stream ended before the stop: %s, %v", end, err)
	default:
	}
	if err := c.StopNode(ctx, "pg1"); err != nil {
		t.Fatal(err)
	}
	end, err := w.End()
	if err != nil {
		t.Fatalf("stream of a clean stop: %v", err)
	}
	if got := receiveLSN(t, c, "pg2"); got != end {
		t.Errorf("pg2 received up to %s, the stream ended at %s", got, end)
	}
	// Started again, a cleanly shut down server still has its shutdown
	// checkpoint as the latest (pg_controldata is not in every build).
	if err := c.StartNode(ctx, "pg1"); err != nil {
		t.Fatal(err)
	}
	var ckptText string
	if err := c.QueryRow(ctx, "pg1", "SELECT checkpoint_lsn::text FROM pg_control_checkpoint()").Scan(&ckptText); err != nil {
		t.Fatal(err)
	}
	ckpt, err := topology.ParseLSN(ckptText)
	if err != nil {
		t.Fatal(err)
	}
	if end <= ckpt {
		t.Errorf("the stream ended at %s, not past the shutdown checkpoint at %s", end, ckpt)
	}
}

// A primary that dies does not end the stream cleanly: its end proves
// nothing.
func TestIntegrationShutdownWatchKilledPrimary(t *testing.T) {
	c, pg := watchCluster(t)
	ctx := t.Context()
	w := startWatch(t, pg)
	if err := c.KillNode(ctx, "pg1"); err != nil {
		t.Fatal(err)
	}
	if end, err := w.End(); err == nil {
		t.Fatalf("the stream of a killed primary ended cleanly at %s", end)
	}
}

// The watch is never a synchronous standby, even one that
// synchronous_standby_names names: it confirms nothing as flushed, so it
// cannot acknowledge a commit that no standby has.
func TestIntegrationShutdownWatchIsNeverSynchronous(t *testing.T) {
	c, pg := watchCluster(t)
	ctx := t.Context()
	startWatch(t, pg)
	if err := c.Exec(ctx, "pg1", "ALTER SYSTEM SET synchronous_standby_names = 'replctl_shutdown_watch'"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "pg1", "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	// The reload has reached the postmaster's children once a new
	// session sees it.
	eventually(t, func() (bool, string) {
		var v string
		if err := c.QueryRow(ctx, "pg1", "SHOW synchronous_standby_names").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v == "replctl_shutdown_watch", fmt.Sprintf("synchronous_standby_names is %q after the reload", v)
	})
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	err := c.Exec(wctx, "pg1", "CREATE TABLE replctl_watch_sync (id int)")
	if err == nil {
		t.Fatal("a commit was acknowledged with the watch as the only synchronous standby")
	}
	var state string
	if err := c.QueryRow(ctx, "pg1", "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'replctl_shutdown_watch'").Scan(&state); err != nil {
		t.Fatal(err)
	}
	if state == "sync" || state == "quorum" {
		t.Errorf("the watch's sync_state is %s", state)
	}
}

// A server shutting down refuses connections with 57P03, which
// ShuttingDown recognises through replctl's own connection errors: a
// smart shutdown waits for an open session, so the refusal lasts.
func TestIntegrationShuttingDown(t *testing.T) {
	c, pg := watchCluster(t)
	ctx := t.Context()
	held, err := c.Conn(ctx, "pg1")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close(context.WithoutCancel(ctx))
	if err := syscall.Kill(postmasterPID(t, c, "pg1"), syscall.SIGTERM); err != nil { // smart shutdown
		t.Fatal(err)
	}
	eventually(t, func() (bool, string) {
		pg.Close() // a new connection each time, as after a fast shutdown
		_, err := pg.Setting(ctx, "pg1", "server_version")
		return pgctl.ShuttingDown(err), fmt.Sprintf("pg1 after a smart shutdown request: %v, want 57P03", err)
	})
	if _, err := pg.Setting(ctx, "pg2", "server_version"); pgctl.ShuttingDown(err) {
		t.Errorf("pg2 counted as shutting down: %v", err)
	}
}
