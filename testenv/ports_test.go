package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// A port another live process handed out is not handed out again, even
// while nothing is bound to it (its node stopped for a rejoin): that was a
// CI flake, a node unable to start again because another package's test
// process had started a server on its port. A claim of a dead process is
// taken over. Ports 1 and 2 stand in: bind(0) never hands them out.
func TestClaimPortAcrossProcesses(t *testing.T) {
	if err := os.MkdirAll(portClaims(), 0o1777); err != nil {
		t.Fatal(err)
	}
	write := func(port, pid int) string {
		p := filepath.Join(portClaims(), strconv.Itoa(port))
		if err := os.WriteFile(p, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(p) })
		return p
	}
	write(1, os.Getppid()) // go test itself: alive
	if claimPort(1) {
		t.Errorf("claimed a port a live process holds")
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	p := write(2, dead.Process.Pid)
	if !claimPort(2) {
		t.Fatalf("did not take over a dead process's claim")
	}
	b, _ := os.ReadFile(p)
	if strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Errorf("claim file says %q, want this process", b)
	}
	write(2, dead.Process.Pid)
	if err := ReapPortClaims(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("a dead process's claim survived ReapPortClaims: %v", err)
	}
}
