package checks

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/replctl/replctl/topology"
)

func logicalSlot(name string, active bool) topology.Slot {
	return topology.Slot{Name: name, Type: "logical", Active: active, Plugin: ptr("pgoutput"), Database: ptr("app"),
		ConfirmedFlushLSN: ptr(topology.LSN(0x3000000)), WALStatus: ptr("reserved"), RetainedBytes: ptr(uint64(100))}
}

// pg17 makes the healthy cluster PostgreSQL 17 with a failover slot cdc on
// pg1, synced to both standbys, which run sync_replication_slots = on, and
// pg1 waiting for both before logical consumers confirm.
func pg17(st []topology.NodeStatus) []topology.NodeStatus {
	for i := range st {
		st[i].VersionNum = 170010
	}
	sl := logicalSlot("cdc", true)
	sl.Failover = ptr(true)
	st[0].Slots = []topology.Slot{sl}
	st[0].Settings.SynchronizedStandbySlots = ptr("pg2, pg3")
	for _, i := range []int{1, 2} {
		cp := logicalSlot("cdc", false)
		cp.Failover, cp.Synced = ptr(true), ptr(true)
		st[i].Slots = []topology.Slot{cp}
		st[i].Settings.SyncReplicationSlots = ptr("on")
		st[i].Settings.PrimarySlotName = ptr(st[i].Name)
	}
	return st
}

func sub(name string, state string) topology.Subscription {
	return topology.Subscription{Name: name, Database: "app", Enabled: state != topology.WorkerDisabled, WorkerState: state,
		PublisherHost: ptr("db9"), PublisherPort: ptr("5432"), PublisherDB: ptr("src"), ApplyErrorCount: ptr(int64(0)), SyncErrorCount: ptr(int64(0))}
}

func TestLogicalChecks(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mutate func(st []topology.NodeStatus) []topology.NodeStatus
		checks []string
		want   []string // level:code:node
		msg    []string // in the messages, in order
	}{
		{name: "nothing logical", checks: []string{"logical_slots", "subscriptions", "logical_failover"}},
		{name: "logical slots", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			lost, idle, big, unres := logicalSlot("lost", false), logicalSlot("idle", false), logicalSlot("big", true), logicalSlot("unres", true)
			lost.WALStatus = ptr("lost")
			big.RetainedBytes = ptr(uint64(2 << 30))
			unres.WALStatus = ptr("unreserved")
			tmp := logicalSlot("tmp", false)
			tmp.Temporary = true
			st[0].Slots = []topology.Slot{lost, idle, big, unres, tmp, {Name: "pg2", Type: "physical", Active: true}}
			return st
		}, checks: []string{"logical_slots", "slots"},
			want: []string{"CRITICAL:logical_slot:pg1", "WARNING:logical_slot:pg1", "WARNING:logical_slot:pg1", "WARNING:logical_slot:pg1"},
			msg:  []string{"lost (pgoutput, database app) on pg1 has lost WAL it needed: its consumer cannot continue and must resynchronise from 0/3000000", "idle", "retains 2 GB", "unreserved"}},
		{name: "a synced copy on a standby may be inactive", mutate: pg17, checks: []string{"logical_slots"}},
		{name: "subscriptions", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			errs := sub("errs", topology.WorkerRunning)
			errs.ApplyErrorCount, errs.SyncErrorCount = ptr(int64(3)), ptr(int64(1))
			st[0].Subscriptions = []topology.Subscription{sub("ok", topology.WorkerRunning), sub("off", topology.WorkerDisabled),
				sub("down", topology.WorkerNotRunning), errs}
			// A standby's catalog copies are not judged.
			st[1].Subscriptions = []topology.Subscription{sub("down", topology.WorkerStandby)}
			return st
		}, checks: []string{"subscriptions"},
			want: []string{"WARNING:subscription_disabled:pg1", "WARNING:subscription_not_running:pg1", "WARNING:subscription_errors:pg1"},
			msg:  []string{"off (database app) on pg1 is disabled", "db9:5432/src", "3 apply and 1 sync errors since its statistics were reset (one look"}},
		{name: "before 17 a promotion loses every logical slot", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			tmp := logicalSlot("tmp", true)
			tmp.Temporary = true
			st[0].Slots = []topology.Slot{logicalSlot("cdc", true), tmp, {Name: "pg2", Type: "physical", Active: true}}
			return st
		}, checks: []string{"logical_failover"}, want: []string{"WARNING:logical_failover:pg1"},
			msg: []string{"cdc (pgoutput, database app) on pg1 would be lost by an emergency failover: PostgreSQL 15"}},
		{name: "17, synced everywhere", mutate: pg17, checks: []string{"logical_failover"}},
		{name: "17, failover = false", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st = pg17(st)
			st[0].Slots[0].Failover = ptr(false)
			return st
		}, checks: []string{"logical_failover"}, want: []string{"WARNING:logical_failover:pg1"}, msg: []string{"failover = false"}},
		{name: "17, one standby not syncing, the other without a copy", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st = pg17(st)
			st[1].Settings.SyncReplicationSlots = ptr("off")
			st[2].Slots = nil
			return st
		}, checks: []string{"logical_failover"}, want: []string{"WARNING:logical_failover:pg1"},
			msg: []string{"promotion of pg2 (sync_replication_slots is not on); pg3 (it has no copy of the slot yet)"}},
		{name: "17, a copy that is not synced", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st = pg17(st)
			st[2].Slots[0].Synced = ptr(false)
			return st
		}, checks: []string{"logical_failover"}, want: []string{"WARNING:logical_failover:pg1"}, msg: []string{"pg3 (its slot of that name is not a synced copy)"}},
		{name: "17, a copy not persistent yet", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st = pg17(st)
			st[1].Slots[0].Temporary = true
			return st
		}, checks: []string{"logical_failover"}, want: []string{"WARNING:logical_failover:pg1"}, msg: []string{"pg2 (its copy is not persistent yet"}},
		{name: "17, consumers not held back for a standby", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st = pg17(st)
			st[0].Settings.SynchronizedStandbySlots = ptr("pg2")
			return st
		}, checks: []string{"logical_failover"}, want: []string{"WARNING:logical_failover:pg1"}, msg: []string{"does not name the slot of pg3"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := healthy()
			if tc.mutate != nil {
				st = tc.mutate(st)
			}
			cfg := cfgFor(t, "", "pg1", "pg2", "pg3")
			rs, err := Run(topology.Classify(cfg, st, nil), cfg, tc.checks...)
			if err != nil {
				t.Fatal(err)
			}
			if got := codes(rs); !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v\n%+v", got, tc.want, rs)
			}
			var msgs []string
			for _, r := range Problems(rs) {
				msgs = append(msgs, r.Message)
			}
			all := strings.Join(msgs, "\n")
			for _, m := range tc.msg {
				i := strings.Index(all, m)
				if i < 0 {
					t.Fatalf("%q not in (or out of order in)\n%s", m, strings.Join(msgs, "\n"))
				}
				all = all[i+len(m):]
			}
		})
	}
}

// With two looks (status --watch) the subscriptions check tells growing
// error counts from old ones; with one it says it cannot.
func TestSubscriptionErrorTrend(t *testing.T) {
	t.Parallel()
	cfg := cfgFor(t, "", "pg1", "pg2", "pg3")
	look := func(apply int64, at time.Duration) *topology.Snapshot {
		st := healthy()
		st[0].ServerTime = ptr(t0.Add(at))
		s := sub("errs", topology.WorkerRunning)
		s.ApplyErrorCount = ptr(apply)
		st[0].Subscriptions = []topology.Subscription{s}
		return topology.Classify(cfg, st, nil)
	}
	msg := func(s *topology.Snapshot) string {
		rs, err := Run(s, cfg, "subscriptions")
		if err != nil || len(rs) != 1 || rs[0].Code != "subscription_errors" {
			t.Fatalf("%v %+v", err, rs)
		}
		return rs[0].Message
	}
	for _, tc := range []struct {
		prev *topology.Snapshot
		now  int64
		want string
	}{
		{nil, 3, "(one look: whether they still grow shows at the next one)"},
		{look(3, 0), 5, "(growing: 2 apply and 0 sync errors more than at the previous look 2s ago)"},
		{look(5, 0), 5, "(not grown since the previous look 2s ago)"},
		{look(9, 0), 5, "(the counts were reset since the previous look 2s ago: these errors are new)"},
	} {
		now := look(tc.now, 2*time.Second)
		now.Previous = tc.prev
		if got := msg(now); !strings.HasSuffix(got, tc.want) {
			t.Errorf("got %q, want ...%q", got, tc.want)
		}
	}
}
