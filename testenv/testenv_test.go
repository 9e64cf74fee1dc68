package testenv

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcdServeArg makes the test binary act as `replctl testenv etcd-serve`,
// so that UpDetached can be tested without the replctl binary.
const etcdServeArg = "testenv-etcd-serve"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == etcdServeArg {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		err := RunEtcdServe(ctx, os.Args[2:])
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func integration(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
}

// eventually polls f until it returns nil or d passes.
func eventually(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func postmasterPIDs(t *testing.T, c *Cluster) []int {
	t.Helper()
	var pids []int
	for _, n := range c.all {
		pid := postmasterPID(n.DataDir)
		if pid == 0 {
			t.Fatalf("%s: no running postmaster", n.Name)
		}
		pids = append(pids, pid)
	}
	return pids
}

func assertGone(t *testing.T, pids []int, dir string) {
	t.Helper()
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d still alive", pid)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there (stat: %v)", dir, err)
	}
}

func countRows(ctx context.Context, c *Cluster, node string) (int, error) {
	var n int
	err := c.QueryRow(ctx, node, "SELECT count(*) FROM "+WriteTable).Scan(&n)
	return n, err
}

func TestCluster(t *testing.T) {
	integration(t)
	ctx := t.Context()
	t0 := time.Now()
	c, err := Up(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Up of 3 nodes and etcd: %s", time.Since(t0).Round(time.Millisecond))
	defer c.Close()

	if len(c.Nodes) != 3 || c.Nodes[0].Name != "pg1" || c.Node("pg3") == nil {
		t.Fatalf("nodes: %+v", c.Nodes)
	}
	if p, err := c.Primary(ctx); err != nil || p.Name != "pg1" {
		t.Fatalf("primary: %v, %v", p, err)
	}
	if err := c.Write(ctx, 1); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"pg2", "pg3"} {
		eventually(t, 10*time.Second, func() error {
			got, err := countRows(ctx, c, n)
			if err == nil && got != 1 {
				err = fmt.Errorf("%s has %d rows", n, got)
			}
			return err
		})
	}

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.EtcdEndpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "/replctl/test", "hello"); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "/replctl/test")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "hello" {
		t.Fatalf("etcd get: %v %v", resp, err)
	}

	cfg, err := os.ReadFile(c.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"cluster: demo\n", `endpoints: ["` + c.EtcdEndpoint + `"]`, `dsn: "` + c.Node("pg2").DSN + `"`, "rejoin: "} {
		if !bytes.Contains(cfg, []byte(want)) {
			t.Errorf("replctl.yaml lacks %q:\n%s", want, cfg)
		}
	}

	rep, err := Status(c.Dir)
	if err != nil || !rep.Running() || len(rep.Nodes) != 3 || !rep.Etcd.Running {
		t.Fatalf("status: %+v, %v", rep, err)
	}
	for _, n := range rep.Nodes {
		if !n.Running {
			t.Errorf("status: %s not running", n.Name)
		}
	}

	pids := postmasterPIDs(t, c)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, pids, c.Dir)
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := pingEtcd(ctx, c.EtcdEndpoint, nil); err == nil {
		t.Error("etcd still answers after Close")
	}
}

func TestCascadeStandaloneSync(t *testing.T) {
	integration(t)
	ctx := t.Context()
	c := Start(t, Options{Sync: true, Zones: true, Cluster: "cascade"})

	var ssn string
	if err := c.QueryRow(ctx, "pg1", "SHOW synchronous_standby_names").Scan(&ssn); err != nil || ssn != "ANY 1 (pg2, pg3)" {
		t.Fatalf("synchronous_standby_names = %q, %v", ssn, err)
	}
	if err := c.Write(ctx, 3); err != nil { // would hang without a sync standby
		t.Fatal(err)
	}

	pg4, err := c.AddReplica(ctx, "pg4", "pg2")
	if err != nil {
		t.Fatal(err)
	}
	var senderPort int
	if err := c.QueryRow(ctx, "pg4", "SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'").Scan(&senderPort); err != nil {
		t.Fatal(err)
	}
	if senderPort != c.Node("pg2").Port {
		t.Errorf("pg4 streams from port %d, want pg2's %d", senderPort, c.Node("pg2").Port)
	}
	if _, err := c.AddReplica(ctx, "hidden", "pg1", Unmanaged()); err != nil {
		t.Fatal(err)
	}
	alien, err := c.AddStandalone(ctx, "alien")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, 1); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		got, err := countRows(ctx, c, pg4.Name)
		if err == nil && got != 4 {
			err = fmt.Errorf("pg4 has %d rows", got)
		}
		return err
	})

	var id1, idAlien int64
	if err := c.QueryRow(ctx, "pg1", "SELECT system_identifier FROM pg_control_system()").Scan(&id1); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx, alien.Name, "SELECT system_identifier FROM pg_control_system()").Scan(&idAlien); err != nil {
		t.Fatal(err)
	}
	if id1 == idAlien {
		t.Errorf("standalone has the cluster's system identifier %d", id1)
	}

	var names []string
	for _, n := range c.Nodes {
		names = append(names, n.Name)
	}
	if got := strings.Join(names, ","); got != "pg1,pg2,pg3,pg4,alien" {
		t.Errorf("managed nodes %s", got)
	}
	cfg, err := os.ReadFile(c.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"cluster: cascade\n", "- name: pg4\n", "- name: alien\n", "zone: z1\n", "zone: z2\n"} {
		if !bytes.Contains(cfg, []byte(want)) {
			t.Errorf("replctl.yaml lacks %q:\n%s", want, cfg)
		}
	}
	if bytes.Contains(cfg, []byte("hidden")) {
		t.Errorf("replctl.yaml lists the unmanaged node:\n%s", cfg)
	}
	st, err := ReadState(c.Dir)
	if err != nil || len(st.Nodes) != 6 {
		t.Fatalf("state: %+v, %v", st, err)
	}
}

func TestNodeOperations(t *testing.T) {
	integration(t)
	ctx := t.Context()
	c := Start(t, Options{Replicas: 1, NoEtcd: true, NoCommands: true})

	cfg, err := os.ReadFile(c.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(cfg, []byte("commands:")) || bytes.Contains(cfg, []byte("etcd:")) {
		t.Errorf("replctl.yaml has commands or etcd:\n%s", cfg)
	}
	if c.EtcdEndpoint != "" || c.StartEtcd() == nil {
		t.Error("cluster without etcd has one")
	}

	// Paused replay: the replica receives rows but does not show them.
	if err := c.Write(ctx, 1); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error { _, err := countRows(ctx, c, "pg2"); return err })
	if err := c.PauseReplay(ctx, "pg2"); err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, 5); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if got, err := countRows(ctx, c, "pg2"); err != nil || got != 1 {
		t.Fatalf("paused pg2 has %d rows (%v), want 1", got, err)
	}
	if err := c.ResumeReplay(ctx, "pg2"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		got, err := countRows(ctx, c, "pg2")
		if err == nil && got != 6 {
			err = fmt.Errorf("pg2 has %d rows", got)
		}
		return err
	})

	pg2 := c.Node("pg2")
	if err := c.StopNode(ctx, "pg2"); err != nil {
		t.Fatal(err)
	}
	if pid := postmasterPID(pg2.DataDir); pid != 0 {
		t.Fatalf("pg2 runs as %d after StopNode", pid)
	}
	if err := c.StartNode(ctx, "pg2"); err != nil {
		t.Fatal(err)
	}
	killed := postmasterPID(pg2.DataDir)
	if err := c.KillNode(ctx, "pg2"); err != nil {
		t.Fatal(err)
	}
	// The subreaper reaps the dead postmaster at once (see reaper.go).
	eventually(t, time.Second, func() error {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", killed)); err == nil {
			return fmt.Errorf("postmaster %d not reaped", killed)
		}
		return nil
	})
	if err := c.StartNode(ctx, "pg2"); err != nil {
		t.Fatal(err)
	}

	// The generated commands, as replctl runs them.
	cmds := c.Commands(pg2)
	shell := func(cmd string) {
		t.Helper()
		if out, err := exec.CommandContext(ctx, "sh", "-c", cmd).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
	}
	old := postmasterPID(pg2.DataDir)
	shell(cmds.Kill)
	if !waitGone(old, 0, 10*time.Second) {
		t.Fatal("kill command left the postmaster running")
	}
	shell(cmds.Start) // right after a crash: children may still hold shared memory
	shell(cmds.Stop)
	// A stop of a server that is not running fails, and says so.
	if out, err := exec.CommandContext(ctx, "sh", "-c", cmds.Stop).CombinedOutput(); err == nil || !strings.Contains(string(out), "not running: no postmaster.pid in "+pg2.DataDir) {
		t.Fatalf("stop of the stopped pg2: %v, %q; want a failure saying it is not running", err, out)
	}
	shell(cmds.Start)
	if err := c.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestRejoin fails over by hand to pg2, with pg1 crashed after diverging,
// then rejoins pg1 and pg3 with the generated rejoin command.
func TestRejoin(t *testing.T) {
	integration(t)
	ctx := t.Context()
	c := Start(t, Options{})
	if err := c.Write(ctx, 10); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "pg2", "SELECT pg_promote()"); err != nil {
		t.Fatal(err)
	}
	// pg1 still takes writes: it diverges, so pg_rewind has work to do.
	if err := c.Exec(ctx, "pg1", "INSERT INTO "+WriteTable+" (payload) VALUES ('lost')"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "pg1", "CHECKPOINT"); err != nil {
		t.Fatal(err)
	}
	// pg3 follows pg1 past the fork: it must have that CHECKPOINT too, or
	// its last restartpoint precedes the fork and pg_rewind finds "no
	// rewind required" for a standby that cannot follow pg2 (a race the
	// test lost under load).
	var end string
	if err := c.QueryRow(ctx, "pg1", "SELECT pg_current_wal_flush_lsn()::text").Scan(&end); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func() error {
		var ok bool
		if err := c.QueryRow(ctx, "pg3", "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", end).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("pg3 has not replayed pg1's checkpoint at %s", end)
		}
		return nil
	})
	if err := c.KillNode(ctx, "pg1"); err != nil {
		t.Fatal(err)
	}
	if err := c.KillNode(ctx, "pg3"); err != nil { // a crashed standby
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "pg2", "INSERT INTO "+WriteTable+" (payload) VALUES ('after failover')"); err != nil {
		t.Fatal(err)
	}
	conninfo := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres", c.Node("pg2").Port)
	for _, name := range []string{"pg1", "pg3"} {
		cmd := exec.CommandContext(ctx, "sh", "-c", c.Commands(c.Node(name)).Rejoin)
		cmd.Env = append(os.Environ(), "REPLCTL_NODE="+name, "REPLCTL_PRIMARY_CONNINFO="+conninfo)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("rejoin %s: %v\n%s", name, err, out)
		}
		t.Logf("rejoin %s:\n%s", name, out)
	}
	if err := c.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}
	if p, err := c.Primary(ctx); err != nil || p.Name != "pg2" {
		t.Fatalf("primary %v, %v", p, err)
	}
	eventually(t, 10*time.Second, func() error {
		var lost, after int
		err := c.QueryRow(ctx, "pg1", "SELECT count(*) FILTER (WHERE payload = 'lost'), count(*) FILTER (WHERE payload = 'after failover') FROM "+WriteTable).Scan(&lost, &after)
		if err == nil && (lost != 0 || after != 1) {
			err = fmt.Errorf("pg1 has %d diverged and %d new rows, want 0 and 1", lost, after)
		}
		return err
	})
	var port int
	if err := c.QueryRow(ctx, "pg1", "SELECT current_setting('port')::int").Scan(&port); err != nil || port != c.Node("pg1").Port {
		t.Errorf("pg1 runs on port %d (%v), want its own %d", port, err, c.Node("pg1").Port)
	}
}

// TestDetached runs the CLI's path: UpDetached with etcd in a detached
// child (this test binary, see TestMain), Status, Down.
func TestDetached(t *testing.T) {
	integration(t)
	ctx := t.Context()
	dir, err := os.MkdirTemp("", TempPrefix+"detached-*")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Down(dir, false); err != nil && !errors.Is(err, ErrNotUp) {
			t.Error(err)
		}
		os.RemoveAll(dir)
	})
	self := []string{os.Args[0], etcdServeArg}
	o := Options{Dir: dir, Replicas: 1}
	st, err := UpDetached(ctx, o, self)
	if err != nil {
		t.Fatal(err)
	}
	if st.Etcd == nil || st.Etcd.InProcess || st.Etcd.Process.PID == os.Getpid() || len(st.Nodes) != 2 {
		t.Fatalf("state: %+v", st)
	}
	if err := pingEtcd(ctx, st.Etcd.Endpoint, nil); err != nil {
		t.Fatal(err)
	}
	rep, err := Status(dir)
	if err != nil || !rep.Etcd.Running || !rep.Nodes[0].Running || !rep.Nodes[1].Running {
		t.Fatalf("status: %+v, %v", rep, err)
	}

	again, err := UpDetached(ctx, o, self)
	if !errors.Is(err, ErrAlreadyUp) || again == nil || again.Etcd.Process != st.Etcd.Process {
		t.Fatalf("second UpDetached: %+v, %v", again, err)
	}

	pids := []int{st.Etcd.Process.PID}
	for _, n := range rep.Nodes {
		pids = append(pids, n.PID)
	}
	if err := Down(dir, true); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d alive after Down", pid)
		}
	}
	if rep, err := Status(dir); err != nil || rep.Running() {
		t.Errorf("status after Down --keep: %+v, %v", rep, err)
	}
	if err := Down(dir, true); !errors.Is(err, ErrNotUp) {
		t.Errorf("Down --keep of a stopped cluster: %v, want ErrNotUp", err)
	}
	if _, err := UpDetached(ctx, o, self); err == nil || errors.Is(err, ErrAlreadyUp) {
		t.Errorf("UpDetached on a kept, stopped cluster: %v", err)
	}
	if err := Down(dir, false); err != nil {
		t.Fatal(err)
	}
	assertGone(t, pids, dir)
	if err := Down(dir, false); !errors.Is(err, ErrNotUp) {
		t.Errorf("second Down: %v, want ErrNotUp", err)
	}
}

// helperEnv selects what TestHelperProcess does in a child test process.
const helperEnv = "REPLCTL_TESTENV_HELPER"

// TestHelperProcess is not a test: the tests below run it in a child
// process (the test binary again) to see what happens to a cluster when a
// test fails, or when the process dies before any cleanup can run.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper for other tests")
	}
	c := Start(t, Options{Replicas: 1})
	fmt.Printf("DIR %s\n", c.Dir)
	for _, pid := range postmasterPIDs(t, c) {
		fmt.Printf("PID %d\n", pid)
	}
	switch mode {
	case "fail":
		t.Fatal("failing on purpose")
	case "die":
		os.Stdout.Sync()
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
	}
}

// runHelper runs TestHelperProcess in mode and returns its cluster
// directory and postmaster PIDs.
func runHelper(t *testing.T, mode string) (string, []int) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestHelperProcess$", "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("helper %s succeeded:\n%s", mode, out)
	}
	var dir string
	var pids []int
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "DIR "); ok {
			dir = d
		}
		if p, ok := strings.CutPrefix(sc.Text(), "PID "); ok {
			pid, _ := strconv.Atoi(p)
			pids = append(pids, pid)
		}
	}
	if dir == "" || len(pids) != 2 {
		t.Fatalf("helper %s printed no cluster:\n%s", mode, out)
	}
	return dir, pids
}

func TestFailedTestCleansUp(t *testing.T) {
	integration(t)
	dir, pids := runHelper(t, "fail")
	assertGone(t, pids, dir)
}

func TestReapStale(t *testing.T) {
	integration(t)
	dir, pids := runHelper(t, "die")
	t.Cleanup(func() {
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		os.RemoveAll(dir)
	})
	for _, pid := range pids {
		if !alive(pid) {
			t.Fatalf("postmaster %d died with its test process: nothing to reap", pid)
		}
	}
	if err := ReapStale(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, pids, dir)
}

func TestEtcdRestart(t *testing.T) {
	integration(t)
	ctx := t.Context()
	c := Start(t, Options{Replicas: -1})
	if len(c.Nodes) != 1 {
		t.Fatalf("%d nodes, want the primary alone", len(c.Nodes))
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.EtcdEndpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := c.StopEtcd(); err != nil {
		t.Fatal(err)
	}
	if err := pingEtcd(ctx, c.EtcdEndpoint, nil); err == nil {
		t.Fatal("etcd answers after StopEtcd")
	}
	if err := c.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := cli.Get(gctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("after restart: %v, %v", resp, err)
	}
}

func TestBasePort(t *testing.T) {
	integration(t)
	base, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	// A run of free ports is not guaranteed; take one far from the
	// ephemeral range the kernel hands out and skip if it is busy.
	base = 20000 + base%5000
	c, err := Up(t.Context(), Options{Replicas: 1, BasePort: base})
	if err != nil {
		t.Skipf("ports from %d busy? %v", base, err)
	}
	defer c.Close()
	if c.Nodes[0].Port != base || c.Nodes[1].Port != base+1 || c.EtcdEndpoint != "127.0.0.1:"+strconv.Itoa(base+2) {
		t.Errorf("ports %d, %d, etcd %s; want from %d", c.Nodes[0].Port, c.Nodes[1].Port, c.EtcdEndpoint, base)
	}
}

func TestExplicitDir(t *testing.T) {
	integration(t)
	parent, err := os.MkdirTemp("", "replctl-explicit-*") // 0700: not traversable
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(parent)
	dir := filepath.Join(parent, "has space", "env")
	if os.Geteuid() == 0 {
		_, err := Up(t.Context(), Options{Dir: dir})
		if err == nil || !strings.Contains(err.Error(), "not traversable") {
			t.Fatalf("Up under a 0700 directory as root: %v", err)
		}
	}
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	c, err := Up(t.Context(), Options{Dir: dir, Replicas: -1, NoEtcd: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := Up(t.Context(), Options{Dir: dir}); !errors.Is(err, ErrAlreadyUp) {
		t.Errorf("second Up: %v, want ErrAlreadyUp", err)
	}
	// The generated commands must survive the space in the path.
	n := c.Node("pg1")
	cmds := c.Commands(n)
	for _, cmd := range []string{cmds.Stop, cmds.Start} {
		if out, err := exec.CommandContext(t.Context(), "sh", "-c", cmd).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
	}
	if err := c.Exec(t.Context(), "pg1", "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left behind", dir)
	}
}

// Unit tests, no servers.

func TestVersionLess(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"9.6", "10", true},
		{"10", "9.6", false},
		{"15", "16", true},
		{"16", "16", false},
		{"13", "13.1", true},
	} {
		if got := versionLess(tc.a, tc.b); got != tc.want {
			t.Errorf("versionLess(%q, %q) = %v", tc.a, tc.b, got)
		}
	}
}

func TestShQuote(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"plain", "with space", "it's", `$(rm -rf /) "x" \n`, ""} {
		out, err := exec.Command("sh", "-c", "printf %s "+shQuote(s)).Output()
		if err != nil || string(out) != s {
			t.Errorf("shQuote(%q) gave %q, %v", s, out, err)
		}
	}
}

func TestRenderConfig(t *testing.T) {
	t.Parallel()
	in := &install{binDir: "/opt/pg bin", user: &osUser{name: "postgres"}}
	nodes := []*Node{
		{Name: "pg1", Port: 5432, DSN: dsn(5432), DataDir: "/t d/pg1/data", LogPath: "/t d/pg1/server.log"},
		{Name: "pg2", Port: 5433, DSN: dsn(5433), DataDir: "/t d/pg2/data", LogPath: "/t d/pg2/server.log"},
	}
	got := string(renderConfig(configInput{cluster: "yes", dir: "/t d", etcd: []string{"127.0.0.1:2379"}, nodes: nodes, zones: true, commands: true, fence: true, in: in}))
	for _, want := range []string{
		`cluster: "yes"`,
		`endpoints: ["127.0.0.1:2379"]`,
		"  - name: pg2\n    dsn: \"host=127.0.0.1 port=5433 user=postgres dbname=postgres sslmode=disable\"\n    zone: z2\n",
		`stop: "{ pid=$(head -n 1 '/t d/pg1/data/postmaster.pid' 2>/dev/null) || { echo 'not running: no postmaster.pid in ''/t d/pg1/data' >&2; exit 1; }; } && runuser -u 'postgres' -- '/opt/pg bin/pg_ctl' -D '/t d/pg1/data' -W stop -m fast && { timeout 60 tail --pid=\"$pid\" -s 0.005 -f /dev/null`,
		`start: "runuser -u 'postgres' -- '/opt/pg bin/pg_ctl' -D '/t d/pg1/data' -l '/t d/pg1/server.log' -w -t 60 start"`,
		`kill: "kill -9 $(head -n 1 '/t d/pg1/data/postmaster.pid')"`,
		"      fence: \"runuser -u 'postgres' -- sh '/t d/fence.sh' '/t d/pg1/data'\"\n      rejoin:",
		`rejoin: "runuser -u 'postgres' -- sh '/t d/rejoin.sh' '/t d/pg2/data' 5433"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("config lacks %s:\n%s", want, got)
		}
	}
	// Without Options.FenceCommand, the commands of old: no fence.
	noFence := string(renderConfig(configInput{cluster: "demo", dir: "/d", nodes: nodes, commands: true, in: &install{binDir: "/b"}}))
	if !strings.Contains(noFence, "kill:") || strings.Contains(noFence, "fence") {
		t.Errorf("config without FenceCommand:\n%s", noFence)
	}
	bare := string(renderConfig(configInput{cluster: "demo", dir: "/d", nodes: nodes, fence: true, in: &install{binDir: "/b"}}))
	for _, unwanted := range []string{"etcd:", "lock:", "zone:", "commands:", "fence"} {
		if strings.Contains(bare, unwanted) {
			t.Errorf("bare config has %s:\n%s", unwanted, bare)
		}
	}
}

func TestRejoinScriptSyntax(t *testing.T) {
	t.Parallel()
	for name, text := range map[string][]byte{
		RejoinScript: rejoinScript(&install{binDir: "/it's here"}),
		FenceScript:  fenceScript(&install{binDir: "/it's here"}),
	} {
		script := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(script, text, 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("sh", "-n", script).CombinedOutput(); err != nil {
			t.Fatalf("sh -n %s: %v\n%s", name, err, out)
		}
	}
}

func TestBinariesNotFound(t *testing.T) {
	t.Setenv("PG_BINDIR", t.TempDir())
	_, err := findBinDir(t.Context())
	if !errors.Is(err, ErrNoBinaries) || !strings.Contains(err.Error(), "apt-get install postgresql") {
		t.Fatalf("err = %v", err)
	}
}
