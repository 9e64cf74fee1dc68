package cmd

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// TestTestenvEtcdMembers: `testenv up --etcd-members 3` runs one detached
// etcd per member, replctl works against all of them, and `testenv down`
// leaves none of the processes behind.
func TestTestenvEtcdMembers(t *testing.T) {
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

	if _, errs, code := run("testenv", "up", "--dir", dir, "--etcd-members", "0"); code == 0 || !strings.Contains(errs, "--etcd-members") {
		t.Fatalf("up --etcd-members 0: exit %d: %s", code, errs)
	}
	upOut, errs, code := run("testenv", "up", "--dir", dir, "--replicas", "0", "--etcd-members", "3")
	if code != 0 {
		t.Fatalf("testenv up: exit %d\n%s%s", code, upOut, errs)
	}
	for _, name := range []string{"pg1", "etcd-1", "etcd-2", "etcd-3"} {
		if !regexp.MustCompile(`(?m)^` + name + ` .* running +[0-9]+( |$)`).MatchString(upOut) {
			t.Errorf("testenv up does not show %s running with a PID:\n%s", name, upOut)
		}
	}
	cfg, err := os.ReadFile(filepath.Join(dir, "replctl.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`endpoints: \["127\.0\.0\.1:\d+", "127\.0\.0\.1:\d+", "127\.0\.0\.1:\d+"\]`).Match(cfg) {
		t.Errorf("replctl.yaml does not list 3 etcd endpoints:\n%s", cfg)
	}
	if out, errs, code := run("status", "-o", "json"); code != 0 || !strings.Contains(out, `"etcd": "ok"`) {
		t.Fatalf("status: exit %d\n%s%s", code, out, errs)
	}

	out, _, code := run("testenv", "status", "--dir", dir, "-o", "json")
	if code != 0 {
		t.Fatalf("testenv status: exit %d", code)
	}
	var ts struct {
		Nodes []struct {
			PID     int  `json:"pid"`
			Running bool `json:"running"`
		} `json:"nodes"`
		EtcdMembers []struct {
			Name    string `json:"name"`
			PID     int    `json:"pid"`
			Running bool   `json:"running"`
		} `json:"etcd_members"`
	}
	if err := json.Unmarshal([]byte(out), &ts); err != nil {
		t.Fatalf("testenv status json: %v\n%s", err, out)
	}
	if len(ts.Nodes) != 1 || len(ts.EtcdMembers) != 3 {
		t.Fatalf("testenv status: %s", out)
	}
	pids := []int{ts.Nodes[0].PID}
	seen := map[int]bool{}
	for _, m := range ts.EtcdMembers {
		if !m.Running || m.PID == 0 || seen[m.PID] {
			t.Errorf("etcd member %s: pid %d, running %v", m.Name, m.PID, m.Running)
		}
		seen[m.PID] = true
		pids = append(pids, m.PID)
	}

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
}
