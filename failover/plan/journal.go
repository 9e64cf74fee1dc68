package plan

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Journaler is what a Guard also is when the operation keeps a journal: the
// executor writes each mutating step's start and the state it captured
// through it, synchronously and under the lock, with every event before
// them. A step whose start or capture cannot be journaled does not change
// anything: an operation that dies must leave a record that says what it
// may have done. The other events (a step's end, a step that changes
// nothing) are written in the background, in order, so that the time
// between two steps of the outage is not spent waiting for etcd: a crash
// may lose them, which leaves a journal that reads like a crash just after
// the last journaled change, one recover handles anyway.
//
// Journal writes events in order, in one write where it can (a history
// record rewritten whole takes one etcd round trip for all of them).
type Journaler interface {
	Journal(ctx context.Context, events ...Event) error
}

// Summary is a plan as its journal records it: enough for `replctl recover`
// to tell what the operation set out to do and how far it got.
type Summary struct {
	Kind      string        `json:"kind"`
	Primary   string        `json:"primary,omitempty"`
	Candidate string        `json:"candidate,omitempty"`
	Fence     string        `json:"fence,omitempty"`
	Steps     []StepSummary `json:"steps"`
}

// StepSummary is one step of a Summary.
type StepSummary struct {
	ID              string `json:"id"`
	Node            string `json:"node,omitempty"`
	Mutates         bool   `json:"mutates,omitempty"`
	Fences          bool   `json:"fences,omitempty"`
	PointOfNoReturn bool   `json:"point_of_no_return,omitempty"`
}

// Summary is p as its journal records it.
func (p *Plan) Summary() *Summary {
	s := &Summary{Kind: p.Kind, Primary: p.Primary, Candidate: p.Candidate, Fence: p.Fence}
	for _, st := range p.Steps {
		s.Steps = append(s.Steps, StepSummary{ID: st.ID, Node: st.Node, Mutates: st.Mutates, Fences: st.Fences, PointOfNoReturn: st.PointOfNoReturn})
	}
	return s
}

type stepCtxKey struct{}

// stepCtx is what a running step can reach through its context.
type stepCtx struct {
	step    Step
	journal Journaler
}

func withStep(ctx context.Context, s Step, j Journaler) context.Context {
	return context.WithValue(ctx, stepCtxKey{}, &stepCtx{step: s, journal: j})
}

// Captured journals what the running step read of its node before changing
// it (a settings snapshot, the slots it will create): what `replctl
// recover` restores should the process die before the step's own undo can
// run. A step calls it after capturing and before changing; it must not
// change anything when Captured fails. Outside a journaled operation (unit
// tests, a plan run by hand) it does nothing.
func Captured(ctx context.Context, v any) error {
	sc, _ := ctx.Value(stepCtxKey{}).(*stepCtx)
	if sc == nil || sc.journal == nil {
		return nil
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("journal what %s captured: %w", sc.step.ID, err)
	}
	e := Event{Type: StepCaptured, StepID: sc.step.ID, Node: sc.step.Node, Description: sc.step.Description, Time: time.Now(), Data: data}
	if err := sc.journal.Journal(ctx, e); err != nil {
		return fmt.Errorf("journal what %s captured, before changing anything: %w", sc.step.ID, err)
	}
	return nil
}

// Changed marks the point in a step between its change and its
// verification. It is where the "changed" failpoint fires; otherwise it does
// nothing.
func Changed(ctx context.Context) {
	if sc, _ := ctx.Value(stepCtxKey{}).(*stepCtx); sc != nil {
		fire(sc.step.ID, PhaseChanged)
	}
}

// Failpoint phases: where in a step REPLCTL_FAILPOINT stops the process.
const (
	PhaseBefore  = "before"  // the step is journaled as started, nothing changed yet
	PhaseChanged = "changed" // the step's change is made, not yet verified
	PhaseAfter   = "after"   // the step is done, not yet journaled as done
	PhaseUndo    = "undo"    // the step's undo is about to run
)

// FailpointEnv names the environment variable that arms failpoints, for
// tests that must stop replctl at an exact place:
//
//	REPLCTL_FAILPOINT=<step-id>:<phase>:<action>[,...]
//
// with phase before, changed, after or undo, and action exit (exit status
// 97 at once, no cleanup), kill (SIGKILL to itself) or pause (SIGSTOP to
// itself: the whole process hangs, lease renewal included, until it gets
// SIGCONT or SIGKILL). Step IDs are a plan's own ("fence",
// "detach-pg3"), also inside a drill. It is read from the environment only,
// never from configuration, and inert when unset.
const FailpointEnv = "REPLCTL_FAILPOINT"

// FailpointExitCode is the exit status of the exit action.
const FailpointExitCode = 97

type failpoint struct{ step, phase, action string }

var failpoints = sync.OnceValue(func() []failpoint {
	var out []failpoint
	for _, spec := range strings.Split(os.Getenv(FailpointEnv), ",") {
		f := strings.Split(strings.TrimSpace(spec), ":")
		if len(f) != 3 {
			continue
		}
		out = append(out, failpoint{step: f[0], phase: f[1], action: f[2]})
	}
	return out
})

// fire stops the process when a failpoint names step and phase.
func fire(step, phase string) {
	for _, f := range failpoints() {
		if f.step != step || f.phase != phase {
			continue
		}
		fmt.Fprintf(os.Stderr, "failpoint %s:%s:%s\n", f.step, f.phase, f.action)
		switch f.action {
		case "exit":
			os.Exit(FailpointExitCode)
		case "kill":
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		case "pause":
			_ = syscall.Kill(os.Getpid(), syscall.SIGSTOP)
		}
	}
}
