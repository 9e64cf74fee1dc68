package failover

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/topology"
	tt "github.com/replctl/replctl/topology/topologytest"
)

func logicalSlotFixture(name string) topology.Slot {
	return topology.Slot{Name: name, Type: "logical", Active: true, Plugin: tt.Ptr("pgoutput"), Database: tt.Ptr("app"),
		ConfirmedFlushLSN: tt.Ptr(topology.LSN(0x3000040)), WALStatus: tt.Ptr("reserved")}
}

// TestLogicalSlotNotes: the switchover and emergency plans say what a
// promotion does to each logical slot, never claiming one survives that
// PostgreSQL does not keep.
func TestLogicalSlotNotes(t *testing.T) {
	t.Parallel()
	cfg := &config.Config{Cluster: "demo", Etcd: config.Etcd{Prefix: "/replctl"}, Lock: config.Lock{TTL: 10 * time.Second}}
	for i, n := range []string{"pg1", "pg2", "pg3"} {
		cfg.Nodes = append(cfg.Nodes, config.Node{Name: n, DSN: fmt.Sprintf("host=127.0.0.1 port=%d user=postgres", 5432+i)})
	}
	lsn := topology.LSN(0x3000060)
	build := func(mutate func(st []topology.NodeStatus)) []topology.NodeStatus {
		st := []topology.NodeStatus{tt.Primary("pg1", lsn, "pg2", "pg3"), tt.Replica("pg2", 5432, lsn), tt.Replica("pg3", 5432, lsn)}
		if mutate != nil {
			mutate(st)
		}
		return st
	}
	pg17 := func(st []topology.NodeStatus) {
		for i := range st {
			st[i].VersionNum = 170010
		}
		fo := logicalSlotFixture("cdc")
		fo.Failover = tt.Ptr(true)
		st[0].Slots = []topology.Slot{fo, logicalSlotFixture("plain")}
		st[0].Slots[1].Failover = tt.Ptr(false)
		cp := fo
		cp.Active, cp.Synced = false, tt.Ptr(true)
		st[1].Slots = []topology.Slot{cp}
	}
	for _, tc := range []struct {
		name      string
		mutate    func(st []topology.NodeStatus)
		emergency bool
		want      []string // one per note, in order
	}{
		{name: "no logical replication, no note"},
		{name: "15: every slot lost, from its confirmed position", mutate: func(st []topology.NodeStatus) {
			tmp := logicalSlotFixture("tmp")
			tmp.Temporary = true
			st[0].Slots = []topology.Slot{logicalSlotFixture("cdc"), tmp, {Name: "pg2", Type: "physical", Active: true}}
		}, want: []string{`logical slot cdc (pgoutput, database app) on pg1: LOST by this promotion (PostgreSQL 15 keeps logical slots on the primary only): replctl does not carry it over, so on pg2 its consumer fails with 'replication slot "cdc" does not exist'; re-creating it there later skips every change in between: its consumer must resynchronise from 0/3000040 (its confirmed_flush_lsn now)`}},
		{name: "17: a synced failover slot is kept, another lost", mutate: pg17, want: []string{
			"logical slot cdc (pgoutput, database app) on pg1: kept: pg2 holds a synced copy",
			"logical slot plain (pgoutput, database app) on pg1: LOST by this promotion (it has failover = false"}},
		{name: "17: no copy on the candidate", mutate: func(st []topology.NodeStatus) {
			pg17(st)
			st[1].Slots = nil
		}, want: []string{"cdc (pgoutput, database app) on pg1: LOST by this promotion (pg2 holds no synced copy of it)", "plain"}},
		{name: "emergency, old primary unreadable, wal_level logical", emergency: true, mutate: func(st []topology.NodeStatus) {
			st[1].Settings.WALLevel = tt.Ptr("logical")
		}, want: []string{"pg1 cannot be read: every logical slot it had without a synced copy on pg2 is LOST, and replctl cannot name them"}},
		{name: "a subscription consuming from the old primary itself", mutate: func(st []topology.NodeStatus) {
			st[0].Slots = []topology.Slot{logicalSlotFixture("s1")}
			sub := topology.Subscription{Name: "s1", Database: "app2", Enabled: true, PublisherHost: tt.Ptr("127.0.0.1"), PublisherPort: tt.Ptr("5432"), PublisherDB: tt.Ptr("app")}
			ext := sub
			ext.Name, ext.PublisherHost = "s2", tt.Ptr("db9")
			st[0].Subscriptions = []topology.Subscription{sub, ext}
			st[1].Subscriptions = []topology.Subscription{sub, ext} // the standby's catalog copies
		}, want: []string{"logical slot s1 (pgoutput, database app) on pg1: LOST",
			"subscription s1 (database app2) consumes from pg1 itself (127.0.0.1:5432/app): once pg2 is promoted it runs there and still connects to pg1"}},
		{name: "emergency, 17, synced copy kept", emergency: true, mutate: pg17, want: []string{
			"logical slot cdc (pgoutput, database app): kept: pg2 holds a synced copy (a failover slot, confirmed up to 0/3000040 there)",
			"pg1 cannot be read"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := build(tc.mutate)
			var notes []string
			if tc.emergency {
				st[0] = topology.NodeStatus{Name: "pg1", Error: "connection refused"}
				for i := range st[1:] {
					st[i+1].WALReceiver = nil
				}
				snap := topology.Classify(cfg, st, nil)
				p, err := BuildEmergencyPlan(cfg, snap, nil, "pg1", "pg2", EmergencyOptions{Candidate: "pg2", AllowDataLoss: true}, nil)
				if err != nil {
					t.Fatal(err)
				}
				notes = p.Notes
			} else {
				snap := topology.Classify(cfg, st, nil)
				p, err := BuildSwitchoverPlan(cfg, snap, SwitchoverOptions{Candidate: "pg2", LogicalSlots: LogicalDrop}, &Env{})
				if err != nil {
					t.Fatal(err)
				}
				notes = p.Notes
			}
			var logical []string
			for _, n := range notes {
				if strings.Contains(n, "logical slot") || strings.HasPrefix(n, "subscription ") {
					logical = append(logical, n)
				}
			}
			if len(logical) != len(tc.want) {
				t.Fatalf("logical notes %q, want %d like %q", logical, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(logical[i], w) {
					t.Errorf("note %d: %q\nwant it to contain %q", i, logical[i], w)
				}
			}
		})
	}
}

// The handover of logical slots (the default of --logical-slots), on the
// fake: the stop fence gives way to the SQL fence, the consumer's
// confirmation of the final position is waited for, the candidate is
// promoted with writes held, the slot is created there and writes are
// released, in that order; a consumer that never confirms undoes the
// switchover before anything is promoted or held. refuse and a
// --require-stop conflict refuse, naming the slot.
func TestLogicalHandover(t *testing.T) {
	t.Parallel()
	lsn := topology.LSN(0x3000060)
	build := func(t *testing.T, opts SwitchoverOptions) (*fakeCluster, *Env, *plan.Plan, error) {
		cfg := engineConfig(true, "pg1", "pg2", "pg3")
		ctl := newFakeCtl(lsn)
		rec := &fakeRecorder{}
		ctl.lock = rec
		env := &Env{Ctl: ctl}
		env.Acquire = func(context.Context) error { env.Lock = rec; return nil }
		p1 := tt.Primary("pg1", lsn, "pg2", "pg3")
		p1.Slots = []topology.Slot{logicalSlotFixture("cdc")}
		r2 := tt.Replica("pg2", 5432, lsn)
		r2.Settings.WALLevel = tt.Ptr("logical")
		snap := topology.Classify(cfg, []topology.NodeStatus{p1, r2, tt.Replica("pg3", 5432, lsn)}, nil)
		opts.Candidate, opts.CatchupTimeout, opts.CallTimeout, opts.MaxLag = "pg2", time.Second, 500*time.Millisecond, 16<<20
		p, err := BuildSwitchoverPlan(cfg, snap, opts, env)
		return ctl, env, p, err
	}
	ctl, env, p, err := build(t, SwitchoverOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Fence != FenceSQL {
		t.Fatalf("fence %s: a handover needs the SQL fence", p.Fence)
	}
	var ids []string
	for _, s := range p.Steps {
		ids = append(ids, s.ID)
	}
	order := []string{StepFence, StepFinalLSN, StepWaitLogical, StepWaitReplay, StepHoldWrites, StepPromote, StepCreateLogical, StepReleaseWrites, StepVerify, StepRecordState, StepEndLogical, StepVerifyLogical}
	last := -1
	for _, id := range order {
		i := slices.Index(ids, id)
		if i <= last {
			t.Fatalf("step %s out of order in %v", id, ids)
		}
		last = i
	}
	if !slices.ContainsFunc(p.Notes, func(n string) bool { return strings.Contains(n, "handed over to pg2") }) ||
		slices.ContainsFunc(p.Notes, func(n string) bool { return strings.Contains(n, "LOST") }) {
		t.Errorf("notes: %v", p.Notes)
	}
	// The consumer has confirmed everything.
	ctl.logical = map[string]map[string]topology.LSN{"pg1": {"cdc": lsn}}
	res := plan.Execute(t.Context(), p, env, nil, nil)
	if res.Outcome != plan.OutcomeSucceeded {
		t.Fatalf("outcome %s: %v", res.Outcome, res.Err)
	}
	if _, ok := ctl.logical["pg2"]["cdc"]; !ok {
		t.Fatal("the slot was not created on pg2")
	}
	if v := ctl.nodes["pg2"].setting("default_transaction_read_only"); v == "on" {
		t.Fatal("writes are still held on the new primary")
	}
	if !ctl.called("hold writes on pg2") {
		t.Fatalf("writes were not held: %v", ctl.calls)
	}

	// A consumer that never confirms: undone before the promotion.
	ctl, env, p, _ = build(t, SwitchoverOptions{})
	ctl.logical = map[string]map[string]topology.LSN{"pg1": {"cdc": lsn - 0x40}}
	res = plan.Execute(t.Context(), p, env, nil, nil)
	if res.Outcome != plan.OutcomeFailed || !strings.Contains(fmt.Sprint(res.Err), "--logical-slots drop") {
		t.Fatalf("outcome %s: %v", res.Outcome, res.Err)
	}
	if !ctl.nodes["pg2"].inRecovery || ctl.called("hold writes") {
		t.Fatal("the candidate was promoted or held though the consumer never confirmed")
	}

	if _, _, _, err := build(t, SwitchoverOptions{LogicalSlots: LogicalRefuse}); err == nil || !strings.Contains(err.Error(), "cdc") {
		t.Errorf("refuse: %v", err)
	}
	if _, _, _, err := build(t, SwitchoverOptions{RequireStop: true}); err == nil || !strings.Contains(err.Error(), "--require-stop") {
		t.Errorf("require-stop: %v", err)
	}
	if _, _, p, err := build(t, SwitchoverOptions{LogicalSlots: LogicalDrop}); err != nil || p.Fence != FenceStop || slices.ContainsFunc(p.Steps, func(s plan.Step) bool { return s.ID == StepHoldWrites }) {
		t.Errorf("drop: %v", err)
	}
}
