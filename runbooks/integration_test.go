package runbooks

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/testenv"
)

// drillEnv is a real cluster with its configuration, an etcd client and an
// engine on them.
type drillEnv struct {
	c   *testenv.Cluster
	cfg *config.Config
	cli *clientv3.Client
	eng *Engine

	mu     sync.Mutex
	events []Event
}

func startDrillEnv(t *testing.T, o testenv.Options) *drillEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	c := testenv.Start(t, o)
	cfg, err := config.Load(c.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := etcdlock.Connect(t.Context(), cfg.Etcd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	d := &drillEnv{c: c, cfg: cfg, cli: cli}
	d.eng = &Engine{Cfg: cfg, Cli: cli, Timeout: 3 * time.Second, Command: []string{"runbook", "run", "test"},
		Sink: func(e Event) {
			d.mu.Lock()
			d.events = append(d.events, e)
			d.mu.Unlock()
		}}
	return d
}

func (d *drillEnv) runbook(t *testing.T, text string) *Runbook {
	t.Helper()
	rb, err := Parse(t.Name()+".yaml", []byte(text), d.cfg)
	if err != nil {
		t.Fatal(err)
	}
	return rb
}

// etcdRevision is the store's revision: any write raises it.
func (d *drillEnv) etcdRevision(t *testing.T) int64 {
	t.Helper()
	resp, err := d.cli.Get(t.Context(), "/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// nodeState is what the plan must not change on a node.
type nodeState struct {
	InRecovery bool
	Timeline   int64
	Settings   string
	Slots      string
	Probe      bool // the probe table exists
}

func (d *drillEnv) nodeStates(t *testing.T) map[string]nodeState {
	t.Helper()
	out := map[string]nodeState{}
	for _, n := range d.c.Nodes {
		var s nodeState
		err := d.c.QueryRow(t.Context(), n.Name, `SELECT pg_is_in_recovery(),
			(SELECT timeline_id FROM pg_control_checkpoint()),
			(SELECT string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_settings
			  WHERE name IN ('default_transaction_read_only', 'synchronous_standby_names', 'primary_conninfo', 'primary_slot_name')),
			coalesce((SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots), ''),
			to_regclass($1) IS NOT NULL`, DefaultProbeTable).Scan(&s.InRecovery, &s.Timeline, &s.Settings, &s.Slots, &s.Probe)
		if err != nil {
			t.Fatal(err)
		}
		out[n.Name] = s
	}
	return out
}

// TestPlanChangesNothing: the dry-run evaluates what it can now, plans the
// rest at run time, and writes nothing: etcd's revision and every node's
// state are the same afterwards, and no probe table was created.
func TestPlanChangesNothing(t *testing.T) {
	d := startDrillEnv(t, testenv.Options{Replicas: 2})
	ctx := t.Context()
	rev, states := d.etcdRevision(t), d.nodeStates(t)

	for _, file := range []string{"examples/switchover-and-back.yaml", "examples/emergency-failover.yaml", "examples/nightly-preflight.yaml"} {
		rb, err := Load(file, d.cfg)
		if err != nil {
			t.Fatal(err)
		}
		rep := d.eng.Plan(ctx, rb, nil)
		if !rep.WouldProceed || rep.LockHeld || rep.Primary != "pg1" {
			t.Errorf("%s: %+v", file, rep)
		}
		changed := false
		for _, ps := range rep.Steps {
			if ps.Phase == PhaseOnFailure || changed {
				if ps.Status != PlanAtRunTime {
					t.Errorf("%s: %s after a change is %s, want at_run_time", file, ps.ID, ps.Status)
				}
			} else if ps.Status != PlanOK {
				t.Errorf("%s: %s: %s (%s)", file, ps.ID, ps.Status, ps.Detail)
			}
			changed = changed || ps.Kind.Changes() && ps.Phase == PhaseSteps
		}
	}
	// The first promotion is planned in full, as promote --dry-run plans it.
	rb, _ := Load("examples/switchover-and-back.yaml", d.cfg)
	rep := d.eng.Plan(ctx, rb, nil)
	var first *PlannedStep
	for _, ps := range rep.Steps {
		if ps.Kind == KindPromote {
			first = ps
			break
		}
	}
	if first == nil || first.Promote == nil || first.Promote.Plan == nil || first.Promote.Candidate != "pg2" || !first.Promote.Proceed {
		t.Fatalf("first promotion: %+v", first)
	}
	obs := d.eng.observe(ctx)
	want, _, _, err := failover.PlanSwitchover(d.cfg, obs.Snap, failover.SwitchoverOptions{MaxLag: 16 << 20, CatchupTimeout: 30 * time.Second}, nil)
	if err != nil || !slices.Equal(first.Promote.Plan.Descriptions(), want.Descriptions()) {
		t.Errorf("plan differs from promote's:\n%q\n%q", first.Promote.Plan.Descriptions(), want.Descriptions())
	}

	// What would be refused now is refused, and what is false now fails.
	if err := d.c.PauseReplay(ctx, "pg2"); err != nil {
		t.Fatal(err)
	}
	bad := d.runbook(t, `
name: refused
cluster: demo
steps:
  - assert: "replicas_streaming == 0"
  - promote: planned
    candidate: pg2
  - wait: reachable
    target: pg3
`)
	prep := d.eng.Plan(ctx, bad, nil)
	if prep.WouldProceed || prep.Steps[0].Status != PlanFails || prep.Steps[1].Status != PlanRefused ||
		!strings.Contains(prep.Steps[1].Detail, "candidate_replay_not_paused") || prep.Steps[2].Status != PlanAtRunTime {
		t.Errorf("refused plan: %+v %+v %+v", prep.Steps[0], prep.Steps[1], prep.Steps[2])
	}
	if err := d.c.ResumeReplay(ctx, "pg2"); err != nil {
		t.Fatal(err)
	}

	if got := d.etcdRevision(t); got != rev {
		t.Errorf("etcd revision moved from %d to %d: the plan wrote to etcd", rev, got)
	}
	after := d.nodeStates(t)
	for name, s := range states {
		if after[name] != s {
			t.Errorf("%s changed: %+v -> %+v", name, s, after[name])
		}
		if after[name].Probe {
			t.Errorf("%s: the plan created the probe table", name)
		}
	}
}

// TestDrillSwitchoverAndBack runs the example under the lock, held by the
// drill from its first step to its last, and checks what it measured and
// what the history says.
func TestDrillSwitchoverAndBack(t *testing.T) {
	d := startDrillEnv(t, testenv.Options{Replicas: 2})
	ctx := t.Context()
	rb, err := Load("examples/switchover-and-back.yaml", d.cfg)
	if err != nil {
		t.Fatal(err)
	}
	var holders []string
	sink := d.eng.Sink
	d.eng.Sink = func(e Event) {
		if e.Type == EventStepStarted {
			h, err := etcdlock.ReadLockHolder(ctx, d.cli, d.cfg.Etcd.Prefix, d.cfg.Cluster)
			if err != nil || h == nil {
				holders = append(holders, "none")
			} else {
				holders = append(holders, h.OperationID)
			}
		}
		sink(e)
	}
	rep, err := d.eng.Run(ctx, rb)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Outcome != Passed {
		t.Fatalf("drill %s: %s\n%+v", rep.Outcome, rep.Error, rep.Steps)
	}
	for i, h := range holders {
		if h != rep.OperationID {
			t.Errorf("step %d ran while the lock was held by %q, not the drill (operation %s)", i+1, h, rep.OperationID)
		}
	}
	m := rep.Metrics
	if m.LostWrites == nil || *m.LostWrites != 0 || m.WriteOutageSeconds == nil || *m.WriteOutageSeconds <= 0 ||
		m.PromoteOutageSeconds == nil || *m.WritesAcked < 10 || *m.ReplicasStreaming != 2 || *m.Primary != "pg1" {
		t.Errorf("metrics: %+v", m)
	}
	t.Logf("write outage %.3fs, promotion outage %.3fs, %d writes acknowledged", *m.WriteOutageSeconds, *m.PromoteOutageSeconds, *m.WritesAcked)
	if rep.InitialPrimary != "pg1" || rep.FinalPrimary != "pg1" || rep.Probe == nil || !rep.Probe.Verified {
		t.Errorf("report: %+v", rep)
	}
	if over := rep.Steps[3]; over.ID != "switchover" || (over.Node != "pg2" && over.Node != "pg3") || over.Plan == nil || over.Measured[MetricPromoteOutage] == "" {
		t.Errorf("switchover step: %+v", over)
	}
	for _, s := range rep.Steps {
		if s.Phase == PhaseOnFailure && s.Outcome != NotRun {
			t.Errorf("%s ran without a failure", s.ID)
		}
	}
	op, err := etcdlock.ReadOperation(ctx, d.cli, d.cfg.Etcd.Prefix, d.cfg.Cluster, rep.OperationID)
	if err != nil || op == nil {
		t.Fatalf("history: %v %v", op, err)
	}
	var ids []string
	for _, s := range op.Steps {
		ids = append(ids, s.ID+"="+s.Outcome)
	}
	if op.Kind != KindDrill || op.Outcome != plan.OutcomeSucceeded || op.Params["runbook"] != "switchover-and-back" ||
		!slices.Contains(ids, "switchover=done") || !slices.Contains(ids, "switchover/promote=done") || !slices.Contains(ids, "switch_back/fence=done") {
		t.Errorf("history record: %s %s %v %v", op.Kind, op.Outcome, op.Params, ids)
	}
	if h, _ := etcdlock.ReadLockHolder(ctx, d.cli, d.cfg.Etcd.Prefix, d.cfg.Cluster); h != nil {
		t.Errorf("the lock is still held after the drill: %+v", h)
	}
}

// TestDrillFailureRunsOnFailure: a drill that fails after it switched over
// runs its on_failure steps, which switch back: one writable primary, the
// initial one, and no acknowledged write lost.
func TestDrillFailureRunsOnFailure(t *testing.T) {
	d := startDrillEnv(t, testenv.Options{Replicas: 2})
	ctx := t.Context()
	rb := d.runbook(t, `
name: fails-midway
cluster: demo
steps:
  - probe: start
  - promote: planned
  - id: doomed
    assert: "primary == initial_primary"
  - sleep: 10s
on_failure:
  - promote: planned
    candidate: initial_primary
  - wait: replicas_streaming
  - probe: stop
  - assert: ["lost_writes == 0", "primary == initial_primary"]
`)
	rep, err := d.eng.Run(ctx, rb)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Outcome != Failed || rep.Refused || rep.NeedsAttention || !strings.Contains(rep.Error, "step doomed") {
		t.Fatalf("report: %s refused=%v attention=%v: %s", rep.Outcome, rep.Refused, rep.NeedsAttention, rep.Error)
	}
	outcomes := map[string]Outcome{}
	for _, s := range rep.Steps {
		outcomes[s.ID] = s.Outcome
	}
	want := map[string]Outcome{"step1": Passed, "step2": Passed, "doomed": Failed, "step4": NotRun,
		"on_failure1": Passed, "on_failure2": Passed, "on_failure3": Passed, "on_failure4": Passed}
	for id, o := range want {
		if outcomes[id] != o {
			t.Errorf("%s: %s, want %s", id, outcomes[id], o)
		}
	}
	p, err := d.c.Primary(ctx) // fails unless exactly one node is writable
	if err != nil || p.Name != "pg1" {
		t.Errorf("primary after on_failure: %v %v", p, err)
	}
	if err := d.c.WaitStreaming(ctx); err != nil {
		t.Error(err)
	}
	if *rep.Metrics.LostWrites != 0 {
		t.Errorf("lost writes: %d", *rep.Metrics.LostWrites)
	}
	d.mu.Lock()
	sawOnFailure := slices.ContainsFunc(d.events, func(e Event) bool { return e.Type == EventOnFailure })
	d.mu.Unlock()
	if !sawOnFailure {
		t.Error("no on_failure event")
	}
}

// TestDrillLock: a drill does not start while another operation holds the
// lock (skipped, with the holder named), and a drill that loses its lock
// stops and skips the on_failure steps that would change the cluster.
func TestDrillLock(t *testing.T) {
	d := startDrillEnv(t, testenv.Options{Replicas: 1})
	ctx := t.Context()
	other, err := etcdlock.Acquire(ctx, d.cli, etcdlock.LockOptions{Prefix: d.cfg.Etcd.Prefix, Cluster: d.cfg.Cluster, TTL: 10 * time.Second,
		Actor: etcdlock.Actor{User: "alice", Host: "ops1", PID: 42, Command: "promote pg2"}})
	if err != nil {
		t.Fatal(err)
	}
	rb := d.runbook(t, `
name: lock
cluster: demo
steps:
  - sleep: 20s
on_failure:
  - promote: planned
    candidate: initial_primary
  - wait: primary
`)
	rep, err := d.eng.Run(ctx, rb)
	var held *etcdlock.LockHeldError
	if !errors.As(err, &held) || rep.Outcome != Skipped || !strings.Contains(rep.Error, "alice@ops1") || rep.OperationID != "" {
		t.Fatalf("with the lock held: %v, %+v", err, rep)
	}
	if err := other.Release(ctx); err != nil {
		t.Fatal(err)
	}

	// Break the drill's lock while it sleeps, as lock release --force does.
	go func() {
		for ctx.Err() == nil {
			h, err := etcdlock.ReadLockHolder(ctx, d.cli, d.cfg.Etcd.Prefix, d.cfg.Cluster)
			if err == nil && h != nil && h.OperationID != "" {
				_, _ = etcdlock.BreakLock(ctx, d.cli, d.cfg.Etcd.Prefix, d.cfg.Cluster, h, etcdlock.Actor{User: "bob"}, 0)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	start := time.Now()
	rep, err = d.eng.Run(ctx, rb)
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 15*time.Second {
		t.Errorf("the drill went on for %s after losing its lock", time.Since(start))
	}
	s := rep.Steps
	if rep.Outcome != Failed || !rep.NeedsAttention || s[0].Outcome != Failed || !strings.Contains(s[0].Error, "lost the lock") ||
		s[1].Outcome != Skipped || !strings.Contains(s[1].Error, "lock is no longer held") || s[2].Outcome != Passed {
		t.Errorf("after losing the lock: %s attention=%v\n%+v\n%+v\n%+v", rep.Outcome, rep.NeedsAttention, s[0], s[1], s[2])
	}

	// A stopped node the record marks fenced is not started: it would come
	// back writable.
	if err := d.c.StopNode(ctx, "pg2"); err != nil {
		t.Fatal(err)
	}
	l, err := etcdlock.Acquire(ctx, d.cli, etcdlock.LockOptions{Prefix: d.cfg.Etcd.Prefix, Cluster: d.cfg.Cluster, TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.UpdateState(ctx, func(st *etcdlock.State) error { st.Fence("pg2", "test"); return nil }); err != nil {
		t.Fatal(err)
	}
	_ = l.Release(ctx)
	rep, err = d.eng.Run(ctx, d.runbook(t, "name: start\ncluster: demo\nsteps:\n  - node: start\n    target: pg2\n"))
	if err != nil || rep.Outcome != Failed || !rep.Refused || !strings.Contains(rep.Steps[0].Error, "marked fenced") {
		t.Errorf("start of a fenced node: %v %+v %+v", err, rep, rep.Steps[0])
	}
	if n := d.eng.observe(ctx).Snap.Node("pg2"); n.Reachable {
		t.Error("pg2 was started")
	}
}
