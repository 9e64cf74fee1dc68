//go:build !linux

package cmd

import "os/exec"

// runTiedToParent runs c. Outside Linux there is no parent-death signal:
// a command whose replctl was killed runs on until it ends by itself, and
// the lock's lease expires after lock.ttl (README, lock run).
func runTiedToParent(c *exec.Cmd) error { return c.Run() }
