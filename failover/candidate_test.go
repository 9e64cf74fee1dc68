package failover

import (
	"fmt"
	"testing"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/topology"
	"github.com/replctl/replctl/topology/topologytest"
)

func TestChooseSwitchoverCandidate(t *testing.T) {
	t.Parallel()
	const lsn = topology.LSN(0x40000000)
	for _, tc := range []struct {
		name   string
		lag    map[string]uint64 // replay lag behind the primary
		prio   map[string]int
		chosen string
		why    map[string]string // rejected reason prefix
	}{
		{name: "least lag", lag: map[string]uint64{"pg2": 8 << 20, "pg3": 0}, chosen: "pg3", why: map[string]string{"pg2": "more lag"}},
		// A few kilobytes apart, as two looks at a busy cluster give: not a
		// reason to choose differently, so name decides.
		{name: "small lag differences tie", lag: map[string]uint64{"pg2": 40 << 10, "pg3": 0}, chosen: "pg2", why: map[string]string{"pg3": "as little lag"}},
		{name: "priority among ties", lag: map[string]uint64{"pg2": 0, "pg3": 100 << 10}, prio: map[string]int{"pg2": 50}, chosen: "pg3", why: map[string]string{"pg2": "as little lag (0 B), lower priority (50)"}},
		{name: "priority 0 never", prio: map[string]int{"pg2": 0}, chosen: "pg3", why: map[string]string{"pg2": "priority 0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &config.Config{Cluster: "demo"}
			for i, n := range []string{"pg1", "pg2", "pg3"} {
				cn := config.Node{Name: n, DSN: fmt.Sprintf("host=127.0.0.1 port=%d", 5432+i)}
				if p, ok := tc.prio[n]; ok {
					cn.Priority = &p
				}
				cfg.Nodes = append(cfg.Nodes, cn)
			}
			st := []topology.NodeStatus{topologytest.Primary("pg1", lsn, "pg2", "pg3")}
			for _, n := range []string{"pg2", "pg3"} {
				st = append(st, topologytest.Replica(n, 5432, lsn-topology.LSN(tc.lag[n])))
			}
			r, err := ChooseSwitchoverCandidate(topology.Classify(cfg, st, nil))
			if err != nil || r.Chosen != tc.chosen {
				t.Fatalf("chose %q (%v), want %s: %+v", r.Chosen, err, tc.chosen, r)
			}
			for n, why := range tc.why {
				if got := r.Rejected[n]; len(got) < len(why) || got[:len(why)] != why {
					t.Errorf("%s rejected as %q, want %q...", n, got, why)
				}
			}
		})
	}
}

// TestSwitchoverPreflightFences: a SQL-fenced node out of recovery is no
// second writer (no split brain refusal) and no primary to switch over from.
