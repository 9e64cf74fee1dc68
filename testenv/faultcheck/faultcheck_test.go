package faultcheck_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/testenv"
	"github.com/replctl/replctl/testenv/faultcheck"
)

// The bounds below are generous on purpose: these tests run on two cores
// next to other packages' clusters. None asserts a duration; they only
// bound how long to wait for something that must happen.
const patience = 20 * time.Second

func integration(t *testing.T) *testenv.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	return testenv.Start(t, testenv.Options{Replicas: 2})
}

// target describes a testenv cluster the way replctl.yaml does: testenv
// writes etcd.prefix /replctl and the cluster's name.
func target(c *testenv.Cluster) faultcheck.Target {
	t := faultcheck.Target{EtcdEndpoints: []string{c.EtcdEndpoint}, Prefix: "/replctl", Cluster: c.Name}
	for _, n := range c.Nodes {
		t.Nodes = append(t.Nodes, faultcheck.Node{Name: n.Name, DSN: n.DSN})
	}
	return t
}

// waitFor polls cond until it holds or patience runs out.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: still waiting for %s", patience, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func acked(r *faultcheck.Report, node string) int { return len(r.AckedIDs()[node]) }

// TestHealthyThenFenced runs two cases on one cluster, since the first
// leaves it as healthy as it found it: a cluster costs more to start than
// both cases take.
func TestHealthyThenFenced(t *testing.T) {
	c := integration(t)
	if !t.Run("healthy", func(t *testing.T) { testHealthy(t, c) }) {
		return
	}
	t.Run("fenced", func(t *testing.T) { testFencedPrimary(t, c) })
}

func testHealthy(t *testing.T, c *testenv.Cluster) {
	ctx := t.Context()
	tg := target(c)
	w, err := faultcheck.Watch(ctx, tg, faultcheck.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Enough traffic to mean something: the writer and the primary's
	// sampler both got acknowledgements, the samplers ran for a while.
	waitFor(t, "writes and probes on pg1", func() bool {
		r := w.Snapshot()
		return acked(r, "pg1") >= 50 && r.Nodes["pg1"].ProbesAcked >= 20 && r.Nodes["pg2"].Probes >= 20 && r.Nodes["pg3"].Probes >= 20
	})
	r := w.Stop()
	if len(r.Violations) > 0 {
		t.Errorf("violations on a healthy cluster: %v", r.Violations)
	}
	for _, n := range []string{"pg2", "pg3"} {
		if s := r.Nodes[n]; s.ProbesAcked != 0 || s.WritesAcked != 0 {
			t.Errorf("replica %s acknowledged writes: %+v", n, s)
		}
	}
	if r.Samples < 20 {
		t.Errorf("%d samples", r.Samples)
	}
	if got := r.Final(ctx, tg); len(got) > 0 {
		t.Errorf("Final on a healthy cluster:\n%s", strings.Join(got, "\n"))
	}
	lost, err := r.Lost(ctx, tg)
	if err != nil || len(lost) > 0 {
		t.Errorf("Lost = %v, %v", lost, err)
	}
	if op, err := faultcheck.NewestOperation(ctx, tg); err != nil || op != nil {
		t.Errorf("NewestOperation on a fresh cluster = %+v, %v", op, err)
	}

	// A second watcher on the same cluster continues the ids, and a
	// cancelled context ends its goroutines on its own.
	wctx, cancel := context.WithCancel(ctx)
	w2, err := faultcheck.Watch(wctx, tg, faultcheck.Options{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "second watcher's writes", func() bool { return acked(w2.Snapshot(), "pg1") > 0 })
	cancel()
	r2 := w2.Stop()
	if first, last := r2.Acked[0].ID, r.Acked[len(r.Acked)-1].ID; first <= last {
		t.Errorf("second watcher's first id %d, first watcher's last %d", first, last)
	}
	if lost, err := r2.Lost(ctx, tg); err != nil || len(lost) > 0 {
		t.Errorf("second watcher: Lost = %v, %v", lost, err)
	}

	// Stop closed every connection the watchers opened.
	waitFor(t, "the checker's sessions to end", func() bool {
		for _, n := range c.Nodes {
			var sessions int
			err := c.QueryRow(ctx, n.Name, `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'replctl-faultcheck'`).Scan(&sessions)
			if err != nil || sessions > 0 {
				return false
			}
		}
		return true
	})
}

func TestSplitBrain(t *testing.T) {
	c := integration(t)
	ctx := t.Context()
	tg := target(c)
	w, err := faultcheck.Watch(ctx, tg, faultcheck.Options{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "writes on pg1", func() bool { return acked(w.Snapshot(), "pg1") >= 20 })

	// Promote a replica by hand, leaving the old primary writable.
	if err := c.Exec(ctx, "pg2", "SELECT pg_promote()"); err != nil {
		t.Fatal(err)
	}
	before := acked(w.Snapshot(), "pg1")
	waitFor(t, "a double-write violation and more writes on pg1", func() bool {
		r := w.Snapshot()
		return len(r.Violations) > 0 && acked(r, "pg1") >= before+20
	})
	r := w.Stop()
	v := r.Violations[0]
	if !slices.Equal(v.Nodes, []string{"pg1", "pg2"}) {
		t.Errorf("violation %s: want pg1 and pg2", v)
	}
	if v.At.Before(r.Start) || v.At.After(r.End) {
		t.Errorf("violation %s outside the watch %s..%s", v, r.Start, r.End)
	}

	// Leave a held lock and an unfinished operation record, as a killed
	// replctl would.
	cli, err := clientv3.New(clientv3.Config{Endpoints: tg.EtcdEndpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "/replctl/"+c.Name+"/lock/694d7a1b2c3d", `{"user":"test","command":"promote"}`); err != nil {
		t.Fatal(err)
	}
	rec := `{"id":"7","kind":"switchover","outcome":"running","steps":[{"id":"fence","description":"pg1: SQL fence","outcome":"running"}]}`
	if _, err := cli.Put(ctx, "/replctl/"+c.Name+"/history/000000000007", rec); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/replctl/"+c.Name+"/history/000000000006", `{"id":"6","kind":"rejoin","outcome":"succeeded"}`); err != nil {
		t.Fatal(err)
	}

	got := r.Final(ctx, tg)
	t.Logf("Final:\n%s", strings.Join(got, "\n"))
	for _, want := range []string{"2 writable primaries (split brain): pg1, pg2", "the lock is held", "operation 7 (switchover) is still recorded as running; last step fence"} {
		if !slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, want) }) {
			t.Errorf("Final lacks %q", want)
		}
	}
	if _, err := r.Lost(ctx, tg); err == nil {
		t.Error("Lost with two primaries: want an error")
	}

	// Without the old primary, pg2 is the one primary, and the writes pg1
	// acknowledged after the split are lost on it.
	if err := c.StopNode(ctx, "pg1"); err != nil {
		t.Fatal(err)
	}
	lost, err := r.Lost(ctx, tg)
	if err != nil {
		t.Fatal(err)
	}
	if len(lost) < 20 {
		t.Errorf("%d lost writes, want at least the 20 acknowledged by pg1 after the promotion", len(lost))
	}
	onPG1 := r.AckedIDs()["pg1"]
	for _, id := range lost {
		if !slices.Contains(onPG1, id) {
			t.Errorf("lost id %d was not acknowledged by pg1", id)
		}
	}
	got = r.Final(ctx, tg)
	t.Logf("Final without pg1:\n%s", strings.Join(got, "\n"))
	for _, want := range []string{
		"pg3: no WAL receiver running",    // its upstream pg1 is down
		"pg3: primary_conninfo names pg1", // not the primary pg2
		`pg3: primary_slot_name "pg3" names no physical slot on the primary pg2`,
	} {
		if !slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, want) }) {
			t.Errorf("Final lacks %q", want)
		}
	}
	for _, s := range got {
		if strings.Contains(s, "writable primar") {
			t.Errorf("Final with one primary: %s", s)
		}
	}
}

func TestWriterTargetStopped(t *testing.T) {
	c := integration(t)
	ctx := t.Context()
	tg := target(c)
	w, err := faultcheck.Watch(ctx, tg, faultcheck.Options{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "writes on pg1", func() bool { return acked(w.Snapshot(), "pg1") >= 20 })
	// The writer's target and a sampled node goes away under the watcher.
	if err := c.StopNode(ctx, "pg1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pg1's failures to show", func() bool { return w.Snapshot().Nodes["pg1"].LastError != "" })
	if err := c.Exec(ctx, "pg2", "SELECT pg_promote()"); err != nil {
		t.Fatal(err)
	}
	// The writer finds the new primary by itself.
	waitFor(t, "writes on pg2", func() bool { return acked(w.Snapshot(), "pg2") >= 20 })
	r := w.Stop()
	if len(r.Violations) > 0 {
		t.Errorf("violations, though pg1 stopped before pg2 was promoted: %v", r.Violations)
	}
	if r.LongestOutage() <= 0 {
		t.Errorf("LongestOutage = %s", r.LongestOutage())
	}
	// A fast shutdown sends the standbys all WAL before it ends, so
	// promoting one loses nothing pg1 acknowledged.
	if lost, err := r.Lost(ctx, tg); err != nil || len(lost) > 0 {
		t.Errorf("Lost = %v, %v", lost, err)
	}
	got := r.Final(ctx, tg)
	t.Logf("Final:\n%s", strings.Join(got, "\n"))
	if !slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "pg3: ") }) {
		t.Error("Final does not say that pg3 still follows the stopped pg1")
	}
	for _, s := range got {
		if strings.HasPrefix(s, "pg1") || strings.Contains(s, "writable primar") {
			t.Errorf("Final: %s (pg1 is down, pg2 the one primary)", s)
		}
	}
}

// testFencedPrimary fences pg1 the harshest way, with only
// synchronous_standby_names naming a standby that does not exist, so that
// every commit on it hangs in the synchronous wait: none may count as
// acknowledged (not even the ones the cancel request lets through), the
// cancelled waits must not pile up as sessions, and promoting pg2 then is
// no violation.
func testFencedPrimary(t *testing.T, c *testenv.Cluster) {
	ctx := t.Context()
	tg := target(c)
	w, err := faultcheck.Watch(ctx, tg, faultcheck.Options{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "writes on pg1", func() bool { return acked(w.Snapshot(), "pg1") >= 20 })
	if err := c.Exec(ctx, "pg1", "ALTER SYSTEM SET synchronous_standby_names = 'replctl_fenced'"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "pg1", "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	// Writes stop being acknowledged once the reload is in force.
	var stalled int
	waitFor(t, "pg1 to stop acknowledging", func() bool {
		a := acked(w.Snapshot(), "pg1")
		time.Sleep(600 * time.Millisecond)
		stalled = acked(w.Snapshot(), "pg1")
		return a == stalled
	})
	var sessions int
	if err := c.QueryRow(ctx, "pg1", `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'replctl-faultcheck'`).Scan(&sessions); err != nil {
		t.Fatal(err)
	}
	if sessions > 4 {
		t.Errorf("%d checker sessions on the fenced pg1: cancelled waits pile up", sessions)
	}

	if err := c.Exec(ctx, "pg2", "SELECT pg_promote()"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "pg2", "SELECT pg_create_physical_replication_slot('ghost')"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "writes on pg2", func() bool { return acked(w.Snapshot(), "pg2") >= 20 })
	r := w.Stop()
	if len(r.Violations) > 0 {
		t.Errorf("violations, though the fenced pg1 acknowledged nothing: %v", r.Violations)
	}
	if got := acked(r, "pg1"); got != stalled {
		t.Errorf("pg1 acknowledged %d writes, %d when fenced", got, stalled)
	}
	if lost, err := r.Lost(ctx, tg); err != nil || len(lost) > 0 {
		t.Errorf("Lost = %v, %v", lost, err)
	}
	got := r.Final(ctx, tg)
	t.Logf("Final:\n%s", strings.Join(got, "\n"))
	for _, want := range []string{
		"pg1: out of recovery but not the primary pg2",
		"pg3: streams from 127.0.0.1:", // pg3 still follows pg1
		"pg3: receives timeline 1, the primary pg2 is on timeline 2",
		`pg2 (primary): orphaned physical slot "ghost"`,
	} {
		if !slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, want) }) {
			t.Errorf("Final lacks %q", want)
		}
	}
}
