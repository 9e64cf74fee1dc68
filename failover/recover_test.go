package failover

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/topology"
	tt "github.com/replctl/replctl/topology/topologytest"
)

// CloseInterrupted lets the fake lock close history records, as the etcd
// lock does for recover.
func (r *fakeRecorder) CloseInterrupted(context.Context, string, string) error { return r.Err() }

// killed is the panic that stands for the process dying inside a step.
type killed struct{}

// runUntilKilled executes c's plan with a journal kept in an OpRecord, and
// "kills" the process once step id has made its change: nothing after it
// runs, no undo, no end recorded. It returns the journal as etcd would hold
// it.
func runUntilKilled(t *testing.T, c *engineCase, id string) etcdlock.OpRecord {
	t.Helper()
	rec := etcdlock.OpRecord{ID: "42", Kind: c.plan.Kind, Token: 7, Outcome: etcdlock.OutcomeRunning}
	c.env.JournalTo = func(_ context.Context, events ...plan.Event) error {
		for _, e := range events {
			rec.Apply(e)
		}
		return nil
	}
	i := slices.IndexFunc(c.plan.Steps, func(s plan.Step) bool { return s.ID == id })
	if i < 0 {
		t.Fatalf("no step %s in %v", id, stepIDs(c.plan))
	}
	run := c.plan.Steps[i].Run
	c.plan.Steps[i].Run = func(ctx context.Context) error {
		_ = run(ctx)
		panic(killed{})
	}
	func() {
		defer func() {
			if r := recover(); r != nil {
				if _, ok := r.(killed); !ok {
					panic(r)
				}
			}
		}()
		plan.Execute(t.Context(), c.plan, c.env, nil, nil)
		t.Fatalf("step %s never ran", id)
	}()
	return rec
}

// recoverKilledSwitchover runs recover on c's switchover killed with
// journal rec: pg1 down, pg3's receiver gone with it, pg2 promoted (on
// timeline 2) or still in recovery.
func recoverKilledSwitchover(t *testing.T, c *engineCase, rec etcdlock.OpRecord, promoted bool) (*plan.Plan, *plan.Result) {
	t.Helper()
	cand := tt.Replica("pg2", 5432, 0x3000060)
	cand.WALReceiver = nil
	if promoted {
		cand = tt.Primary("pg2", 0x3000100)
		cand.Timeline = tt.Ptr(uint32(2))
	}
	pg3 := tt.Replica("pg3", 5432, 0x3000060)
	pg3.WALReceiver = nil
	snap := topology.Classify(c.cfg, []topology.NodeStatus{{Name: "pg1", Error: "connection refused"}, cand, pg3}, nil)
	st := c.rec.st
	return recoverWith(t, c, Observation{Snap: snap, State: &st, Interrupted: []etcdlock.OpRecord{rec}})
}

// recoverWith plans recover from obs and runs it on c's fake cluster.
func recoverWith(t *testing.T, c *engineCase, obs Observation) (*plan.Plan, *plan.Result) {
	t.Helper()
	env := &Env{Ctl: c.ctl}
	env.Acquire = func(context.Context) error { env.Lock = c.rec; return nil }
	p, results, err := PlanRecover(c.cfg, obs, RecoverOptions{}, env)
	if err != nil || p == nil {
		t.Fatalf("recover refused: %v %+v", err, checks.Failed(results))
	}
	return p, plan.Execute(t.Context(), p, env, nil, nil)
}

type nodeConf struct {
	auto  map[string]string
	slots []string
}

func confOf(f *fakeCluster) map[string]nodeConf {
	out := map[string]nodeConf{}
	for name, n := range f.nodes {
		out[name] = nodeConf{auto: maps.Clone(n.auto), slots: slices.Sorted(maps.Keys(n.slots))}
	}
	return out
}

// A switchover killed before its point of no return is rolled back to
// exactly what its steps captured: the operator's own settings (an alias,
// passfile, a sync list replctl's configuration knows nothing of), not
// values rebuilt from the configuration, and only the slots it created.
func TestRecoverRollsBackFromTheJournal(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ kind, killAt string }{
		{"switchover-sql", "fence"},
		{"switchover-sql", "detach-pg3"},
		{"switchover-sql", StepCreateSlots},
		{"switchover-stop", "fence"},
		{"switchover-stop", StepMarkFenced},
	} {
		t.Run(tc.kind+"/"+tc.killAt, func(t *testing.T) {
			t.Parallel()
			c := newEngineCase(t, tc.kind)
			pg1 := c.ctl.nodes["pg1"]
			pg1.auto["synchronous_standby_names"] = "ANY 1 (pg2, pg3)"
			c.ctl.reload(pg1)
			before := confOf(c.ctl)
			rec := runUntilKilled(t, c, tc.killAt)
			if !rec.Interrupted(nil) {
				t.Fatalf("a killed operation is not interrupted: %+v", rec)
			}
			snap := c.snap
			if !pg1.up {
				snap = topology.Classify(c.cfg, []topology.NodeStatus{{Name: "pg1", Error: "connection refused"},
					tt.Replica("pg2", 5432, 0x3000060), tt.Replica("pg3", 5432, 0x3000060)}, nil)
			}
			st := c.rec.st
			p, res := recoverWith(t, c, Observation{Snap: snap, State: &st, Interrupted: []etcdlock.OpRecord{rec}})
			if res.Outcome != plan.OutcomeSucceeded {
				t.Fatalf("recover %v: %s: %v", stepIDs(p), res.Outcome, res.Err)
			}
			if !strings.HasPrefix(p.Notes[0], RollBack) {
				t.Errorf("direction: %q", p.Notes[0])
			}
			if after := confOf(c.ctl); !maps.EqualFunc(before, after, func(a, b nodeConf) bool {
				return maps.Equal(a.auto, b.auto) && slices.Equal(a.slots, b.slots)
			}) {
				t.Errorf("not restored:\nbefore %+v\nafter  %+v\nrecover %v", before, after, stepIDs(p))
			}
			if c.rec.st.IsFenced("pg1") {
				t.Errorf("pg1 still marked fenced")
			}
			if w := c.ctl.writable(); len(w) != 1 || w[0] != "pg1" {
				t.Errorf("writable after recover: %v", w)
			}
			// hooks.pre_fence held clients back from pg1: recover sends
			// them to it again.
			if c.ctl.clients != "pg1" {
				t.Errorf("clients sent to %q after recover, want pg1 (recover %v)", c.ctl.clients, stepIDs(p))
			}
			if len(c.ctl.violations) > 0 {
				t.Errorf("changed without the lock: %v", c.ctl.violations)
			}
		})
	}
}

// A stop fence no longer waits for its stop command to return once the old
// primary's stream has ended: killed right then, the operation may leave
// the server still shutting down. Recover waits that out (57P03) before
// starting it: a start meanwhile fails (another postmaster holds the data
// directory).
func TestRecoverWaitsOutAShutdown(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "switchover-stream")
	rec := runUntilKilled(t, c, StepFence)
	c.ctl.nodes["pg1"].stopping, c.ctl.stoppingLooks = true, 3
	snap := topology.Classify(c.cfg, []topology.NodeStatus{{Name: "pg1", Error: "the database system is shutting down"},
		tt.Replica("pg2", 5432, 0x3000060), tt.Replica("pg3", 5432, 0x3000060)}, nil)
	st := c.rec.st
	p, res := recoverWith(t, c, Observation{Snap: snap, State: &st, Interrupted: []etcdlock.OpRecord{rec}})
	if res.Outcome != plan.OutcomeSucceeded {
		t.Fatalf("recover %v: %s: %v", stepIDs(p), res.Outcome, res.Err)
	}
	if len(c.ctl.violations) > 0 {
		t.Errorf("violations: %v", c.ctl.violations)
	}
	if w := c.ctl.writable(); len(w) != 1 || w[0] != "pg1" {
		t.Errorf("writable after recover: %v", w)
	}
}

// Killed after pg_promote reached the candidate, a switchover is rolled
// forward: the candidate is recorded, the other replica repointed, the old
// primary rejoined as the plan said; killed just before pg_promote, the
// candidate is promoted by recover.
func TestRecoverRollsForward(t *testing.T) {
	t.Parallel()
	for _, phase := range []string{"after", "before"} {
		t.Run(phase, func(t *testing.T) {
			t.Parallel()
			c := newEngineCase(t, "switchover-stop")
			killAt := StepPromote
			if phase == "before" {
				killAt = StepWaitReplay
			}
			rec := runUntilKilled(t, c, killAt)
			if phase == "before" {
				// The journal says promote began: pg_promote may have been
				// sent as the process died.
				rec.Apply(plan.Event{Type: plan.StepStarted, StepID: StepPromote, Node: "pg2"})
			}
			p, res := recoverKilledSwitchover(t, c, rec, phase == "after")
			ids := stepIDs(p)
			if res.Outcome != plan.OutcomeSucceeded || !strings.HasPrefix(p.Notes[0], RollForward) {
				t.Fatalf("recover %v: %s %v (%q)", ids, res.Outcome, res.Err, p.Notes)
			}
			want := []string{StepLock, StepVerify, StepHook, StepCheckpointN, StepRecordState, StepRepoint + "-pg3", StepRejoin, StepRecoverClose}
			if phase == "before" {
				want = slices.Insert(want, 1, StepPromote)
			}
			if !slices.Equal(ids, want) {
				t.Errorf("steps %v, want %v", ids, want)
			}
			if c.rec.st.Primary != "pg2" {
				t.Errorf("recorded primary %q", c.rec.st.Primary)
			}
			if w := c.ctl.writable(); len(w) != 1 || w[0] != "pg2" {
				t.Errorf("writable after recover: %v", w)
			}
			if ci := c.ctl.nodes["pg3"].auto["primary_conninfo"]; !strings.Contains(ci, "port=5433") {
				t.Errorf("pg3 not repointed at pg2: %q", ci)
			}
			// The interrupted switchover held clients back (pre_fence)
			// and may not have run post_promote: recover does.
			if c.ctl.clients != "pg2" {
				t.Errorf("clients sent to %q after recover, want pg2", c.ctl.clients)
			}
		})
	}
}

// A candidate that does not answer makes the evidence ambiguous: recover
// refuses and says what it needs rather than guess.
func TestRecoverRefusesWithoutTheCandidate(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "switchover-stop")
	rec := runUntilKilled(t, c, StepPromote)
	snap := topology.Classify(c.cfg, []topology.NodeStatus{{Name: "pg1", Error: "connection refused"},
		{Name: "pg2", Error: "connection refused"}, tt.Replica("pg3", 5432, 0x3000060)}, nil)
	p, results, err := PlanRecover(c.cfg, Observation{Snap: snap, Interrupted: []etcdlock.OpRecord{rec}}, RecoverOptions{}, nil)
	failed := checks.Failed(results)
	if p != nil || err != nil || len(failed) != 1 || failed[0].Code != "recover_ambiguous" || failed[0].Node != "pg2" {
		t.Fatalf("plan %v, err %v, failed %+v", p, err, failed)
	}
}

// While an operation is interrupted every other operation refuses with its
// account; recover is the way out.
func TestInterruptedOperationRefusesOthers(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "switchover-sql")
	rec := runUntilKilled(t, c, "fence")
	obs := Observation{Snap: c.snap, Interrupted: []etcdlock.OpRecord{rec}}
	op := PlanFrom(c.cfg, c.req, obs, nil, nil)
	if op.Plan != nil || op.Proceed || len(op.Checks) != 1 || op.Checks[0].Code != "interrupted_operation" || op.Checks[0].Level != checks.Critical {
		t.Fatalf("want a refusal naming the interrupted operation: %+v", op)
	}
	for _, want := range []string{"operation 42", "at step fence (pg1)", "pg1 may be stopped or fenced", "replctl recover"} {
		if !strings.Contains(op.Checks[0].Message+op.Checks[0].Hint, want) {
			t.Errorf("the refusal does not say %q: %+v", want, op.Checks[0])
		}
	}
	if op := PlanFrom(c.cfg, Request{Kind: KindRecover}, obs, nil, nil); op.Plan == nil || !op.Proceed {
		t.Errorf("recover refused: %+v", op)
	}
}

// A rejoin that repoints a cascade, killed once the repoint has made its
// change, is finished by recover: pg3 streams from the primary, and the
// slot it used on pg2 (which would retain WAL there) is dropped. Killed
// after creating the slot on the primary, before the repoint, it is rolled
// back: that slot is dropped and pg3 still cascades, as it did.
func TestRecoverCascadeRepoint(t *testing.T) {
	t.Parallel()
	for _, killAt := range []string{StepRepoint + "-pg3", StepCreateSlots} {
		t.Run(killAt, func(t *testing.T) {
			t.Parallel()
			c := newEngineCase(t, "rejoin-cascade")
			before := confOf(c.ctl)
			rec := runUntilKilled(t, c, killAt)
			// The topology recover sees: pg3 where the kill left it.
			pg3 := tt.Replica("pg3", 5433, 0x3000060)
			pg1 := tt.Primary("pg1", 0x3000060, "pg2")
			mid := tt.Replica("pg2", 5432, 0x3000060)
			mid.Slots = []topology.Slot{{Name: "pg3", Type: "physical"}}
			if c.ctl.nodes["pg3"].upstream == "pg1" {
				pg3 = tt.Replica("pg3", 5432, 0x3000060)
				pg1.Replication = append(pg1.Replication, tt.Walsender("pg3", 0x3000060))
			}
			snap := topology.Classify(c.cfg, []topology.NodeStatus{pg1, mid, pg3}, nil)
			st := c.rec.st
			p, res := recoverWith(t, c, Observation{Snap: snap, State: &st, Interrupted: []etcdlock.OpRecord{rec}})
			if res.Outcome != plan.OutcomeSucceeded {
				t.Fatalf("recover %v: %s: %v", stepIDs(p), res.Outcome, res.Err)
			}
			n := c.ctl.nodes["pg3"]
			if killAt == StepCreateSlots {
				if !strings.HasPrefix(p.Notes[0], RollBack) {
					t.Errorf("direction: %q", p.Notes[0])
				}
				if after := confOf(c.ctl); !maps.EqualFunc(before, after, func(a, b nodeConf) bool {
					return maps.Equal(a.auto, b.auto) && slices.Equal(a.slots, b.slots)
				}) {
					t.Errorf("not restored:\nbefore %+v\nafter  %+v\nrecover %v", before, after, stepIDs(p))
				}
				return
			}
			if !strings.HasPrefix(p.Notes[0], RollForward) {
				t.Errorf("direction: %q", p.Notes[0])
			}
			if n.upstream != "pg1" {
				t.Errorf("pg3 follows %q after recover %v, want pg1", n.upstream, stepIDs(p))
			}
			if _, ok := c.ctl.nodes["pg2"].slots["pg3"]; ok {
				t.Errorf("slot pg3 left on pg2 after recover %v", stepIDs(p))
			}
			if d := c.ctl.dangling(); len(d) > 0 {
				t.Errorf("half-moved: %v", d)
			}
		})
	}
}
