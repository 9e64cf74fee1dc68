package cmd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/testenv"
)

// switchover runs `replctl promote NODE --yes -o json` with the write probe
// writing and the writable watch sampling throughout, and checks the
// guarantees: it succeeded, no acknowledged write was lost, never two
// writable primaries, the old primary was writable before the new one.
func switchover(t *testing.T, c *testenv.Cluster, cfgPath, from, to string, wrap func(failover.Controller) failover.Controller, extra ...string) *promoteDoc {
	t.Helper()
	probe := startProbe(t, cfgPath)
	watch := watchWritable(t, c)
	time.Sleep(50 * time.Millisecond) // the watch sees the old primary writable
	run := replctl(t.Context(), wrap, append([]string{"--config", cfgPath, "-o", "json", "promote", to, "--yes"}, extra...)...)
	if run.Code != 0 {
		t.Fatalf("promote %s: %s", to, run)
	}
	d := run.doc(t)
	if d.Result == nil || d.Result.Outcome != "succeeded" || d.Primary != from || d.Candidate != to || d.WriteOutageSeconds == nil {
		t.Fatalf("promote %s: %s", to, run)
	}
	time.Sleep(50 * time.Millisecond) // and the new one writable
	if order := assertOneWritable(t, watch); !slices.Equal(order, []string{from, to}) {
		t.Errorf("writable in turn: %v, want [%s %s]", order, from, to)
	}
	r := stopProbe(t, probe)
	t.Logf("promote %s: %s fence, command says outage %.3fs, the probe saw %s", to, d.Plan.Fence, *d.WriteOutageSeconds, r.LongestOutage.Round(time.Millisecond))
	return d
}

// TestIntegrationSwitchoverStopFence switches over with the stop fence and
// back again: each time the old primary is stopped cleanly, rewound and
// rejoined, and every replica follows the new timeline.
func TestIntegrationSwitchoverStopFence(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	c := testenv.Start(t, testenv.Options{Replicas: 2})
	cfg, log := switchoverConfig(t, c, fenceStop)
	appendConfig(t, cfg, loggedHooks(log))
	cli := etcdClient(t, c)
	tl := timelineOf(t, c, "pg1")

	stream := &streamSeen{}
	d := switchover(t, c, cfg, "pg1", "pg2", stream.wrap)
	if d.Plan.Fence != failover.FenceStop {
		t.Errorf("fence %q", d.Plan.Fence)
	}
	if err := stream.result(); err != nil {
		t.Errorf("the stop fence did not follow pg1's stream to its end: %v", err)
	}
	awaitTopology(t, c, "pg2", tl+1, "pg1", "pg3")
	// Clients held back from pg1 just before it stops, sent to pg2 once
	// it is promoted.
	if got := commandsRun(t, log); !slices.Equal(got, []string{"pg1_hook_pre_fence", "pg1_stop", "pg2_hook_post_promote", "pg1_rejoin"}) {
		t.Errorf("commands run: %v", got)
	}
	// The report lists them too, the hooks among the node commands.
	var reported []string
	for _, r := range d.Commands {
		reported = append(reported, fmt.Sprintf("%s %s %d", r.Node, r.Action, r.ExitCode))
	}
	if !slices.Equal(reported, []string{"pg1 hook pre_fence 0", "pg1 stop 0", "pg2 hook post_promote 0", "pg1 rejoin 0"}) {
		t.Errorf("commands reported: %v", reported)
	}
	if st := clusterRecord(t, cli, c); st.Primary != "pg2" || len(st.Fenced) != 0 || st.Timeline != uint32(tl+1) {
		t.Errorf("cluster record %+v", st)
	}

	// And back: the rejoined former primary is a candidate like any other.
	// This time without the stream (as for a user without the REPLICATION
	// attribute): the fence waits for the stop command, with the same
	// guarantees.
	noStream := &streamSeen{refuse: true}
	switchover(t, c, cfg, "pg2", "pg1", noStream.wrap)
	awaitTopology(t, c, "pg1", tl+2, "pg2", "pg3")
	if st := clusterRecord(t, cli, c); st.Primary != "pg1" || len(st.Fenced) != 0 {
		t.Errorf("cluster record %+v", st)
	}
	if s := statusJSON(t, cfg); s.Primary == nil || *s.Primary != "pg1" || len(s.Warnings) != 0 {
		t.Errorf("status after switching back: primary %v warnings %+v", s.Primary, s.Warnings)
	}
}

// streamSeen wraps a controller to see how the stop fence's replication
// stream from the old primary went, or to refuse it.
type streamSeen struct {
	refuse bool
	mu     sync.Mutex
	opened bool
	err    error // how the stream ended
}

func (s *streamSeen) wrap(ctl failover.Controller) failover.Controller {
	return &streamController{Controller: ctl, seen: s}
}

// result is nil when a stream was opened and ended cleanly.
func (s *streamSeen) result() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.opened {
		return errors.New("no stream was opened")
	}
	return s.err
}

type streamController struct {
	failover.Controller
	seen *streamSeen
}

func (c *streamController) WatchShutdown(ctx context.Context, node string) (*pgctl.ShutdownWatch, error) {
	if c.seen.refuse {
		return nil, errors.New("injected: permission denied to start WAL sender")
	}
	w, err := c.Controller.WatchShutdown(ctx, node)
	if err != nil {
		return nil, err
	}
	c.seen.mu.Lock()
	c.seen.opened = true
	c.seen.mu.Unlock()
	return relayWatch(w, func(err error) {
		c.seen.mu.Lock()
		c.seen.err = err
		c.seen.mu.Unlock()
	}), nil
}

// TestIntegrationSwitchoverSQLFenceRejoin switches over a cluster whose
// nodes can rejoin but not be stopped: SQL fence, then the old primary is
// rewound and rejoined. Then back again.
func TestIntegrationSwitchoverSQLFenceRejoin(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	c := testenv.Start(t, testenv.Options{Replicas: 2})
	cfg, log := switchoverConfig(t, c, fenceSQLRejoin)
	tl := timelineOf(t, c, "pg1")

	// The fenced pg1 stays up and may write WAL of its own after pg3 is
	// promoted (a checkpoint here): pg2 must not have followed it there,
	// or it could never follow pg3's timeline.
	checkpoint := atPoint(pointVerify, func(ctx context.Context, _ string) { must(t, c.Exec(ctx, "pg1", "CHECKPOINT")) })
	d := switchover(t, c, cfg, "pg1", "pg3", checkpoint)
	if d.Plan.Fence != failover.FenceSQL {
		t.Errorf("fence %q", d.Plan.Fence)
	}
	awaitTopology(t, c, "pg3", tl+1, "pg1", "pg2")
	switchover(t, c, cfg, "pg3", "pg1", nil)
	awaitTopology(t, c, "pg1", tl+2, "pg2", "pg3")
	if got := commandsRun(t, log); !slices.Equal(got, []string{"pg1_rejoin", "pg3_rejoin"}) {
		t.Errorf("commands run: %v", got)
	}
}

// TestIntegrationSwitchoverSQLFenceNoCommands switches over a cluster
// without node commands: the old primary stays up, fenced: read-only and
// marked in the cluster record, and status says so rather than calling it
// a writable primary.
func TestIntegrationSwitchoverSQLFenceNoCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	ctx := t.Context()
	c := testenv.Start(t, testenv.Options{Replicas: 2})
	cfg, _ := switchoverConfig(t, c, fenceSQLNoCmds)
	cli := etcdClient(t, c)
	tl := timelineOf(t, c, "pg1")

	d := switchover(t, c, cfg, "pg1", "pg2", nil)
	if d.Plan.Fence != failover.FenceSQL {
		t.Errorf("fence %q", d.Plan.Fence)
	}
	awaitTopology(t, c, "pg2", tl+1, "pg3")
	if s := readPG(ctx, c, "pg1"); s.Err != nil || s.InRecovery || s.ReadOnly != "on" {
		t.Fatalf("pg1 should be up, fenced read-only: %s", s)
	}
	if err := c.Exec(ctx, "pg1", "CREATE TABLE written_to_a_fenced_node (i int)"); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("an ordinary write to the fenced pg1: %v", err)
	}
	if st := clusterRecord(t, cli, c); st.Primary != "pg2" || !st.IsFenced("pg1") {
		t.Errorf("cluster record %+v", st)
	}
	s := statusJSON(t, cfg)
	p1 := s.Nodes[s.node(t, "pg1")]
	if s.Primary == nil || *s.Primary != "pg2" || len(s.SplitBrain) != 0 || p1.State != "read-only, fenced" || s.warned("fenced_writable", "pg1") {
		t.Errorf("status: primary %v split %v pg1 %q warnings %+v", s.Primary, s.SplitBrain, p1.State, s.Warnings)
	}
	if code := checkCode(t, cfg, "single_primary"); code != 0 {
		t.Errorf("check single_primary with pg1 fenced read-only: exit %d, want 0", code)
	}

	// Writable again behind replctl's back, it is reported as such.
	must(t, c.Exec(ctx, "pg1", "ALTER SYSTEM RESET default_transaction_read_only"))
	must(t, c.Exec(ctx, "pg1", "SELECT pg_reload_conf()"))
	awaitStatus(t, cfg, "pg1 fenced but writable", func(d *statusDoc) bool { return d.warned("fenced_writable", "pg1") })
}

// faultCase is a fault injected during a switchover from pg1 to pg2, which
// must then end as it began: pg1 the one writable primary, not fenced.
type faultCase struct {
	point string
	fault func(ctx context.Context, t *testing.T, c *testenv.Cluster, node string)
	// heal puts the cluster back for the next case.
	heal  func(ctx context.Context, t *testing.T, c *testenv.Cluster)
	extra []string
	// want is in the failure report.
	want string
}

// runFaults runs each case with the stop fence, then with the SQL fence,
// on one cluster.
func runFaults(t *testing.T, fc faultCase) {
	t.Helper()
	c := testenv.Start(t, testenv.Options{Replicas: 2})
	cli := etcdClient(t, c)
	tl := timelineOf(t, c, "pg1")
	for _, setup := range []string{fenceStop, fenceSQLRejoin} {
		t.Run(setup, func(t *testing.T) {
			ctx := t.Context()
			cfg, log := switchoverConfig(t, c, setup)
			appendConfig(t, cfg, loggedHooks(log))
			probe := startProbe(t, cfg)
			watch := watchWritable(t, c)
			wrap := atPoint(fc.point, func(ctx context.Context, node string) { fc.fault(ctx, t, c, node) })
			run := replctl(ctx, wrap, append([]string{"--config", cfg, "-o", "json", "promote", "pg2", "--yes"}, fc.extra...)...)
			t.Logf("%s", run)
			d := run.doc(t)
			if d.Result == nil {
				t.Fatalf("want a failed switchover (exit 1) saying %q: exit %d, not run", fc.want, run.Code)
			}
			if run.Code != ExitFailed || d.Result.Outcome != "failed" || !strings.Contains(d.Error, fc.want) {
				t.Errorf("want a failed switchover (exit 1) saying %q: exit %d, error %q", fc.want, run.Code, d.Error)
			}
			if !strings.Contains(run.Err, "Switchover failed") && !strings.Contains(run.Err, "FAILED") {
				t.Errorf("stderr does not say it failed:\n%s", run.Err)
			}
			var undone bool
			for _, s := range d.Result.Steps {
				undone = undone || s.ID == "undo-fence" && s.Outcome == "undone"
			}
			if !undone {
				t.Errorf("the fence was not undone: %+v", d.Result.Steps)
			}
			// Clients were held back from pg1 just before its fence, and
			// sent to it again once it serves again.
			ran := commandsRun(t, log)
			hooks := slices.DeleteFunc(slices.Clone(ran), func(s string) bool { return !strings.Contains(s, "_hook_") })
			if want := []string{"pg1_hook_pre_fence", "pg1_hook_pre_fence_undo"}; !slices.Equal(hooks, want) {
				t.Errorf("hooks run: %v, want %v", hooks, want)
			}
			if setup == fenceStop && slices.Index(ran, "pg1_start") > slices.Index(ran, "pg1_hook_pre_fence_undo") {
				t.Errorf("clients sent to pg1 again before it was started: %v", ran)
			}
			fc.heal(ctx, t, c)
			if order := assertOneWritable(t, watch); len(order) != 1 || order[0] != "pg1" {
				t.Errorf("writable in turn: %v, want [pg1]", order)
			}
			stopProbe(t, probe)
			awaitTopology(t, c, "pg1", tl, "pg2", "pg3")
			assertSoleWritable(t, c, "pg1", "pg2", "pg3")
			if st := clusterRecord(t, cli, c); st.IsFenced("pg1") || (st.Primary != "" && st.Primary != "pg1") {
				t.Errorf("cluster record %+v", st)
			}
			if h, err := etcdlock.ReadLockHolder(ctx, cli, "/replctl", c.Name); err != nil || h != nil {
				t.Errorf("lock still held: %+v %v", h, err)
			}
			t.Logf("commands run: %v", commandsRun(t, log))
		})
	}
}

// TestIntegrationSwitchoverCandidateDies kills the candidate just before
// it would be promoted: the fence is lifted and pg1 serves again.
func TestIntegrationSwitchoverCandidateDies(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	runFaults(t, faultCase{
		point: pointBeforePromote,
		fault: func(ctx context.Context, t *testing.T, c *testenv.Cluster, node string) {
			if err := c.KillNode(ctx, node); err != nil {
				t.Error(err)
			}
		},
		heal: func(ctx context.Context, t *testing.T, c *testenv.Cluster) {
			if err := c.StartNode(ctx, "pg2"); err != nil {
				t.Fatal(err)
			}
		},
		want: "pg2",
	})
}

// TestIntegrationSwitchoverLockLost revokes the lock's lease right after
// the fence went up. Whoever broke the lock may be promoting another node
// now: the old primary is left fenced (not restarted, not made writable),
// nothing else is changed after the loss, and the report says so.
func TestIntegrationSwitchoverLockLost(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	for _, setup := range []string{fenceStop, fenceSQLRejoin} {
		t.Run(setup, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			c := testenv.Start(t, testenv.Options{Replicas: 2})
			cli := etcdClient(t, c)
			cfg, log := switchoverConfig(t, c, setup)
			watch := watchWritable(t, c)
			wrap := atPoint(pointAfterFence, func(ctx context.Context, node string) { revokeLock(ctx, t, cli, c.Name) })
			run := replctl(ctx, wrap, "--config", cfg, "-o", "json", "promote", "pg2", "--yes")
			t.Logf("%s", run)
			d := run.doc(t)
			if run.Code != ExitFailed || d.Result == nil || d.Result.Outcome != "failed" || !strings.Contains(d.Error, "lost the lock") {
				t.Fatalf("want a failed switchover (exit 1) saying the lock was lost: exit %d, error %q", run.Code, d.Error)
			}
			var skipped, undone []string
			for _, s := range d.Result.Steps {
				switch s.Outcome {
				case "undo_skipped":
					skipped = append(skipped, s.ID)
				case "undone", "undo_failed":
					undone = append(undone, s.ID)
				}
			}
			if len(undone) > 0 || !slices.Contains(skipped, "undo-fence") {
				t.Errorf("undos run without the lock: %v; skipped: %v", undone, skipped)
			}
			if !strings.Contains(strings.Join(d.Result.Left, "\n"), "pg1 left fenced because the lock was lost") {
				t.Errorf("the report does not say pg1 was left fenced: %q", d.Result.Left)
			}
			if d.Final == nil || d.Final.Primary != "" {
				t.Errorf("final state %+v: want no primary", d.Final)
			}
			if slices.ContainsFunc(commandsRun(t, log), func(c string) bool { return strings.HasPrefix(c, "start pg1") }) {
				t.Errorf("pg1 was started again: %v", commandsRun(t, log))
			}
			// Still fenced a while later, and no node ever writable but pg1
			// before the fence.
			time.Sleep(500 * time.Millisecond)
			s := readPG(ctx, c, "pg1")
			switch setup {
			case fenceStop:
				if s.Err == nil {
					t.Errorf("pg1 answers after the stop fence: %s", s)
				}
			default:
				if s.Err != nil || s.ReadOnly != "on" {
					t.Errorf("pg1 should still be fenced read-only: %s", s)
				}
			}
			for _, n := range []string{"pg2", "pg3"} {
				if s := readPG(ctx, c, n); s.Err != nil || !s.InRecovery {
					t.Errorf("%s should still be a replica: %s", n, s)
				}
			}
			if order := assertOneWritable(t, watch); len(order) != 1 || order[0] != "pg1" {
				t.Errorf("writable in turn: %v, want [pg1]", order)
			}
			if st := clusterRecord(t, cli, c); !st.IsFenced("pg1") {
				t.Errorf("cluster record %+v: pg1 should stay marked fenced", st)
			}
		})
	}
}

// TestIntegrationSwitchoverCatchupTimeout pauses replay on the candidate
// after the preflight, just before the fence: it never replays the final
// position, the wait times out and the fence is undone.
func TestIntegrationSwitchoverCatchupTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	runFaults(t, faultCase{
		point: pointBeforeFence,
		fault: func(ctx context.Context, t *testing.T, c *testenv.Cluster, node string) {
			// Paused, and with WAL to replay past the pause.
			if err := c.PauseReplay(ctx, "pg2"); err != nil {
				t.Error(err)
			}
			if err := c.Write(ctx, 100); err != nil {
				t.Error(err)
			}
		},
		heal: func(ctx context.Context, t *testing.T, c *testenv.Cluster) {
			if err := c.ResumeReplay(ctx, "pg2"); err != nil {
				t.Fatal(err)
			}
		},
		extra: []string{"--catchup-timeout", "2s"},
		want:  "did not replay",
	})
}

// TestIntegrationPromoteRefusals refuses unsafe switchovers with a clear
// message, exit code 4 (2 for a name not in the configuration), and
// changes nothing: no etcd write, the same primary, no fence.
func TestIntegrationPromoteRefusals(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	c := testenv.Start(t, testenv.Options{Replicas: 2})
	cli := etcdClient(t, c)
	for _, tc := range []struct {
		name      string
		args      []string
		setup     func(ctx context.Context, t *testing.T)
		undo      func(ctx context.Context, t *testing.T)
		code      int
		check     string // a failed preflight check
		stderrHas string
	}{
		{name: "unknown node", args: []string{"pg9"}, code: ExitUsage, stderrHas: `node "pg9" is not in`},
		{name: "the primary itself", args: []string{"pg1"}, code: ExitUnsafe, check: "candidate_not_primary", stderrHas: "already the primary"},
		{name: "unreachable", args: []string{"pg3"}, code: ExitUnsafe, check: "candidate_reachable", stderrHas: "unreachable",
			setup: func(ctx context.Context, t *testing.T) { must(t, c.StopNode(ctx, "pg3")) },
			undo:  func(ctx context.Context, t *testing.T) { must(t, c.StartNode(ctx, "pg3")) }},
		{name: "paused", args: []string{"pg2"}, code: ExitUnsafe, check: "candidate_replay_not_paused", stderrHas: "replay is paused",
			setup: func(ctx context.Context, t *testing.T) { must(t, c.PauseReplay(ctx, "pg2")) },
			undo:  func(ctx context.Context, t *testing.T) { must(t, c.ResumeReplay(ctx, "pg2")) }},
		{name: "lagging", args: []string{"pg2", "--max-lag", "1kB"}, code: ExitUnsafe, check: "candidate_lag", stderrHas: "over --max-lag",
			setup: func(ctx context.Context, t *testing.T) {
				must(t, c.PauseReplay(ctx, "pg2"))
				must(t, c.Write(ctx, 1000))
			},
			undo: func(ctx context.Context, t *testing.T) { must(t, c.ResumeReplay(ctx, "pg2")) }},
		{name: "foreign", args: []string{"alien"}, code: ExitUnsafe, check: "candidate_system_identifier", stderrHas: "foreign node",
			setup: func(ctx context.Context, t *testing.T) {
				if _, err := c.AddStandalone(ctx, "alien"); err != nil {
					t.Fatal(err)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			if tc.setup != nil {
				tc.setup(ctx, t)
			}
			if tc.undo != nil {
				defer tc.undo(ctx, t)
			}
			// The foreign node joins c.ConfigPath, so read it each time.
			cfg := c.ConfigPath
			rev := etcdRevision(t, cli)
			run := replctl(ctx, nil, append([]string{"--config", cfg, "-o", "json", "promote", "--yes"}, tc.args...)...)
			if run.Code != tc.code || !strings.Contains(run.Err, tc.stderrHas) {
				t.Errorf("want exit %d saying %q: %s", tc.code, tc.stderrHas, run)
			}
			if tc.check != "" {
				d := run.doc(t)
				if d.Proceed || d.Result != nil || !slices.Contains(d.failedChecks(), tc.check) {
					t.Errorf("want check %s failed: proceed %v, failed %v, result %v", tc.check, d.Proceed, d.failedChecks(), d.Result)
				}
			}
			if got := etcdRevision(t, cli); got != rev {
				t.Errorf("etcd revision moved from %d to %d: something was written", rev, got)
			}
			others := []string{"pg2"}
			if tc.name != "unreachable" {
				others = append(others, "pg3")
			}
			assertSoleWritable(t, c, "pg1", others...)
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestIntegrationPromoteConcurrent runs two switchovers at once: the second
// finds the lock held by the first, is refused with exit 5 naming the
// holder, and changes nothing; the first completes.
func TestIntegrationPromoteConcurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	ctx := t.Context()
	c := testenv.Start(t, testenv.Options{Replicas: 2})
	cfg, _ := switchoverConfig(t, c, fenceStop)
	cli := etcdClient(t, c)

	holding, proceed := make(chan struct{}), make(chan struct{})
	hold := atPoint(pointCatchup, func(context.Context, string) {
		close(holding)
		<-proceed
	})
	first := make(chan cliRun, 1)
	go func() {
		first <- replctl(ctx, hold, "--config", cfg, "promote", "pg2", "--yes")
	}()
	select {
	case <-holding:
	case r := <-first:
		t.Fatalf("the first promote ended early: %s", r)
	}
	// The first writes its journal's non-gating entries in the background:
	// the catchup step's start may land after the hold began. Counting
	// from before it would blame the second for it.
	awaitJournaled(t, cli, c, failover.StepCatchup)
	rev := etcdRevision(t, cli)
	second := replctl(ctx, nil, "--config", cfg, "promote", "pg3", "--yes")
	revAfter := etcdRevision(t, cli)
	close(proceed)
	r1 := <-first
	if r1.Code != 0 {
		t.Fatalf("first promote: %s", r1)
	}
	if second.Code != ExitLocked || !strings.Contains(second.Err, "held by") || !strings.Contains(second.Err, "promote --yes pg2") {
		t.Errorf("second promote: want exit 5 naming the holder: %s", second)
	}
	if revAfter != rev {
		t.Errorf("the refused promote wrote to etcd: revision %d -> %d", rev, revAfter)
	}
	awaitTopology(t, c, "pg2", timelineOf(t, c, "pg2"), "pg1", "pg3")
}

// awaitJournaled waits until the running operation's history record shows
// step begun.
func awaitJournaled(t *testing.T, cli *clientv3.Client, c *testenv.Cluster, step string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for {
		if h, err := etcdlock.ReadLockHolder(ctx, cli, "/replctl", c.Name); err == nil && h != nil && h.OperationID != "" {
			if rec, err := etcdlock.ReadOperation(ctx, cli, "/replctl", c.Name, h.OperationID); err == nil && rec != nil &&
				slices.ContainsFunc(rec.Steps, func(s etcdlock.StepRecord) bool { return s.ID == step }) {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the running operation's record never showed %s begun", step)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// TestIntegrationPromoteDryRun shows that a dry-run changes nothing (no
// etcd write, no node command, roles and fence as they were) and that its
// plan is, line for line, what the real run then executes.
func TestIntegrationPromoteDryRun(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	ctx := t.Context()
	c := testenv.Start(t, testenv.Options{Replicas: 2, Sync: true})
	cli := etcdClient(t, c)
	for _, setup := range []string{fenceStop, fenceSQLRejoin} {
		t.Run(setup, func(t *testing.T) {
			cfg, log := switchoverConfig(t, c, setup)
			p, err := c.Primary(ctx)
			if err != nil {
				t.Fatal(err)
			}
			rev := etcdRevision(t, cli)
			dry := replctl(ctx, nil, "--config", cfg, "-o", "json", "promote", "--dry-run")
			if dry.Code != 0 {
				t.Fatalf("dry-run: %s", dry)
			}
			dd := dry.doc(t)
			if !dd.DryRun || !dd.Proceed || dd.Result != nil || len(dd.planSteps()) == 0 {
				t.Fatalf("dry-run report: %s", dry)
			}
			if got := etcdRevision(t, cli); got != rev {
				t.Errorf("dry-run wrote to etcd: revision %d -> %d", rev, got)
			}
			if got := commandsRun(t, log); len(got) != 0 {
				t.Errorf("dry-run ran node commands: %v", got)
			}
			var others []string
			for _, n := range c.Nodes {
				if n.Name != p.Name {
					others = append(others, n.Name)
				}
			}
			assertSoleWritable(t, c, p.Name, others...)

			// The candidate the dry-run chose, named: the same plan, from
			// the same kind of snapshot, whatever the lag did in between.
			run := replctl(ctx, nil, "--config", cfg, "-o", "json", "promote", dd.Candidate, "--yes")
			if run.Code != 0 {
				t.Fatalf("promote: %s", run)
			}
			rd := run.doc(t)
			if rd.Candidate != dd.Candidate {
				t.Errorf("dry-run chose %s, the run %s", dd.Candidate, rd.Candidate)
			}
			if want, got := dd.planSteps(), rd.resultSteps(); !slices.Equal(want, got) {
				t.Errorf("executed steps differ from the dry-run's plan:\ndry-run:\n  %s\nexecuted:\n  %s", strings.Join(want, "\n  "), strings.Join(got, "\n  "))
			}
			if len(commandsRun(t, log)) == 0 {
				t.Errorf("the real run ran no node command (the log works?)")
			}
		})
	}
}
