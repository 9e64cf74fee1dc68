package failover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/topology"
	"github.com/replctl/replctl/topology/topologytest"
)

// switchoverFixture is a 3-node cluster, pg1 primary; stop gives pg1 a stop
// command (the stop fence).
func switchoverFixture(t *testing.T, stop bool) (*config.Config, *topology.Snapshot) {
	t.Helper()
	cfg := &config.Config{Cluster: "demo", Etcd: config.Etcd{Prefix: "/replctl"}, Lock: config.Lock{TTL: 10 * time.Second}}
	for i, n := range []string{"pg1", "pg2", "pg3"} {
		cfg.Nodes = append(cfg.Nodes, config.Node{Name: n, DSN: fmt.Sprintf("host=127.0.0.1 port=%d user=postgres", 5432+i)})
	}
	if stop {
		cfg.Nodes[0].Commands = config.NodeCommands{Stop: "stop pg1", Start: "start pg1"}
	}
	lsn := topology.LSN(0x3000060)
	st := []topology.NodeStatus{
		topologytest.Primary("pg1", lsn, "pg2", "pg3"),
		topologytest.Replica("pg2", 5432, lsn),
		topologytest.Replica("pg3", 5432, lsn),
	}
	return cfg, topology.Classify(cfg, st, nil)
}

func runSwitchover(t *testing.T, cfg *config.Config, snap *topology.Snapshot, ctl *fakeCluster) (*plan.Plan, *plan.Result) {
	t.Helper()
	env := &Env{Ctl: ctl}
	rec := &fakeRecorder{}
	ctl.lock = rec
	env.Acquire = func(context.Context) error { env.Lock = rec; return nil }
	p, err := BuildSwitchoverPlan(cfg, snap, SwitchoverOptions{Candidate: "pg2", CatchupTimeout: 2 * time.Second}, env)
	if err != nil {
		t.Fatal(err)
	}
	return p, plan.Execute(t.Context(), p, env, nil, nil)
}

func stepIDs(p *plan.Plan) []string {
	var ids []string
	for _, s := range p.Steps {
		ids = append(ids, s.ID)
	}
	return ids
}

// The SQL-fenced primary stays up and may write WAL of its own: the other
// replicas stop following it, before the fence, and cascade from the
// candidate, so that they never have WAL the candidate lacks.
func TestSwitchoverSQLFenceDetachesOtherReplicas(t *testing.T) {
	t.Parallel()
	cfg, snap := switchoverFixture(t, false)
	ctl := newFakeCtl(0x3000060)
	p, res := runSwitchover(t, cfg, snap, ctl)
	if res.Outcome != plan.OutcomeSucceeded {
		t.Fatalf("outcome %s: %v", res.Outcome, res.Err)
	}
	ids := stepIDs(p)
	if i, j := slices.Index(ids, StepDetach+"-pg3"), slices.Index(ids, StepFence); !(i >= 0 && i < j) {
		t.Errorf("steps %v: want detach-pg3 before the fence", ids)
	}
	detach := slices.Index(ctl.calls, "repoint pg3 host=127.0.0.1 port=5433 user=postgres application_name=pg3")
	if fence := slices.Index(ctl.calls, "fence-sql pg1"); detach < 0 || detach > fence {
		t.Errorf("pg3 not pointed at the candidate before the fence: %v", ctl.calls)
	}

	cfg, snap = switchoverFixture(t, true)
	p, _ = runSwitchover(t, cfg, snap, newFakeCtl(0x3000060))
	if slices.Contains(stepIDs(p), StepDetach+"-pg3") {
		t.Errorf("stop fence plan detaches: %v", stepIDs(p))
	}
}

// A candidate that dies before pg_promote() reached it was not promoted:
// the fence is lifted and the other replicas follow the old primary again.
func TestSwitchoverPromoteNotSentUndoesFence(t *testing.T) {
	t.Parallel()
	for _, stop := range []bool{false, true} {
		cfg, snap := switchoverFixture(t, stop)
		ctl := newFakeCtl(0x3000060)
		ctl.promoteErr = fmt.Errorf("%w: connect pg2: connection refused", pgctl.ErrPromoteNotSent)
		_, res := runSwitchover(t, cfg, snap, ctl)
		if res.Outcome != plan.OutcomeFailed {
			t.Fatalf("stop %v: outcome %s", stop, res.Outcome)
		}
		unfenced := ctl.called("restore-settings pg1")
		if stop {
			unfenced = ctl.called("command pg1 start")
		}
		if !unfenced {
			t.Errorf("stop %v: fence not undone: %v", stop, ctl.calls)
		}
		if !stop && !ctl.called("restore-settings pg3") {
			t.Errorf("pg3 not pointed back at pg1: %v", ctl.calls)
		}
	}
}

// After a failure once pg_promote() may have been sent, the candidate may
// still be promoted: the old primary stays fenced, and the report says so.
func TestSwitchoverPromoteMaybeSentKeepsFence(t *testing.T) {
	t.Parallel()
	cfg, snap := switchoverFixture(t, false)
	ctl := newFakeCtl(0x3000060)
	ctl.promoteErr = errors.New("pg2: pg_promote(): unexpected EOF")
	_, res := runSwitchover(t, cfg, snap, ctl)
	if res.Outcome != plan.OutcomeFailed || ctl.called("restore-settings pg1") {
		t.Fatalf("outcome %s, calls %v", res.Outcome, ctl.calls)
	}
	if !strings.Contains(res.Err.Error(), "may have been promoted") {
		t.Errorf("error %v", res.Err)
	}
}

// A candidate whose replay stalls with the final WAL received (its startup
// process sleeping after the lost stream) is woken by a reload rather than
// waited for.
func TestSwitchoverWakesStalledReplay(t *testing.T) {
	t.Parallel()
	cfg, snap := switchoverFixture(t, true)
	ctl := newFakeCtl(0x3000060)
	ctl.stalled = true
	_, res := runSwitchover(t, cfg, snap, ctl)
	if res.Outcome != plan.OutcomeSucceeded || !ctl.called("reload pg2") {
		t.Fatalf("outcome %s (%v), calls %v", res.Outcome, res.Err, ctl.calls)
	}
}

// With the stop fence, a candidate whose receiver missed the end of the old
// primary's WAL (another replica received more) is not promoted: the fence
// is undone and the old primary serves again.
func TestSwitchoverStopFenceRefusesCandidateBehindAnotherReplica(t *testing.T) {
	t.Parallel()
	cfg, snap := switchoverFixture(t, true)
	ctl := newFakeCtl(0x3000060)
	ctl.nodes["pg3"].lsn = 0x3000100
	ctl.nodes["pg3"].upstream = "" // it received more, then lost the stream
	_, res := runSwitchover(t, cfg, snap, ctl)
	if res.Outcome != plan.OutcomeFailed || !strings.Contains(res.Err.Error(), "pg3 received up to 0/3000100") {
		t.Fatalf("outcome %s: %v", res.Outcome, res.Err)
	}
	if ctl.called("promote") || !ctl.called("command pg1 start") {
		t.Errorf("calls %v: want no promotion and pg1 started again", ctl.calls)
	}
}
