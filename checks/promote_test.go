package checks

import (
	"strings"
	"testing"

	"github.com/replctl/replctl/topology"
)

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
		// Every check shows with its result, passed ones too.
		{name: "healthy: the version checks show as passed", candidate: "pg2", mutate: func(st []topology.NodeStatus) []topology.NodeStatus { return st },
			want: map[string]string{"version": "OK:PostgreSQL", "major_version": "OK:the primary's"}},
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
