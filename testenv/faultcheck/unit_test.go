package faultcheck

import (
	"strings"
	"testing"
	"time"
)

func TestTable(t *testing.T) {
	var b strings.Builder
	err := Table(&b, []Outcome{
		{Case: "switchover/stop-fence/kill-before/1", Result: "recovered"},
		{Case: "failover/etcd-down", Result: "refused", Violations: []string{"sample 3 at 10:00:00.060: pg1, pg2 all acknowledged a write", "lost 2 writes"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `CASE                                 RESULT     VIOLATIONS
switchover/stop-fence/kill-before/1  recovered  0
failover/etcd-down                   refused    2
    - sample 3 at 10:00:00.060: pg1, pg2 all acknowledged a write
    - lost 2 writes

2 cases, 2 violations in 1 cases
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	if err := Table(&b, []Outcome{{Case: "a", Result: "ok"}}); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(b.String(), "\n1 cases, 0 violations\n") {
		t.Errorf("closing count: %q", b.String())
	}
}

// TestAddAck covers the sampler's bookkeeping without a server: one
// violation per tick however many nodes pile on, none for one node
// acknowledging twice, and pruning only of ticks every sampler is past.
func TestAddAck(t *testing.T) {
	start := time.Now()
	w := &Watcher{o: Options{Interval: 20 * time.Millisecond}, start: start, acks: map[int64][]Probe{},
		violIdx: map[int64]int{}, progress: []int64{0, 0, 0}}
	at := func(k int64) time.Time { return start.Add(time.Duration(k) * 20 * time.Millisecond) }
	w.addAck(1, Probe{Node: "pg1", Sent: at(1), Acked: at(1).Add(time.Millisecond)})
	w.addAck(2, Probe{Node: "pg1", Sent: at(2), Acked: at(2)})
	w.addAck(2, Probe{Node: "pg1", Sent: at(2), Acked: at(2)})
	if len(w.viol) != 0 {
		t.Fatalf("violations from one node: %v", w.viol)
	}
	w.addAck(2, Probe{Node: "pg2", Sent: at(2), Acked: at(2)})
	w.addAck(2, Probe{Node: "pg3", Sent: at(2), Acked: at(2)})
	if len(w.viol) != 1 {
		t.Fatalf("want one violation, got %v", w.viol)
	}
	v := w.viol[0]
	if v.Sample != 2 || strings.Join(v.Nodes, ",") != "pg1,pg2,pg3" || len(v.Probes) != 4 || !v.At.Equal(at(2)) {
		t.Errorf("violation: %+v", v)
	}
	if s := v.String(); !strings.Contains(s, "sample 2") || !strings.Contains(s, "pg1, pg2, pg3") {
		t.Errorf("String: %s", s)
	}

	// pg3's sampler is still on tick 1: nothing from it on may be pruned.
	w.progress = []int64{1000, 1000, 1}
	for k := int64(3); k < 3+2*pruneEvery; k++ {
		w.addAck(k, Probe{Node: "pg1"})
	}
	if _, ok := w.acks[1]; !ok {
		t.Error("tick 1 pruned while a sampler may still report it")
	}
	// Every sampler is past tick 3: ticks before it go, whatever numbers
	// the acknowledged ticks have (here only odd ones).
	w.progress = []int64{3, 1000, 1000}
	for k := int64(1001); k < 1001+4*pruneEvery; k += 2 {
		w.addAck(k, Probe{Node: "pg1"})
	}
	if _, ok := w.acks[2]; ok {
		t.Error("tick 2 not pruned")
	}
	if _, ok := w.acks[3]; !ok {
		t.Error("tick 3 pruned while a sampler may still report it")
	}
	if len(w.viol) != 1 {
		t.Error("pruning dropped a violation")
	}
}

func TestLongestOutage(t *testing.T) {
	s := time.Now()
	r := &Report{Start: s, End: s.Add(10 * time.Second), Acked: []Write{
		{ID: 1, Node: "pg1", At: s.Add(time.Second)},
		{ID: 2, Node: "pg1", At: s.Add(5 * time.Second)},
		{ID: 3, Node: "pg2", At: s.Add(9 * time.Second)},
	}}
	if got := r.LongestOutage(); got != 4*time.Second {
		t.Errorf("LongestOutage = %s", got)
	}
	ids := r.AckedIDs()
	if len(ids["pg1"]) != 2 || len(ids["pg2"]) != 1 {
		t.Errorf("AckedIDs = %v", ids)
	}
}

func TestSameHost(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{"127.0.0.1", "127.0.0.1", true},
		{"localhost", "127.0.0.1", true},
		{"::1", "localhost", true},
		{"10.0.0.1", "10.0.0.2", false},
		{"db1", "DB1", true},
		{"db1", "127.0.0.1", false},
	} {
		if got := sameHost(c.a, c.b); got != c.want {
			t.Errorf("sameHost(%q, %q) = %v", c.a, c.b, got)
		}
	}
}
