package failover

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/topology"
	tt "github.com/replctl/replctl/topology/topologytest"
)

// engineCase is one plan kind on a fake cluster built for it.
type engineCase struct {
	kind string
	cfg  *config.Config
	ctl  *fakeCluster
	rec  *fakeRecorder
	env  *Env
	plan *plan.Plan
	// restorable is whether a failure before the point of no return puts
	// every node back exactly as it was (an emergency fence never is lifted).
	restorable bool
	// snap, state and req are what the plan was built from, for a Driver.
	snap  *topology.Snapshot
	state *etcdlock.State
	req   Request
}

func engineConfig(stop bool, nodes ...string) *config.Config {
	cfg := &config.Config{Cluster: "demo", Etcd: config.Etcd{Prefix: "/replctl"}, Lock: config.Lock{TTL: 10 * time.Second},
		CommandTimeout: 5 * time.Second, Failover: config.Failover{StreamTimeout: 2 * time.Second, PromoteTimeout: 2 * time.Second}}
	for i, n := range nodes {
		cfg.Nodes = append(cfg.Nodes, config.Node{Name: n, DSN: fmt.Sprintf("host=127.0.0.1 port=%d user=postgres", 5432+i)})
	}
	if stop {
		cfg.Nodes[0].Commands = config.NodeCommands{Stop: "stop pg1", Start: "start pg1", Rejoin: "rejoin pg1"}
	}
	// The fake's hooks model a virtual IP or a pooler (fakeCluster.clients).
	cfg.Hooks = config.Hooks{PreFence: "vip-off", PostPromote: "vip-on"}
	return cfg
}

// newEngineCase builds kind: "switchover-stop", "switchover-sql",
// "emergency", "rejoin" or "rejoin-cascade", on pg1..pg3 with pg1 the
// primary to replace (for rejoin, the fenced former primary; for
// rejoin-cascade, the primary pg3 is brought under).
func newEngineCase(t *testing.T, kind string) *engineCase {
	t.Helper()
	lsn := topology.LSN(0x3000060)
	c := &engineCase{kind: kind, ctl: newFakeCtl(lsn), rec: &fakeRecorder{}, restorable: true}
	c.ctl.lock = c.rec
	c.env = &Env{Ctl: c.ctl}
	c.env.Acquire = func(context.Context) error { c.env.Lock = c.rec; return nil }
	var err error
	switch kind {
	case "switchover-stop", "switchover-stream", "switchover-sql", "switchover-sync":
		// switchover-stream is the stop fence that follows the old
		// primary's WAL to its end; switchover-stop falls back to waiting
		// for the stop command; switchover-sync is switchover-stop with
		// both replicas acknowledging every commit.
		c.ctl.shutdownStream = kind == "switchover-stream"
		c.cfg = engineConfig(kind != "switchover-sql", "pg1", "pg2", "pg3")
		primary := tt.Primary("pg1", lsn, "pg2", "pg3")
		if kind == "switchover-sync" {
			setSyncNames(t, c.ctl, &primary, "ANY 2 (pg2, pg3)")
		}
		snap := topology.Classify(c.cfg, []topology.NodeStatus{primary, tt.Replica("pg2", 5432, lsn), tt.Replica("pg3", 5432, lsn)}, nil)
		c.snap, c.req = snap, Request{Kind: KindSwitchover, Switchover: SwitchoverOptions{Candidate: "pg2", CatchupTimeout: 2 * time.Second, CallTimeout: 500 * time.Millisecond, MaxLag: 16 << 20}}
		c.plan, err = BuildSwitchoverPlan(c.cfg, snap, c.req.Switchover, c.env)
	case "emergency", "emergency-sync":
		c.restorable = false
		c.cfg = engineConfig(false, "pg1", "pg2", "pg3")
		c.cfg.Nodes[0].Commands.Fence = "fence pg1"
		c.ctl.nodes["pg1"].up = false
		for _, r := range []string{"pg2", "pg3"} {
			c.ctl.stopReceiver(c.ctl.nodes[r])
		}
		dead := func(name string) topology.NodeStatus {
			st := tt.Replica(name, 5432, lsn)
			st.WALReceiver = nil
			return st
		}
		snap := topology.Classify(c.cfg, []topology.NodeStatus{{Name: "pg1", Error: "connection refused"}, dead("pg2"), dead("pg3")}, nil)
		st := &etcdlock.State{Primary: "pg1", Sync: etcdlock.SyncSettings{Commit: "on"}}
		if kind == "emergency-sync" {
			// Both replicas acknowledge every commit: with pg1 gone,
			// pg2 has no second standby to wait for.
			st.Sync.StandbyNames = "ANY 2 (pg2, pg3)"
		}
		c.snap, c.state, c.req = snap, st, Request{Kind: KindFailover, Emergency: EmergencyOptions{Candidate: "pg2", CatchupTimeout: 2 * time.Second, CallTimeout: 500 * time.Millisecond}}
		c.plan, err = BuildEmergencyPlan(c.cfg, snap, st, "pg1", "pg2", c.req.Emergency, c.env)
	case "rejoin", "rejoin-raise":
		c.cfg = engineConfig(true, "pg1", "pg2", "pg3")
		f := c.ctl
		// pg2 was promoted; pg3 follows it; pg1 is SQL-fenced, still up.
		pg1, pg2, pg3 := f.nodes["pg1"], f.nodes["pg2"], f.nodes["pg3"]
		f.stopReceiver(pg2)
		pg2.inRecovery, pg2.timeline = false, 2
		pg2.slots["pg3"] = false
		pg3.auto["primary_conninfo"] = "host=127.0.0.1 port=5433 user=postgres application_name=pg3"
		f.reload(pg3)
		pg1.auto["default_transaction_read_only"], pg1.auto["synchronous_standby_names"] = "on", topology.FenceStandbyName
		f.reload(pg1)
		c.rec.st.Fence("pg1", "former primary")
		fenced := tt.Primary("pg1", lsn)
		fenced.Settings.DefaultTransactionReadOnly = tt.Ptr("on")
		primary := tt.Primary("pg2", lsn+0x1000, "pg3")
		primary.Timeline = tt.Ptr(uint32(2))
		rec := &topology.Record{Primary: "pg2", Fenced: []string{"pg1"}}
		if kind == "rejoin-raise" {
			// What the emergency failover of emergency-sync left.
			pg2.auto["synchronous_standby_names"] = "ANY 1 (pg3)"
			f.reload(pg2)
			primary.Settings.SynchronousStandbyNames = tt.Ptr("ANY 1 (pg3)")
			rec.SyncRestore = &topology.SyncRestore{Node: "pg1", Primary: "pg2", Set: "ANY 1 (pg3)", Before: "ANY 2 (pg2, pg3)", OperationID: "op-1"}
			c.rec.st.SyncRestore = rec.SyncRestore
		}
		snap := topology.Classify(c.cfg, []topology.NodeStatus{fenced, primary, tt.Replica("pg3", 5433, lsn)}, rec)
		var results []string
		c.snap, c.req = snap, Request{Kind: KindRejoin, Node: "pg1"}
		c.plan, results, err = planRejoinForTest(c.cfg, snap, c.env)
		if len(results) > 0 {
			t.Fatalf("rejoin refused: %v", results)
		}
	case "rejoin-cascade":
		// pg3 streams through pg2 (a switchover that could not repoint it
		// left it there); pg1 has no slot for it.
		c.cfg = engineConfig(false, "pg1", "pg2", "pg3")
		f := c.ctl
		pg2, pg3 := f.nodes["pg2"], f.nodes["pg3"]
		pg2.slots["pg3"] = false
		pg3.auto["primary_conninfo"] = "host=127.0.0.1 port=5433 user=postgres application_name=pg3 sslmode=prefer"
		f.reload(pg3)
		delete(f.nodes["pg1"].slots, "pg3")
		mid := tt.Replica("pg2", 5432, lsn)
		mid.Replication = []topology.Replication{tt.Walsender("pg3", lsn)}
		mid.Slots = []topology.Slot{{Name: "pg3", Type: "physical", Active: true}}
		snap := topology.Classify(c.cfg, []topology.NodeStatus{tt.Primary("pg1", lsn, "pg2"), mid, tt.Replica("pg3", 5433, lsn)}, nil)
		c.snap, c.req = snap, Request{Kind: KindRejoin, Node: "pg3"}
		var results []checks.Result
		c.plan, results, err = PlanRejoin(c.cfg, snap, "pg3", c.env)
		if failed := checks.Failed(results); len(failed) > 0 {
			t.Fatalf("rejoin refused: %v", failed)
		}
	default:
		t.Fatalf("unknown kind %q", kind)
	}
	if err != nil || c.plan == nil {
		t.Fatalf("%s: plan: %v", kind, err)
	}
	return c
}

// setSyncNames gives the fake node st names and st (its probe) the
// synchronous_standby_names names, as ALTER SYSTEM and a reload would.
func setSyncNames(t *testing.T, f *fakeCluster, st *topology.NodeStatus, names string) {
	t.Helper()
	n := f.nodes[st.Name]
	n.auto["synchronous_standby_names"] = names
	f.reload(n)
	ss, err := topology.ParseSyncStandbyNames(names)
	if err != nil {
		t.Fatal(err)
	}
	st.Settings.SynchronousStandbyNames, st.Settings.SyncStandbys = tt.Ptr(names), &ss
}

func planRejoinForTest(cfg *config.Config, snap *topology.Snapshot, env *Env) (*plan.Plan, []string, error) {
	p, results, err := PlanRejoin(cfg, snap, "pg1", env)
	var failed []string
	for _, r := range results {
		if r.Level == checks.Critical {
			failed = append(failed, r.Name+": "+r.Message)
		}
	}
	return p, failed, err
}

func ponrIndex(p *plan.Plan) int {
	return slices.IndexFunc(p.Steps, func(s plan.Step) bool { return s.PointOfNoReturn })
}

// TestEngineFaultMatrix runs every plan kind with, at each step k: (a) step
// k failing after its change, (b) the lock lost just before step k, (c) the
// lock lost during step k (after its change). From the fake's recorded
// state it asserts: nothing changed while the lock was lost; never two
// writable nodes; before the point of no return with the lock, every node
// is exactly as it was; without it, every undo is skipped and reported, a
// fenced node saying it was left fenced; past it, the outcome is partial
// with what remains; and no replica is left naming a node or slot that
// does not exist.
func TestEngineFaultMatrix(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"switchover-stop", "switchover-stream", "switchover-sql", "switchover-sync", "emergency", "emergency-sync", "rejoin", "rejoin-cascade"} {
		n := len(newEngineCase(t, kind).plan.Steps)
		for k := range n {
			for _, mode := range []string{"fail", "lose-before", "lose-during"} {
				t.Run(fmt.Sprintf("%s/%02d/%s", kind, k, mode), func(t *testing.T) {
					t.Parallel()
					c := newEngineCase(t, kind)
					before := c.ctl.state()
					step := &c.plan.Steps[k]
					ctx, cancel := context.WithCancelCause(t.Context())
					defer cancel(nil)
					lose := func() {
						c.rec.lose()
						cancel(&etcdlock.LockLostError{Cluster: "demo", Reason: "the lease was revoked"})
					}
					run := step.Run
					if run == nil {
						t.Skip("no run")
					}
					switch mode {
					case "fail":
						step.Run = func(ctx context.Context) error {
							if err := run(ctx); err != nil {
								return err
							}
							return errors.New("injected failure after the change")
						}
					case "lose-before":
						if k == 0 {
							lose()
						} else {
							prev := c.plan.Steps[k-1].Run
							c.plan.Steps[k-1].Run = func(ctx context.Context) error {
								err := prev(ctx)
								lose()
								return err
							}
						}
					case "lose-during":
						step.Run = func(ctx context.Context) error {
							err := run(ctx)
							lose()
							return errors.Join(err, context.Cause(ctx))
						}
					}
					res := plan.Execute(ctx, c.plan, c.env, nil, nil)
					lost := c.rec.isLost()
					if len(c.ctl.violations) > 0 {
						t.Errorf("changed without the lock: %v", c.ctl.violations)
					}
					if w := c.ctl.writable(); len(w) > 1 {
						t.Errorf("writable: %v", w)
					}
					if d := c.ctl.dangling(); len(d) > 0 {
						t.Errorf("half-moved: %v", d)
					}
					ponr := ponrIndex(c.plan)
					switch {
					case res.Outcome == plan.OutcomeSucceeded:
						if mode == "fail" && !step.Optional {
							t.Errorf("succeeded despite the injected failure")
						}
						if c.kind != "rejoin" && c.kind != "rejoin-cascade" && c.ctl.clients != "pg2" {
							t.Errorf("clients sent to %q after the promotion, want pg2", c.ctl.clients)
						}
					case ponr >= 0 && k > ponr:
						if res.Outcome != plan.OutcomePartial {
							t.Errorf("outcome %s after the point of no return, want partial", res.Outcome)
						}
					case lost:
						if res.Outcome != plan.OutcomeFailed {
							t.Errorf("outcome %s, want failed", res.Outcome)
						}
						for _, s := range res.Steps {
							if s.Outcome == "undone" && c.plan.Steps[slices.IndexFunc(c.plan.Steps, func(p plan.Step) bool { return "undo-"+p.ID == s.ID })].Mutates {
								t.Errorf("%s ran without the lock", s.ID)
							}
						}
						pg1 := c.ctl.nodes["pg1"]
						fenced := !strings.HasPrefix(c.kind, "emergency") && c.kind != "rejoin" && (!pg1.up || pg1.live["default_transaction_read_only"] == "on")
						if fenced && !strings.Contains(strings.Join(res.Left, "\n"), "pg1 left fenced because the lock was lost") {
							t.Errorf("the report does not say pg1 was left fenced: %q", res.Left)
						}
						if c.ctl.clients == "" && !strings.Contains(strings.Join(res.Left, "\n"), "REPLCTL_UNDO=1") {
							t.Errorf("clients are held back, and the report does not say how to send them to pg1 again: %q", res.Left)
						}
					// A cascade's repoint (its point of no return) that
					// fails is undone like the steps before it: the
					// default case checks that everything is restored.
					case k == ponr && mode == "fail" && c.kind != "rejoin-cascade":
						// Promoted, then "failed": the fence must stay.
						if w := c.ctl.writable(); !reflect.DeepEqual(w, []string{"pg2"}) && c.kind != "rejoin" {
							t.Errorf("writable %v, want only the promoted pg2", w)
						}
					default:
						if res.Outcome != plan.OutcomeFailed {
							t.Errorf("outcome %s, want failed", res.Outcome)
						}
						after := c.ctl.state()
						if !c.restorable {
							delete(before, "pg1")
							delete(after, "pg1")
						}
						if !reflect.DeepEqual(before, after) {
							t.Errorf("not restored:\nbefore %+v\nafter  %+v\nsteps %+v", before, after, res.Steps)
						}
					}
				})
			}
		}
	}
}

// Defect 1: the lease lost while the old primary is being stopped. The
// undo must not start it again (another operator may be promoting), and
// the report says it was left fenced.
func TestEngineLockLostDuringStopFenceLeavesFence(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "switchover-stop")
	i := slices.IndexFunc(c.plan.Steps, func(s plan.Step) bool { return s.ID == StepFence })
	ctx, cancel := context.WithCancelCause(t.Context())
	defer cancel(nil)
	run := c.plan.Steps[i].Run
	c.plan.Steps[i].Run = func(ctx context.Context) error {
		err := run(ctx)
		c.rec.lose()
		cancel(&etcdlock.LockLostError{Cluster: "demo", Reason: "the lease was revoked"})
		return err
	}
	res := plan.Execute(ctx, c.plan, c.env, nil, nil)
	if c.ctl.called("command pg1 start") || c.ctl.nodes["pg1"].up {
		t.Fatalf("pg1 restarted after the lock was lost: %v", c.ctl.calls)
	}
	if !strings.Contains(strings.Join(res.Left, "\n"), "pg1 left fenced because the lock was lost") {
		t.Errorf("left %q", res.Left)
	}
}

// Defect 2: a detach whose wait fails is undone itself, back to the
// replica's own primary_conninfo (its sslmode, passfile), not one rebuilt
// from the configuration; and a partial CreateSlots drops what it made.
func TestEngineFailedStepUndoesItsOwnChange(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "switchover-sql")
	own := c.ctl.nodes["pg3"].auto["primary_conninfo"]
	i := slices.IndexFunc(c.plan.Steps, func(s plan.Step) bool { return s.ID == StepDetach+"-pg3" })
	run := c.plan.Steps[i].Run
	c.plan.Steps[i].Run = func(ctx context.Context) error {
		if err := run(ctx); err != nil {
			return err
		}
		return errors.New("WAL receiver did not restart")
	}
	res := plan.Execute(t.Context(), c.plan, c.env, nil, nil)
	if res.Outcome != plan.OutcomeFailed {
		t.Fatalf("outcome %s", res.Outcome)
	}
	if got := c.ctl.nodes["pg3"].auto["primary_conninfo"]; got != own {
		t.Errorf("pg3 primary_conninfo %q, want its own %q", got, own)
	}
	if _, ok := c.ctl.nodes["pg2"].slots["pg3"]; ok {
		t.Errorf("slot pg3 left on pg2")
	}

	c = newEngineCase(t, "switchover-stop")
	c.ctl.failSlotsAt = 1
	res = plan.Execute(t.Context(), c.plan, c.env, nil, nil)
	if res.Outcome != plan.OutcomeFailed || len(c.ctl.nodes["pg2"].slots) != 0 {
		t.Errorf("outcome %s, slots left on pg2: %v", res.Outcome, c.ctl.nodes["pg2"].slots)
	}
}

// Defect 3: a replica with replay paused neither fails a planned
// switchover nor is left half-moved: with the SQL fence its walsender on
// the old primary is cut, with the stop fence it is repointed and not
// waited for; when replay resumes it follows the new primary.
func TestEnginePausedReplica(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"switchover-stop", "switchover-stream", "switchover-sql"} {
		for _, fault := range []string{"paused", "delayed"} {
			t.Run(kind+"/"+fault, func(t *testing.T) {
				t.Parallel()
				c := newEngineCase(t, kind)
				lsn := topology.LSN(0x3000060)
				pg3 := tt.Replica("pg3", 5432, lsn)
				if fault == "paused" {
					c.ctl.nodes["pg3"].paused = true
					pg3.ReplayPauseState = "paused"
				} else {
					c.ctl.nodes["pg3"].delayed = true
					pg3.Settings.RecoveryMinApplyDelayMS = tt.Ptr(int64(3600000))
				}
				snap := topology.Classify(c.cfg, []topology.NodeStatus{tt.Primary("pg1", lsn, "pg2", "pg3"), tt.Replica("pg2", 5432, lsn), pg3}, nil)
				p, err := BuildSwitchoverPlan(c.cfg, snap, SwitchoverOptions{Candidate: "pg2", CatchupTimeout: 2 * time.Second}, c.env)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(strings.Join(p.Notes, "\n"), "pg3: ") || !strings.Contains(strings.Join(p.Descriptions(), "\n"), "not waited for") {
					t.Errorf("the plan does not say what happens to pg3:\n%s\n%s", strings.Join(p.Descriptions(), "\n"), strings.Join(p.Notes, "\n"))
				}
				res := plan.Execute(t.Context(), p, c.env, nil, nil)
				if res.Outcome != plan.OutcomeSucceeded {
					t.Fatalf("outcome %s: %v", res.Outcome, res.Err)
				}
				if d := c.ctl.dangling(); len(d) > 0 {
					t.Fatalf("half-moved: %v", d)
				}
				n := c.ctl.nodes["pg3"]
				if n.upstream == "pg1" {
					t.Fatalf("pg3 still streams from the old primary")
				}
				n.paused, n.delayed = false, false
				if err := c.ctl.WaitStreaming(t.Context(), "pg3", 2); err != nil || n.upstream != "pg2" {
					t.Fatalf("after resume pg3 streams from %q: %v", n.upstream, err)
				}
			})
		}
	}
}

// Defect 4: the candidate far behind is waited for before the fence.
func TestEngineCatchupWaitsBeforeFence(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"switchover-stop", "switchover-stream", "switchover-sql"} {
		c := newEngineCase(t, kind)
		for _, n := range c.ctl.nodes {
			n.lsn = 1 << 40
		}
		c.ctl.behind, c.ctl.catchupStep = 200<<20, 10<<20
		var behindAtFence uint64
		i := slices.IndexFunc(c.plan.Steps, func(s plan.Step) bool { return s.ID == StepFence })
		run := c.plan.Steps[i].Run
		c.plan.Steps[i].Run = func(ctx context.Context) error {
			c.ctl.mu.Lock()
			behindAtFence = c.ctl.behind
			c.ctl.mu.Unlock()
			return run(ctx)
		}
		if res := plan.Execute(t.Context(), c.plan, c.env, nil, nil); res.Outcome != plan.OutcomeSucceeded {
			t.Fatalf("%s: outcome %s: %v", kind, res.Outcome, res.Err)
		}
		if behindAtFence > nearlyCaughtUp {
			t.Errorf("%s: the fence went up %s behind", kind, config.HumanBytes(behindAtFence))
		}
	}
}

// Defect 5: the save-settings step saves the primary's settings.
func TestEngineSavesSyncSettings(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "switchover-stop")
	i := slices.IndexFunc(c.plan.Steps, func(s plan.Step) bool { return s.ID == StepSaveConfig })
	c.plan.Steps = c.plan.Steps[:i+1]
	if res := plan.Execute(t.Context(), c.plan, c.env, nil, nil); res.Outcome != plan.OutcomeSucceeded {
		t.Fatal(res.Err)
	}
	if c.rec.st.Sync.Commit != "on" || c.rec.st.Sync.SeenAt.IsZero() || c.rec.st.Primary != "pg1" {
		t.Errorf("record %+v", c.rec.st)
	}
}

// pg2SyncAfter runs the plan of kind to success and returns its case and
// pg2's synchronous_standby_names then.
func pg2SyncAfter(t *testing.T, kind string) (*engineCase, string) {
	t.Helper()
	c := newEngineCase(t, kind)
	if res := plan.Execute(t.Context(), c.plan, c.env, nil, nil); res.Outcome != plan.OutcomeSucceeded {
		t.Fatalf("%s: outcome %s: %v", kind, res.Outcome, res.Err)
	}
	return c, c.ctl.nodes["pg2"].auto["synchronous_standby_names"]
}

// A switchover that rejoins the old primary puts it in the candidate's
// place among the synchronous standbys (ANY 2 of pg2 and pg3, pg2
// promoted: ANY 2 of pg3 and pg1), so nothing is lowered; and so does
// recover rolling forward a switchover killed after pg_promote, as the
// interrupted plan said. When the rejoin fails, the others are set.
func TestSwitchoverKeepsSyncCount(t *testing.T) {
	t.Parallel()
	check := func(t *testing.T, c *engineCase) {
		t.Helper()
		if got := c.ctl.nodes["pg2"].auto["synchronous_standby_names"]; got != "ANY 2 (pg3, pg1)" {
			t.Errorf("pg2's synchronous_standby_names %q, want ANY 2 (pg3, pg1)", got)
		}
		if c.rec.st.SyncRestore != nil {
			t.Errorf("record's sync_restore %+v, want none", c.rec.st.SyncRestore)
		}
	}
	t.Run("switchover", func(t *testing.T) {
		t.Parallel()
		c, _ := pg2SyncAfter(t, "switchover-sync")
		check(t, c)
	})
	t.Run("recover", func(t *testing.T) {
		t.Parallel()
		c := newEngineCase(t, "switchover-sync")
		p, res := recoverKilledSwitchover(t, c, runUntilKilled(t, c, StepPromote), true)
		if res.Outcome != plan.OutcomeSucceeded || !strings.HasPrefix(p.Notes[0], RollForward) {
			t.Fatalf("recover %v: %s %v (%q)", stepIDs(p), res.Outcome, res.Err, p.Notes)
		}
		if ids := stepIDs(p); slices.Index(ids, StepSync) < slices.Index(ids, StepRejoin) {
			t.Errorf("steps %v: the sync step must follow the rejoin it names", ids)
		}
		check(t, c)
	})
	// The old primary's rejoin failing must not leave the new primary
	// asynchronous while pg3 streams: ANY 1 (pg3), noted for the later
	// rejoin to raise.
	t.Run("rejoin fails", func(t *testing.T) {
		t.Parallel()
		c := newEngineCase(t, "switchover-sync")
		i := slices.IndexFunc(c.plan.Steps, func(s plan.Step) bool { return s.ID == StepRejoin })
		c.plan.Steps[i].Run = func(context.Context) error { return errors.New("pg_rewind failed") }
		res := plan.Execute(t.Context(), c.plan, c.env, nil, nil)
		if res.Outcome != plan.OutcomePartial {
			t.Fatalf("outcome %s: %v", res.Outcome, res.Err)
		}
		if got := c.ctl.nodes["pg2"].auto["synchronous_standby_names"]; got != "ANY 1 (pg3)" {
			t.Errorf("pg2's synchronous_standby_names %q, want ANY 1 (pg3)", got)
		}
		want := topology.SyncRestore{Node: "pg1", Primary: "pg2", Set: "ANY 1 (pg3)", Before: "ANY 2 (pg2, pg3)"}
		if r := c.rec.st.SyncRestore; r == nil || *r != want {
			t.Errorf("record's sync_restore %+v, want %+v", r, want)
		}
		if got := c.rec.st.Sync.StandbyNames; got != "ANY 1 (pg3)" {
			t.Errorf("record's sync %q, want ANY 1 (pg3)", got)
		}
	})
}

// assertPg3Lowered checks that switchover-sync left pg2 waiting for one of
// pg3 and pg1 for want of pg3, and the record saying why and that pg3's
// rejoin raises it to ANY 2 (pg3, pg1).
func assertPg3Lowered(t *testing.T, c *engineCase, why string) {
	t.Helper()
	if got := c.ctl.nodes["pg2"].auto["synchronous_standby_names"]; got != "ANY 1 (pg3, pg1)" {
		t.Errorf("pg2's synchronous_standby_names %q, want ANY 1 (pg3, pg1)", got)
	}
	want := topology.SyncRestore{Node: "pg3", Primary: "pg2", Set: "ANY 1 (pg3, pg1)", Before: "ANY 2 (pg2, pg3)", Raise: "ANY 2 (pg3, pg1)", Why: why}
	if r := c.rec.st.SyncRestore; r == nil || *r != want {
		t.Fatalf("record's sync_restore %+v, want %+v", r, want)
	}
}

// Every commit waits for both replicas (ANY 2) and pg3's replay is paused:
// repointed, it does not stream from pg2 until resumed. The switchover
// neither fails nor makes commits hang on pg3 (the fake's commits are not
// modelled; the step would time out waiting for 2): pg2 runs ANY 1 (pg3,
// pg1), and the record says that pg3's rejoin raises it to ANY 2 (pg3,
// pg1), which it does once pg3 streams.
func TestSwitchoverSyncPausedReplica(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "switchover-sync")
	lsn := topology.LSN(0x3000060)
	c.ctl.nodes["pg3"].paused = true
	pg3 := tt.Replica("pg3", 5432, lsn)
	pg3.ReplayPauseState = "paused"
	snap := topology.Classify(c.cfg, []topology.NodeStatus{c.snap.Node("pg1").NodeStatus, tt.Replica("pg2", 5432, lsn), pg3}, nil)
	p, err := BuildSwitchoverPlan(c.cfg, snap, c.req.Switchover, c.env)
	if err != nil {
		t.Fatal(err)
	}
	if d := p.Steps[slices.IndexFunc(p.Steps, func(s plan.Step) bool { return s.ID == StepSync })].Description; !strings.Contains(d, "pg3 is not counted on (replay is paused)") ||
		!strings.Contains(d, "'ANY 1 (pg3, pg1)'") || !strings.Contains(d, "`replctl rejoin pg3` raises it to 'ANY 2 (pg3, pg1)'") {
		t.Errorf("the sync step does not say what it does without pg3: %q", d)
	}
	if res := plan.Execute(t.Context(), p, c.env, nil, nil); res.Outcome != plan.OutcomeSucceeded {
		t.Fatalf("outcome %s: %v", res.Outcome, res.Err)
	}
	assertPg3Lowered(t, c, "pg3 could not stream from pg2 (replay is paused)")

	// Resumed, pg3 streams from pg2: its rejoin raises the setting.
	p2 := tt.Primary("pg2", lsn+0x1000, "pg1", "pg3")
	p2.Timeline = tt.Ptr(uint32(2))
	p2.Settings.SynchronousStandbyNames = tt.Ptr("ANY 1 (pg3, pg1)")
	after := topology.Classify(c.cfg, []topology.NodeStatus{tt.Replica("pg1", 5433, lsn), p2, tt.Replica("pg3", 5433, lsn)},
		&topology.Record{Primary: "pg2", SyncRestore: c.rec.st.SyncRestore})
	if st := syncRaise(after, after.Node("pg2"), "pg3"); st == nil || st.String() != "ANY 2 (pg3, pg1)" {
		t.Errorf("pg3's rejoin raises to %v, want ANY 2 (pg3, pg1)", st)
	}
	if st := syncRaise(after, after.Node("pg2"), "pg1"); st != nil {
		t.Errorf("pg1's rejoin raises to %v: the note is pg3's", st)
	}
}

// synchronous_standby_names = 'ANY 1 (*)' waits for any standby: the new
// primary gets it too, once one streams, and nothing is lowered (before,
// "*" never counted as streaming: the switchover waited out the stream
// timeout and left pg2 asynchronous).
func TestSwitchoverSyncStar(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "switchover-stop")
	lsn := topology.LSN(0x3000060)
	const names = "ANY 1 (*)"
	p1 := tt.Primary("pg1", lsn, "pg2", "pg3")
	setSyncNames(t, c.ctl, &p1, names)
	snap := topology.Classify(c.cfg, []topology.NodeStatus{p1, tt.Replica("pg2", 5432, lsn), tt.Replica("pg3", 5432, lsn)}, nil)
	p, err := BuildSwitchoverPlan(c.cfg, snap, c.req.Switchover, c.env)
	if err != nil {
		t.Fatal(err)
	}
	if res := plan.Execute(t.Context(), p, c.env, nil, nil); res.Outcome != plan.OutcomeSucceeded {
		t.Fatalf("outcome %s: %v", res.Outcome, res.Err)
	}
	if got := c.ctl.nodes["pg2"].auto["synchronous_standby_names"]; got != names {
		t.Errorf("pg2's synchronous_standby_names %q, want %s", got, names)
	}
	if r := c.rec.st.SyncRestore; r != nil {
		t.Errorf("record's sync_restore %+v, want none", r)
	}
}

// A synchronous standby that streamed when the plan was made but does not
// stream from the new primary within the stream timeout (pg3 stuck after
// the plan) leaves the new primary waiting for as many as stream, not
// asynchronous: ANY 1 (pg3, pg1), noted for pg3's rejoin to raise; the
// step fails, so the switchover ends partly done, naming pg3.
func TestSwitchoverSyncStandbyMissing(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "switchover-sync")
	c.ctl.nodes["pg3"].paused = true // after the plan: it counts on pg3
	res := plan.Execute(t.Context(), c.plan, c.env, nil, nil)
	if res.Outcome != plan.OutcomePartial || res.Err == nil || !strings.Contains(res.Err.Error(), "pg3") {
		t.Fatalf("outcome %s: %v", res.Outcome, res.Err)
	}
	var syncErr string
	for _, s := range res.Steps {
		if s.ID == StepSync {
			syncErr = s.Error
		}
	}
	if !strings.Contains(syncErr, "set to 'ANY 1 (pg3, pg1)' rather than let commits hang on pg3") {
		t.Errorf("the sync step's error does not say what it set: %q", syncErr)
	}
	assertPg3Lowered(t, c, "pg3 did not stream from pg2 within 2s")
}

// The rejoin of a replica that cascades (pg3 under pg2), when an operation
// lowered synchronous replication for want of it, raises it back once the
// repoint makes it stream from the primary.
func TestRejoinCascadeRaisesSync(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "rejoin-cascade")
	pg1 := c.ctl.nodes["pg1"]
	p1 := c.snap.Node("pg1").NodeStatus
	setSyncNames(t, c.ctl, &p1, "ANY 1 (pg3, pg2)")
	r := &topology.SyncRestore{Node: "pg3", Primary: "pg1", Set: "ANY 1 (pg3, pg2)", Before: "ANY 2 (pg1, pg3)", Raise: "ANY 2 (pg3, pg2)"}
	c.rec.st.SyncRestore = r
	snap := topology.Classify(c.cfg, []topology.NodeStatus{p1, c.snap.Node("pg2").NodeStatus, c.snap.Node("pg3").NodeStatus}, &topology.Record{Primary: "pg1", SyncRestore: r})
	p, results, err := PlanRejoin(c.cfg, snap, "pg3", c.env)
	if err != nil || p == nil || len(checks.Failed(results)) > 0 {
		t.Fatalf("rejoin refused: %v %v", err, checks.Failed(results))
	}
	if ids := stepIDs(p); !slices.Contains(ids, StepSync) {
		t.Fatalf("steps %v: no sync step", ids)
	}
	if res := plan.Execute(t.Context(), p, c.env, nil, nil); res.Outcome != plan.OutcomeSucceeded {
		t.Fatalf("outcome %s: %v (steps %v)", res.Outcome, res.Err, stepIDs(p))
	}
	if got := pg1.auto["synchronous_standby_names"]; got != "ANY 2 (pg3, pg2)" {
		t.Errorf("pg1's synchronous_standby_names %q, want ANY 2 (pg3, pg2)", got)
	}
	if c.rec.st.SyncRestore != nil {
		t.Errorf("record's sync_restore %+v, want none", c.rec.st.SyncRestore)
	}
}

// An emergency failover that cannot keep as many synchronous standbys as
// the old primary had (ANY 2 of pg2 and pg3, pg2 promoted) lowers the
// number and says so in the record, for the old primary's rejoin to raise
// it back.
func TestEmergencyRecordsLoweredSync(t *testing.T) {
	t.Parallel()
	c, got := pg2SyncAfter(t, "emergency-sync")
	if got != "ANY 1 (pg3)" {
		t.Errorf("pg2's synchronous_standby_names %q, want ANY 1 (pg3)", got)
	}
	want := topology.SyncRestore{Node: "pg1", Primary: "pg2", Set: "ANY 1 (pg3)", Before: "ANY 2 (pg2, pg3)"}
	if r := c.rec.st.SyncRestore; r == nil || *r != want {
		t.Errorf("record's sync_restore %+v, want %+v", r, want)
	}
}

// The rejoin of the former primary whose fencing lowered synchronous
// replication raises it back, the promoted node's place in the list taken
// by the rejoined one, and clears the record's note of it; an operator who
// changed the setting since keeps it (the name is only added).
func TestRejoinRaisesLoweredSync(t *testing.T) {
	t.Parallel()
	c, got := pg2SyncAfter(t, "rejoin-raise")
	if got != "ANY 2 (pg3, pg1)" {
		t.Errorf("pg2's synchronous_standby_names %q, want ANY 2 (pg3, pg1)", got)
	}
	if c.rec.st.SyncRestore != nil || c.rec.st.Sync.StandbyNames != "ANY 2 (pg3, pg1)" {
		t.Errorf("record: sync %+v, sync_restore %+v; want ANY 2 (pg3, pg1) and none", c.rec.st.Sync, c.rec.st.SyncRestore)
	}

	changed := newEngineCase(t, "rejoin-raise")
	p2 := changed.snap.Node("pg2")
	p2.Settings.SynchronousStandbyNames = tt.Ptr("FIRST 1 (pg3)")
	if st := syncRaise(changed.snap, p2, "pg1"); st != nil {
		t.Errorf("raised %s over the operator's FIRST 1 (pg3)", st)
	}
	p2.Settings.SynchronousStandbyNames = tt.Ptr("pg3") // FIRST 1 (pg3), not the lowered ANY 1 (pg3)
	if st := syncRaise(changed.snap, p2, "pg1"); st != nil {
		t.Errorf("raised %s over the operator's pg3", st)
	}
	p2.Settings.SynchronousStandbyNames = tt.Ptr("any 1 (\"pg3\")")
	if st := syncRaise(changed.snap, p2, "pg1"); st == nil || st.String() != "ANY 2 (pg3, pg1)" {
		t.Errorf("the lowered setting spelt otherwise: raised to %v, want ANY 2 (pg3, pg1)", st)
	}
	if st := syncRaise(changed.snap, p2, "pg3"); st != nil {
		t.Errorf("the rejoin of pg3, which was not fenced for it, raised it to %s", st)
	}

	// Rejoined already (by hand, or the raise failed then): rejoin raises.
	pg1 := tt.Replica("pg1", 5433, 0x3000060)
	pg1.Timeline = tt.Ptr(uint32(2))
	primary := tt.Primary("pg2", 0x3001060, "pg3", "pg1")
	primary.Timeline = tt.Ptr(uint32(2))
	primary.Settings.SynchronousStandbyNames = tt.Ptr("ANY 1 (pg3)")
	rec := &topology.Record{Primary: "pg2", SyncRestore: &topology.SyncRestore{Node: "pg1", Primary: "pg2", Set: "ANY 1 (pg3)", Before: "ANY 2 (pg2, pg3)"}}
	snap := topology.Classify(c.cfg, []topology.NodeStatus{pg1, primary, tt.Replica("pg3", 5433, 0x3000060)}, rec)
	p, _, err := PlanRejoin(c.cfg, snap, "pg1", c.env)
	if err != nil {
		t.Fatal(err)
	}
	if ids := stepIDs(p); !slices.Equal(ids, []string{StepLock, StepSync}) {
		t.Errorf("rejoin of the rejoined pg1 with the raise pending: steps %v, want lock, sync", ids)
	}
}

// Defect 6: a reachable old primary whose SQL fence fails stops the
// failover; only a failure to connect counts as unreachable.
func TestEngineEmergencyFenceErrorStops(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "emergency")
	c.ctl.nodes["pg1"].up, c.ctl.nodes["pg1"].hung = true, true
	c.plan.Steps = slices.DeleteFunc(c.plan.Steps, func(s plan.Step) bool { return s.ID == StepFenceCommand })
	res := plan.Execute(t.Context(), c.plan, c.env, nil, nil)
	if res.Outcome != plan.OutcomeFailed || c.ctl.called("promote") {
		t.Fatalf("outcome %s, calls %v", res.Outcome, c.ctl.calls)
	}
	c = newEngineCase(t, "emergency")
	if res := plan.Execute(t.Context(), c.plan, c.env, nil, nil); res.Outcome != plan.OutcomeSucceeded {
		t.Fatalf("unreachable old primary: outcome %s: %v", res.Outcome, res.Err)
	}
}

// Defects 7 and 12: the executor enforces each step's own timeout; a
// candidate hung after the fence does not hold the lock for ever.
func TestEnginePromoteTimeout(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "switchover-stop")
	i := slices.IndexFunc(c.plan.Steps, func(s plan.Step) bool { return s.ID == StepPromote })
	c.plan.Steps[i].Timeout = 100 * time.Millisecond
	run := c.plan.Steps[i].Run
	c.plan.Steps[i].Run = func(ctx context.Context) error {
		c.ctl.mu.Lock()
		c.ctl.nodes["pg2"].hung = true
		c.ctl.mu.Unlock()
		return run(ctx)
	}
	done := make(chan *plan.Result, 1)
	go func() { done <- plan.Execute(t.Context(), c.plan, c.env, nil, nil) }()
	select {
	case res := <-done:
		var te *plan.StepTimeoutError
		if res.Outcome != plan.OutcomeFailed || !errors.As(res.Err, &te) {
			t.Fatalf("outcome %s: %v", res.Outcome, res.Err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the promote step has no deadline")
	}
}

// Defects 8 and 17: the old primary is recorded as fenced before it is
// fenced, for both fences and the emergency path.
func TestEngineRecordsFenceBeforeFencing(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"switchover-stop", "switchover-stream", "switchover-sql", "emergency"} {
		c := newEngineCase(t, kind)
		i := slices.IndexFunc(c.plan.Steps, func(s plan.Step) bool { return s.Fences })
		run := c.plan.Steps[i].Run
		var marked bool
		c.plan.Steps[i].Run = func(ctx context.Context) error {
			marked = c.rec.st.IsFenced("pg1")
			return run(ctx)
		}
		if res := plan.Execute(t.Context(), c.plan, c.env, nil, nil); res.Outcome != plan.OutcomeSucceeded {
			t.Fatalf("%s: %s: %v", kind, res.Outcome, res.Err)
		}
		if !marked {
			t.Errorf("%s: pg1 not marked fenced before %s", kind, c.plan.Steps[i].ID)
		}
	}
}

// Defect 13: a hung replica does not hold the stop fence hostage: its
// walsender is terminated before the shutdown.
func TestEngineHungReplicaReleasedBeforeStop(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "switchover-stop")
	c.ctl.nodes["pg3"].hung = true
	i := slices.IndexFunc(c.plan.Steps, func(s plan.Step) bool { return s.ID == StepFence })
	c.plan.Steps = c.plan.Steps[:i+1]
	if res := plan.Execute(t.Context(), c.plan, c.env, nil, nil); res.Outcome != plan.OutcomeSucceeded {
		t.Fatalf("%s: %v", res.Outcome, res.Err)
	}
	term := slices.Index(c.ctl.calls, "terminate-walsenders pg1 pg3")
	stop := slices.Index(c.ctl.calls, "command pg1 stop")
	if term < 0 || term > stop {
		t.Errorf("calls %v: want pg3's walsender terminated before the stop", c.ctl.calls)
	}
}

// With the old primary's WAL followed to its end, the promotion does not
// wait for the stop command to return; the stopped step does, and an undo
// never starts the old primary while it is still shutting down.
func TestEngineStopFencePromotesAtTheStreamsEnd(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "switchover-stream")
	c.ctl.stopTakes = 300 * time.Millisecond
	res := plan.Execute(t.Context(), c.plan, c.env, nil, nil)
	if res.Outcome != plan.OutcomeSucceeded {
		t.Fatalf("%s: %v", res.Outcome, res.Err)
	}
	promote, returned := slices.Index(c.ctl.calls, "promote pg2"), slices.Index(c.ctl.calls, "command pg1 stop returned")
	if promote < 0 || returned < 0 || promote > returned {
		t.Errorf("calls %v: want pg2 promoted before pg1's stop command returned", c.ctl.calls)
	}
	for _, s := range res.Steps {
		if s.ID == StepStopped && s.Outcome != "done" {
			t.Errorf("stopped: %s", s.Outcome)
		}
	}

	// Failing after the fence, before the promotion: pg1 is started again
	// only once its stop command has returned.
	c = newEngineCase(t, "switchover-stream")
	c.ctl.stopTakes = 300 * time.Millisecond
	i := slices.IndexFunc(c.plan.Steps, func(s plan.Step) bool { return s.ID == StepWaitReplay })
	c.plan.Steps[i].Run = func(context.Context) error { return errors.New("injected failure") }
	res = plan.Execute(t.Context(), c.plan, c.env, nil, nil)
	if res.Outcome != plan.OutcomeFailed {
		t.Fatalf("%s: %v", res.Outcome, res.Err)
	}
	if len(c.ctl.violations) > 0 {
		t.Errorf("violations: %v", c.ctl.violations)
	}
	if !c.ctl.nodes["pg1"].up || !c.ctl.called("command pg1 start") {
		t.Errorf("pg1 not started again: %v", c.ctl.calls)
	}
}

// A candidate whose stream was down when the old primary shut down lacks
// its last WAL (commits acknowledged just before the stop, its shutdown
// checkpoint): it must not be promoted. Waiting for the stop command alone
// tells only when another replica received more (the WAL it lacks is past
// the position read before the stop); the stream's end always does.
func TestEngineStopFenceCandidateMissingTheEnd(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "switchover-stream")
	c.ctl.unreceived = 0x1000
	res := plan.Execute(t.Context(), c.plan, c.env, nil, nil)
	// At once, not at the step's timeout: the write outage lasts as long.
	if res.Outcome != plan.OutcomeFailed || res.Err == nil || !strings.Contains(res.Err.Error(), "not connected at shutdown") || strings.Contains(res.Err.Error(), "did not receive") {
		t.Fatalf("%s: %v", res.Outcome, res.Err)
	}
	if c.ctl.called("promote") {
		t.Errorf("pg2 promoted: %v", c.ctl.calls)
	}
	if w := c.ctl.writable(); !reflect.DeepEqual(w, []string{"pg1"}) {
		t.Errorf("writable %v, want pg1 started again", w)
	}
}

// The plan rebuilt under the lock keeps the candidate that was shown, for
// every kind: the CLI's emergency path once chose again while the drill's
// pinned it. A replica that becomes better under the lock does not change
// the plan; one that makes the pinned candidate unsafe refuses it.
func TestDriverPinsCandidate(t *testing.T) {
	t.Parallel()
	cfg := engineConfig(true, "pg1", "pg2", "pg3")
	lsn := topology.LSN(0x30000000)
	looks := []Observation{}
	// First look: pg2 the least behind. Second: pg3 2 MB closer.
	first := topology.Classify(cfg, []topology.NodeStatus{tt.Primary("pg1", lsn, "pg2", "pg3"), tt.Replica("pg2", 5432, lsn-0x100), tt.Replica("pg3", 5432, lsn-0x300000)}, nil)
	second := topology.Classify(cfg, []topology.NodeStatus{tt.Primary("pg1", lsn, "pg2", "pg3"), tt.Replica("pg2", 5432, lsn-0x300000), tt.Replica("pg3", 5432, lsn-0x100)}, nil)
	looks = append(looks, Observation{Snap: first}, Observation{Snap: second})
	i := 0
	d := &Driver{Cfg: cfg, Observe: func(context.Context) Observation { o := looks[min(i, len(looks)-1)]; i++; return o }}
	prep := d.Prepare(t.Context(), Request{Kind: KindSwitchover, Switchover: SwitchoverOptions{MaxLag: 16 << 20}}, nil)
	if prep.Op.Candidate != "pg2" || prep.Op.Plan == nil {
		t.Fatalf("prepared %+v", prep.Op)
	}
	p, results, err := d.rebuild(prep, prep.Op)(t.Context())
	if err != nil || p == nil || !slices.Equal(p.Descriptions(), prep.Op.Plan.Descriptions()) {
		t.Fatalf("rebuilt under the lock: %v %v, want the same plan for pg2", err, results)
	}

	// Emergency: pg3 ahead under the lock makes the pinned pg2 lose data.
	cfg = engineConfig(false, "pg1", "pg2", "pg3")
	dead := func(name string, recv topology.LSN) topology.NodeStatus {
		st := tt.Replica(name, 5432, recv)
		st.WALReceiver = nil
		return st
	}
	st := &etcdlock.State{Primary: "pg1", Sync: etcdlock.SyncSettings{Commit: "on"}}
	looks = []Observation{
		{Snap: topology.Classify(cfg, []topology.NodeStatus{{Name: "pg1", Error: "refused"}, dead("pg2", lsn), dead("pg3", lsn-0x100)}, nil), State: st},
		{Snap: topology.Classify(cfg, []topology.NodeStatus{{Name: "pg1", Error: "refused"}, dead("pg2", lsn), dead("pg3", lsn+0x100)}, nil), State: st},
	}
	i = 0
	d = &Driver{Cfg: cfg, Observe: func(context.Context) Observation { o := looks[min(i, len(looks)-1)]; i++; return o }}
	prep = d.Prepare(t.Context(), Request{Kind: KindFailover, Emergency: EmergencyOptions{CatchupTimeout: time.Second}}, nil)
	if prep.Op.Candidate != "pg2" || prep.Op.Plan == nil {
		t.Fatalf("prepared %+v %v", prep.Op, prep.Op.Checks)
	}
	p, results, err = d.rebuild(prep, prep.Op)(t.Context())
	var failed []string
	for _, r := range results {
		if r.Level == checks.Critical {
			failed = append(failed, r.Name)
		}
	}
	if p != nil || !slices.Contains(failed, "most_advanced") {
		t.Fatalf("rebuilt with pg3 ahead: plan %v, failed %v: want pg2 refused, not pg3 chosen", p != nil, failed)
	}
}

// The driver runs whole operations on the fakes: switchover (both fences),
// emergency failover and rejoin end to end through Prepare, Replan and Run
// (lock, re-plan under the lock, execute, record), and, with the lease lost
// while the old primary is fenced, the run stops, changes nothing more and
// records the loss.
func TestDriverRunsOperations(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"switchover-stop", "switchover-stream", "switchover-sql", "emergency", "rejoin"} {
		for _, loseLock := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/lose=%v", kind, loseLock), func(t *testing.T) {
				t.Parallel()
				c := newEngineCase(t, kind)
				obs := Observation{Snap: c.snap, State: c.state}
				d := &Driver{Cfg: c.cfg, Observe: func(context.Context) Observation { return obs }}
				prep := d.Prepare(t.Context(), c.req, nil)
				if prep.Op.Plan == nil {
					t.Fatalf("prepared: %+v", prep.Op)
				}
				env := &Env{Ctl: c.ctl}
				op := d.Replan(prep, env)
				if loseLock {
					// The lease goes while the mark or the fence (a rejoin's
					// rewind) is applied.
					i := slices.IndexFunc(op.Plan.Steps, func(s plan.Step) bool { return s.Fences || s.ID == StepMarkFenced || s.ID == StepRejoin })
					run := op.Plan.Steps[i].Run
					op.Plan.Steps[i].Run = func(ctx context.Context) error {
						err := run(ctx)
						c.rec.lose()
						return err
					}
				}
				locker := &fakeLocker{rec: c.rec}
				res := d.Run(t.Context(), prep, op, env, OperationSpec{Cfg: c.cfg, Locker: locker})
				if len(c.ctl.violations) > 0 {
					t.Errorf("changed without the lock: %v", c.ctl.violations)
				}
				if w := c.ctl.writable(); len(w) > 1 {
					t.Errorf("writable: %v", w)
				}
				switch {
				case !loseLock:
					if res.Outcome != plan.OutcomeSucceeded || locker.end != plan.OutcomeSucceeded {
						t.Fatalf("outcome %s (recorded %s): %v", res.Outcome, locker.end, res.Err)
					}
				default:
					var lost *etcdlock.LockLostError
					if res.Outcome == plan.OutcomeSucceeded || !errors.As(res.Err, &lost) || locker.end != etcdlock.OutcomeLockLost {
						t.Fatalf("outcome %s (recorded %s): %v", res.Outcome, locker.end, res.Err)
					}
				}
			})
		}
	}
}

// On an injected clock the waits are deterministic: a candidate 200 MB
// behind that replays 1 MB per look is caught up after about 200 polls of
// 20 ms (4 s, twice the catch-up timeout in real time) in no real time,
// and a stalled replay is woken after the 20 ms the clock says passed.
func TestEngineWaitsOnInjectedClock(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "switchover-stop")
	clock := &virtualClock{now: time.Unix(0, 0)}
	c.env.Clock = clock
	for _, n := range c.ctl.nodes {
		n.lsn = 1 << 40
	}
	c.ctl.behind, c.ctl.catchupStep = 200<<20, 1<<20
	c.ctl.stalled = true
	start := time.Now()
	res := plan.Execute(t.Context(), c.plan, c.env, nil, nil)
	if res.Outcome != plan.OutcomeSucceeded {
		t.Fatalf("outcome %s: %v", res.Outcome, res.Err)
	}
	if virtual := clock.Now().Sub(time.Unix(0, 0)); virtual < 3*time.Second {
		t.Errorf("the clock moved %s: the catch-up did not poll on it", virtual)
	}
	if !c.ctl.called("reload pg2") {
		t.Errorf("the stalled replay was not woken: %v", c.ctl.calls)
	}
	t.Logf("virtual %s in real %s", clock.Now().Sub(time.Unix(0, 0)), time.Since(start))
}

// A dead primary's stream that stopped inside a record leaves the
// candidate's replay short of what it received, for good: the emergency
// failover promotes once replay stands still with nothing more arriving,
// rather than timing out (which it did: "pg2 did not replay up to ...").
// A replay that is still moving is waited for to the end.
func TestEmergencyIncompleteLastRecord(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "emergency")
	clock := &virtualClock{now: time.Unix(0, 0)}
	c.env.Clock = clock
	c.ctl.partialTail = true
	res := plan.Execute(t.Context(), c.plan, c.env, nil, nil)
	if res.Outcome != plan.OutcomeSucceeded {
		t.Fatalf("outcome %s: %v", res.Outcome, res.Err)
	}
	if !c.ctl.called("reload pg2") {
		t.Errorf("the replay was not nudged before it counted as stopped: %v", c.ctl.calls)
	}

	c = newEngineCase(t, "emergency")
	clock = &virtualClock{now: time.Unix(0, 0)}
	c.env.Clock = clock
	for _, n := range c.ctl.nodes {
		n.lsn = 1 << 40
	}
	c.ctl.behind, c.ctl.catchupStep = 50<<20, 1<<20
	var replayed bool
	c.env.Progress = func(step, msg string) {
		if strings.Contains(msg, "incomplete last record") {
			replayed = true
		}
	}
	res = plan.Execute(t.Context(), c.plan, c.env, nil, nil)
	if res.Outcome != plan.OutcomeSucceeded || replayed || c.ctl.behind != 0 {
		t.Fatalf("a moving replay was not waited for: outcome %s, %d bytes left, cut short %v: %v", res.Outcome, c.ctl.behind, replayed, res.Err)
	}
}

// Rejoin plans from what the node has: the slots it drops are its own
// inactive physical ones, and a healthy replica has nothing to do.
func TestPlanRejoinFromTheNode(t *testing.T) {
	t.Parallel()
	cfg := engineConfig(true, "pg1", "pg2", "pg3")
	lsn := topology.LSN(0x3000060)
	fenced := tt.Primary("pg1", lsn)
	fenced.Settings.DefaultTransactionReadOnly = tt.Ptr("on")
	fenced.Slots = []topology.Slot{{Name: "pg3", Type: "physical"}, {Name: "cdc", Type: "logical"}, {Name: "busy", Type: "physical", Active: true}}
	primary := tt.Primary("pg2", lsn+0x1000, "pg3")
	primary.Timeline = tt.Ptr(uint32(2))
	pg3 := tt.Replica("pg3", 5433, lsn)
	pg3.Timeline = tt.Ptr(uint32(2))
	snap := topology.Classify(cfg, []topology.NodeStatus{fenced, primary, pg3}, &topology.Record{Primary: "pg2", Fenced: []string{"pg1"}})
	p, _, err := PlanRejoin(cfg, snap, "pg1", nil)
	if err != nil || p == nil {
		t.Fatal(err)
	}
	d := strings.Join(p.Descriptions(), "\n")
	if !strings.Contains(d, "drop the inactive slots it kept as a primary (pg3)") {
		t.Errorf("plan:\n%s", d)
	}
	p, results, err := PlanRejoin(cfg, snap, "pg3", nil)
	if err != nil || p == nil || len(p.Steps) != 0 || !strings.Contains(strings.Join(p.Notes, ""), "nothing to do") {
		t.Fatalf("healthy replica: %v %+v %v", err, p, results)
	}
}

// crashAfterRejoin is the fake whose node dies right after its rejoin
// command ran (rewound, following the primary through its slot), before
// it streams: the matrix's rejoin:changed/kill-node-pg1 on real servers.
type crashAfterRejoin struct{ *fakeCluster }

func (c crashAfterRejoin) RunCommand(ctx context.Context, node, action string, env map[string]string) (pgctl.CommandResult, error) {
	res, err := c.fakeCluster.RunCommand(ctx, node, action, env)
	if action == pgctl.ActionRejoin {
		c.mu.Lock()
		n := c.nodes[node]
		c.stopReceiver(n)
		n.up = false
		c.mu.Unlock()
	}
	return res, err
}

// A rejoin that fails after its command ran keeps the slot it created on
// the primary: the node now follows the primary through it, and would
// never stream once started again if the undo dropped it.
func TestEngineRejoinKeepsSlotOnceCommandRan(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "rejoin")
	c.env.Ctl = crashAfterRejoin{c.ctl}
	res := plan.Execute(t.Context(), c.plan, c.env, nil, nil)
	if res.Outcome != plan.OutcomeFailed {
		t.Fatalf("outcome %s, want failed: %v", res.Outcome, res.Err)
	}
	c.ctl.mu.Lock()
	pg1 := c.ctl.nodes["pg1"]
	pg1.up = true
	c.ctl.mu.Unlock()
	if d := c.ctl.dangling(); len(d) > 0 {
		t.Errorf("pg1, started again, names a slot the undo dropped: %v", d)
	}
	if !strings.Contains(strings.Join(res.Left, "\n"), "keeping slot pg1 on pg2") {
		t.Errorf("the report does not say the slot was kept: %q", res.Left)
	}
}

// The lease lost during the last step, past the point of no return (the
// emergency failover's repoint-pg3): the step fails with a bare "operation
// was canceled". The run must still say the lock was lost and record
// lock_lost, so that status reports the operation interrupted and recover
// finishes it, as it does when a step remains after the one cut short.
func TestDriverLockLostInLastStep(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "emergency")
	obs := Observation{Snap: c.snap, State: c.state}
	d := &Driver{Cfg: c.cfg, Observe: func(context.Context) Observation { return obs }}
	prep := d.Prepare(t.Context(), c.req, nil)
	if prep.Op.Plan == nil {
		t.Fatalf("prepared: %+v", prep.Op)
	}
	env := &Env{Ctl: c.ctl}
	op := d.Replan(prep, env)
	last := &op.Plan.Steps[len(op.Plan.Steps)-1]
	if last.ID != StepCheckpointN {
		t.Fatalf("last step %s, want %s", last.ID, StepCheckpointN)
	}
	last.Run = func(ctx context.Context) error {
		c.rec.lose()
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
		return fmt.Errorf("cannot connect: pg2: %w", ctx.Err())
	}
	locker := &fakeLocker{rec: c.rec}
	res := d.Run(t.Context(), prep, op, env, OperationSpec{Cfg: c.cfg, Locker: locker})
	var lost *etcdlock.LockLostError
	if res.Outcome != plan.OutcomePartial || !errors.As(res.Err, &lost) || locker.end != etcdlock.OutcomeLockLost {
		t.Fatalf("outcome %s (recorded %s): %v", res.Outcome, locker.end, res.Err)
	}
}

// D5 of the full fault matrix: the lock lost while the rejoin command
// (pg_rewind) runs must not cut it off halfway, which leaves the node
// with data files of both histories; the command finishes, and no later
// step runs without the lock.
func TestEngineRejoinCommandNotCutOff(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "rejoin")
	c.ctl.rejoinTakes = 300 * time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		for !c.ctl.called("rejoin pg1 started") {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond)
		cancel() // what RunOperation does when the lock is lost
	}()
	res := plan.Execute(ctx, c.plan, c.env, nil, nil)
	if c.ctl.called("rejoin pg1 cut off halfway") {
		t.Fatalf("the rejoin command was cut off when the lock was lost (outcome %s: %v)", res.Outcome, res.Err)
	}
	if n := c.ctl.nodes["pg1"]; !n.up || !n.inRecovery {
		t.Fatalf("pg1 after the rejoin command: up %v, in recovery %v", n.up, n.inRecovery)
	}
}

// The drill case of the full fault matrix: pg3, killed as a switchover
// detached it to cascade from the candidate, came back streaming through
// pg2 once pg1 was primary again. The plan told the operator to run
// `replctl rejoin pg3`, which said "nothing to do". It must repoint pg3 at
// the primary, with a slot there, and drop the slot pg3 used on pg2.
func TestEngineRejoinRepointsACascade(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "rejoin-cascade")
	var ids []string
	for _, s := range c.plan.Steps {
		ids = append(ids, s.ID)
	}
	if want := []string{StepLock, StepCreateSlots, StepRepoint + "-pg3", StepDropSlots}; !reflect.DeepEqual(ids, want) {
		t.Fatalf("steps %v, want %v", ids, want)
	}
	res := plan.Execute(t.Context(), c.plan, c.env, nil, nil)
	if res.Outcome != plan.OutcomeSucceeded {
		t.Fatalf("outcome %s: %v", res.Outcome, res.Err)
	}
	pg3 := c.ctl.nodes["pg3"]
	if pg3.upstream != "pg1" || conninfoPort(pg3.auto["primary_conninfo"]) != 5432 || pg3.auto["primary_slot_name"] != "pg3" {
		t.Errorf("pg3 follows %s with %q slot %q, want pg1 through slot pg3", pg3.upstream, pg3.auto["primary_conninfo"], pg3.auto["primary_slot_name"])
	}
	if _, ok := c.ctl.nodes["pg2"].slots["pg3"]; ok {
		t.Errorf("slot pg3 left on pg2")
	}
	if d := c.ctl.dangling(); len(d) > 0 {
		t.Errorf("half-moved: %v", d)
	}
}

// A candidate that dies once the old primary's stream has ended fails the
// switchover at once, as it did before the stream: the write outage lasts
// as long as the wait.
func TestEngineStopFenceCandidateDiesAfterTheStream(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "switchover-stream")
	i := slices.IndexFunc(c.plan.Steps, func(s plan.Step) bool { return s.ID == StepFence })
	run := c.plan.Steps[i].Run
	c.plan.Steps[i].Run = func(ctx context.Context) error {
		err := run(ctx)
		c.ctl.mu.Lock()
		c.ctl.nodes["pg2"].up = false
		c.ctl.mu.Unlock()
		return err
	}
	res := plan.Execute(t.Context(), c.plan, c.env, nil, nil)
	if res.Outcome != plan.OutcomeFailed || res.Err == nil || strings.Contains(res.Err.Error(), "did not receive") {
		t.Fatalf("%s: %v", res.Outcome, res.Err)
	}
	if w := c.ctl.writable(); !reflect.DeepEqual(w, []string{"pg1"}) {
		t.Errorf("writable %v, want pg1 started again", w)
	}
}

// A cascade's repoint whose drop of the old slot failed (its former
// upstream was down) leaves that slot on the replica, inactive, retaining
// WAL there. Rejoin of the node, which now streams from the primary, said
// "nothing to do" and left it; it drops it, under the lock, and only that.
func TestEngineRejoinDropsASlotLeftByACascade(t *testing.T) {
	t.Parallel()
	lsn := topology.LSN(0x3000060)
	f := newFakeCtl(lsn)
	rec := &fakeRecorder{}
	f.lock = rec
	env := &Env{Ctl: f}
	env.Acquire = func(context.Context) error { env.Lock = rec; return nil }
	cfg := engineConfig(false, "pg1", "pg2", "pg3")
	f.nodes["pg2"].slots["pg3"], f.nodes["pg2"].slots["keep"] = false, false
	left := tt.Replica("pg2", 5432, lsn)
	left.Slots = []topology.Slot{{Name: "pg3", Type: "physical", Active: false}, {Name: "keep", Type: "physical", Active: false}}
	snap := topology.Classify(cfg, []topology.NodeStatus{tt.Primary("pg1", lsn, "pg2", "pg3"), left, tt.Replica("pg3", 5432, lsn)}, nil)
	p, results, err := PlanRejoin(cfg, snap, "pg3", env)
	if err != nil || len(checks.Failed(results)) > 0 {
		t.Fatalf("rejoin: %v %v", err, checks.Failed(results))
	}
	var ids []string
	for _, s := range p.Steps {
		ids = append(ids, s.ID+"@"+s.Node)
	}
	if want := []string{StepLock + "@", StepDropSlots + "@pg2"}; !reflect.DeepEqual(ids, want) {
		t.Fatalf("steps %v, want %v", ids, want)
	}
	if res := plan.Execute(t.Context(), p, env, nil, nil); res.Outcome != plan.OutcomeSucceeded {
		t.Fatalf("%s: %v", res.Outcome, res.Err)
	}
	if _, ok := f.nodes["pg2"].slots["pg3"]; ok {
		t.Errorf("slot pg3 still on pg2")
	}
	if _, ok := f.nodes["pg2"].slots["keep"]; !ok {
		t.Errorf("slot keep, not pg3's, was dropped")
	}
	if len(f.violations) > 0 {
		t.Errorf("violations: %v", f.violations)
	}

	// Without such a slot: nothing to do, no step, no lock.
	left.Slots = []topology.Slot{{Name: "keep", Type: "physical", Active: false}}
	snap = topology.Classify(cfg, []topology.NodeStatus{tt.Primary("pg1", lsn, "pg2", "pg3"), left, tt.Replica("pg3", 5432, lsn)}, nil)
	if p, _, _ := PlanRejoin(cfg, snap, "pg3", env); len(p.Steps) != 0 {
		t.Errorf("steps %v for a healthy replica", p.Steps)
	}
}
