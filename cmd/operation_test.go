package cmd

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/failover/plan"
)

// Every way an operation ends maps to the documented exit code, whatever
// wraps the error on its way up.
func TestResultCode(t *testing.T) {
	t.Parallel()
	lost := &etcdlock.LockLostError{Cluster: "demo", Reason: "the lease was revoked"}
	for _, c := range []struct {
		name string
		res  *plan.Result
		code int
	}{
		{"succeeded", &plan.Result{Outcome: plan.OutcomeSucceeded}, 0},
		{"partly done", &plan.Result{Outcome: plan.OutcomePartial, Err: errors.New("repoint pg3"), Remaining: []string{"pg3: repoint"}}, ExitPartial},
		{"failed and undone", &plan.Result{Outcome: plan.OutcomeFailed, Err: errors.New("did not replay")}, ExitFailed},
		{"lock lost: left as it is", &plan.Result{Outcome: plan.OutcomeFailed, Err: fmt.Errorf("lock check before %q: %w", "fence", lost)}, ExitFailed},
		{"lock held", &plan.Result{Outcome: plan.OutcomeFailed, Err: &etcdlock.LockHeldError{Cluster: "demo"}}, ExitLocked},
		{"refused under the lock", &plan.Result{Outcome: plan.OutcomeFailed, Err: &failover.RefusedError{UnderLock: true}}, ExitUnsafe},
		{"plan changed", &plan.Result{Outcome: plan.OutcomeFailed, Err: fmt.Errorf("lock: %w", &failover.PlanChangedError{Diff: "x"})}, ExitUnsafe},
	} {
		if got := exitCode(resultCode(c.res)); got != c.code {
			t.Errorf("%s: exit %d, want %d", c.name, got, c.code)
		}
	}
}

// A long node command is said once in full, in the plan: the progress
// lines and the "Node commands" section refer to it.
func TestLongCommandsSaidOnce(t *testing.T) {
	t.Parallel()
	long := "runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D /var/lib/postgresql/15/main -W stop -m fast"
	cfg := &config.Config{Nodes: []config.Node{{Name: "pg1", Commands: config.NodeCommands{Stop: long, Start: "start"}}}}
	got := referToCommands(cfg, "pg1: stop fence: stop it cleanly with commands.stop ("+long+"); then start")
	if strings.Contains(got, long) || !strings.Contains(got, "commands.stop (as in the plan)") {
		t.Errorf("progress line %q", got)
	}
	hook := "/usr/local/bin/move-vip --from pg1 --to pg2 --interface eth0 --wait-arp-seconds 2"
	cfg.Hooks.PostPromote = hook
	if got := referToCommands(cfg, "run hooks.post_promote ("+hook+") with REPLCTL_NODE=pg2"); got != "run hooks.post_promote (as in the plan) with REPLCTL_NODE=pg2" {
		t.Errorf("progress line %q", got)
	}
	var b strings.Builder
	writeCommands(&b, []pgctl.CommandResult{{Node: "pg1", Action: "stop", Command: long}, {Node: "pg1", Action: "start", Command: "start"},
		{Node: "pg2", Action: "hook post_promote", Command: hook}})
	if strings.Contains(b.String(), long) || !strings.Contains(b.String(), "commands.stop, in full in the plan") || !strings.Contains(b.String(), "): start") ||
		strings.Contains(b.String(), hook) || !strings.Contains(b.String(), "pg2 hook post_promote (exit 0, 0s): hooks.post_promote, in full in the plan") {
		t.Errorf("node commands:\n%s", b.String())
	}
}
