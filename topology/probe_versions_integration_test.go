package topology_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/testenv"
	"github.com/replctl/replctl/topology"
)

// TestProbeVersions runs the probe on a real primary and replica of the
// default server and of every fetched major (make deps PG=N), and checks
// that each column newer than 13 is read exactly where the version has it
// and is null ("not available on this version") elsewhere.
func TestProbeVersions(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	t.Parallel()
	t.Run("default", func(t *testing.T) {
		t.Parallel()
		probeVersion(t, "")
	})
	for _, major := range testenv.MatrixMajors {
		t.Run(fmt.Sprintf("pg%d", major), func(t *testing.T) {
			bin := testenv.RequirePG(t, major)
			t.Parallel()
			probeVersion(t, bin)
		})
	}
}

func probeVersion(t *testing.T, bin string) {
	c := testenv.Start(t, testenv.Options{Replicas: 1, NoEtcd: true, PGBinDir: bin})
	p := topology.PgProber{Timeout: 5 * time.Second}
	var prim, rep topology.NodeStatus
	// Until the replica's first status reply the walsender's flush LSN is null.
	deadline := time.Now().Add(30 * time.Second)
	for {
		prim = p.Probe(t.Context(), config.Node{Name: "pg1", DSN: c.Nodes[0].DSN})
		rep = p.Probe(t.Context(), config.Node{Name: "pg2", DSN: c.Nodes[1].DSN})
		if prim.Reachable && rep.Reachable && len(prim.Replication) == 1 && prim.Replication[0].FlushLSN != nil && rep.WALReceiver != nil && rep.WALReceiver.Status == "streaming" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("probe on %s: primary %+v (error %q), replica %+v (error %q)", c.PGVersion, prim, prim.Error, rep, rep.Error)
		}
		time.Sleep(100 * time.Millisecond)
	}
	v := prim.VersionNum
	t.Logf("PostgreSQL %s (%d)", prim.Version, v)
	if v/10000 != rep.VersionNum/10000 || v < topology.MinVersionNum {
		t.Fatalf("versions %d and %d", v, rep.VersionNum)
	}
	if prim.Timeline == nil || *prim.Timeline != 1 || rep.Timeline == nil || *rep.Timeline != 1 || rep.TimelineSource != topology.TimelineFromReceiver {
		t.Fatalf("timelines: primary %v, replica %v (%s)", prim.Timeline, rep.Timeline, rep.TimelineSource)
	}
	if rep.ReplayPauseState != "not paused" || rep.ReceiveLSN == nil || rep.ReplayLSN == nil || prim.CurrentLSN == nil {
		t.Fatalf("replica: pause %q, receive %v, replay %v; primary lsn %v", rep.ReplayPauseState, rep.ReceiveLSN, rep.ReplayLSN, prim.CurrentLSN)
	}
	w := rep.WALReceiver
	// written_lsn stays null until WAL arrives after the start: not checked.
	if w.FlushedLSN == nil || w.SlotName == nil || *w.SlotName != "pg2" || w.SenderPort == nil || w.ReceivedTLI == nil {
		t.Fatalf("wal receiver %+v", w)
	}
	r := prim.Replication[0]
	if r.ApplicationName == nil || *r.ApplicationName != "pg2" || r.SyncState == nil || r.FlushLSN == nil {
		t.Fatalf("replication %+v", r)
	}
	if len(prim.Slots) != 1 {
		t.Fatalf("slots %+v", prim.Slots)
	}
	s := prim.Slots[0]
	if s.Name != "pg2" || !s.Active || s.RestartLSN == nil || s.WALStatus == nil || *s.WALStatus != "reserved" || s.RetainedBytes == nil {
		t.Fatalf("slot %+v", s)
	}
	has := func(since int) bool { return v >= since }
	for _, col := range []struct {
		name  string
		since int
		got   bool
	}{
		{"two_phase", 140000, s.TwoPhase != nil},
		{"failover", 170000, s.Failover != nil},
		{"synced", 170000, s.Synced != nil},
	} {
		if col.got != has(col.since) {
			t.Errorf("PostgreSQL %d: slot column %s read = %v, want %v", v, col.name, col.got, has(col.since))
		}
	}
	// invalidation_reason is null on a valid slot, and conflicting on a
	// physical one, whatever the version: read (16+, 17+), never failing.
	if s.InvalidationReason != nil || s.Conflicting != nil {
		t.Errorf("invalidation_reason %v, conflicting %v on a valid physical slot", s.InvalidationReason, s.Conflicting)
	}
	if s.Plugin != nil || s.Database != nil || s.ConfirmedFlushLSN != nil || prim.Settings.WALLevel == nil ||
		(prim.Settings.SyncReplicationSlots != nil) != has(170000) {
		t.Errorf("physical slot %+v, settings %+v", s, prim.Settings)
	}

	// A subscription needs no logical WAL on its own side: one that never
	// connects shows each version's columns, and its publisher without
	// the password.
	if err := c.Exec(t.Context(), "pg1", "CREATE PUBLICATION pv FOR ALL TABLES"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(t.Context(), "pg1", "CREATE SUBSCRIPTION sv CONNECTION 'host=db9 port=6543 dbname=src password=pv-secret' PUBLICATION p WITH (connect = false)"); err != nil {
		t.Fatal(err)
	}
	prim = p.Probe(t.Context(), config.Node{Name: "pg1", DSN: c.Nodes[0].DSN})
	if len(prim.Subscriptions) != 1 || len(prim.Publications) != 1 || !prim.Publications[0].AllTables || prim.Database != "postgres" {
		t.Fatalf("subscriptions %+v publications %+v (error %q)", prim.Subscriptions, prim.Publications, prim.Error)
	}
	sub := prim.Subscriptions[0]
	if sub.Name != "sv" || sub.Enabled || sub.WorkerState != topology.WorkerDisabled || sub.PublisherHost == nil || *sub.PublisherHost != "db9" ||
		*sub.PublisherPort != "6543" || *sub.PublisherDB != "src" {
		t.Fatalf("subscription %+v", sub)
	}
	for _, col := range []struct {
		name  string
		since int
		got   bool
	}{
		{"apply_error_count", 150000, sub.ApplyErrorCount != nil},
		{"sync_error_count", 150000, sub.SyncErrorCount != nil},
		{"origin", 160000, sub.Origin != nil},
	} {
		if col.got != has(col.since) {
			t.Errorf("PostgreSQL %d: subscription column %s read = %v, want %v", v, col.name, col.got, has(col.since))
		}
	}
}
