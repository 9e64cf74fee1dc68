//go:build !linux

package pgctl

import "os/exec"

// RunTied runs c. Outside Linux there is no parent-death signal:
// a command whose replctl was killed runs on until it ends by itself, and
// the lock's lease expires after lock.ttl (README, lock run and recover).
func RunTied(c *exec.Cmd) error { return c.Run() }
