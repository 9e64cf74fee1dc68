package failover

import (
	"slices"
	"strings"
	"testing"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/failover/etcdlock"
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
