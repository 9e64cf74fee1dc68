package testenv

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// A postmaster is orphaned as soon as pg_ctl exits, and when it dies its
// zombie waits for PID 1 to reap it. Some container inits reap lazily
// (seconds later); until then the zombie's PID still answers kill(pid, 0),
// so pg_ctl and the postmaster itself take the dead server's lock file for
// a live one and refuse to start the node again: a crash test that kills a
// node and restarts it fails for a few seconds.
//
// Processes that build clusters in-process (tests) therefore become child
// subreapers: orphaned postmasters and their orphaned children are
// reparented to us, and we reap their zombies at once. Only zombies whose
// command is "postgres" are reaped, by their own PID: this package never
// starts the postgres program directly (pg_ctl does), so no exec.Cmd of
// this process can lose its child's exit status to us.
var reaperOnce sync.Once

const prSetChildSubreaper = 36 // PR_SET_CHILD_SUBREAPER, linux/prctl.h

func startReaper() {
	reaperOnce.Do(func() {
		if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
			return // not Linux, or not allowed: stale locks are handled on start
		}
		ch := make(chan os.Signal, 16)
		signal.Notify(ch, syscall.SIGCHLD)
		go func() {
			for range ch {
				reapPostgresZombies()
			}
		}()
	})
}

func reapPostgresZombies() {
	self := os.Getpid()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		pi, err := readProc(pid)
		if err != nil || pi.ppid != self || pi.state != 'Z' {
			continue
		}
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil || strings.TrimSpace(string(comm)) != "postgres" {
			continue
		}
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
	}
}

// clearZombieLock removes postmaster.pid when the PID it names is a
// zombie: the server is dead, but PostgreSQL would take the lock for a
// live one (see above).
func clearZombieLock(dataDir string) {
	path := filepath.Join(dataDir, "postmaster.pid")
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return
	}
	if pi, err := readProc(pid); err == nil && pi.state == 'Z' {
		_ = os.Remove(path)
	}
}
