package cmd

import (
	"encoding/json"
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

	faultCascade(t, c)

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

	// Had that drop failed (pg2 down then), the slot would be there still,
	// as it is again now: rejoin pg3, which streams from pg1, drops it;
	// then there is nothing to do.
	if _, err := conn.Exec(ctx, "SELECT pg_create_physical_replication_slot('pg3')"); err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{false, true} {
		r := replctl(ctx, nil, "--config", c.ConfigPath, "-o", "json", "rejoin", "pg3", "--yes")
		doc.NothingToDo = false
		if err := json.Unmarshal([]byte(r.Out), &doc); r.Code != 0 || err != nil || doc.NothingToDo != want {
			t.Fatalf("rejoin pg3 with slot pg3 left on pg2, run %d: nothing to do %v, want %v: %s", i+1, doc.NothingToDo, want, r)
		}
	}
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pg3'").Scan(&left); err != nil || left != 0 {
		t.Errorf("slot pg3 still on pg2 after rejoin pg3 (%d, %v)", left, err)
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
