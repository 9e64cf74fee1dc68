//go:build linux

package pgctl

import (
	"os/exec"
	"runtime"
	"syscall"
)

// RunTied runs c so that it does not outlive replctl: should
// replctl die without a chance to stop it (kill -9, an OOM kill), the kernel
// sends the command SIGKILL (PR_SET_PDEATHSIG), since it would otherwise go
// on without the lock. Linux sends that signal when the thread that started
// the command exits, not the process; the thread is locked for as long as
// the command runs so that the Go scheduler cannot retire it early. Only the
// command itself is tied, and its children through it while they keep its
// credentials: a program that changes user (runuser, sudo) drops the
// signal and runs to its end.
func RunTied(c *exec.Cmd) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if c.SysProcAttr == nil {
		c.SysProcAttr = &syscall.SysProcAttr{}
	}
	c.SysProcAttr.Pdeathsig = syscall.SIGKILL
	return c.Run()
}
