package cmd

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/testenv"
	"github.com/replctl/replctl/testenv/faultcheck"
)

// The soak (`make soak`): many operations in a row on one cluster under the
// independent checker's continuous writer (testenv/faultcheck), which must
// see no acknowledged write lost, never two nodes acknowledging writes in
// one sampler tick, and a whole cluster at the end.
//
//   - switchovers: 100 planned switchovers, pg1 to pg2 and back, with the
//     stop fence and the old primary rejoining (`promote NODE --yes`), on a
//     3-node asynchronous sandbox;
//   - emergency: 20 rounds on a synchronous sandbox (ANY 1): the primary is
//     crashed (SIGKILL to every process), `promote --emergency --yes`, then
//     `rejoin OLD --yes` brings the crashed node back as a replica.
//     Synchronous replication means no acknowledged write may be lost.
//
// Every operation must exit 0. Between operations the test waits until the
// checker finds the cluster whole again (one writable primary, every
// replica streaming from it on its timeline, slots and conninfo right, the
// lock free) and the writer has had a write acknowledged by the new
// primary. It prints the write outage and the command time (p50, p99
// nearest rank, max).
//
// It runs only with REPLCTL_SOAK=1; REPLCTL_SOAK_ROUNDS=N runs N of each
// instead of 100 and 20.

const (
	soakSwitchovers = 100
	soakFailovers   = 20
	// soakSettleTimeout bounds the wait for the cluster to be whole again
	// after an operation: generous, for a loaded 2-core machine.
	soakSettleTimeout = 2 * time.Minute
	// soakSyncTimeout bounds the wait for a synchronous standby before a
	// crash.
	soakSyncTimeout = time.Minute
)

func TestSoak(t *testing.T) {
	if os.Getenv("REPLCTL_SOAK") != "1" {
		t.Skip("soak: set REPLCTL_SOAK=1 to run it (make soak)")
	}
	if testing.Short() {
		t.Skip("soak: runs PostgreSQL and etcd")
	}
	switchovers, failovers := soakSwitchovers, soakFailovers
	if v := os.Getenv("REPLCTL_SOAK_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("REPLCTL_SOAK_ROUNDS=%q: want a positive number", v)
		}
		switchovers, failovers = n, n
	}
	var summary []string
	t.Run("switchovers", func(t *testing.T) { summary = append(summary, soakSwitchoverRun(t, switchovers)...) })
	t.Run("emergency", func(t *testing.T) { summary = append(summary, soakEmergencyRun(t, failovers)...) })
	t.Logf("soak summary:\n%s", strings.Join(summary, "\n"))
}

// soakWindow is one operation: when its command ran.
type soakWindow struct {
	from, to time.Time
}

// soakOutage is the longest gap between two consecutive acknowledged writes
// that overlaps [from, to]: the later write after from, the earlier before
// to. acked is in commit order.
func soakOutage(acked []faultcheck.Write, from, to time.Time) time.Duration {
	i := sort.Search(len(acked), func(i int) bool { return acked[i].At.After(from) })
	var worst time.Duration
	for j := max(i, 1); j < len(acked) && acked[j-1].At.Before(to); j++ {
		worst = max(worst, acked[j].At.Sub(acked[j-1].At))
	}
	return worst
}

// soakFigures is "p50 X, p99 Y, max Z" in milliseconds.
func soakFigures(d []time.Duration) string {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000) }
	if len(d) == 0 {
		return "none measured"
	}
	return fmt.Sprintf("p50 %s, p99 %s, max %s (n=%d)", ms(quantile(d, 0.5)), ms(quantile(d, 0.99)), ms(quantile(d, 1)), len(d))
}

// soakLastAck is the newest acknowledged write of the watcher.
func soakLastAck(w *faultcheck.Watcher) (faultcheck.Write, bool) {
	r := w.Snapshot()
	if len(r.Acked) == 0 {
		return faultcheck.Write{}, false
	}
	return r.Acked[len(r.Acked)-1], true
}

// soakSettle waits until the checker finds the cluster whole with primary
// as its primary, every node but those in down answering, and the writer's
// newest acknowledged write made on primary after since. It returns the
// problems left at the timeout (none: settled).
func soakSettle(ctx context.Context, c *testenv.Cluster, target faultcheck.Target, w *faultcheck.Watcher, primary string, since time.Time, down ...string) []string {
	deadline := time.Now().Add(soakSettleTimeout)
	for {
		var problems []string
		for _, n := range c.Nodes {
			if slices.Contains(down, n.Name) {
				continue
			}
			s := readPG(ctx, c, n.Name)
			switch {
			case s.Err != nil:
				problems = append(problems, fmt.Sprintf("%s: %v", n.Name, s.Err))
			case n.Name == primary && s.InRecovery:
				problems = append(problems, fmt.Sprintf("%s is in recovery, want it the primary", n.Name))
			}
		}
		if len(problems) == 0 {
			problems = w.Snapshot().Final(ctx, target)
		}
		if len(problems) == 0 {
			a, ok := soakLastAck(w)
			if !ok || a.Node != primary || !a.At.After(since) {
				problems = append(problems, fmt.Sprintf("no write acknowledged by %s since %s (newest: %+v)", primary, since.Format("15:04:05.000"), a))
			}
		}
		if len(problems) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return problems
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// soakRecord checks the cluster record after an operation: it names
// primary and marks no node fenced. It returns the record.
func soakRecord(t *testing.T, cli *clientv3.Client, c *testenv.Cluster, primary string, round int) *etcdlock.State {
	t.Helper()
	st := clusterRecord(t, cli, c)
	if st.Primary != primary {
		t.Errorf("round %d: the cluster record names %q the primary, want %s", round, st.Primary, primary)
	}
	if len(st.Fenced) > 0 {
		t.Errorf("round %d: the cluster record still marks nodes fenced: %+v", round, st.Fenced)
	}
	return st
}

// soakTimeline is primary's current timeline, or 0.
func soakTimeline(ctx context.Context, c *testenv.Cluster, primary string) int64 {
	s := readPG(ctx, c, primary)
	if s.Err != nil || s.Timeline == nil {
		return 0
	}
	return *s.Timeline
}

// soakVerdict checks the checker's report at the end of a part and returns
// the summary lines of what it saw.
func soakVerdict(t *testing.T, target faultcheck.Target, w *faultcheck.Watcher) (rep *faultcheck.Report, lost int, lines []string) {
	ctx := t.Context()
	// The end state, once more, while the writer still runs.
	final := w.Snapshot().Final(ctx, target)
	rep = w.Stop()
	for _, p := range final {
		t.Errorf("final state: %s", p)
	}
	for _, v := range rep.Violations {
		t.Errorf("double primary: %s", v)
	}
	ids, err := rep.Lost(ctx, target)
	if err != nil {
		t.Errorf("lost writes: %v", err)
		lost = -1
	} else if len(ids) > 0 {
		t.Errorf("%d acknowledged writes lost: %v", len(ids), ids[:min(len(ids), 20)])
		lost = len(ids)
	}
	var nodes []string
	for _, n := range target.Nodes {
		s := rep.Nodes[n.Name]
		nodes = append(nodes, fmt.Sprintf("%s %d/%d writes, %d/%d probes acknowledged", n.Name, s.WritesAcked, s.Writes, s.ProbesAcked, s.Probes))
	}
	dur := rep.End.Sub(rep.Start)
	lines = append(lines,
		fmt.Sprintf("  writer: %d acknowledged writes over %s (%.0f/s), %d lost; sampler: %d ticks, %d double primaries; final state: %s",
			len(rep.Acked), dur.Round(time.Second), float64(len(rep.Acked))/dur.Seconds(), max(lost, 0), rep.Samples, len(rep.Violations), soakOK(final)),
		"  per node: "+strings.Join(nodes, "; "))
	return rep, lost, lines
}

func soakOK(problems []string) string {
	if len(problems) == 0 {
		return "ok"
	}
	return fmt.Sprintf("%d problems", len(problems))
}

// soakSwitchoverRun runs n planned switchovers between pg1 and pg2 and
// returns its summary lines.
func soakSwitchoverRun(t *testing.T, n int) []string {
	ctx := t.Context()
	c := testenv.Start(t, testenv.Options{Replicas: 2})
	cfg, _ := switchoverConfig(t, c, fenceStop)
	cli := etcdClient(t, c)
	target := faultTarget(c)
	w, err := faultcheck.Watch(ctx, target, faultcheck.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	primary := "pg1"
	if p := soakSettle(ctx, c, target, w, primary, time.Time{}); len(p) > 0 {
		t.Fatalf("the cluster is not whole before the first switchover: %s", strings.Join(p, "; "))
	}
	tl := soakTimeline(ctx, c, primary)

	var windows []soakWindow
	var cmdTimes, ownOutages []time.Duration
	failed := 0
	began := time.Now()
	for i := 1; i <= n; i++ {
		to := "pg2"
		if primary == "pg2" {
			to = "pg1"
		}
		start := time.Now()
		run := replctl(ctx, nil, "--config", cfg, "-o", "json", "promote", to, "--yes")
		end := time.Now()
		var d promoteDoc
		derr := json.Unmarshal([]byte(run.Out), &d)
		if run.Code != 0 || derr != nil || d.Result == nil || d.Result.Outcome != "succeeded" || d.Primary != primary || d.Candidate != to {
			failed++
			t.Errorf("switchover %d, %s to %s, failed after %s: %s", i, primary, to, end.Sub(start).Round(time.Millisecond), run)
			break
		}
		windows = append(windows, soakWindow{start, end})
		cmdTimes = append(cmdTimes, end.Sub(start))
		if d.WriteOutageSeconds != nil {
			ownOutages = append(ownOutages, time.Duration(*d.WriteOutageSeconds*float64(time.Second)))
		}
		if p := soakSettle(ctx, c, target, w, to, end); len(p) > 0 {
			t.Errorf("switchover %d, %s to %s: the cluster is not whole %s after it: %s", i, primary, to, soakSettleTimeout, strings.Join(p, "; "))
			break
		}
		settled := time.Now()
		if ntl := soakTimeline(ctx, c, to); ntl != tl+1 {
			t.Errorf("switchover %d: %s is on timeline %d, want %d", i, to, ntl, tl+1)
			tl = ntl
		} else {
			tl++
		}
		soakRecord(t, cli, c, to, i)
		t.Logf("switchover %3d %s>%s: command %4d ms, replctl's outage %4.0f ms, settled %4d ms later, timeline %d",
			i, primary, to, end.Sub(start).Milliseconds(), 1000*soakSeconds(d.WriteOutageSeconds), settled.Sub(end).Milliseconds(), tl)
		primary = to
	}
	elapsed := time.Since(began)

	rep, _, verdict := soakVerdict(t, target, w)
	var outages []time.Duration
	for _, win := range windows {
		outages = append(outages, soakOutage(rep.Acked, win.from, win.to))
	}
	lines := []string{
		fmt.Sprintf("switchovers (stop fence, pg1<->pg2, 3 nodes, async): %d of %d done, %d failed, in %s",
			len(windows), n, failed, elapsed.Round(time.Second)),
		"  write outage (longest gap between acknowledged writes across the command): " + soakFigures(outages),
		"  command time (promote NODE --yes, rejoin of the old primary included): " + soakFigures(cmdTimes),
		"  replctl's own write_outage (fence to writable candidate): " + soakFigures(ownOutages),
	}
	lines = append(lines, verdict...)
	t.Logf("%s", strings.Join(lines, "\n"))
	return lines
}

func soakSeconds(f *float64) float64 {
	if f == nil {
		return 0
	}
	return *f
}

// soakSeedSync records the primary's synchronous settings as read from the
// node, as an earlier operation under the lock would have: an emergency
// failover needs them for its proof.
func soakSeedSync(t *testing.T, c *testenv.Cluster, cfgPath, primary string) {
	t.Helper()
	var names, commit string
	if err := c.QueryRow(t.Context(), primary, "SELECT current_setting('synchronous_standby_names'), current_setting('synchronous_commit')").Scan(&names, &commit); err != nil {
		t.Fatal(err)
	}
	if names == "" {
		t.Fatalf("%s has no synchronous_standby_names: not a synchronous sandbox", primary)
	}
	tl := uint32(timelineOf(t, c, primary))
	cfg := emLoad(t, cfgPath)
	emSeedRecord(t, emEtcd(t, cfg), cfg, func(s *etcdlock.State) {
		s.Primary = primary
		s.Timeline, s.MaxTimeline = tl, tl
		s.Sync = etcdlock.SyncSettings{StandbyNames: names, Commit: commit, SeenAt: time.Now()}
	})
	t.Logf("cluster record seeded: %s primary on timeline %d, synchronous_standby_names %q, synchronous_commit %s", primary, tl, names, commit)
}

// soakAwaitSync waits until primary has synchronous_standby_names set and a
// synchronous (or quorum) standby streaming, and returns the setting.
func soakAwaitSync(ctx context.Context, c *testenv.Cluster, primary string) (string, error) {
	deadline := time.Now().Add(soakSyncTimeout)
	for {
		var names string
		var n int
		err := c.QueryRow(ctx, primary, `SELECT current_setting('synchronous_standby_names'),
			(SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum'))::int`).Scan(&names, &n)
		if err == nil && names != "" && n > 0 {
			return names, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return names, fmt.Errorf("%s: synchronous_standby_names %q, %d synchronous standbys streaming (%v)", primary, names, n, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// soakRejoinDoc is the part of rejoin -o json the soak reads.
type soakRejoinDoc struct {
	Node        string `json:"node"`
	Primary     string `json:"primary"`
	NothingToDo bool   `json:"nothing_to_do"`
	Result      *struct {
		Outcome string `json:"outcome"`
	} `json:"result"`
}

// soakEmergencyRun runs n rounds of crash, emergency failover and rejoin on
// a synchronous sandbox and returns its summary lines.
func soakEmergencyRun(t *testing.T, n int) []string {
	ctx := t.Context()
	c := testenv.Start(t, testenv.Options{Replicas: 2, Sync: true})
	cfg := emConfig(t, c, nil, "")
	primary := "pg1"
	soakSeedSync(t, c, cfg, primary)
	cli := etcdClient(t, c)
	target := faultTarget(c)
	w, err := faultcheck.Watch(ctx, target, faultcheck.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if p := soakSettle(ctx, c, target, w, primary, time.Time{}); len(p) > 0 {
		t.Fatalf("the cluster is not whole before the first failover: %s", strings.Join(p, "; "))
	}
	tl := soakTimeline(ctx, c, primary)

	var failWindows, rejoinWindows []soakWindow
	var failTimes, rejoinTimes []time.Duration
	failed := 0
	began := time.Now()
	for i := 1; i <= n; i++ {
		names, err := soakAwaitSync(ctx, c, primary)
		if err != nil {
			t.Errorf("round %d: no synchronous standby before the crash: %v", i, err)
			break
		}
		old := primary
		crashAt := time.Now()
		emCrash(t, c, old)
		start := time.Now()
		run := replctl(ctx, nil, "--config", cfg, "-o", "json", "promote", "--emergency", "--yes")
		end := time.Now()
		var d emPromoteDoc
		derr := json.Unmarshal([]byte(run.Out), &d)
		if run.Code != 0 || derr != nil || d.Emergency == nil || d.Result == nil || d.Result.Outcome != "succeeded" || d.Emergency.OldPrimary != old {
			failed++
			t.Errorf("round %d: emergency failover from %s failed after %s: %s", i, old, end.Sub(start).Round(time.Millisecond), run)
			break
		}
		chosen := d.Emergency.Choice.Chosen
		if !d.Emergency.Choice.Proof.Proven {
			t.Errorf("round %d: failover to %s without a synchronous proof: %s", i, chosen, d.Emergency.Choice.Proof.Message)
		}
		failWindows = append(failWindows, soakWindow{crashAt, end})
		failTimes = append(failTimes, end.Sub(start))
		if p := soakSettle(ctx, c, target, w, chosen, end, old); len(p) > 0 {
			t.Errorf("round %d: the cluster is not whole %s after the failover to %s: %s", i, soakSettleTimeout, chosen, strings.Join(p, "; "))
			break
		}
		failedOver := time.Now()

		rstart := time.Now()
		rrun := replctl(ctx, nil, "--config", cfg, "-o", "json", "rejoin", old, "--yes")
		rend := time.Now()
		var rd soakRejoinDoc
		rerr := json.Unmarshal([]byte(rrun.Out), &rd)
		if rrun.Code != 0 || rerr != nil || rd.NothingToDo || rd.Result == nil || rd.Result.Outcome != "succeeded" || rd.Primary != chosen {
			failed++
			t.Errorf("round %d: rejoin %s to %s failed after %s: %s", i, old, chosen, rend.Sub(rstart).Round(time.Millisecond), rrun)
			break
		}
		rejoinWindows = append(rejoinWindows, soakWindow{rstart, rend})
		rejoinTimes = append(rejoinTimes, rend.Sub(rstart))
		if p := soakSettle(ctx, c, target, w, chosen, rend); len(p) > 0 {
			t.Errorf("round %d: the cluster is not whole %s after %s rejoined: %s", i, soakSettleTimeout, old, strings.Join(p, "; "))
			break
		}
		if ntl := soakTimeline(ctx, c, chosen); ntl <= tl {
			t.Errorf("round %d: %s is on timeline %d, want above %d", i, chosen, ntl, tl)
		} else {
			tl = ntl
		}
		st := soakRecord(t, cli, c, chosen, i)
		t.Logf("round %2d %s crashed, %s promoted: failover %4d ms (settled %4d ms later), rejoin %4d ms, timeline %d; sync before the crash %q, recorded after the rejoin %q; %s",
			i, old, chosen, end.Sub(start).Milliseconds(), failedOver.Sub(end).Milliseconds(), rend.Sub(rstart).Milliseconds(), tl, names, st.Sync.StandbyNames, d.Emergency.Choice.Proof.Message)
		primary = chosen
	}
	elapsed := time.Since(began)

	rep, _, verdict := soakVerdict(t, target, w)
	var failOutages, rejoinOutages []time.Duration
	for _, win := range failWindows {
		failOutages = append(failOutages, soakOutage(rep.Acked, win.from, win.to))
	}
	for _, win := range rejoinWindows {
		rejoinOutages = append(rejoinOutages, soakOutage(rep.Acked, win.from, win.to))
	}
	lines := []string{
		fmt.Sprintf("emergency failovers (crash, promote --emergency, rejoin; 3 nodes, sync ANY 1, confirm_window %s): %d of %d done, %d failed, in %s",
			emWindow, len(rejoinWindows), n, failed, elapsed.Round(time.Second)),
		"  write outage (crash to the first write acknowledged after it, confirm_window included): " + soakFigures(failOutages),
		"  command time (promote --emergency --yes): " + soakFigures(failTimes),
		"  command time (rejoin OLD --yes, from a crashed node): " + soakFigures(rejoinTimes),
		"  longest gap between acknowledged writes during the rejoins: " + soakFigures(rejoinOutages),
	}
	lines = append(lines, verdict...)
	t.Logf("%s", strings.Join(lines, "\n"))
	return lines
}
