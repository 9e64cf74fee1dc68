package etcdlock

import (
	"os"
	"testing"

	"github.com/replctl/replctl/failover/plan"
)

func TestInterrupted(t *testing.T) {
	t.Parallel()
	host, _ := os.Hostname()
	sum := &plan.Summary{Kind: "switchover", Steps: []plan.StepSummary{{ID: "lock"}, {ID: "fence", Node: "pg1", Mutates: true, Fences: true}, {ID: "promote", Mutates: true, PointOfNoReturn: true}}}
	began := []StepRecord{{ID: "lock", Outcome: "done"}, {ID: "fence", Outcome: stepRunning}}
	boot := bootID()
	if boot == "" {
		t.Skip("no boot ID on this system")
	}
	live := &LockHolder{Actor: Actor{Host: host, PID: os.Getpid(), BootID: boot}, Token: 5}
	dead := &LockHolder{Actor: Actor{Host: host, PID: 1 << 30, BootID: boot}, Token: 5}
	elsewhere := &LockHolder{Actor: Actor{Host: "db-admin-9", PID: 1 << 30, BootID: boot}, Token: 5}
	namesake := &LockHolder{Actor: Actor{Host: host, PID: 1 << 30, BootID: "another-host"}, Token: 5}
	for _, tc := range []struct {
		name   string
		rec    OpRecord
		holder *LockHolder
		want   bool
	}{
		{"running, lock free", OpRecord{Plan: sum, Token: 5, Outcome: OutcomeRunning, Steps: began}, nil, true},
		{"running under its own live lock", OpRecord{Plan: sum, Token: 5, Outcome: OutcomeRunning, Steps: began}, live, false},
		{"running, its holder died on this host", OpRecord{Plan: sum, Token: 5, Outcome: OutcomeRunning, Steps: began}, dead, true},
		{"running, its holder on another host (lease still alive)", OpRecord{Plan: sum, Token: 5, Outcome: OutcomeRunning, Steps: began}, elsewhere, false},
		{"running, its holder on a host of the same name", OpRecord{Plan: sum, Token: 5, Outcome: OutcomeRunning, Steps: began}, namesake, false},
		{"running, another operation holds the lock", OpRecord{Plan: sum, Token: 4, Outcome: OutcomeRunning, Steps: began}, live, true},
		{"lock lost with the fence up", OpRecord{Plan: sum, Token: 5, Outcome: OutcomeLockLost, Steps: began}, nil, true},
		{"lock lost, fence undone", OpRecord{Plan: sum, Token: 5, Outcome: OutcomeLockLost, Steps: append(began, StepRecord{ID: "undo-fence", Outcome: "undone"})}, nil, false},
		{"lock lost before any change", OpRecord{Plan: sum, Token: 5, Outcome: OutcomeLockLost, Steps: began[:1]}, nil, false},
		{"failed, fence undo failed", OpRecord{Plan: sum, Token: 5, Outcome: plan.OutcomeFailed, Steps: append(began, StepRecord{ID: "undo-fence", Outcome: "undo_failed"})}, nil, true},
		{"drill partial, its promotion's fence undo failed", OpRecord{Plan: sum, PlanPrefix: "switchover/", Token: 5, Outcome: plan.OutcomePartial,
			Steps: []StepRecord{{ID: "switchover/lock", Outcome: "done"}, {ID: "switchover/fence", Outcome: "done"}, {ID: "switchover/promote", Outcome: "failed"}, {ID: "switchover/undo-fence", Outcome: "undo_failed"}}}, nil, true},
		{"partial after the point of no return", OpRecord{Plan: sum, Token: 5, Outcome: plan.OutcomePartial,
			Steps: []StepRecord{{ID: "lock", Outcome: "done"}, {ID: "fence", Outcome: "done"}, {ID: "promote", Outcome: "done"}}}, nil, false},
		{"failed and undone", OpRecord{Plan: sum, Token: 5, Outcome: plan.OutcomeFailed, Steps: append(began, StepRecord{ID: "undo-fence", Outcome: "undone"})}, nil, false},
		{"recovered", OpRecord{Plan: sum, Token: 5, Outcome: OutcomeRunning, Steps: began, RecoveredBy: "7"}, nil, false},
		{"no journal (lock run)", OpRecord{Token: 5, Outcome: OutcomeRunning}, nil, false},
		{"succeeded", OpRecord{Plan: sum, Token: 5, Outcome: plan.OutcomeSucceeded, Steps: began}, nil, false},
	} {
		if got := tc.rec.Interrupted(tc.holder); got != tc.want {
			t.Errorf("%s: interrupted %v, want %v", tc.name, got, tc.want)
		}
	}
}
