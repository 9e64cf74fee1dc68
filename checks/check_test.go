package checks

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/topology"
)

func ptr[T any](v T) *T { return &v }

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func cfgFor(t *testing.T, extra string, nodes ...string) *config.Config {
	t.Helper()
	var b strings.Builder
	b.WriteString("cluster: demo\n" + extra + "nodes:\n")
	for i, n := range nodes {
		name, zone, _ := strings.Cut(n, "@")
		fmt.Fprintf(&b, "  - name: %s\n    dsn: host=127.0.0.1 port=%d\n", name, 5432+i)
		if zone != "" {
			fmt.Fprintf(&b, "    zone: %s\n", zone)
		}
	}
	cfg, err := config.Parse("t.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func prim(name string, lsn topology.LSN, standbys ...string) topology.NodeStatus {
	st := topology.NodeStatus{Name: name, Reachable: true, ServerTime: ptr(t0), VersionNum: 150018, SystemID: "1",
		Timeline: ptr(uint32(1)), CurrentLSN: ptr(lsn), Settings: topology.Settings{SyncStandbys: &topology.SyncStandbys{}}}
	for _, s := range standbys {
		st.Replication = append(st.Replication, topology.Replication{ApplicationName: ptr(s), State: ptr("streaming"), FlushLSN: ptr(lsn)})
	}
	return st
}

func repl(name string, upstreamPort int, replay topology.LSN) topology.NodeStatus {
	return topology.NodeStatus{Name: name, Reachable: true, ServerTime: ptr(t0), VersionNum: 150018, SystemID: "1", InRecovery: true,
		Timeline: ptr(uint32(1)), ReceiveLSN: ptr(replay), ReplayLSN: ptr(replay), ReplayPauseState: "not paused",
		LastReplayTime: ptr(t0.Add(-time.Second)),
		WALReceiver:    &topology.WALReceiver{Status: "streaming", SenderHost: ptr("127.0.0.1"), SenderPort: ptr(upstreamPort)},
		Settings:       topology.Settings{RecoveryTargetTimeline: ptr("latest")}}
}

// sqlFence puts st under replctl's SQL fence: read-only, and commits
// waiting for a standby that does not exist.
func sqlFence(st topology.NodeStatus) topology.NodeStatus {
	st.Settings.DefaultTransactionReadOnly = ptr("on")
	st.Settings.SynchronousStandbyNames = ptr(topology.FenceStandbyName)
	st.Settings.SyncStandbys = &topology.SyncStandbys{Method: topology.SyncFirst, Num: 1, Names: []string{topology.FenceStandbyName}}
	return st
}

// healthy is pg1 primary with pg2 and pg3 streaming, caught up.
func healthy() []topology.NodeStatus {
	return []topology.NodeStatus{prim("pg1", 1000, "pg2", "pg3"), repl("pg2", 5432, 1000), repl("pg3", 5432, 1000)}
}

func codes(rs []Result) []string {
	var out []string
	for _, r := range rs {
		if r.Level != OK {
			out = append(out, fmt.Sprintf("%s:%s:%s", r.Level, r.Code, r.Node))
		}
	}
	return out
}

func TestChecks(t *testing.T) {
	t.Parallel()
	const mb = 1 << 20
	tests := []struct {
		name   string
		extra  string
		nodes  []string
		mutate func(st []topology.NodeStatus) []topology.NodeStatus
		rec    *topology.Record
		checks []string
		want   []string
		worst  Level
		// msg is in the message of every result that is not OK.
		msg string
	}{
		{name: "healthy", worst: OK},
		{name: "lag warning by bytes", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0].CurrentLSN = ptr(topology.LSN(1000 + 20*mb))
			st[2].ReplayLSN = ptr(topology.LSN(1000 + 20*mb))
			return st
		}, want: []string{"WARNING:lag:pg2"}, worst: Warning},
		{name: "lag critical by time", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0].CurrentLSN = ptr(topology.LSN(2000))
			st[1].ReplayLSN, st[2].ReplayLSN = ptr(topology.LSN(2000)), ptr(topology.LSN(1990))
			st[2].LastReplayTime = ptr(t0.Add(-10 * time.Minute))
			return st
		}, want: []string{"CRITICAL:lag:pg3"}, worst: Critical},
		{name: "thresholds from config", extra: "thresholds:\n  lag_warning: 100B\n  lag_critical: 1MB\n", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0].CurrentLSN = ptr(topology.LSN(1200))
			st[1].ReplayLSN, st[2].ReplayLSN = ptr(topology.LSN(1200)), ptr(topology.LSN(1200))
			st[1].ReplayLSN = ptr(topology.LSN(1000))
			return st
		}, want: []string{"WARNING:lag:pg2"}, worst: Warning},
		{name: "lag unknown without a primary position", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0].CurrentLSN = nil
			return st
		}, checks: []string{"lag"}, want: []string{"UNKNOWN:lag:pg2", "UNKNOWN:lag:pg3"}, worst: Unknown},
		{name: "paused and stopped", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[1].ReplayPauseState = "paused"
			st[2] = topology.NodeStatus{Name: "pg3", Error: "connection refused"}
			st[0].Replication = st[0].Replication[:1]
			return st
		}, want: []string{"WARNING:unreachable:pg3", "WARNING:replay_paused:pg2", "WARNING:min_replicas:"}, worst: Warning},
		{name: "split brain", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[2] = prim("pg3", 900)
			st[2].Timeline = ptr(uint32(2))
			st[0].Replication = st[0].Replication[:1]
			return st
		}, want: []string{"CRITICAL:split_brain:", "UNKNOWN:sync_quorum:", "WARNING:min_replicas:"}, worst: Critical},
		{name: "fenced former primary writable", rec: &topology.Record{Primary: "pg3", Fenced: []string{"pg1"}}, mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[2] = prim("pg3", 900, "pg2")
			st[1].WALReceiver.SenderPort = ptr(5434)
			return st
		}, want: []string{"CRITICAL:fenced_writable:pg1", "WARNING:min_replicas:"}, worst: Critical},
		{name: "fenced former primary read-only", rec: &topology.Record{Primary: "pg3", Fenced: []string{"pg1"}}, mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[2] = prim("pg3", 900, "pg2")
			st[1].WALReceiver.SenderPort = ptr(5434)
			st[0].Settings.DefaultTransactionReadOnly = ptr("on")
			return st
		}, want: []string{"WARNING:min_replicas:"}, worst: Warning},
		{name: "SQL-fenced primary, nothing promoted: no primary", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0] = sqlFence(st[0])
			return st
		}, checks: []string{"single_primary"}, want: []string{"CRITICAL:no_primary:"}, worst: Critical, msg: "pg1 (read-only, fenced)"},
		{name: "read-only primary: no primary", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0].Settings.DefaultTransactionReadOnly = ptr("on")
			return st
		}, checks: []string{"single_primary"}, want: []string{"CRITICAL:no_primary:"}, worst: Critical, msg: "pg1 (read-only)"},
		{name: "SQL-fenced old primary, promoted replica, record not updated", rec: &topology.Record{Primary: "pg1"}, mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0] = sqlFence(st[0])
			st[0].Replication = nil
			st[2] = prim("pg3", 900, "pg2")
			st[2].Timeline = ptr(uint32(2))
			st[1].WALReceiver.SenderPort = ptr(5434)
			st[1].Timeline = ptr(uint32(2))
			return st
		}, checks: []string{"single_primary", "recorded_primary", "timelines"}, want: []string{"WARNING:recorded_primary_differs:pg3"}, worst: Warning},
		{name: "fenced, read-only lifted, commits still wait", rec: &topology.Record{Primary: "pg3", Fenced: []string{"pg1"}}, mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0] = sqlFence(st[0])
			st[0].Settings.DefaultTransactionReadOnly = ptr("off")
			st[2] = prim("pg3", 900, "pg2")
			st[1].WALReceiver.SenderPort = ptr(5434)
			return st
		}, checks: []string{"single_primary"}, want: []string{"CRITICAL:fenced_writable:pg1"}, worst: Critical, msg: "no longer read-only"},
		{name: "recorded primary differs", rec: &topology.Record{Primary: "pg2"}, want: []string{"WARNING:recorded_primary_differs:pg1"}, worst: Warning},
		{name: "no primary", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0] = topology.NodeStatus{Name: "pg1", Error: "timeout"}
			return st
		}, checks: []string{"single_primary", "sync_quorum"}, want: []string{"CRITICAL:no_primary:", "UNKNOWN:sync_quorum:"}, worst: Critical},
		{name: "foreign node", nodes: []string{"pg1", "pg2", "pg3", "other"}, mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			o := prim("other", 5)
			o.SystemID = "2"
			return append(st, o)
		}, want: []string{"CRITICAL:foreign_node:other"}, worst: Critical},
		{name: "timeline and not streaming", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[1].Timeline = ptr(uint32(2))
			st[2].WALReceiver.Status = "waiting"
			return st
		}, want: []string{"WARNING:timeline_mismatch:pg2", "WARNING:not_streaming:pg3", "WARNING:min_replicas:"}, worst: Warning},
		{name: "slots", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0].Slots = []topology.Slot{
				{Name: "ok", Active: true, RetainedBytes: ptr(uint64(10))},
				{Name: "idle", Active: false, RetainedBytes: ptr(uint64(10))},
				{Name: "big", Active: true, RetainedBytes: ptr(uint64(2 << 30))},
				{Name: "gone", Active: true, WALStatus: ptr("lost")},
			}
			return st
		}, checks: []string{"slots"}, want: []string{"WARNING:slot:pg1", "WARNING:slot:pg1", "CRITICAL:slot:pg1"}, worst: Critical},
		{name: "slots invalidated (16, 17+)", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0].Slots = []topology.Slot{
				{Name: "old", Active: true},                              // 13: the columns are nil
				{Name: "conflict", Active: true, Conflicting: ptr(true)}, // 16
				{Name: "idle", Active: true, InvalidationReason: ptr("idle_timeout")},
				{Name: "fine", Active: true, Conflicting: ptr(false)},
			}
			return st
		}, checks: []string{"slots"}, want: []string{"CRITICAL:slot:pg1", "CRITICAL:slot:pg1"}, worst: Critical},
		{name: "sync quorum short", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0].Settings.SyncStandbys = &topology.SyncStandbys{Method: "ANY", Num: 2, Names: []string{"pg2", "pg9"}}
			return st
		}, checks: []string{"sync_quorum"}, want: []string{"CRITICAL:sync_quorum:pg1"}, worst: Critical},
		{name: "sync quorum met", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0].Settings.SyncStandbys = &topology.SyncStandbys{Method: "FIRST", Num: 2, Names: []string{"*"}}
			return st
		}, checks: []string{"sync_quorum"}, worst: OK},
		{name: "sync lowered by a fencing", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0].Settings.SynchronousStandbyNames = ptr("any 1 (pg2)")
			st[0].Settings.SyncStandbys = &topology.SyncStandbys{Method: "ANY", Num: 1, Names: []string{"pg2"}}
			return st
		}, rec: &topology.Record{Primary: "pg1", SyncRestore: &topology.SyncRestore{Node: "pg9", Primary: "pg1", Set: "ANY 1 (pg2)", Before: "ANY 2 (pg1, pg2)"}},
			checks: []string{"sync_quorum"}, want: []string{"WARNING:sync_lowered:pg1"}, worst: Warning, msg: "lowered from 'ANY 2 (pg1, pg2)' when pg9 was fenced"},
		{name: "sync lowered for a paused replica", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0].Settings.SynchronousStandbyNames = ptr("ANY 1 (pg3, pg2)")
			st[0].Settings.SyncStandbys = &topology.SyncStandbys{Method: "ANY", Num: 1, Names: []string{"pg3", "pg2"}}
			return st
		}, rec: &topology.Record{Primary: "pg1", SyncRestore: &topology.SyncRestore{Node: "pg3", Primary: "pg1", Set: "ANY 1 (pg3, pg2)", Before: "ANY 2 (pg1, pg3)",
			Raise: "ANY 2 (pg3, pg2)", Why: "pg3 could not stream from pg1 (replay is paused)"}},
			checks: []string{"sync_quorum"}, want: []string{"WARNING:sync_lowered:pg1"}, worst: Warning, msg: "lowered from 'ANY 2 (pg1, pg3)' when pg3 could not stream from pg1 (replay is paused)"},
		{name: "sync lowered, then changed by hand", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0].Settings.SynchronousStandbyNames = ptr("ANY 1 (pg2, pg3)")
			st[0].Settings.SyncStandbys = &topology.SyncStandbys{Method: "ANY", Num: 1, Names: []string{"pg2", "pg3"}}
			return st
		}, rec: &topology.Record{Primary: "pg1", SyncRestore: &topology.SyncRestore{Node: "pg9", Primary: "pg1", Set: "ANY 1 (pg2)", Before: "ANY 2 (pg1, pg2)"}},
			checks: []string{"sync_quorum"}, worst: OK},
		{name: "zones all in one", nodes: []string{"pg1@a", "pg2@b", "pg3@b"}, want: []string{"WARNING:zone_spread:"}, worst: Warning},
		{name: "zones spread", nodes: []string{"pg1@a", "pg2@a", "pg3@b"}, worst: OK},
		{name: "unmanaged", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[0].Replication = append(st[0].Replication, topology.Replication{ApplicationName: ptr("stray"), State: ptr("streaming")})
			return st
		}, want: []string{"WARNING:unmanaged_replica:pg1"}, worst: Warning},
		{name: "preflight only when named", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[1].Settings.RecoveryTargetTimeline = ptr("current")
			st[2].VersionNum = 160002
			return st
		}, worst: OK},
		{name: "preflight", mutate: func(st []topology.NodeStatus) []topology.NodeStatus {
			st[1].Settings.RecoveryTargetTimeline = ptr("current")
			st[2].VersionNum = 160002
			return st
		}, checks: []string{"recovery_target_timeline", "major_version"}, want: []string{"CRITICAL:recovery_target_timeline:pg2", "CRITICAL:major_version:pg3"}, worst: Critical},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			nodes := tt.nodes
			if nodes == nil {
				nodes = []string{"pg1", "pg2", "pg3"}
			}
			cfg := cfgFor(t, tt.extra, nodes...)
			st := healthy()
			if tt.mutate != nil {
				st = tt.mutate(st)
			}
			rs, err := Run(topology.Classify(cfg, st, tt.rec), cfg, tt.checks...)
			if err != nil {
				t.Fatal(err)
			}
			if got := codes(rs); !slices.Equal(got, tt.want) {
				t.Errorf("results = %q, want %q", got, tt.want)
			}
			if w := Worst(rs); w != tt.worst {
				t.Errorf("worst = %s, want %s", w, tt.worst)
			}
			for _, r := range rs {
				if r.Name == "" || r.Message == "" {
					t.Errorf("result without name or message: %+v", r)
				}
				if r.Level != OK && !strings.Contains(r.Message, tt.msg) {
					t.Errorf("%s: message %q does not say %q", r.Code, r.Message, tt.msg)
				}
			}
		})
	}
}

func TestRunUnknownName(t *testing.T) {
	t.Parallel()
	cfg := cfgFor(t, "", "pg1")
	if _, err := Run(topology.Classify(cfg, nil, nil), cfg, "nope"); err == nil || !strings.Contains(err.Error(), "single_primary") {
		t.Fatalf("err = %v", err)
	}
}

func TestWorst(t *testing.T) {
	t.Parallel()
	r := func(ls ...Level) []Result {
		var out []Result
		for _, l := range ls {
			out = append(out, Result{Level: l})
		}
		return out
	}
	for _, tt := range []struct {
		in   []Result
		want Level
	}{
		{nil, OK}, {r(OK, Unknown), Unknown}, {r(Unknown, Warning), Warning}, {r(Critical, Unknown, Warning), Critical},
	} {
		if got := Worst(tt.in); got != tt.want {
			t.Errorf("Worst = %s, want %s", got, tt.want)
		}
	}
}

func TestRegistry(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for _, c := range All() {
		if seen[c.Name] || c.Run == nil || c.Description == "" {
			t.Errorf("bad check %q", c.Name)
		}
		seen[c.Name] = true
	}
}

func TestFormatDelay(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{0: "0s", -time.Second: "0s", 850 * time.Millisecond: "850ms",
		12345 * time.Millisecond: "12.3s", 5*time.Minute + 3*time.Second + 400*time.Millisecond: "5m3s"} {
		if got := FormatDelay(d); got != want {
			t.Errorf("FormatDelay(%v) = %s, want %s", d, got, want)
		}
	}
}
