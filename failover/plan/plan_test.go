package plan

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"
)

type fakeGuard struct {
	fail  bool
	calls []time.Duration
}

func (g *fakeGuard) Check(_ context.Context, budget time.Duration) error {
	g.calls = append(g.calls, budget)
	if g.fail {
		return errors.New("lock lost")
	}
	return nil
}

func TestExecuteUndoesBeforePointOfNoReturn(t *testing.T) {
	t.Parallel()
	var log []string
	step := func(id string, mutates, ponr bool, fail bool) Step {
		return Step{ID: id, Description: "do " + id, Mutates: mutates, PointOfNoReturn: ponr, Budget: time.Second,
			Run: func(context.Context) error {
				log = append(log, id)
				if fail {
					return errors.New(id + " broke")
				}
				return nil
			},
			Undo: func(context.Context) error { log = append(log, "undo "+id); return nil },
		}
	}
	p := &Plan{Steps: []Step{step("a", false, false, false), step("b", true, false, false), step("c", true, false, true), step("d", true, true, false)}}
	g := &fakeGuard{}
	var events []EventType
	res := Execute(t.Context(), p, g, func(e Event) { events = append(events, e.Type) }, nil)
	if res.Outcome != OutcomeFailed || res.Err == nil {
		t.Fatalf("outcome %s err %v", res.Outcome, res.Err)
	}
	// The failed step's own partial change is undone first.
	if want := []string{"a", "b", "c", "undo c", "undo b", "undo a"}; !reflect.DeepEqual(log, want) {
		t.Errorf("log %v, want %v", log, want)
	}
	// The lock is checked before every mutating step and every undo of one.
	if len(g.calls) != 4 {
		t.Errorf("lock checked %d times, want 4 (mutating steps and their undos)", len(g.calls))
	}
	if want := []EventType{StepStarted, StepDone, StepStarted, StepDone, StepStarted, StepFailed, StepUndone, StepUndone, StepUndone}; !reflect.DeepEqual(events, want) {
		t.Errorf("events %v", events)
	}
}

func TestExecutePartialAfterPointOfNoReturn(t *testing.T) {
	t.Parallel()
	ok := func(context.Context) error { return nil }
	bad := func(context.Context) error { return errors.New("repoint failed") }
	undone := false
	p := &Plan{Steps: []Step{
		{ID: "fence", Description: "fence", Run: ok, Undo: func(context.Context) error { undone = true; return nil }},
		{ID: "promote", Description: "promote", Run: ok, PointOfNoReturn: true},
		{ID: "repoint", Description: "repoint", Run: bad},
		{ID: "record", Description: "record state", Run: ok},
	}}
	res := Execute(t.Context(), p, nil, nil, nil)
	if res.Outcome != OutcomePartial || undone {
		t.Fatalf("outcome %s undone %v", res.Outcome, undone)
	}
	if !reflect.DeepEqual(res.Remaining, []string{"repoint"}) || res.Steps[len(res.Steps)-1].Outcome != "done" {
		t.Errorf("remaining %v", res.Remaining)
	}
}

func TestExecuteStopsWhenLockLost(t *testing.T) {
	t.Parallel()
	ran := false
	p := &Plan{Steps: []Step{{ID: "promote", Description: "promote", Mutates: true, Run: func(context.Context) error { ran = true; return nil }}}}
	res := Execute(t.Context(), p, &fakeGuard{fail: true}, nil, nil)
	if ran || res.Outcome != OutcomeFailed {
		t.Fatalf("ran=%v outcome=%s", ran, res.Outcome)
	}
}
