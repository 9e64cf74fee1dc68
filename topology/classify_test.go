package topology

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/replctl/replctl/config"
)

const sysA, sysB = "7300000000000000001", "7300000000000000002"

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func ptr[T any](v T) *T { return &v }

func testConfig(t *testing.T, names ...string) *config.Config {
	t.Helper()
	var b strings.Builder
	b.WriteString("cluster: demo\nnodes:\n")
	for i, n := range names {
		b.WriteString("  - name: " + n + "\n    dsn: host=127.0.0.1 port=" + string(rune('1'+i)) + "5432 user=postgres password=hunter2\n")
	}
	cfg, err := config.Parse("test.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// port is the port testConfig gives the i-th node.
func port(i int) int { return (i+1)*10000 + 5432 }

func primary(name string, lsn LSN, repl ...Replication) NodeStatus {
	return NodeStatus{Name: name, Reachable: true, ServerTime: ptr(t0), VersionNum: 150018, SystemID: sysA,
		Timeline: ptr(uint32(1)), CurrentLSN: ptr(lsn), Replication: repl,
		Settings: Settings{SyncStandbys: &SyncStandbys{}}}
}

func replica(name string, upstreamPort int, receive, replay LSN) NodeStatus {
	return NodeStatus{Name: name, Reachable: true, ServerTime: ptr(t0), VersionNum: 150018, SystemID: sysA, InRecovery: true,
		Timeline: ptr(uint32(1)), ReceiveLSN: ptr(receive), ReplayLSN: ptr(replay), ReplayPauseState: "not paused",
		WALReceiver: &WALReceiver{Status: "streaming", SenderHost: ptr("localhost"), SenderPort: ptr(upstreamPort), ReceivedTLI: ptr(uint32(1))},
		Settings:    Settings{RecoveryTargetTimeline: ptr("latest")}}
}

func walsender(app string, flush LSN) Replication {
	return Replication{ApplicationName: ptr(app), ClientAddr: ptr("127.0.0.1"), State: ptr("streaming"),
		FlushLSN: ptr(flush), ReplayLSN: ptr(flush), SyncState: ptr("async")}
}

func names(ns []*Node) []string {
	var out []string
	for _, n := range ns {
		out = append(out, strings.Repeat("  ", n.Depth)+n.Name)
	}
	return out
}

func TestClassifyHealthyAndCascade(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "pg1", "pg2", "pg3", "pg4")
	st := []NodeStatus{
		// Config order differs from tree order: pg4 cascades from pg2.
		replica("pg4", port(1), 900, 800),
		primary("pg1", 1000, walsender("pg3", 1000), walsender("pg2", 950)),
		replica("pg2", port(0), 950, 950),
		replica("pg3", port(0), 1000, 1000),
	}
	st[2].Replication = []Replication{walsender("pg4", 900)}
	s := Classify(cfg, st, nil)
	if s.Primary != "pg1" || s.SystemID != sysA || len(s.SplitBrain) != 0 || len(s.Unmanaged) != 0 {
		t.Fatalf("snapshot: primary %q sys %q split %v unmanaged %v", s.Primary, s.SystemID, s.SplitBrain, s.Unmanaged)
	}
	if got, want := names(s.Nodes), []string{"pg1", "  pg2", "    pg4", "  pg3"}; !slices.Equal(got, want) {
		t.Fatalf("tree = %q, want %q", got, want)
	}
	pg2, pg3, pg4 := s.Node("pg2"), s.Node("pg3"), s.Node("pg4")
	if pg2.Upstream != "pg1" || pg4.Upstream != "pg2" || pg2.Role != RoleReplica || s.Node("pg1").Role != RolePrimary {
		t.Fatalf("upstreams: %q %q", pg2.Upstream, pg4.Upstream)
	}
	// Lag is measured against the primary, through the cascade.
	if *pg4.LagBytes != 200 || *pg4.ReceiveLagBytes != 100 || *pg2.LagBytes != 50 || *pg3.LagBytes != 0 {
		t.Fatalf("lag: pg4 %d/%d pg2 %d pg3 %d", *pg4.LagBytes, *pg4.ReceiveLagBytes, *pg2.LagBytes, *pg3.LagBytes)
	}
	if pg3.ReplayDelaySeconds == nil || *pg3.ReplayDelaySeconds != 0 {
		t.Fatalf("caught-up replica delay = %v", pg3.ReplayDelaySeconds)
	}
	if pg4.Walsender == nil || *pg4.SyncState != "async" || pg4.State != "streaming" {
		t.Fatalf("pg4 walsender %v state %q", pg4.Walsender, pg4.State)
	}
}

func TestClassifyReplayDelay(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "pg1", "pg2")
	tests := []struct {
		name       string
		replay     LSN
		lastReplay *time.Time
		replayLag  *float64
		want       *float64
	}{
		// An idle primary: the last transaction is an hour old, but the
		// replica has replayed everything: no delay.
		{"idle caught up", 1000, ptr(t0.Add(-time.Hour)), nil, ptr(0.0)},
		{"behind", 900, ptr(t0.Add(-90 * time.Second)), ptr(0.5), ptr(90.0)},
		// Commit timestamps in the future (clock step) never give negative delay.
		{"clock ahead", 900, ptr(t0.Add(time.Second)), nil, ptr(0.0)},
		{"behind, no replayed xact yet", 900, nil, ptr(2.5), ptr(2.5)},
		{"behind, nothing known", 900, nil, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := walsender("pg2", tt.replay)
			w.ReplayLagSecs = tt.replayLag
			r := replica("pg2", port(0), tt.replay, tt.replay)
			r.LastReplayTime = tt.lastReplay
			s := Classify(cfg, []NodeStatus{primary("pg1", 1000, w), r}, nil)
			got := s.Node("pg2").ReplayDelaySeconds
			if (got == nil) != (tt.want == nil) || got != nil && *got != *tt.want {
				t.Fatalf("delay = %v, want %v", fmtp(got), fmtp(tt.want))
			}
		})
	}
}

func fmtp(p *float64) any {
	if p == nil {
		return "unknown"
	}
	return *p
}

func TestClassifyUnknownIsNotZero(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "pg1", "pg2", "pg3")
	p := primary("pg1", 1000)
	p.CurrentLSN = nil // e.g. a role without the grant
	r := replica("pg2", port(0), 900, 900)
	// The primary is down: lag has no reference.
	s := Classify(cfg, []NodeStatus{p, r, {Name: "pg3", Error: "connection refused"}}, nil)
	if n := s.Node("pg2"); n.LagBytes != nil || n.ReplayDelaySeconds != nil {
		t.Fatalf("lag %v delay %v, want unknown", n.LagBytes, n.ReplayDelaySeconds)
	}
	b, _ := json.Marshal(s.Node("pg2"))
	if !strings.Contains(string(b), `"lag_bytes":null`) || !strings.Contains(string(b), `"replay_delay_seconds":null`) {
		t.Fatalf("json: %s", b)
	}
	if n := s.Node("pg3"); n.Role != RoleUnknown || n.State != "unreachable" {
		t.Fatalf("pg3 %s %s", n.Role, n.State)
	}
	// A replica whose receiver died is behind, not caught up.
	r = replica("pg2", port(0), 900, 900)
	r.WALReceiver = nil
	r.LastReplayTime = ptr(t0.Add(-10 * time.Minute))
	s = Classify(cfg, []NodeStatus{primary("pg1", 1000), r, replica("pg3", port(0), 1000, 1000)}, nil)
	n := s.Node("pg2")
	if n.State != "not streaming" || n.Upstream != "" || *n.LagBytes != 100 || *n.ReplayDelaySeconds != 600 {
		t.Fatalf("dead receiver: state %q upstream %q lag %v delay %v", n.State, n.Upstream, n.LagBytes, fmtp(n.ReplayDelaySeconds))
	}
	if got := names(s.Nodes); !slices.Equal(got, []string{"pg1", "  pg3", "pg2"}) {
		t.Fatalf("tree %q", got)
	}
}

func TestClassifyForeignAndSplitBrain(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "pg1", "pg2", "pg3", "other")
	foreign := primary("other", 5000)
	foreign.SystemID = sysB
	promoted := primary("pg3", 2000)
	promoted.Timeline = ptr(uint32(2))
	st := []NodeStatus{primary("pg1", 1000, walsender("pg2", 1000)), replica("pg2", port(0), 1000, 1000), promoted, foreign}
	s := Classify(cfg, st, nil)
	if !s.Node("other").Foreign || s.Node("other").Role != RoleUnknown || s.Node("other").State != "foreign" {
		t.Fatalf("other: %+v", s.Node("other"))
	}
	if !slices.Equal(s.SplitBrain, []string{"pg1", "pg3"}) || s.Primary != "" {
		t.Fatalf("split %v primary %q", s.SplitBrain, s.Primary)
	}
	// The replica's lag is measured against the primary it follows.
	if *s.Node("pg2").LagBytes != 0 {
		t.Fatalf("pg2 lag %d", *s.Node("pg2").LagBytes)
	}
	if got := names(s.Nodes); !slices.Equal(got, []string{"pg1", "  pg2", "pg3", "other"}) {
		t.Fatalf("tree %q", got)
	}
	b, _ := json.Marshal(s)
	if !strings.Contains(string(b), `"primary":null`) {
		t.Fatalf("json: %s", b)
	}

	// The record disambiguates, and a fenced former primary is not the primary.
	s = Classify(cfg, st, &Record{Primary: "pg3", Fenced: []string{"pg1"}})
	if s.Primary != "pg3" || len(s.SplitBrain) != 0 || !s.Node("pg1").Fenced || s.Node("pg1").State != "writable, fenced" {
		t.Fatalf("with record: primary %q split %v pg1 %+v", s.Primary, s.SplitBrain, s.Node("pg1").State)
	}
	// Under the SQL fence it is up but read-only, and said to be.
	ro := "on"
	st[0].Settings.DefaultTransactionReadOnly = &ro
	s = Classify(cfg, st, &Record{Primary: "pg3", Fenced: []string{"pg1"}})
	if s.Primary != "pg3" || s.Node("pg1").State != "read-only, fenced" {
		t.Fatalf("fenced read-only: primary %q pg1 %q", s.Primary, s.Node("pg1").State)
	}
	st[0].Settings.DefaultTransactionReadOnly = nil
	s = Classify(cfg, st, &Record{Primary: "pg3"})
	if s.Primary != "pg3" || len(s.SplitBrain) != 2 {
		t.Fatalf("recorded primary in a split brain: %q %v", s.Primary, s.SplitBrain)
	}
}

func TestClassifySystemIDMajority(t *testing.T) {
	t.Parallel()
	// The first configured node is the foreign one: the majority wins.
	cfg := testConfig(t, "other", "pg1", "pg2")
	foreign := primary("other", 5000)
	foreign.SystemID = sysB
	s := Classify(cfg, []NodeStatus{foreign, primary("pg1", 1000), replica("pg2", port(1), 1000, 1000)}, nil)
	if s.SystemID != sysA || s.Primary != "pg1" || !s.Node("other").Foreign {
		t.Fatalf("sys %s primary %s", s.SystemID, s.Primary)
	}
}

func TestClassifyUnmanagedAndMatching(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "pg1", "pg2", "pg3")
	// pg2 reports as "walreceiver" (no cluster_name) but uses slot pg2;
	// pg3's receiver columns are unreadable, matched by application_name;
	// a stray walsender is unmanaged; a base backup is neither.
	anon := walsender("walreceiver", 990)
	anon.PID = ptr(101)
	stray := walsender("reporting", 500)
	backup := walsender("pg_basebackup", 0)
	backup.State = ptr("backup")
	p := primary("pg1", 1000, anon, walsender("pg3", 1000), stray, backup)
	p.Slots = []Slot{{Name: "pg2", Active: true, ActivePID: ptr(101)}}
	r2 := replica("pg2", port(0), 990, 990)
	r2.WALReceiver.SlotName = ptr("pg2")
	r3 := replica("pg3", 0, 1000, 1000)
	r3.WALReceiver = &WALReceiver{}
	s := Classify(cfg, []NodeStatus{p, r2, r3}, nil)
	if s.Node("pg2").Walsender == nil || *s.Node("pg2").Walsender.PID != 101 {
		t.Fatalf("pg2 not matched by slot")
	}
	if s.Node("pg3").Upstream != "pg1" || s.Node("pg3").Walsender == nil {
		t.Fatalf("pg3 upstream %q", s.Node("pg3").Upstream)
	}
	if len(s.Unmanaged) != 1 || *s.Unmanaged[0].ApplicationName != "reporting" || s.Unmanaged[0].Upstream != "pg1" {
		t.Fatalf("unmanaged %+v", s.Unmanaged)
	}
	// Without the slot, the nearest position pairs the anonymous walsender.
	p.Slots = nil
	s = Classify(cfg, []NodeStatus{p, r2, r3}, nil)
	if s.Node("pg2").Walsender == nil || *s.Node("pg2").Walsender.PID != 101 || len(s.Unmanaged) != 1 {
		t.Fatalf("pg2 not matched by position; unmanaged %d", len(s.Unmanaged))
	}
}

func TestNodeNameJSON(t *testing.T) {
	t.Parallel()
	b, _ := json.Marshal([]NodeName{"", "pg1"})
	if string(b) != `[null,"pg1"]` {
		t.Fatal(string(b))
	}
}

func TestNormHostAndAddrs(t *testing.T) {
	t.Parallel()
	for _, h := range []string{"localhost", "127.0.0.1", "::1", "[::1]", "/var/run/postgresql", "LOCALHOST"} {
		if normHost(h) != "localhost" {
			t.Errorf("normHost(%q) = %q", h, normHost(h))
		}
	}
	got := nodeAddrs("host=db1,db2 port=5432,5433 user=x")
	if !slices.Equal(got, []hostPort{{"db1", 5432}, {"db2", 5433}}) {
		t.Errorf("addrs = %v", got)
	}
}

// sqlFenced puts st under replctl's SQL fence, or the parts of it given.
func sqlFenced(st NodeStatus, readOnly bool, syncNames string) NodeStatus {
	if readOnly {
		st.Settings.DefaultTransactionReadOnly = ptr("on")
	} else {
		st.Settings.DefaultTransactionReadOnly = ptr("off")
	}
	st.Settings.SynchronousStandbyNames = ptr(syncNames)
	st.Settings.SyncStandbys = nil
	if ss, err := ParseSyncStandbyNames(syncNames); err == nil {
		st.Settings.SyncStandbys = &ss
	}
	return st
}

// TestClassifyFences: a node out of recovery that does not accept writes
// (read-only, or its commits waiting for the fence's standby name) is never
// the primary nor part of a split brain.
func TestClassifyFences(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "pg1", "pg2", "pg3")
	// pg3 was promoted onto timeline 2 and pg2 follows it; pg1 is the old
	// primary on timeline 1.
	promoted := func() NodeStatus {
		p := primary("pg3", 2000, walsender("pg2", 2000))
		p.Timeline = ptr(uint32(2))
		return p
	}
	follower := func() NodeStatus {
		r := replica("pg2", port(2), 2000, 2000)
		r.Timeline, r.WALReceiver.ReceivedTLI = ptr(uint32(2)), ptr(uint32(2))
		return r
	}
	old := func(readOnly bool, syncNames string) NodeStatus {
		return sqlFenced(primary("pg1", 1000), readOnly, syncNames)
	}
	tests := []struct {
		name     string
		st       []NodeStatus
		rec      *Record
		primary  NodeName
		split    []string
		writable []string // nodes Writable() reports true for
		states   map[string]string
	}{
		{name: "SQL-fenced old primary, record not updated",
			st:  []NodeStatus{old(true, FenceStandbyName), follower(), promoted()},
			rec: &Record{Primary: "pg1"}, primary: "pg3", writable: []string{"pg3"},
			states: map[string]string{"pg1": "read-only, fenced", "pg3": "writable"}},
		{name: "SQL-fenced old primary, no record",
			st:      []NodeStatus{old(true, FenceStandbyName), follower(), promoted()},
			primary: "pg3", writable: []string{"pg3"},
			states: map[string]string{"pg1": "read-only, fenced"}},
		{name: "SQL-fenced old primary, marked fenced",
			st:  []NodeStatus{old(true, FenceStandbyName), follower(), promoted()},
			rec: &Record{Primary: "pg3", Fenced: []string{"pg1"}}, primary: "pg3", writable: []string{"pg3"},
			states: map[string]string{"pg1": "read-only, fenced"}},
		{name: "read-only by default_transaction_read_only alone",
			st:      []NodeStatus{old(true, ""), follower(), promoted()},
			primary: "pg3", writable: []string{"pg3"},
			states: map[string]string{"pg1": "read-only"}},
		{name: "read-only lifted, commits still wait for the fence",
			st:      []NodeStatus{old(false, FenceStandbyName), follower(), promoted()},
			primary: "pg3", writable: []string{"pg3"},
			states: map[string]string{"pg1": "commits blocked, fenced"}},
		{name: "the fence's name among others that can satisfy the quorum is no fence",
			st:    []NodeStatus{old(false, "ANY 1 (replctl_fenced, pg9)"), follower(), promoted()},
			split: []string{"pg1", "pg3"}, writable: []string{"pg1", "pg3"},
			states: map[string]string{"pg1": "writable"}},
		{name: "the fence's name needed for the number of standbys",
			st:      []NodeStatus{old(false, "FIRST 2 (pg9, \"REPLCTL_FENCED\")"), follower(), promoted()},
			primary: "pg3", writable: []string{"pg3"}},
		{name: "a wildcard is no fence",
			st:    []NodeStatus{old(false, "FIRST 1 (replctl_fenced, *)"), follower(), promoted()},
			split: []string{"pg1", "pg3"}, writable: []string{"pg1", "pg3"}},
		{name: "the only node out of recovery is fenced: no primary",
			st:       []NodeStatus{old(true, FenceStandbyName), replica("pg2", port(0), 1000, 1000), replica("pg3", port(0), 1000, 1000)},
			rec:      &Record{Primary: "pg1"},
			writable: nil, states: map[string]string{"pg1": "read-only, fenced"}},
		{name: "two writable and a fenced one: the split brain names the writable",
			st:    []NodeStatus{old(false, ""), sqlFenced(primary("pg2", 1500), true, FenceStandbyName), promoted()},
			split: []string{"pg1", "pg3"}, writable: []string{"pg1", "pg3"},
			states: map[string]string{"pg2": "read-only, fenced"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := Classify(cfg, tc.st, tc.rec)
			split := tc.split
			if split == nil {
				split = []string{}
			}
			if s.Primary != tc.primary || !slices.Equal(s.SplitBrain, split) {
				t.Errorf("primary %q split %q, want %q %q", s.Primary, s.SplitBrain, tc.primary, split)
			}
			var writable []string
			for _, n := range s.Nodes {
				if n.Writable() {
					writable = append(writable, n.Name)
				}
			}
			slices.Sort(writable)
			if !slices.Equal(writable, tc.writable) {
				t.Errorf("writable %q, want %q", writable, tc.writable)
			}
			for name, want := range tc.states {
				if got := s.Node(name).State; got != want {
					t.Errorf("%s state %q, want %q", name, got, want)
				}
			}
			if p := s.PrimaryNode(); p != nil && (!p.Writable() || p.Fenced) {
				t.Errorf("primary %s is not writable or fenced", p.Name)
			}
		})
	}
}

func TestClassifyWritable(t *testing.T) {
	t.Parallel()
	p := primary("pg1", 1000)
	for _, tc := range []struct {
		name string
		n    Node
		want bool
	}{
		{"primary", Node{NodeStatus: p}, true},
		{"replica", Node{NodeStatus: replica("pg1", port(1), 1, 1)}, false},
		{"unreachable", Node{NodeStatus: NodeStatus{Name: "pg1"}}, false},
		{"foreign", Node{NodeStatus: p, Foreign: true}, false},
		{"read-only", Node{NodeStatus: sqlFenced(p, true, "")}, false},
		{"SQL fence", Node{NodeStatus: sqlFenced(p, true, FenceStandbyName)}, false},
		{"sync fence only", Node{NodeStatus: sqlFenced(p, false, FenceStandbyName)}, false},
		{"sync fence unparsed", Node{NodeStatus: func() NodeStatus {
			st := p
			st.Settings = Settings{SynchronousStandbyNames: ptr(FenceStandbyName)}
			return st
		}()}, false},
		{"synchronous to a real standby", Node{NodeStatus: sqlFenced(p, false, "pg2")}, true},
		// The record's mark alone does not stop writes: it is reported
		// as a fenced node accepting writes, not hidden.
		{"marked fenced, not SQL-fenced", Node{NodeStatus: p, Fenced: true}, true},
	} {
		if got := tc.n.Writable(); got != tc.want {
			t.Errorf("%s: Writable() = %v, want %v", tc.name, got, tc.want)
		}
	}
}
