package watch

import (
	"strings"
	"testing"
	"time"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/topology"
)

func testConfig() *config.Config {
	cfg := &config.Config{Cluster: "t", Nodes: []config.Node{
		{Name: "pg1", DSN: "host=127.0.0.1 port=5001"},
		{Name: "pg2", DSN: "host=127.0.0.1 port=5002"},
		{Name: "pg3", DSN: "host=127.0.0.1 port=5003"},
	}}
	cfg.Failover.ConfirmWindow = 2 * time.Second
	return cfg
}

// look builds an observation: pg1 the recorded primary, up or down;
// replicas streaming from it with their last message silence ago, or with
// no receiver when silence < 0.
func look(t0 time.Time, primaryUp bool, silence time.Duration) failover.Observation {
	cfg := testConfig()
	timeout := int64(60000)
	var sts []topology.NodeStatus
	p := topology.NodeStatus{Name: "pg1", Error: "connect: connection refused"}
	if primaryUp {
		lsn := topology.LSN(100)
		p = topology.NodeStatus{Name: "pg1", Reachable: true, ServerTime: &t0, CurrentLSN: &lsn}
	}
	sts = append(sts, p)
	for _, name := range []string{"pg2", "pg3"} {
		st := topology.NodeStatus{Name: name, Reachable: true, InRecovery: true, ServerTime: &t0}
		st.Settings.WALReceiverTimeoutMS = &timeout
		if silence >= 0 {
			host, port, last := "127.0.0.1", 5001, t0.Add(-silence)
			st.WALReceiver = &topology.WALReceiver{Status: "streaming", SenderHost: &host, SenderPort: &port, LastMsgReceiptTime: &last}
		}
		sts = append(sts, st)
	}
	rec := &topology.Record{Primary: "pg1"}
	return failover.Observation{Snap: topology.Classify(cfg, sts, rec), State: &etcdlock.State{Primary: "pg1"}}
}

func TestDetectorVerdicts(t *testing.T) {
	cfg := testConfig()
	var d detector
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	step := func(dt time.Duration, up bool, silence time.Duration, want Verdict) Analysis {
		t.Helper()
		now := t0.Add(dt)
		a := d.observe(cfg, look(now, up, silence), now)
		if a.Verdict != want {
			t.Fatalf("at +%s: verdict %s (%s), want %s", dt, a.Verdict, a.Message, want)
		}
		return a
	}
	step(0, true, time.Second, Healthy)
	// Unreachable from here, but the replicas hear it: not dead, however long.
	for i := 1; i <= 5; i++ {
		a := step(time.Duration(i)*time.Second, false, time.Second, Unreachable)
		if !strings.Contains(a.Message, "not dead") {
			t.Fatalf("message %q", a.Message)
		}
	}
	// The receivers are gone: suspect for the window, then dead.
	a := step(6*time.Second, false, -1, Suspect)
	if !a.SuspectSince.Equal(t0.Add(6 * time.Second)) {
		t.Fatalf("suspect since %s", a.SuspectSince)
	}
	step(7*time.Second, false, -1, Suspect)
	a = step(8*time.Second, false, -1, Dead)
	if len(a.Probes) == 0 {
		t.Fatal("a dead verdict without the probes that prove it")
	}
	// A receiver that hears it again resets the window.
	step(9*time.Second, false, time.Second, Unreachable)
	step(10*time.Second, false, -1, Suspect)
	// Silent receivers past wal_receiver_timeout/2 + slack count as deaf.
	step(11*time.Second, false, 40*time.Second, Suspect)
	step(12*time.Second, false, 40*time.Second, Dead)
	// Back: healthy, and the evidence is forgotten.
	step(13*time.Second, true, time.Second, Healthy)
	step(14*time.Second, false, -1, Suspect)
}

func TestDetectorReturnedFencedNode(t *testing.T) {
	cfg := testConfig()
	t0 := time.Now()
	lsn := topology.LSN(100)
	sts := []topology.NodeStatus{
		{Name: "pg1", Reachable: true, ServerTime: &t0, CurrentLSN: &lsn},
		{Name: "pg2", Reachable: true, ServerTime: &t0, CurrentLSN: &lsn},
		{Name: "pg3", Reachable: true, InRecovery: true, ServerTime: &t0},
	}
	obs := failover.Observation{Snap: topology.Classify(cfg, sts, &topology.Record{Primary: "pg2", Fenced: []string{"pg1"}}),
		State: &etcdlock.State{Primary: "pg2", Fenced: []etcdlock.FencedNode{{Node: "pg1"}}}}
	var d detector
	a := d.observe(cfg, obs, t0)
	if a.Verdict != Healthy || a.Primary != "pg2" || len(a.Returned) != 1 || a.Returned[0] != "pg1" {
		t.Fatalf("got %+v", a)
	}
}

func TestLossDecision(t *testing.T) {
	cfg := testConfig()
	seen, cand := topology.LSN(10<<20), topology.LSN(10<<20-4096)
	allow, why := LossDecision(cfg, []string{"sync_proof"}, "pg1", &seen, "pg1", &cand)
	if allow || !strings.Contains(why, "watch.max_data_loss") {
		t.Fatalf("no bound: %v %s", allow, why)
	}
	b := config.Size(1 << 20)
	cfg.Watch.MaxDataLoss = &b
	if allow, why = LossDecision(cfg, []string{"sync_proof", "most_advanced"}, "pg1", &seen, "pg1", &cand); !allow {
		t.Fatalf("4 kB within 1 MB: %s", why)
	}
	far := topology.LSN(1 << 20)
	if allow, why = LossDecision(cfg, []string{"sync_proof"}, "pg1", &seen, "pg1", &far); allow || !strings.Contains(why, "over watch.max_data_loss") {
		t.Fatalf("9 MB over 1 MB: %v %s", allow, why)
	}
	if allow, _ = LossDecision(cfg, []string{"sync_proof"}, "pg9", &seen, "pg1", &cand); allow {
		t.Fatal("a look at another primary measures nothing")
	}
	if allow, _ = LossDecision(cfg, []string{"sync_proof"}, "pg1", &seen, "pg1", nil); allow {
		t.Fatal("an unknown candidate position measures nothing")
	}
	if allow, why = LossDecision(cfg, []string{"primary_dead"}, "pg1", &seen, "pg1", &cand); allow || !strings.Contains(why, "primary_dead") {
		t.Fatalf("the bound overrides only the data-loss checks: %v %s", allow, why)
	}
}

func TestWithSeen(t *testing.T) {
	at := time.Now()
	seen := &etcdlock.Seen{Primary: "pg1", LSN: 5, Timeline: 3, At: at, Sync: etcdlock.SyncSettings{StandbyNames: "ANY 1 (pg2, pg3)", Commit: "on"}}
	st := etcdlock.WithSeen(nil, seen)
	if st == nil || st.Primary != "pg1" || st.Sync.StandbyNames != "ANY 1 (pg2, pg3)" || st.MaxTimeline != 3 {
		t.Fatalf("no record: %+v", st)
	}
	old := &etcdlock.State{Primary: "pg1", Sync: etcdlock.SyncSettings{StandbyNames: "", Commit: "on", SeenAt: at.Add(-time.Hour)}}
	if got := etcdlock.WithSeen(old, seen); got.Sync.StandbyNames != "ANY 1 (pg2, pg3)" || old.Sync.StandbyNames != "" {
		t.Fatalf("newer look not taken, or the record changed: %+v / %+v", got, old)
	}
	other := &etcdlock.State{Primary: "pg2"}
	if got := etcdlock.WithSeen(other, seen); got != other {
		t.Fatal("a look at another primary replaced the record's settings")
	}
}
