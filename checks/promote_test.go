package checks

import (
	"fmt"
	"strings"
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
func TestSwitchoverPreflightFences(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		mutate    func(st []topology.NodeStatus) []topology.NodeStatus
		candidate string
		want      map[string]string // check name -> level:message substring
	}{
		{name: "old primary fenced, pg3 promoted", candidate: "pg2", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0] = sqlFence(st[0])
			st[0].Replication = nil
			st[2] = prim("pg3", 1000, "pg2")
			st[2].Timeline = ptr(uint32(2))
			st[1].WALReceiver.SenderPort = ptr(5434)
			st[1].Timeline = ptr(uint32(2))
			return st
		}, want: map[string]string{"primary": "OK:pg3", "split_brain": "OK:no split brain"}},
		{name: "the only node out of recovery fenced", candidate: "pg2", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0] = sqlFence(st[0])
			return st
		}, want: map[string]string{"primary": "CRITICAL:pg1 (read-only, fenced)", "split_brain": "OK:no split brain"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := cfgFor(t, "", "pg1", "pg2", "pg3")
			s := topology.Classify(cfg, tc.mutate(healthy()), nil)
			rs := SwitchoverPreflight(s, cfg, SwitchoverOptions{Candidate: tc.candidate, MaxLag: 1 << 20})
			for name, want := range tc.want {
				level, msg, _ := strings.Cut(want, ":")
				found := false
				for _, r := range rs {
					if r.Name != name {
						continue
					}
					found = true
					if r.Level.String() != level || !strings.Contains(r.Message, msg) {
						t.Errorf("%s: %s %q, want %s %q", name, r.Level, r.Message, level, msg)
					}
				}
				if !found {
					t.Errorf("no %s result: %+v", name, rs)
				}
			}
		})
	}
}
