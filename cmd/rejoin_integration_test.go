package cmd

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/replctl/replctl/testenv"
	"github.com/replctl/replctl/testenv/faultcheck"
)

// TestIntegrationRejoinCascade is the one case of the second full fault
// matrix run that ended with violations (drill/drill/repoint-pg3:before/
// kill-node-pg3): pg3, killed as the drill's first switchover repointed it,
// had already taken the new primary_conninfo (pg2) and came back streaming
// through pg2 after the on_failure promotion made pg1 primary again. The
// plan said "run `replctl rejoin pg3`", and rejoin said "nothing to do",
// leaving pg3 behind a replica, through a slot on pg2, with none for it on
// pg1. Rejoin must make it stream from the primary, and the independent
// checker must then find the cluster whole.
func TestIntegrationRejoinCascade(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	ctx := t.Context()
	c := testenv.Start(t, testenv.Options{Replicas: 2})
	target := faultTarget(c)
	w, err := faultcheck.Watch(ctx, target, faultcheck.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	// pg3 cascades from pg2 through a slot there; pg1 keeps none for it.
	must(t, c.Exec(ctx, "pg2", "SELECT pg_create_physical_replication_slot('pg3')"))
	must(t, c.Exec(ctx, "pg3", fmt.Sprintf("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=%d user=postgres application_name=pg3'", c.Node("pg2").Port)))
	must(t, c.Exec(ctx, "pg3", "SELECT pg_reload_conf()"))
	waitUntil(t, "pg3 streams from pg2 and pg1's slot pg3 is gone", func() bool {
		var port *int32
		conn, err := c.Conn(ctx, "pg3")
		if err != nil {
			return false
		}
		defer conn.Close(ctx)
		if conn.QueryRow(ctx, "SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'").Scan(&port) != nil ||
			port == nil || int(*port) != c.Node("pg2").Port {
			return false
		}
		return c.Exec(ctx, "pg1", "SELECT pg_drop_replication_slot('pg3')") == nil
	})

	r := replctl(ctx, nil, "--config", c.ConfigPath, "-o", "json", "rejoin", "pg3", "--yes")
	var doc struct {
		NothingToDo bool `json:"nothing_to_do"`
	}
	if err := json.Unmarshal([]byte(r.Out), &doc); r.Code != 0 || err != nil || doc.NothingToDo {
		t.Fatalf("rejoin pg3 did not repoint it: %s", r)
	}
	if problems := faultSettle(ctx, target, w); len(problems) > 0 {
		t.Errorf("after rejoin pg3: %v", problems)
	}
	if v := w.Stop().Violations; len(v) > 0 {
		t.Errorf("violations: %v", v)
	}
	var left int
	conn, err := c.Conn(ctx, "pg2")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pg3'").Scan(&left); err != nil || left != 0 {
		t.Errorf("slot pg3 left on pg2 (%d, %v): it would retain WAL there", left, err)
	}
}

// waitUntil polls cond every 50 ms for up to a minute.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
