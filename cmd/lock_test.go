package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/testenv"
)

// lkSubcommand swaps the subcommand path[len-1] of path[:len-1] for repl.
func lkSubcommand(t *testing.T, root *cobra.Command, repl *cobra.Command, path ...string) {
	t.Helper()
	c, _, err := root.Find(path)
	if err != nil || c.Name() != path[len(path)-1] {
		t.Fatalf("no command %v: %v", path, err)
	}
	parent := c.Parent()
	parent.RemoveCommand(c)
	parent.AddCommand(repl)
}

func TestLockCommandFlags(t *testing.T) {
	t.Parallel()
	newRoot := func() (*Factory, *cobra.Command) {
		f := NewFactory(&IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}})
		return f, NewRootCmd(f)
	}

	t.Run("lock status", func(t *testing.T) {
		t.Parallel()
		f, root := newRoot()
		var got *LockStatusOptions
		lkSubcommand(t, root, newCmdLockStatus(f, func(_ context.Context, o *LockStatusOptions) error { got = o; return nil }), "lock", "status")
		root.SetArgs([]string{"lock", "status", "-o", "yaml", "--timeout", "700ms"})
		if err := root.Execute(); err != nil {
			t.Fatal(err)
		}
		if got.Output != "yaml" || got.Timeout != 700*time.Millisecond || got.Etcd == nil || got.Config == nil || got.Now == nil {
			t.Errorf("%+v", got)
		}
		root.SetArgs([]string{"lock", "status", "extra"})
		if err := root.Execute(); exitCode(err) != ExitUsage {
			t.Errorf("extra argument: %v", err)
		}
	})

	t.Run("lock release", func(t *testing.T) {
		t.Parallel()
		f, root := newRoot()
		var got *LockReleaseOptions
		lkSubcommand(t, root, newCmdLockRelease(f, func(_ context.Context, o *LockReleaseOptions) error { got = o; return nil }), "lock", "release")
		root.SetArgs([]string{"lock", "release", "--force", "-y", "-o", "json"})
		if err := root.Execute(); err != nil {
			t.Fatal(err)
		}
		if !got.Force || !got.Yes || got.Output != "json" || got.Actor.Command != "lock release --force --yes" || got.Actor.PID != os.Getpid() {
			t.Errorf("%+v", got)
		}
	})

	t.Run("lock run", func(t *testing.T) {
		t.Parallel()
		f, root := newRoot()
		var got *LockRunOptions
		lkSubcommand(t, root, newCmdLockRun(f, func(_ context.Context, o *LockRunOptions) error { got = o; return nil }), "lock", "run")
		root.SetArgs([]string{"lock", "run", "--lock-wait", "30s", "--", "psql", "-c", "select 1", "--password=hunter2"})
		if err := root.Execute(); err != nil {
			t.Fatal(err)
		}
		if got.Wait != 30*time.Second || strings.Join(got.Command, "|") != "psql|-c|select 1|--password=hunter2" {
			t.Errorf("%+v", got)
		}
		if want := "lock run --lock-wait 30s -- psql -c 'select 1' --password=********"; got.Actor.Command != want {
			t.Errorf("recorded command %q, want %q", got.Actor.Command, want)
		}
		root.SetArgs([]string{"lock", "run"})
		if err := root.Execute(); exitCode(err) != ExitUsage {
			t.Errorf("no command: %v", err)
		}
	})

	t.Run("history", func(t *testing.T) {
		t.Parallel()
		f, root := newRoot()
		var got *HistoryOptions
		lkSubcommand(t, root, newCmdHistory(f, func(_ context.Context, o *HistoryOptions) error { got = o; return nil }), "history")
		root.SetArgs([]string{"history", "-n", "5", "42", "-o", "json"})
		if err := root.Execute(); err != nil {
			t.Fatal(err)
		}
		if got.Limit != 5 || got.ID != "42" || got.Output != "json" {
			t.Errorf("%+v", got)
		}
		got = nil
		root.SetArgs([]string{"history", "--limit", "7"})
		if err := root.Execute(); err != nil || got.Limit != 7 || got.ID != "" {
			t.Errorf("%+v %v", got, err)
		}
		for _, args := range [][]string{{"history", "-n", "0"}, {"history", "1", "2"}, {"history", "-o", "nagios"}, {"history", "abc"}, {"history", "0"}} {
			root.SetArgs(args)
			if err := root.Execute(); exitCode(err) != ExitUsage {
				t.Errorf("%v: %v, want a usage error", args, err)
			}
		}
	})
}

func TestLockTables(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 4, 12, 1, 15, 0, time.UTC)
	h := &etcdlock.LockHolder{Actor: etcdlock.Actor{User: "alice", Host: "db-admin-1", PID: 4242, Command: "promote pg2"},
		OperationID: "42", Since: now.Add(-12 * time.Second), Token: 1234, Key: "/replctl/demo/lock/694d", LeaseID: 0x694d,
		LeaseTTL: 10 * time.Second, LeaseLeft: 8 * time.Second}
	tests := []struct {
		name string
		s    lockStatus
		want []string
	}{
		{"held", lockStatus{Cluster: "demo", Held: true, Holder: holderInfo(h, now)},
			[]string{"demo", "held", "alice@db-admin-1 (pid 4242)", "promote pg2", "42", "1234", "2026-03-04 12:01:03", "12s", "8s", "0"}},
		{"free", lockStatus{Cluster: "demo"},
			[]string{"demo", "free", "-", "-", "-", "-", "-", "-", "-", "-"}},
	}
	for _, tt := range tests {
		_, rows := lockStatusTable(tt.s, now)
		if len(rows) != 1 || strings.Join(rows[0], "|") != strings.Join(tt.want, "|") {
			t.Errorf("%s: %q, want %q", tt.name, rows, tt.want)
		}
	}
	b, _ := json.Marshal(lockStatus{Cluster: "demo", Held: true, Holder: holderInfo(h, now)})
	want := `{"cluster":"demo","held":true,"holder":{"user":"alice","host":"db-admin-1","pid":4242,"command":"promote pg2","operation_id":"42","token":1234,"since":"2026-03-04T12:01:03Z","age_seconds":12,"lease_id":"694d","lease_ttl_seconds":10,"lease_left_seconds":8,"key":"/replctl/demo/lock/694d","waiters":0}}`
	if string(b) != want {
		t.Errorf("lock status JSON:\n got %s\nwant %s", b, want)
	}
	if b, _ := json.Marshal(lockStatus{Cluster: "demo"}); string(b) != `{"cluster":"demo","held":false,"holder":null}` {
		t.Errorf("free lock JSON: %s", b)
	}
}

func TestHistoryTables(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 4, 12, 0, 0, 0, time.UTC)
	at := now.Add(-time.Hour)
	end := at.Add(2500 * time.Millisecond)
	ops := []etcdlock.OpRecord{
		{ID: "8", Kind: etcdlock.KindLockBreak, By: etcdlock.Actor{User: "ops", Host: "admin"}, Forced: true, Started: at, Finished: &end,
			Outcome: plan.OutcomeSucceeded, Params: map[string]string{"holder": "alice@h (pid 1)", "lease": "694d"}},
		{ID: "7", Kind: "switchover", By: etcdlock.Actor{User: "alice", Host: "h"}, Started: at, Outcome: etcdlock.OutcomeRunning},
		{ID: "6", Kind: "failover", By: etcdlock.Actor{User: "bob", Host: "h"}, Started: at, Finished: &end, Outcome: plan.OutcomeFailed, Error: "promote pg2: timeout"},
	}
	// Piped, nothing is cut; on a terminal a long detail is shortened.
	long := ops[2]
	long.Error = strings.Repeat("x", 200)
	if _, rows := historyTable([]etcdlock.OpRecord{long}, now, false); rows[0][6] != long.Error {
		t.Errorf("piped detail cut: %q", rows[0][6])
	}
	if _, rows := historyTable([]etcdlock.OpRecord{long}, now, true); len([]rune(rows[0][6])) != 80 || !strings.HasSuffix(rows[0][6], "…") {
		t.Errorf("terminal detail not shortened: %q", rows[0][6])
	}
	_, rows := historyTable(ops, now, false)
	want := [][]string{
		{"8", "2026-03-04 11:00:00", "lock-break", "ops@admin", "succeeded", "2.5s", "forced: holder=alice@h (pid 1) lease=694d"},
		{"7", "2026-03-04 11:00:00", "switchover", "alice@h", "running", "running 1h0m0s", "-"},
		{"6", "2026-03-04 11:00:00", "failover", "bob@h", "failed", "2.5s", "promote pg2: timeout"},
	}
	for i := range want {
		if strings.Join(rows[i], "|") != strings.Join(want[i], "|") {
			t.Errorf("row %d: %q\n want %q", i, rows[i], want[i])
		}
	}
	var buf bytes.Buffer
	rec := etcdlock.OpRecord{ID: "6", Kind: "failover", Cluster: "demo", By: etcdlock.Actor{User: "bob", Host: "h", PID: 3, Command: "failover --to pg2"},
		Token: 99, Started: at, Finished: &end, Outcome: plan.OutcomeFailed, Error: "boom",
		Steps: []etcdlock.StepRecord{{ID: "promote", Description: "promote pg2", Started: at, Finished: &end, Outcome: "failed", Error: "boom"}}}
	if err := writeOperation(&buf, false, rec, now); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"operation 6: failover on demo", "by:       bob@h (pid 3) running `failover --to pg2`", "token:    99",
		"finished: 2026-03-04 11:00:02 (2.5s)", "outcome:  failed", "STEP", "promote pg2"} {
		if !strings.Contains(buf.String(), s) {
			t.Errorf("operation view lacks %q:\n%s", s, buf.String())
		}
	}
}

// lkConfig writes a configuration file for cluster; endpoint "" leaves
// etcd out.
func lkConfig(t *testing.T, endpoint, extra string) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "cluster: %s\nnodes:\n  - name: pg1\n    dsn: host=127.0.0.1 port=1 user=replctl dbname=postgres\n",
		strings.NewReplacer("/", "-", " ", "_").Replace(t.Name()))
	if endpoint != "" {
		fmt.Fprintf(&b, "etcd:\n  endpoints: [%q]\n  dial_timeout: 1s\n", endpoint)
	}
	b.WriteString(extra)
	p := filepath.Join(t.TempDir(), "replctl.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// lkRun runs replctl in process and returns stdout, stderr and the exit code.
func lkRun(ctx context.Context, args ...string) (string, string, int) {
	var out, errOut bytes.Buffer
	code := MainIO(ctx, args, &IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
	return out.String(), errOut.String(), code
}

func TestEtcdCommandsWithoutEtcd(t *testing.T) {
	t.Parallel()
	cfg := lkConfig(t, "", "")
	for _, args := range [][]string{{"lock", "status"}, {"lock", "release", "--force", "--yes"}, {"lock", "run", "--", "true"}, {"history"}, {"history", "3"}} {
		_, stderr, code := lkRun(t.Context(), append([]string{"--config", cfg}, args...)...)
		want := "etcd is not configured: add etcd.endpoints to " + cfg
		if code != ExitUsage || !strings.Contains(stderr, want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", args, code, stderr, want)
		}
	}
}

func TestEtcdCommandsUnreachable(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := lkConfig(t, addr, "")
	start := time.Now()
	_, stderr, code := lkRun(t.Context(), "--config", cfg, "lock", "status")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %s with a 1s dial timeout", d)
	}
	if want := "etcd unreachable at " + addr + " within 1s"; code != ExitFailed || !strings.Contains(stderr, want) {
		t.Errorf("exit %d, stderr %q; want 1 and %q", code, stderr, want)
	}
}

func TestLockCommandsAgainstEtcd(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs a real etcd")
	}
	t.Parallel()
	e := testenv.StartEtcd(t)
	cfgPath := lkConfig(t, e.Endpoint, "")
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	cli, err := etcdlock.Connect(ctx, cfg.Etcd)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()

	out, _, code := lkRun(ctx, "--config", cfgPath, "lock", "status", "-o", "json")
	if code != 0 || strings.TrimSpace(out) != fmt.Sprintf(`{
  "cluster": %q,
  "held": false,
  "holder": null
}`, cfg.Cluster) {
		t.Fatalf("free lock: exit %d\n%s", code, out)
	}

	// alice holds the lock, as a replctl operation would.
	alice, err := etcdlock.Acquire(ctx, cli, etcdlock.LockOptions{Prefix: cfg.Etcd.Prefix, Cluster: cfg.Cluster, TTL: 30 * time.Second,
		Actor: etcdlock.Actor{User: "alice", Host: "db-admin-1", PID: 4242, Command: "promote pg2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Release(context.Background())
	op, err := alice.StartOperation(ctx, "switchover", map[string]string{"candidate": "pg2"})
	if err != nil {
		t.Fatal(err)
	}

	out, _, code = lkRun(ctx, "--config", cfgPath, "lock", "status", "-o", "json")
	var st lockStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 {
		t.Fatalf("exit %d: %v\n%s", code, err, out)
	}
	if !st.Held || st.Holder.User != "alice" || st.Holder.PID != 4242 || st.Holder.Token != alice.Token() || st.Holder.OperationID != op.ID() ||
		st.Holder.LeaseTTLSeconds != 30 || st.Holder.LeaseLeftSeconds < 25 || st.Holder.LeaseID != fmt.Sprintf("%x", int64(alice.LeaseID())) {
		t.Errorf("lock status %s", out)
	}
	if out, _, _ := lkRun(ctx, "--config", cfgPath, "lock", "status"); !strings.Contains(out, "alice@db-admin-1 (pid 4242)") || !strings.Contains(out, "promote pg2") {
		t.Errorf("table:\n%s", out)
	}

	// A second operation is refused with exit 5, naming alice.
	_, stderr, code := lkRun(ctx, "--config", cfgPath, "lock", "run", "--", "true")
	if code != ExitLocked || !strings.Contains(stderr, "held by alice@db-admin-1 (pid 4242) running `promote pg2` (operation "+op.ID()+") since ") {
		t.Errorf("lock run while held: exit %d\n%s", code, stderr)
	}

	// release refuses without --force, and without --yes when nobody can confirm.
	if _, stderr, code := lkRun(ctx, "--config", cfgPath, "lock", "release"); code != ExitUsage || !strings.Contains(stderr, "without --force") {
		t.Errorf("release without --force: exit %d %s", code, stderr)
	}
	if _, stderr, code := lkRun(ctx, "--config", cfgPath, "lock", "release", "--force"); code != ExitUsage || !strings.Contains(stderr, "--yes") {
		t.Errorf("release without --yes: exit %d %s", code, stderr)
	}
	if err := alice.Err(); err != nil {
		t.Fatalf("refused releases broke the lock: %v", err)
	}
	out, stderr, code = lkRun(ctx, "--config", cfgPath, "lock", "release", "--force", "--yes", "-o", "json")
	var rel lockRelease
	if err := json.Unmarshal([]byte(out), &rel); err != nil || code != 0 || !rel.Released || rel.Holder.User != "alice" || rel.HistoryID == "" {
		t.Fatalf("release: exit %d %v\n%s\n%s", code, err, out, stderr)
	}
	select {
	case <-alice.Context().Done():
	case <-time.After(3 * time.Second):
		t.Fatal("alice did not notice her lock was broken")
	}
	// A free lock: one line on stdout, nothing contradicting it on stderr.
	if out, stderr, code := lkRun(ctx, "--config", cfgPath, "lock", "release", "--force", "--yes"); code != 0 ||
		strings.TrimSpace(out) != "the lock on "+cfg.Cluster+" is free: nothing to release" || strings.TrimSpace(stderr) != "" {
		t.Errorf("release of a free lock: exit %d %s", code, stderr)
	}

	// lock run now gets the lock, and the history has it all.
	if out, stderr, code := lkRun(ctx, "--config", cfgPath, "lock", "run", "--", "sh", "-c", "echo token=$REPLCTL_LOCK_TOKEN op=$REPLCTL_OPERATION_ID"); code != 0 || !strings.Contains(out, "token=") {
		t.Errorf("lock run: exit %d\n%s\n%s", code, out, stderr)
	}
	if _, _, code := lkRun(ctx, "--config", cfgPath, "lock", "run", "--", "false"); code != ExitFailed {
		t.Errorf("lock run false: exit %d", code)
	}
	out, _, code = lkRun(ctx, "--config", cfgPath, "history", "-o", "json")
	var hist historyList
	if err := json.Unmarshal([]byte(out), &hist); err != nil || code != 0 {
		t.Fatalf("history: exit %d %v\n%s", code, err, out)
	}
	var kinds []string
	for _, r := range hist.Operations {
		kinds = append(kinds, fmt.Sprintf("%s:%s:%s", r.ID, r.Kind, r.Outcome))
	}
	wantKinds := fmt.Sprintf("4:lock-run:failed,3:lock-run:succeeded,%s:lock-break:succeeded,%s:switchover:lock_broken", rel.HistoryID, op.ID())
	if strings.Join(kinds, ",") != wantKinds {
		t.Errorf("history %v, want %s", kinds, wantKinds)
	}
	if !hist.Operations[2].Forced || hist.Operations[2].By.Command != "lock release --force --yes" {
		t.Errorf("break record %+v", hist.Operations[2])
	}
	if out, _, code := lkRun(ctx, "--config", cfgPath, "history", "-n", "1"); code != 0 || !strings.Contains(out, "lock-run") || strings.Contains(out, "lock-break") {
		t.Errorf("history -n 1: exit %d\n%s", code, out)
	}
	if out, _, code := lkRun(ctx, "--config", cfgPath, "history", "3"); code != 0 || !strings.Contains(out, "operation 3: lock-run") || !strings.Contains(out, "run `sh -c") {
		t.Errorf("history 3: exit %d\n%s", code, out)
	}
	if _, stderr, code := lkRun(ctx, "--config", cfgPath, "history", "77"); code != ExitFailed || !strings.Contains(stderr, "not in the history") {
		t.Errorf("history 77: exit %d %s", code, stderr)
	}
}

// TestLockRunStopsWhenLockLost breaks the lock of a running `lock run`: the
// command must be stopped at once and the run reported as lock lost.
func TestLockRunStopsWhenLockLost(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs a real etcd")
	}
	t.Parallel()
	e := testenv.StartEtcd(t)
	cfgPath := lkConfig(t, e.Endpoint, "lock:\n  ttl: 30s\n")
	cfg, cli := lkEtcd(t, cfgPath)

	type result struct {
		stderr string
		code   int
	}
	done := make(chan result, 1)
	go func() {
		_, stderr, code := lkRun(t.Context(), "--config", cfgPath, "lock", "run", "--", "sleep", "30")
		done <- result{stderr, code}
	}()
	h := lkWaitHolder(t, cli, cfg)
	if _, err := etcdlock.BreakLock(t.Context(), cli, cfg.Etcd.Prefix, cfg.Cluster, h, etcdlock.Actor{User: "ops"}, 0); err != nil {
		t.Fatal(err)
	}
	broken := time.Now()
	select {
	case r := <-done:
		if d := time.Since(broken); d > 3*time.Second {
			t.Errorf("stopped %s after the break", d)
		}
		if r.code != ExitFailed || !strings.Contains(r.stderr, "lost the lock on cluster "+cfg.Cluster) || !strings.Contains(r.stderr, "sleep 30 was sent SIGTERM") {
			t.Errorf("exit %d\n%s", r.code, r.stderr)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("lock run went on after its lock was broken")
	}
}

// lkWaitHolder waits until someone holds the cluster's lock.
func lkWaitHolder(t *testing.T, cli *clientv3.Client, cfg *config.Config) *etcdlock.LockHolder {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		h, err := etcdlock.ReadLockHolder(t.Context(), cli, cfg.Etcd.Prefix, cfg.Cluster)
		if err != nil {
			t.Fatal(err)
		}
		// The holder names its history record right after taking the
		// lock; a test that kills it must not do so in between.
		if h != nil && h.Token != 0 && h.OperationID != "" {
			return h
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("nobody took the lock")
	return nil
}

// TestLockSeparateProcesses runs the replctl binary: two processes race for
// the lock, and a killed holder's lock is broken with lock release --force.
func TestLockSeparateProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: builds replctl and needs a real etcd")
	}
	t.Parallel()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go not in PATH")
	}
	bin := filepath.Join(t.TempDir(), "replctl")
	build := exec.CommandContext(t.Context(), goBin, "build", "-o", bin, "github.com/replctl/replctl")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	e := testenv.StartEtcd(t)

	t.Run("exactly one of two wins", func(t *testing.T) {
		cfgPath := lkConfig(t, e.Endpoint, "")
		type result struct {
			pid    int
			code   int
			stderr string
		}
		results := make([]result, 2)
		var wg sync.WaitGroup
		for i := range results {
			c := exec.CommandContext(t.Context(), bin, "--config", cfgPath, "lock", "run", "--", "sleep", "3")
			var stderr bytes.Buffer
			c.Stderr = &stderr
			if err := c.Start(); err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				err := c.Wait()
				results[i] = result{pid: c.Process.Pid, code: c.ProcessState.ExitCode(), stderr: stderr.String()}
				var ee *exec.ExitError
				if err != nil && !errors.As(err, &ee) {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		winner, loser := results[0], results[1]
		if winner.code != 0 {
			winner, loser = loser, winner
		}
		if winner.code != 0 || loser.code != ExitLocked {
			t.Fatalf("exit codes %d and %d, want 0 and 5:\n%s\n%s", winner.code, loser.code, winner.stderr, loser.stderr)
		}
		want := fmt.Sprintf("(pid %d) running `lock run -- sleep 3`", winner.pid)
		if !strings.Contains(loser.stderr, "held by ") || !strings.Contains(loser.stderr, want) {
			t.Errorf("loser's message does not name the winner (%s):\n%s", want, loser.stderr)
		}
	})

	// The command must not outlive the lock holder: killed with SIGKILL
	// (no chance to stop it), replctl takes its command down with it
	// through the parent-death signal.
	t.Run("the command dies with a killed holder", func(t *testing.T) {
		cfgPath := lkConfig(t, e.Endpoint, "lock:\n  ttl: 60s\n")
		cfg, cli := lkEtcd(t, cfgPath)
		holder := exec.Command(bin, "--config", cfgPath, "lock", "run", "--", "sleep", "60")
		if err := holder.Start(); err != nil {
			t.Fatal(err)
		}
		lkWaitHolder(t, cli, cfg)
		child := lkChild(t, holder.Process.Pid)
		t.Cleanup(func() { _ = syscall.Kill(child, syscall.SIGKILL) })
		if err := holder.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = holder.Wait()
		deadline := time.Now().Add(5 * time.Second)
		for lkAlive(child) {
			if time.Now().After(deadline) {
				t.Fatalf("the command (pid %d) outlived its killed lock holder", child)
			}
			time.Sleep(10 * time.Millisecond)
		}
		// The lease outlives the process: break it for the next subtest.
		c := exec.CommandContext(t.Context(), bin, "--config", cfgPath, "lock", "release", "--force", "--yes")
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("release --force: %v\n%s", err, out)
		}
	})

	t.Run("release --force frees a killed holder's lock", func(t *testing.T) {
		cfgPath := lkConfig(t, e.Endpoint, "lock:\n  ttl: 60s\n")
		cfg, cli := lkEtcd(t, cfgPath)
		holder := exec.Command(bin, "--config", cfgPath, "lock", "run", "--", "sleep", "60")
		// Its own process group, so that the sleep dies with it.
		holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := holder.Start(); err != nil {
			t.Fatal(err)
		}
		pgid := holder.Process.Pid
		t.Cleanup(func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) })
		h := lkWaitHolder(t, cli, cfg)
		if h.PID != holder.Process.Pid {
			t.Fatalf("holder pid %d, want %d", h.PID, holder.Process.Pid)
		}
		if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = holder.Wait()

		// The lease outlives the process: the lock stays held.
		c := exec.CommandContext(t.Context(), bin, "--config", cfgPath, "lock", "run", "--", "true")
		if out, err := c.CombinedOutput(); c.ProcessState.ExitCode() != ExitLocked {
			t.Fatalf("lock after kill: %v\n%s", err, out)
		}
		c = exec.CommandContext(t.Context(), bin, "--config", cfgPath, "lock", "release", "--force", "--yes")
		if out, err := c.CombinedOutput(); err != nil || !strings.Contains(string(out), "broken") {
			t.Fatalf("release --force: %v\n%s", err, out)
		}
		if h, err := etcdlock.ReadLockHolder(t.Context(), cli, cfg.Etcd.Prefix, cfg.Cluster); h != nil || err != nil {
			t.Fatalf("lock still held: %+v %v", h, err)
		}
		hist, err := etcdlock.ListHistory(t.Context(), cli, cfg.Etcd.Prefix, cfg.Cluster, 10)
		if err != nil || len(hist) != 2 {
			t.Fatalf("history %+v %v", hist, err)
		}
		if hist[0].Kind != etcdlock.KindLockBreak || !hist[0].Forced || hist[0].Params["holder_operation"] != hist[1].ID {
			t.Errorf("break record %+v", hist[0])
		}
		if hist[1].Kind != "lock-run" || hist[1].Outcome != etcdlock.OutcomeLockBroken || hist[1].By.PID != pgid {
			t.Errorf("killed run's record %+v", hist[1])
		}
		c = exec.CommandContext(t.Context(), bin, "--config", cfgPath, "lock", "run", "--", "true")
		if out, err := c.CombinedOutput(); err != nil {
			t.Errorf("lock after release: %v\n%s", err, out)
		}
	})
}

// An interrupted lock run (^C) records how it ended: its record is written
// on a context that outlives the interruption, not left "running".
func TestLockRunInterruptedRecordsItsEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs a real etcd")
	}
	t.Parallel()
	e := testenv.StartEtcd(t)
	cfgPath := lkConfig(t, e.Endpoint, "")
	cfg, cli := lkEtcd(t, cfgPath)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	go func() {
		_, _, code := lkRun(ctx, "--config", cfgPath, "lock", "run", "--", "sleep", "30")
		done <- code
	}()
	h := lkWaitHolder(t, cli, cfg)
	cancel()
	select {
	case code := <-done:
		if code != ExitFailed {
			t.Errorf("exit %d", code)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("lock run did not stop when interrupted")
	}
	rec, err := etcdlock.ReadOperation(t.Context(), cli, cfg.Etcd.Prefix, cfg.Cluster, h.OperationID)
	if err != nil || rec == nil || rec.Outcome != plan.OutcomeFailed || !strings.Contains(rec.Error, "interrupted") {
		t.Fatalf("record of the interrupted run: %+v %v", rec, err)
	}
}

// lkChild is the pid of the one child process of pid, waiting for it to
// appear.
func lkChild(t *testing.T, pid int) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			if fields := strings.Fields(string(b)); len(fields) > 0 {
				if c, err := strconv.Atoi(fields[0]); err == nil {
					return c
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("process %d started no child", pid)
	return 0
}

// lkAlive reports whether pid runs. A zombie is dead: the orphaned command
// may have been reparented to this test binary (testenv makes it a child
// subreaper), which then owns its exit status; it is reaped here.
func lkAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := strings.LastIndexByte(string(b), ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		return false
	}
	return true
}

// lkEtcd loads cfgPath and connects to its etcd, closed when t ends.
func lkEtcd(t *testing.T, cfgPath string) (*config.Config, *clientv3.Client) {
	t.Helper()
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := etcdlock.Connect(t.Context(), cfg.Etcd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cfg, cli
}
