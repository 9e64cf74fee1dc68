package failover

import (
	"slices"
	"strings"
	"testing"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/topology"
	tt "github.com/replctl/replctl/topology/topologytest"
)

// A candidate behind a lost promotion would reuse that promotion's
// timeline ID: the record's highest timeline refuses it, by name, with
// what to do.
func TestPromotionRefusesToReuseATimeline(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "switchover-stop")
	for _, tc := range []struct {
		max  uint32
		want bool
	}{{0, false}, {1, false}, {2, true}, {5, true}} {
		obs := Observation{Snap: c.snap, State: &etcdlock.State{Primary: "pg1", MaxTimeline: tc.max}}
		op := PlanFrom(c.cfg, c.req, obs, nil, nil)
		refused := slices.ContainsFunc(checks.Failed(op.Checks), func(r checks.Result) bool { return r.Code == "timeline_reuse" && r.Node == "pg2" })
		if refused != tc.want || refused == (op.Plan != nil) {
			t.Errorf("max timeline %d: refused %v (plan %v), want refused %v: %+v", tc.max, refused, op.Plan != nil, tc.want, op.Checks)
		}
	}
}

// A former primary on the primary's own timeline diverged under one ID:
// pg_rewind cannot see it, so rejoin says to rebuild rather than time out.
func TestRejoinRefusesAReusedTimeline(t *testing.T) {
	t.Parallel()
	cfg := engineConfig(true, "pg1", "pg2", "pg3")
	lsn := topology.LSN(0x3000060)
	old := tt.Primary("pg1", lsn)
	old.Timeline = tt.Ptr(uint32(2))
	primary := tt.Primary("pg2", lsn+0x1000, "pg3")
	primary.Timeline = tt.Ptr(uint32(2))
	snap := topology.Classify(cfg, []topology.NodeStatus{old, primary, tt.Replica("pg3", 5433, lsn)}, &topology.Record{Primary: "pg2", Fenced: []string{"pg1"}})
	failed := checks.Failed(RejoinPreflight(cfg, snap, "pg1"))
	if !slices.ContainsFunc(failed, func(r checks.Result) bool {
		return r.Code == "timeline_reused" && strings.Contains(r.Hint, "pg_basebackup")
	}) {
		t.Fatalf("want timeline_reused: %+v", failed)
	}
}

// A former primary that an emergency failover left out of the quorum list
// is put back in it once it streams again: the cluster does not run on one
// synchronous standby for ever.
func TestRejoinPutsTheNodeBackInTheQuorum(t *testing.T) {
	t.Parallel()
	c := newEngineCase(t, "rejoin")
	pn := c.snap.PrimaryNode()
	ss, err := topology.ParseSyncStandbyNames("ANY 1 (pg3)")
	if err != nil {
		t.Fatal(err)
	}
	pn.Settings.SynchronousStandbyNames, pn.Settings.SyncStandbys = tt.Ptr("ANY 1 (pg3)"), &ss
	p, results, err := PlanRejoin(c.cfg, c.snap, "pg1", c.env)
	if err != nil || p == nil {
		t.Fatalf("plan: %v %+v", err, results)
	}
	if ids := stepIDs(p); ids[len(ids)-1] != StepSync || !strings.Contains(p.Steps[len(ids)-1].Description, "'ANY 1 (pg3, pg1)'") {
		t.Fatalf("steps %v: %s", ids, p.Steps[len(ids)-1].Description)
	}
	if res := plan.Execute(t.Context(), p, c.env, nil, nil); res.Outcome != plan.OutcomeSucceeded {
		t.Fatalf("%s: %v", res.Outcome, res.Err)
	}
	if got := c.ctl.nodes["pg2"].auto["synchronous_standby_names"]; got != "ANY 1 (pg3, pg1)" {
		t.Errorf("pg2's synchronous_standby_names %q", got)
	}
	if c.rec.st.Sync.StandbyNames != "ANY 1 (pg3, pg1)" {
		t.Errorf("recorded %q", c.rec.st.Sync.StandbyNames)
	}
}
