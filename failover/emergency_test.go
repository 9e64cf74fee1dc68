package failover_test

import (
	"context"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/topology"
	tt "github.com/replctl/replctl/topology/topologytest"
)

// The emergency unit tests build snapshots by hand: pg1 is the primary at
// 127.0.0.1:5432, pg2 and pg3 its replicas at 5433 and 5434 (pg4 at 5435
// when a test needs it), all with the topologytest defaults.

func emConfig(t *testing.T, extra string) *config.Config {
	t.Helper()
	var b strings.Builder
	b.WriteString("cluster: demo\nnodes:\n")
	for i, n := range []string{"pg1", "pg2", "pg3", "pg4"} {
		b.WriteString("  - name: " + n + "\n    dsn: host=127.0.0.1 port=" + strconv.Itoa(5432+i) + " user=replctl dbname=postgres\n")
		if n == "pg4" {
			b.WriteString("    priority: 0\n")
		}
	}
	b.WriteString(extra)
	cfg, err := config.Parse("replctl.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// emDead is a replica whose upstream died: no WAL receiver any more, its
// primary_conninfo still naming pg1, positions as given.
func emDead(name string, recv, replay topology.LSN) topology.NodeStatus {
	st := tt.Replica(name, 5432, replay)
	st.WALReceiver = nil
	st.ReceiveLSN = tt.Ptr(recv)
	st.Settings.PrimaryConninfo = tt.Ptr("host=127.0.0.1 port=5432 user=replctl application_name=" + name)
	st.TimelineSource = topology.TimelineFromHistory
	return st
}

// emStreaming is a replica still streaming from pg1, last hearing from it
// silence ago, with wal_receiver_timeout 4s (a silence threshold of 3s).
func emStreaming(name string, lsn topology.LSN, silence time.Duration) topology.NodeStatus {
	st := tt.Replica(name, 5432, lsn)
	st.WALReceiver.LastMsgReceiptTime = tt.Ptr(tt.T0().Add(-silence))
	st.Settings.WALReceiverTimeoutMS = tt.Ptr(int64(4000))
	st.Settings.PrimaryConninfo = tt.Ptr("host=127.0.0.1 port=5432 user=replctl application_name=" + name)
	return st
}

func emSnap(cfg *config.Config, rec *topology.Record, sts ...topology.NodeStatus) *topology.Snapshot {
	return topology.Classify(cfg, sts, rec)
}

func emFailed() []failover.ProbeAttempt {
	return []failover.ProbeAttempt{{At: tt.T0(), Error: "connection refused"}, {At: tt.T0().Add(time.Second), Error: "connection refused"}}
}

func TestOldPrimary(t *testing.T) {
	t.Parallel()
	cfg := emConfig(t, "")
	dead := emSnap(cfg, nil, emDead("pg2", 0x3000000, 0x3000000), emDead("pg3", 0x3000000, 0x3000000))
	cases := []struct {
		name string
		snap *topology.Snapshot
		st   *etcdlock.State
		want string
		err  string
	}{
		{name: "the record names it", snap: dead, st: &etcdlock.State{Primary: "pg3"}, want: "pg3"},
		{name: "a record naming an unknown node falls back to the replicas", snap: dead, st: &etcdlock.State{Primary: "gone"}, want: "pg1"},
		{name: "no record: where the replicas point", snap: dead, want: "pg1"},
		{name: "a cascade's upstream is a replica, not the primary", want: "pg1", snap: func() *topology.Snapshot {
			// pg3 streams from pg2; pg2 and pg4 point at the dead pg1.
			pg3 := tt.Replica("pg3", 5433, 0x3000000)
			return emSnap(cfg, nil, emDead("pg2", 0x3000000, 0x3000000), pg3, emDead("pg4", 0x3000000, 0x3000000))
		}()},
		{name: "no record and no replica names a node", err: "cannot tell which node was the primary", snap: func() *topology.Snapshot {
			a, b := emDead("pg2", 0x3000000, 0x3000000), emDead("pg3", 0x3000000, 0x3000000)
			a.Settings.PrimaryConninfo, b.Settings.PrimaryConninfo = tt.Ptr("host=10.9.9.9 port=1"), nil
			return emSnap(cfg, nil, a, b)
		}()},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got, err := failover.OldPrimary(cfg, c.snap, c.st)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("got %q, %v; want error %q", got, err, c.err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("got %q, %v; want %q", got, err, c.want)
			}
		})
	}
}

func TestJudgeEvidence(t *testing.T) {
	t.Parallel()
	cfg := emConfig(t, "")
	cases := []struct {
		name       string
		probes     []failover.ProbeAttempt
		replicas   []topology.NodeStatus
		conclusive bool
		// in is the expected conclusive_in_seconds; 0 means none.
		in      float64
		verdict string
	}{
		{name: "crashed: receivers stopped", probes: emFailed(), conclusive: true, verdict: "pg1 is dead: 2 probe(s) failed and no replica hears from it",
			replicas: []topology.NodeStatus{emDead("pg2", 0x3000000, 0x3000000), emDead("pg3", 0x3000000, 0x3000000)}},
		{name: "hung: silence below the threshold", probes: emFailed(), in: 2.5, verdict: "not conclusive: pg2 (streaming, last message 0.5s ago) still hears from pg1",
			replicas: []topology.NodeStatus{emStreaming("pg2", 0x3000000, 500*time.Millisecond), emDead("pg3", 0x3000000, 0x3000000)}},
		{name: "hung: the longest wait counts", probes: emFailed(), in: 2.5, verdict: "pg2 (streaming, last message 2.0s ago), pg3 (streaming, last message 0.5s ago) still hear from pg1",
			replicas: []topology.NodeStatus{emStreaming("pg2", 0x3000000, 2*time.Second), emStreaming("pg3", 0x3000000, 500*time.Millisecond)}},
		{name: "hung: silence above the threshold", probes: emFailed(), conclusive: true, verdict: "pg1 is dead",
			replicas: []topology.NodeStatus{emStreaming("pg2", 0x3000000, 3500*time.Millisecond), emDead("pg3", 0x3000000, 0x3000000)}},
		{name: "streaming with the silence unreadable", probes: emFailed(), verdict: "silence unknown: grant pg_monitor",
			replicas: []topology.NodeStatus{func() topology.NodeStatus {
				st := emStreaming("pg2", 0x3000000, 0)
				st.WALReceiver.LastMsgReceiptTime = nil
				return st
			}()}},
		{name: "a receiver runs but its state is unreadable (no pg_monitor)", probes: emFailed(), verdict: "pg2 (a WAL receiver runs; its state is unreadable: grant pg_monitor) still hears from pg1",
			replicas: []topology.NodeStatus{func() topology.NodeStatus {
				st := emStreaming("pg2", 0x3000000, 0)
				st.WALReceiver = &topology.WALReceiver{PID: tt.Ptr(4242)}
				return st
			}(), emDead("pg3", 0x3000000, 0x3000000)}},
		{name: "a probe reached it: alive", verdict: "pg1 answered a probe at 12:00:01.000: it is not dead",
			probes:   []failover.ProbeAttempt{{At: tt.T0(), Error: "timeout"}, {At: tt.T0().Add(time.Second), Reachable: true, Writable: true}},
			replicas: []topology.NodeStatus{emDead("pg2", 0x3000000, 0x3000000)}},
		{name: "a cascade hears its upstream replica, not the primary", probes: emFailed(), conclusive: true, verdict: "pg1 is dead",
			replicas: []topology.NodeStatus{emDead("pg2", 0x3000000, 0x3000000), tt.Replica("pg3", 5433, 0x3000000)}},
		{name: "no replica of it is reachable", probes: emFailed(), conclusive: true, verdict: "no reachable replica streamed from it"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ev := failover.JudgeEvidence(cfg, emSnap(cfg, nil, c.replicas...), "pg1", c.probes)
			if ev.Conclusive != c.conclusive || !strings.Contains(ev.Verdict, c.verdict) {
				t.Fatalf("conclusive %v, verdict %q; want %v, %q", ev.Conclusive, ev.Verdict, c.conclusive, c.verdict)
			}
			switch {
			case c.in == 0 && ev.ConclusiveInSeconds != nil:
				t.Errorf("conclusive_in %v, want none", *ev.ConclusiveInSeconds)
			case c.in != 0 && (ev.ConclusiveInSeconds == nil || math.Abs(*ev.ConclusiveInSeconds-c.in) > 1e-6):
				t.Errorf("conclusive_in %v, want %v", ev.ConclusiveInSeconds, c.in)
			}
			if c.in != 0 && !strings.Contains(ev.Verdict, "becomes conclusive in about") {
				t.Errorf("the refusal must say when it becomes conclusive: %q", ev.Verdict)
			}
		})
	}
}

func TestJudgeEvidenceReceivers(t *testing.T) {
	t.Parallel()
	cfg := emConfig(t, "")
	pg2 := emDead("pg2", 0x3000100, 0x3000000)
	pg2.Timeline = tt.Ptr(uint32(3))
	ev := failover.JudgeEvidence(cfg, emSnap(cfg, nil, pg2, emStreaming("pg3", 0x3000000, time.Second)), "pg1", emFailed())
	if len(ev.Receivers) != 2 {
		t.Fatalf("receivers %+v", ev.Receivers)
	}
	r2, r3 := ev.Receivers[0], ev.Receivers[1]
	if r2.Node != "pg2" {
		// Receivers come in tree order: pg3 still hangs under pg1.
		r2, r3 = r3, r2
	}
	if r2.Node != "pg2" || r2.Status != "stopped" || r2.HearsPrimary || r2.SilenceSeconds != nil || r2.ReceiveLSN != "0/3000100" ||
		r2.ReplayLSN != "0/3000000" || r2.Timeline == nil || *r2.Timeline != 3 || r2.ThresholdSeconds != 32 {
		t.Errorf("pg2 %+v", r2)
	}
	if r3.Node != "pg3" || r3.Status != "streaming" || !r3.HearsPrimary || r3.SilenceSeconds == nil || *r3.SilenceSeconds != 1 || r3.ThresholdSeconds != 3 {
		t.Errorf("pg3 %+v", r3)
	}
}

func TestProveSync(t *testing.T) {
	t.Parallel()
	all := func(string) bool { return true }
	only := func(names ...string) func(string) bool {
		return func(n string) bool { return strings.Contains(" "+strings.Join(names, " ")+" ", " "+n+" ") }
	}
	sync := func(names, commit string) *etcdlock.State {
		return &etcdlock.State{Sync: etcdlock.SyncSettings{StandbyNames: names, Commit: commit}}
	}
	cases := []struct {
		name             string
		st               *etcdlock.State
		examined         func(string) bool
		sync, proven     bool
		needed, nExamine int
		msg              string
	}{
		{name: "unknown: no record", examined: all, msg: "no synchronous replication settings recorded"},
		{name: "unknown: a record without settings", st: &etcdlock.State{Primary: "pg1"}, examined: all, msg: "no synchronous replication settings recorded"},
		{name: "async: no standby names", st: sync("", "on"), examined: all, msg: "replication was asynchronous"},
		{name: "async: synchronous_commit local", st: sync("ANY 1 (pg2, pg3)", "local"), examined: all, msg: "synchronous_commit local"},
		{name: "async: unparsable names", st: sync("ANY (", "on"), examined: all, msg: "replication was asynchronous"},
		{name: "ANY 1 of 2, both examined", st: sync("ANY 1 (pg2, pg3)", "on"), examined: all, sync: true, proven: true, needed: 2, nExamine: 2,
			msg: "examined 2 of 2 quorum standbys, ANY 1: every acknowledged commit is on pg2"},
		{name: "ANY 1 of 2, one examined", st: sync("ANY 1 (pg2, pg3)", "on"), examined: only("pg2"), sync: true, needed: 2, nExamine: 1,
			msg: "examined only 1 of 2 quorum standbys (pg2); ANY 1 needs 2"},
		{name: "ANY 2 of 3, two examined", st: sync("ANY 2 (pg2, pg3, pg4)", "remote_apply"), examined: only("pg2", "pg3"), sync: true, proven: true, needed: 2, nExamine: 2},
		{name: "FIRST 1 of 3, two examined", st: sync("FIRST 1 (pg2, pg3, pg4)", "on"), examined: only("pg2", "pg4"), sync: true, needed: 3, nExamine: 2},
		{name: "FIRST 2 of 3, two examined", st: sync("FIRST 2 (pg2, pg3, pg4)", "on"), examined: only("pg3", "pg4"), sync: true, proven: true, needed: 2, nExamine: 2},
		{name: "a plain list is FIRST 1", st: sync("pg2, pg3", "on"), examined: all, sync: true, proven: true, needed: 2, nExamine: 2},
		{name: "'*' cannot be enumerated", st: sync("ANY 1 (*)", "on"), examined: all, sync: true, msg: "uses '*'"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			p := failover.ProveSync(c.st, c.examined, "pg2", "")
			if p.Sync != c.sync || p.Proven != c.proven || p.Needed != c.needed || len(p.Examined) != c.nExamine || !strings.Contains(p.Message, c.msg) {
				t.Fatalf("%+v", p)
			}
		})
	}
	// An unproven claim carries how much the record says may be lost.
	p := failover.ProveSync(sync("", ""), all, "pg2", "pg1 was last recorded at 0/5000000")
	if !strings.HasSuffix(p.Message, "; pg1 was last recorded at 0/5000000") {
		t.Errorf("message %q", p.Message)
	}
}

// emCheck returns the named check's result, failing the test without one.
func emCheck(t *testing.T, rs []checks.Result, name string) checks.Result {
	t.Helper()
	for _, r := range rs {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no %s check in %+v", name, rs)
	return checks.Result{}
}

func emFailedNames(rs []checks.Result) []string {
	var out []string
	for _, r := range checks.Failed(rs) {
		out = append(out, r.Name)
	}
	return out
}

// asyncRec is a record of an asynchronous primary; noRecord stands for no
// record at all in tables whose zero value means asyncRec.
var (
	asyncRec = &etcdlock.State{Primary: "pg1", Sync: etcdlock.SyncSettings{StandbyNames: "", Commit: "on"}}
	noRecord = &etcdlock.State{}
)

func TestEmergencyPreflightRanking(t *testing.T) {
	t.Parallel()
	cfg := emConfig(t, "")
	dead := func() failover.Evidence { return failover.Evidence{Conclusive: true, Verdict: "pg1 is dead"} }
	cases := []struct {
		name     string
		replicas []topology.NodeStatus
		want     string
		rejected map[string]string
	}{
		{name: "the highest received position wins over replay", want: "pg3",
			replicas: []topology.NodeStatus{emDead("pg2", 0x3000100, 0x3000100), emDead("pg3", 0x3000200, 0x3000000)},
			rejected: map[string]string{"pg2": "received up to 0/3000100"}},
		{name: "a tie goes to the name", want: "pg2",
			replicas: []topology.NodeStatus{emDead("pg2", 0x3000100, 0x3000100), emDead("pg3", 0x3000100, 0x3000100)}},
		{name: "priority 0 is never promoted, even ahead", want: "pg2",
			replicas: []topology.NodeStatus{emDead("pg2", 0x3000100, 0x3000100), emDead("pg4", 0x3000100, 0x3000100)},
			rejected: map[string]string{"pg4": "priority 0 (never promote)", "pg3": "unreachable"}},
		{name: "a cascade is not a candidate", want: "pg2",
			replicas: []topology.NodeStatus{emDead("pg2", 0x3000100, 0x3000100), tt.Replica("pg3", 5433, 0x3000100)},
			rejected: map[string]string{"pg3": "does not replicate directly from pg1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ch, rs := failover.EmergencyPreflight(cfg, emSnap(cfg, nil, c.replicas...), asyncRec, "pg1", dead(), failover.EmergencyOptions{})
			if ch.Chosen != c.want {
				t.Fatalf("chose %q (%s), want %s; checks %+v", ch.Chosen, ch.Why, c.want, rs)
			}
			for n, why := range c.rejected {
				if ch.Rejected[n] != why {
					t.Errorf("rejected[%s] = %q, want %q", n, ch.Rejected[n], why)
				}
			}
			if f := emFailedNames(rs); len(f) > 0 {
				t.Errorf("failed checks %v", f)
			}
		})
	}
}

func TestEmergencyPreflightRefusals(t *testing.T) {
	t.Parallel()
	cfg := emConfig(t, "")
	dead := failover.Evidence{Conclusive: true, Verdict: "pg1 is dead"}
	pg2, pg3 := emDead("pg2", 0x3100000, 0x3100000), emDead("pg3", 0x3000000, 0x3000000)
	syncRec := &etcdlock.State{Primary: "pg1", Sync: etcdlock.SyncSettings{StandbyNames: "ANY 1 (pg2, pg3)", Commit: "on"}}
	cases := []struct {
		name   string
		sts    []topology.NodeStatus
		st     *etcdlock.State
		ev     failover.Evidence
		o      failover.EmergencyOptions
		failed []string
		check  string // a check whose level and message are asserted
		level  checks.Level
		msg    string
	}{
		{name: "a writable primary: nothing to fail over", sts: []topology.NodeStatus{tt.Primary("pg1", 0x3000000, "pg2"), tt.Replica("pg2", 5432, 0x3000000)},
			ev: dead, failed: []string{"primary_down"}, check: "primary_down", level: checks.Critical, msg: "pg1 is a reachable, writable primary"},
		{name: "inconclusive evidence", sts: []topology.NodeStatus{pg2, pg3}, ev: failover.Evidence{Verdict: "not conclusive: pg2 still hears"},
			failed: []string{"primary_dead"}, check: "primary_dead", level: checks.Critical, msg: "not conclusive"},
		{name: "--force overrides the evidence only", sts: []topology.NodeStatus{pg2, pg3}, ev: failover.Evidence{Verdict: "not conclusive"},
			o: failover.EmergencyOptions{Force: true}, check: "primary_dead", level: checks.Warning, msg: "FORCED past the evidence"},
		{name: "the named candidate is behind", sts: []topology.NodeStatus{pg2, pg3}, ev: dead, o: failover.EmergencyOptions{Candidate: "pg3"},
			failed: []string{"most_advanced"}, check: "most_advanced", level: checks.Critical, msg: "pg2 is 1 MB ahead of pg3: promoting pg3 would lose that WAL"},
		{name: "--allow-data-loss overrides", sts: []topology.NodeStatus{pg2, pg3}, ev: dead, o: failover.EmergencyOptions{Candidate: "pg3", AllowDataLoss: true},
			check: "most_advanced", level: checks.Warning, msg: "would lose that WAL"},
		{name: "--force does not override a data loss", sts: []topology.NodeStatus{pg2, pg3}, ev: dead, o: failover.EmergencyOptions{Candidate: "pg3", Force: true},
			failed: []string{"most_advanced"}, check: "most_advanced", level: checks.Critical},
		{name: "a named candidate that is not a replica", sts: []topology.NodeStatus{pg2, pg3}, ev: dead, o: failover.EmergencyOptions{Candidate: "pg1"},
			failed: []string{"candidate"}, check: "candidate", level: checks.Critical, msg: "pg1 cannot be promoted: not a configured replica"},
		{name: "a position unknown", ev: dead, failed: []string{"positions_known"}, check: "positions_known", level: checks.Critical, msg: "cannot read the received position of pg3",
			sts: []topology.NodeStatus{pg2, func() topology.NodeStatus { s := pg3; s.ReceiveLSN, s.ReplayLSN = nil, nil; return s }()}},
		{name: "timelines disagree", ev: dead, failed: []string{"timelines"}, check: "timelines", level: checks.Critical, msg: "(1: pg2; 2: pg3)",
			sts: []topology.NodeStatus{pg2, func() topology.NodeStatus { s := pg3; s.Timeline = tt.Ptr(uint32(2)); return s }()}},
		{name: "the quorum proof fails", sts: []topology.NodeStatus{pg2}, st: syncRec, ev: dead,
			failed: []string{"sync_proof"}, check: "sync_proof", level: checks.Critical, msg: "examined only 1 of 2 quorum standbys (pg2)"},
		{name: "the quorum proof holds", sts: []topology.NodeStatus{pg2, pg3}, st: syncRec, ev: dead,
			check: "sync_proof", level: checks.OK, msg: "examined 2 of 2 quorum standbys, ANY 1: every acknowledged commit is on pg2"},
		{name: "the quorum proof does not cover a candidate that is behind", sts: []topology.NodeStatus{pg2, pg3}, st: syncRec, ev: dead,
			o:     failover.EmergencyOptions{Candidate: "pg3", AllowDataLoss: true},
			check: "sync_proof", level: checks.Warning, msg: "pg2 is 1 MB ahead of pg3: acknowledged commits may be only on pg2"},
		{name: "asynchronous replication is a warning", sts: []topology.NodeStatus{pg2, pg3}, st: asyncRec, ev: dead, check: "sync_proof", level: checks.Warning, msg: "replication was asynchronous"},
		// Unknown settings block like a failed proof: no record of them
		// is no evidence that commits were asynchronous.
		{name: "sync settings never recorded block", sts: []topology.NodeStatus{pg2, pg3}, st: noRecord, ev: dead,
			failed: []string{"sync_proof"}, check: "sync_proof", level: checks.Critical, msg: "no synchronous replication settings recorded"},
		{name: "--allow-data-loss accepts unknown sync settings", sts: []topology.NodeStatus{pg2, pg3}, st: noRecord, ev: dead, o: failover.EmergencyOptions{AllowDataLoss: true},
			check: "sync_proof", level: checks.Warning, msg: "no synchronous replication settings recorded"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			st := c.st
			switch st {
			case nil:
				st = asyncRec
			case noRecord:
				st = nil
			}
			_, rs := failover.EmergencyPreflight(cfg, emSnap(cfg, nil, c.sts...), st, "pg1", c.ev, c.o)
			if got := emFailedNames(rs); strings.Join(got, ",") != strings.Join(c.failed, ",") {
				t.Errorf("failed %v, want %v; checks %+v", got, c.failed, rs)
			}
			r := emCheck(t, rs, c.check)
			if r.Level != c.level || !strings.Contains(r.Message, c.msg) {
				t.Errorf("%s: %s %q, want %s %q", c.check, r.Level, r.Message, c.level, c.msg)
			}
		})
	}
}

func TestEmergencyPreflightFenceWarning(t *testing.T) {
	t.Parallel()
	dead := failover.Evidence{Conclusive: true}
	sts := []topology.NodeStatus{emDead("pg2", 0x3000000, 0x3000000)}
	cfg := emConfig(t, "")
	_, rs := failover.EmergencyPreflight(cfg, emSnap(cfg, nil, sts...), nil, "pg1", dead, failover.EmergencyOptions{})
	if r := emCheck(t, rs, "fence"); r.Level != checks.Warning || r.Code != "no_fence_command" {
		t.Errorf("fence %+v", r)
	}
	_, rs = failover.EmergencyPreflight(cfg, emSnap(cfg, nil, sts...), nil, "pg1", dead, failover.EmergencyOptions{NoFence: true})
	for _, r := range rs {
		if r.Name == "fence" {
			t.Errorf("--no-fence still warns about the fence command: %+v", r)
		}
	}
}

func TestBuildEmergencyPlan(t *testing.T) {
	t.Parallel()
	cfg := emConfig(t, "")
	rec := &etcdlock.State{Primary: "pg1", Sync: etcdlock.SyncSettings{StandbyNames: "ANY 1 (pg2, pg3, pg4)", Commit: "on"}}
	snap := emSnap(cfg, nil, emDead("pg2", 0x3000000, 0x3000000), emDead("pg3", 0x3100000, 0x3100000), emDead("pg4", 0x3000000, 0x3000000))

	// pg3 is ahead of the named pg2 (--allow-data-loss): it cannot follow
	// pg2's timeline, so it is neither repointed nor given a slot.
	p, err := failover.BuildEmergencyPlan(cfg, snap, rec, "pg1", "pg2", failover.EmergencyOptions{Candidate: "pg2", AllowDataLoss: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range p.Steps {
		ids = append(ids, s.ID)
	}
	// The mark comes before the fence: an interrupted failover has already
	// recorded the old primary as fenced.
	want := "lock mark-fenced fence-sql create-slots replay-received promote verify record repoint-pg4 checkpoint-promoted sync-standbys"
	if strings.Join(ids, " ") != want {
		t.Fatalf("steps %v\nwant %s", ids, want)
	}
	d := strings.Join(p.Descriptions(), "\n")
	for _, s := range []string{"create physical replication slots pg4 for", "pg_terminate_backend", "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (pg3, pg4)'"} {
		if !strings.Contains(d, s) {
			t.Errorf("plan lacks %q:\n%s", s, d)
		}
	}
	if p.Fence != "record" || !strings.Contains(strings.Join(p.Notes, "\n"), "pg3 received WAL that pg2 lacks and cannot follow it") {
		t.Errorf("fence %q, notes %q", p.Fence, p.Notes)
	}

	// A fence command is a step of its own whose failure aborts; --no-fence
	// drops every fencing step and says so.
	cfg = emConfig(t, "")
	cfg.Nodes[0].Commands.Fence = "ipmitool power off"
	p, err = failover.BuildEmergencyPlan(cfg, snap, rec, "pg1", "pg3", failover.EmergencyOptions{}, nil)
	if err != nil || p.Fence != "command" || p.Steps[2].ID != failover.StepFenceCommand || p.Steps[2].Optional || !strings.Contains(p.Steps[2].Description, "ipmitool power off") {
		t.Fatalf("fence command plan %v: %+v", err, p.Steps[2])
	}
	p, err = failover.BuildEmergencyPlan(cfg, snap, rec, "pg1", "pg3", failover.EmergencyOptions{NoFence: true}, nil)
	if err != nil || p.Fence != "none" || p.Steps[1].ID != failover.StepCreateSlots || !strings.Contains(p.Notes[0], "NOT fenced") {
		t.Fatalf("--no-fence plan %v: %+v %q", err, p.Steps[1], p.Notes)
	}
}

// emHungProber never answers: every probe lasts until its context ends.
type emHungProber struct{ calls atomic.Int32 }

func (p *emHungProber) Probe(ctx context.Context, n config.Node) topology.NodeStatus {
	p.calls.Add(1)
	<-ctx.Done()
	return topology.NodeStatus{Name: n.Name, Error: "timeout"}
}

func TestProbeOldPrimaryHung(t *testing.T) {
	t.Parallel()
	// A hung primary costs each attempt its whole timeout; the attempts
	// overlap, so the window stays about window + timeout long.
	p := &emHungProber{}
	start := time.Now()
	got := failover.ProbeOldPrimary(t.Context(), p, config.Node{Name: "pg1"}, 200*time.Millisecond, 300*time.Millisecond)
	took := time.Since(start)
	if len(got) != 3 || p.calls.Load() != 3 {
		t.Fatalf("%d attempts, %d calls", len(got), p.calls.Load())
	}
	if took < 500*time.Millisecond || took > 800*time.Millisecond {
		t.Errorf("took %s, want about 500ms (window + one timeout)", took)
	}
	for _, a := range got {
		if a.Reachable || a.Error != "timeout" {
			t.Errorf("attempt %+v", a)
		}
	}
}

func TestProbeOldPrimaryStopsWhenReached(t *testing.T) {
	t.Parallel()
	p := tt.Prober{"pg1": tt.Primary("pg1", 0x3000000)}
	start := time.Now()
	got := failover.ProbeOldPrimary(t.Context(), p, config.Node{Name: "pg1"}, 10*time.Second, time.Second)
	if len(got) != 1 || !got[0].Reachable || !got[0].Writable || time.Since(start) > 2*time.Second {
		t.Fatalf("%+v after %s", got, time.Since(start))
	}
}

func TestPlanEmergencyRefusalBuildsNoPlan(t *testing.T) {
	t.Parallel()
	cfg := emConfig(t, "")
	snap := emSnap(cfg, nil, emStreaming("pg2", 0x3000000, 100*time.Millisecond), emDead("pg3", 0x3000000, 0x3000000))
	p, a, err := failover.PlanEmergency(cfg, snap, asyncRec, emFailed(), failover.EmergencyOptions{}, nil)
	if p != nil || err != nil || a.OldPrimary != "pg1" || a.Evidence.Conclusive || len(a.Evidence.Probes) != 3 {
		t.Fatalf("plan %v err %v analysis %+v", p, err, a)
	}
	if f := emFailedNames(a.Checks); len(f) != 1 || f[0] != "primary_dead" {
		t.Fatalf("failed %v", f)
	}
}
