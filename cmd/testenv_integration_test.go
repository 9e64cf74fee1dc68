package cmd

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/replctl/replctl/config"
)

// buildReplctl builds the replctl binary into a test directory, for tests
// that need real separate processes.
func buildReplctl(tb testing.TB) string {
	tb.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		tb.Skip("go not in PATH")
	}
	bin := filepath.Join(tb.TempDir(), "replctl")
	build := exec.CommandContext(tb.Context(), goBin, "build", "-o", bin, "github.com/replctl/replctl")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		tb.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestTestenvCommand drives the sandbox as a user would: up (twice), status,
// replctl status against it, down (twice), and checks that down leaves no
// process and no data behind.
func TestTestenvCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	bin := buildReplctl(t)
	base, err := os.MkdirTemp("", "replctl-cli-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "sandbox")
	run := func(args ...string) (string, string, int) {
		t.Helper()
		// Not t.Context(): the cleanup's "down" runs after it is cancelled.
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "REPLCTL_CONFIG="+filepath.Join(dir, "replctl.yaml"))
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return out.String(), errb.String(), code
	}
	t.Cleanup(func() {
		run("testenv", "down", "--dir", dir)
		os.RemoveAll(base)
	})

	start := time.Now()
	upOut, errs, code := run("testenv", "up", "--dir", dir)
	if code != 0 {
		t.Fatalf("testenv up: exit %d\n%s%s", code, upOut, errs)
	}
	// up shows the table status shows: every node running, with its PID.
	for _, name := range []string{"pg1", "pg2", "pg3", "etcd"} {
		if !regexp.MustCompile(`(?m)^` + name + ` .* running +[0-9]+( |$)`).MatchString(upOut) {
			t.Errorf("testenv up does not show %s running with a PID:\n%s", name, upOut)
		}
	}
	t.Logf("testenv up (3 nodes + etcd) took %s", time.Since(start))
	// The demo sandbox carries the STONITH fence command, so that an
	// emergency failover there runs its fence-command step.
	cfg, err := config.Load(filepath.Join(dir, "replctl.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range cfg.Nodes {
		if !strings.Contains(n.Commands.Fence, "fence.sh") {
			t.Errorf("%s: commands.fence %q, want the sandbox's fence.sh", n.Name, n.Commands.Fence)
		}
	}
	if _, errs, code := run("testenv", "up", "--dir", dir); code != 0 || !strings.Contains(errs, "already up") {
		t.Fatalf("second up should be graceful: exit %d: %s", code, errs)
	}

	out, errs, code := run("status", "-o", "json")
	if code != 0 {
		t.Fatalf("status: exit %d\n%s", code, errs)
	}
	var st struct {
		Primary string `json:"primary"`
		Etcd    string `json:"etcd"`
		Nodes   []struct {
			Name      string `json:"name"`
			Reachable bool   `json:"reachable"`
			State     string `json:"state"`
		} `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status json: %v\n%s", err, out)
	}
	if st.Primary != "pg1" || len(st.Nodes) != 3 || st.Etcd != "ok" {
		t.Fatalf("unexpected status: %+v", st)
	}
	for _, n := range st.Nodes[1:] {
		if n.State != "streaming" {
			t.Errorf("%s: state %q, want streaming", n.Name, n.State)
		}
	}

	out, _, code = run("testenv", "status", "--dir", dir, "-o", "json")
	if code != 0 {
		t.Fatalf("testenv status: exit %d", code)
	}
	var ts struct {
		Nodes []struct {
			PID     int  `json:"pid"`
			Running bool `json:"running"`
		} `json:"nodes"`
		Etcd *struct {
			PID     int  `json:"pid"`
			Running bool `json:"running"`
		} `json:"etcd"`
	}
	if err := json.Unmarshal([]byte(out), &ts); err != nil {
		t.Fatalf("testenv status json: %v\n%s", err, out)
	}
	var pids []int
	for _, n := range ts.Nodes {
		if !n.Running {
			t.Errorf("a node is not running: %s", out)
		}
		pids = append(pids, n.PID)
	}
	if ts.Etcd == nil || !ts.Etcd.Running {
		t.Fatalf("etcd not running: %s", out)
	}
	pids = append(pids, ts.Etcd.PID)

	if _, errs, code := run("testenv", "down", "--dir", dir); code != 0 {
		t.Fatalf("testenv down: exit %d: %s", code, errs)
	}
	for _, pid := range pids {
		if syscall.Kill(pid, 0) == nil && !zombie(pid) {
			t.Errorf("process %d still runs after down", pid)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still exists after down", dir)
	}
	if _, errs, code := run("testenv", "down", "--dir", dir); code != 0 || !strings.Contains(errs, "nothing to take down") {
		t.Errorf("second down should be graceful: exit %d: %s", code, errs)
	}
}

// zombie reports whether pid has exited but not been reaped yet.
func zombie(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] == 'Z'
	}
	return false
}
