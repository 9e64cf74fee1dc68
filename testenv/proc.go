package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procInfo is what /proc/PID/stat says about a process.
type procInfo struct {
	state byte   // 'R', 'S', 'Z', ...
	ppid  int    //
	start uint64 // clock ticks after boot; with the PID it names one process for good
}

func readProc(pid int) (procInfo, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procInfo{}, err
	}
	// The command name (field 2) may contain spaces and parentheses, so
	// fields are counted from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	ppid, _ := strconv.Atoi(f[1])
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return procInfo{state: f[0][0], ppid: ppid, start: start}, nil
}

// procStart returns the start time of pid, or 0 when it cannot be read.
func procStart(pid int) uint64 {
	pi, err := readProc(pid)
	if err != nil {
		return 0
	}
	return pi.start
}

// alive reports whether pid runs. A zombie counts as dead: orphaned
// postmasters are reparented to PID 1, which in containers does not always
// reap them.
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	pi, err := readProc(pid)
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	return pi.state != 'Z' && pi.state != 'X'
}

// sameProcess reports whether pid is alive and is still the process that
// had start time start (0: unknown, trust the PID).
func sameProcess(pid int, start uint64) bool {
	if !alive(pid) {
		return false
	}
	return start == 0 || procStart(pid) == start || procStart(pid) == 0
}

// waitGone polls until the process is gone or d has passed.
func waitGone(pid int, start uint64, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for sameProcess(pid, start) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// children lists the direct children of pid.
func children(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pi, err := readProc(c); err == nil && pi.ppid == pid {
			out = append(out, c)
		}
	}
	return out
}

// postmasterPID returns the PID of the postmaster serving dataDir, or 0 when
// none runs. It trusts postmaster.pid only when the process it names is
// alive and works in dataDir (the postmaster chdirs to its data directory),
// so that a stale file and a reused PID are never mistaken for a server.
func postmasterPID(dataDir string) int {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || !alive(pid) {
		return 0
	}
	want, err := filepath.EvalSymlinks(dataDir)
	if err != nil {
		want = dataDir
	}
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err == nil {
		if cwd == want {
			return pid
		}
		return 0
	}
	// /proc/PID/cwd is unreadable for another user's process; fall back to
	// the command line, which pg_ctl builds with "-D dataDir".
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0
	}
	for _, a := range strings.Split(string(cmdline), "\x00") {
		if a == dataDir || a == want {
			return pid
		}
	}
	return 0
}

// killPostmaster stops the server of dataDir by signals alone: sig first,
// then SIGKILL for the postmaster and the children it leaves behind. It is
// the last resort of cleanup and works whoever started the server.
func killPostmaster(dataDir string, sig syscall.Signal, grace time.Duration) error {
	pid := postmasterPID(dataDir)
	if pid == 0 {
		return nil
	}
	start := procStart(pid)
	kids := map[int]uint64{}
	for _, c := range children(pid) {
		kids[c] = procStart(c)
	}
	_ = syscall.Kill(pid, sig)
	if !waitGone(pid, start, grace) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		if !waitGone(pid, start, 5*time.Second) {
			return fmt.Errorf("postmaster %d of %s survives SIGKILL", pid, dataDir)
		}
	}
	// Children notice the postmaster's death by themselves; waiting for them
	// makes sure the port and shared memory are free when we return.
	for c, st := range kids {
		if !waitGone(c, st, 5*time.Second) {
			_ = syscall.Kill(c, syscall.SIGKILL)
			waitGone(c, st, 2*time.Second)
		}
	}
	return nil
}
