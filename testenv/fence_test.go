package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/replctl/replctl/config"
)

// runFence runs a fence command as replctl runs node commands: sh -c, with
// REPLCTL_NODE.
func runFence(t *testing.T, node, cmd string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, "sh", "-c", cmd)
	c.Env = append(os.Environ(), "REPLCTL_NODE="+node)
	out, err := c.CombinedOutput()
	return string(out), err
}

// TestFenceScriptNoServer runs fence.sh without PostgreSQL: on a data
// directory with no server, on a stale postmaster.pid whose PID is another
// process (a reused PID), and on a fake hung server (a stopped process and
// its child working in the data directory), which it must SIGKILL.
func TestFenceScriptNoServer(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	script := filepath.Join(dir, FenceScript)
	// No pg_ctl there: the immediate shutdown fails and SIGKILL must do.
	if err := os.WriteFile(script, fenceScript(&install{binDir: filepath.Join(dir, "no bin")}), 0o755); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "my data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	fence := "sh " + shQuote(script) + " " + shQuote(data)
	pidFile := filepath.Join(data, "postmaster.pid")

	if out, err := runFence(t, "pg1", fence); err != nil || !strings.Contains(out, "nothing to do") {
		t.Fatalf("no postmaster.pid: %v\n%s", err, out)
	}
	// This test's process does not work in the data directory.
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"+data+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runFence(t, "pg1", fence); err != nil || !strings.Contains(out, "nothing to do") {
		t.Fatalf("postmaster.pid naming another process: %v\n%s", err, out)
	}

	// A fake server: a shell in the data directory with a child there.
	fake := exec.Command("sh", "-c", "sleep 600 & wait")
	fake.Dir = data
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	pm := fake.Process.Pid
	waited := make(chan struct{})
	go func() { _ = fake.Wait(); close(waited) }()
	var kid int
	deadline := time.Now().Add(5 * time.Second)
	for kid == 0 {
		if ks := children(pm); len(ks) > 0 {
			kid = ks[0]
		} else if time.Now().After(deadline) {
			t.Fatal("the fake server's child did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Cleanup(func() {
		for _, p := range []int{kid, pm} {
			if alive(p) {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
	})
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(pm)+"\n"+data+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Hung, like the SIGSTOPped primary of the fault tests.
	for _, p := range []int{pm, kid} {
		if err := syscall.Kill(p, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	out, err := runFence(t, "pg1", fence)
	if err != nil || !strings.Contains(out, "SIGKILL") {
		t.Fatalf("fence of a hung server: %v\n%s", err, out)
	}
	// A stopped postmaster cannot act on a shutdown request: no 2 s wait.
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Errorf("fence of a hung server took %s", took)
	}
	<-waited
	if !waitGone(kid, 0, 5*time.Second) {
		t.Errorf("the fake server's child %d survives the fence", kid)
	}
	if out, err := runFence(t, "pg1", fence); err != nil || !strings.Contains(out, "nothing to do") {
		t.Fatalf("fence after the fence: %v\n%s", err, out)
	}

	// A crashed server: postmaster.pid names the dead postmaster, and an
	// orphaned backend still runs in the data directory.
	orphan := exec.Command("sleep", "600")
	orphan.Dir = data
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	orphanDone := make(chan struct{})
	go func() { _ = orphan.Wait(); close(orphanDone) }()
	t.Cleanup(func() { _ = orphan.Process.Kill(); <-orphanDone })
	out, err = runFence(t, "pg1", fence)
	if err != nil || !strings.Contains(out, "SIGKILL") {
		t.Fatalf("fence of a crashed server's orphan: %v\n%s", err, out)
	}
	select {
	case <-orphanDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the orphaned backend survives the fence")
	}
}

// TestFenceCommand runs the generated commands.fence, read back from
// replctl.yaml, on a running primary, on a stopped node, and on a hung
// (SIGSTOP) replica; after each fence the node's rejoin command brings it
// back as a streaming replica.
func TestFenceCommand(t *testing.T) {
	integration(t)
	ctx := t.Context()
	c := Start(t, Options{Replicas: 1, NoEtcd: true, FenceCommand: true})
	b, err := os.ReadFile(c.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(c.ConfigPath, b)
	if err != nil {
		t.Fatalf("replctl.yaml: %v\n%s", err, b)
	}
	fenceOf := func(name string) string {
		t.Helper()
		n, ok := cfg.Node(name)
		if !ok || n.Commands.Fence == "" || n.Commands.Fence != c.Commands(c.Node(name)).Fence {
			t.Fatalf("%s: commands.fence %q in replctl.yaml, want %q", name, n.Commands.Fence, c.Commands(c.Node(name)).Fence)
		}
		return n.Commands.Fence
	}
	down := func(name string) {
		t.Helper()
		n := c.Node(name)
		if pid := postmasterPID(n.DataDir); pid != 0 {
			t.Fatalf("%s still runs as %d after the fence", name, pid)
		}
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if err := c.Exec(ctx, name, "SELECT 1"); err == nil {
			t.Fatalf("%s answers after the fence", name)
		}
	}
	rejoin := func(name, primary string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, "sh", "-c", c.Commands(c.Node(name)).Rejoin)
		cmd.Env = append(os.Environ(), "REPLCTL_NODE="+name,
			fmt.Sprintf("REPLCTL_PRIMARY_CONNINFO=host=127.0.0.1 port=%d user=postgres", c.Node(primary).Port))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("rejoin %s after its fence: %v\n%s", name, err, out)
		}
		if err := c.WaitStreaming(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Write(ctx, 10); err != nil {
		t.Fatal(err)
	}

	// A running primary: stopped at once.
	out, err := runFence(t, "pg1", fenceOf("pg1"))
	if err != nil {
		t.Fatalf("fence pg1: %v\n%s", err, out)
	}
	t.Logf("fence pg1: %s", out)
	down("pg1")
	// Already stopped: nothing to do, success.
	if out, err := runFence(t, "pg1", fenceOf("pg1")); err != nil || !strings.Contains(out, "nothing to do") {
		t.Fatalf("fence of a stopped pg1: %v\n%s", err, out)
	}
	// The emergency failover's path: promote the replica, rejoin the
	// fenced primary.
	if err := c.Exec(ctx, "pg2", "SELECT pg_promote()"); err != nil {
		t.Fatal(err)
	}
	rejoin("pg1", "pg2")

	// A hung node (every process stopped, the postmaster first).
	pg1 := c.Node("pg1")
	pm := postmasterPID(pg1.DataDir)
	procs := []int{pm}
	if err := syscall.Kill(pm, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	procs = append(procs, children(pm)...)
	t.Cleanup(func() { // should the fence fail, let Close stop them
		for _, p := range procs {
			_ = syscall.Kill(p, syscall.SIGCONT)
		}
	})
	for _, p := range procs[1:] {
		_ = syscall.Kill(p, syscall.SIGSTOP)
	}
	if out, err := runFence(t, "pg1", fenceOf("pg1")); err != nil || !strings.Contains(out, "SIGKILL") {
		t.Fatalf("fence of a hung pg1: %v\n%s", err, out)
	}
	down("pg1")
	for _, p := range procs {
		if !waitGone(p, 0, 5*time.Second) {
			t.Errorf("process %d of the hung pg1 survives its fence", p)
		}
	}
	rejoin("pg1", "pg2")
	var n int
	if err := c.QueryRow(ctx, "pg1", "SELECT count(*) FROM "+WriteTable).Scan(&n); err != nil || n != 10 {
		t.Fatalf("pg1 has %d rows (%v) after two fences and rejoins, want 10", n, err)
	}
}

// TestReceiverTimeout checks that Options.ReceiverTimeout reaches every
// node and does what it is for: a replica's WAL receiver gives up on a
// hung (SIGSTOP) primary within it.
func TestReceiverTimeout(t *testing.T) {
	integration(t)
	ctx := t.Context()
	const timeout = 1500 * time.Millisecond
	c := Start(t, Options{Replicas: 1, NoEtcd: true, ReceiverTimeout: timeout})
	for _, tc := range []struct{ node, setting string }{
		{"pg1", "wal_sender_timeout"}, {"pg2", "wal_receiver_timeout"}, {"pg2", "wal_sender_timeout"},
	} {
		var got string
		if err := c.QueryRow(ctx, tc.node, "SELECT current_setting($1)", tc.setting).Scan(&got); err != nil || got != "1500ms" {
			t.Errorf("%s: %s = %q (%v), want 1500ms", tc.node, tc.setting, got, err)
		}
	}
	pm := postmasterPID(c.Node("pg1").DataDir)
	procs := append([]int{pm}, children(pm)...)
	resume := func() {
		for _, p := range procs {
			_ = syscall.Kill(p, syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	for _, p := range procs {
		_ = syscall.Kill(p, syscall.SIGSTOP)
	}
	start := time.Now()
	eventually(t, timeout+5*time.Second, func() error {
		var streaming bool
		err := c.QueryRow(ctx, "pg2", "SELECT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')").Scan(&streaming)
		if err == nil && streaming {
			err = fmt.Errorf("pg2 still streams from the hung pg1")
		}
		return err
	})
	took := time.Since(start)
	t.Logf("pg2's receiver gave up on the hung pg1 after %s (timeout %s)", took.Round(time.Millisecond), timeout)
	if took < timeout/2 {
		t.Errorf("pg2's receiver gave up after %s, before its timeout %s: something else broke the connection", took, timeout)
	}
	// What a watcher sees on the replica while the primary stays hung: the
	// receiver restarts and hangs connecting (primary_conninfo has no
	// connect_timeout), or is gone between attempts.
	time.Sleep(2 * timeout)
	var rows []string
	conn, err := c.Conn(ctx, "pg2")
	if err != nil {
		t.Fatal(err)
	}
	rs, err := conn.Query(ctx, `SELECT status || ' pid ' || pid || ', last message ' ||
		COALESCE(round(extract(epoch FROM now() - last_msg_receipt_time)::numeric, 1)::text || ' s ago', 'never')
		FROM pg_stat_wal_receiver`)
	if err == nil {
		for rs.Next() {
			var r string
			if err := rs.Scan(&r); err == nil {
				rows = append(rows, r)
			}
		}
		rs.Close()
	}
	conn.Close(ctx)
	t.Logf("pg2's pg_stat_wal_receiver %s after the hang: %q", 2*timeout, rows)
	resume()
	if err := c.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}

	if timeoutConf(0) != "" || !strings.Contains(timeoutConf(time.Microsecond), "'1ms'") {
		t.Errorf("timeoutConf: %q, %q", timeoutConf(0), timeoutConf(time.Microsecond))
	}
	if _, err := Up(ctx, Options{ReceiverTimeout: -time.Second}); err == nil {
		t.Error("Up accepted a negative receiver timeout")
	}
}
