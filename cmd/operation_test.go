package cmd

import (
	"errors"
	"fmt"
	"testing"

	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/etcdlock"
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
