package plan

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Step is one action of a plan. Plans are data: building one runs nothing, so
// a dry-run prints exactly the descriptions a real run will emit, from the
// same list.
type Step struct {
	// ID is stable across runs ("fence-sql-pg1"), for history and tests.
	ID string `json:"id"`
	// Node is the node the step acts on, if any.
	Node string `json:"node,omitempty"`
	// Description names the node and the exact action (SQL or command,
	// without secrets).
	Description string `json:"description"`
	// UndoDescription says how the step is undone, when it can be.
	UndoDescription string `json:"undo,omitempty"`
	// Mutates marks steps that change a node or etcd: the lock is checked
	// right before each of them.
	Mutates bool `json:"mutates"`
	// Budget is how much lease the lock must have left before the step
	// starts (at most half the TTL; the step's own deadline is Timeout).
	Budget time.Duration `json:"-"`
	// PointOfNoReturn marks the step after which the operation is committed:
	// a later failure is reported as partly done rather than undone.
	PointOfNoReturn bool `json:"point_of_no_return,omitempty"`
	// Optional steps report failure without failing the operation.
	Optional bool `json:"optional,omitempty"`

	// Fences marks a step that makes a node refuse writes (stop, SQL
	// fence): its undo makes it writable again, so it is never run without
	// the lock, and a skipped undo says the node was left fenced.
	Fences bool `json:"fences,omitempty"`
	// Timeout is the step's own deadline, which the executor enforces; zero
	// means the step bounds itself. See Timeouts for where each comes from.
	Timeout time.Duration `json:"-"`

	Run  func(ctx context.Context) error `json:"-"`
	Undo func(ctx context.Context) error `json:"-"`
}

// Plan is an ordered list of steps with what the operator should know.
type Plan struct {
	Kind      string   `json:"kind"`
	Candidate string   `json:"candidate,omitempty"`
	Primary   string   `json:"primary,omitempty"`
	Fence     string   `json:"fence,omitempty"`
	Notes     []string `json:"notes,omitempty"`
	Steps     []Step   `json:"steps"`
}

// Descriptions lists the step descriptions in order: what a dry-run prints
// and what execution emits.
func (p *Plan) Descriptions() []string {
	out := make([]string, len(p.Steps))
	for i, s := range p.Steps {
		out[i] = s.Description
	}
	return out
}

// EventType is what happened to a step.
type EventType string

// Event types emitted by Execute.
const (
	StepStarted    EventType = "started"
	StepDone       EventType = "done"
	StepFailed     EventType = "failed"
	StepSkipped    EventType = "skipped"
	StepUndone     EventType = "undone"
	StepUndoFailed EventType = "undo_failed"
	// StepUndoSkipped is an undo not run because the lock was lost.
	StepUndoSkipped EventType = "undo_skipped"
	StepProgress    EventType = "progress"
	// StepCaptured carries, in Data, what a step captured before its
	// change (see Captured); only the journal receives it.
	StepCaptured EventType = "captured"
	// PlanStarted carries, in Plan, the plan about to run; only the
	// journal receives it.
	PlanStarted EventType = "plan"
)

// Event reports a step's progress to a sink; engines never print.
type Event struct {
	Type        EventType     `json:"event"`
	StepID      string        `json:"step"`
	Node        string        `json:"node,omitempty"`
	Description string        `json:"description"`
	Time        time.Time     `json:"time"`
	Duration    time.Duration `json:"duration_ns,omitempty"`
	Error       string        `json:"error,omitempty"`
	// Data is what a StepCaptured event carries.
	Data json.RawMessage `json:"data,omitempty"`
	// Plan is what a PlanStarted event carries.
	Plan *Summary `json:"plan,omitempty"`
}

// Sink receives events; it must not block for long.
type Sink func(Event)

// ErrLockLost is what a Guard's error matches (errors.Is) when the lock is
// certainly gone, rather than only unconfirmed for now.
var ErrLockLost = errors.New("the lock was lost")

// Guard is the fencing lock as the executor sees it: Check confirms
// ownership with enough lease left for the next step.
type Guard interface {
	Check(ctx context.Context, budget time.Duration) error
}

// Outcome is how an operation ended.
type Outcome string

// Outcomes of Execute.
const (
	OutcomeSucceeded Outcome = "succeeded"
	OutcomeFailed    Outcome = "failed"  // failed before the point of no return; undone
	OutcomePartial   Outcome = "partial" // committed, but a later step failed
)

// StepResult records one executed step.
type StepResult struct {
	ID          string        `json:"id"`
	Node        string        `json:"node,omitempty"`
	Description string        `json:"description"`
	Start       time.Time     `json:"start"`
	End         time.Time     `json:"end"`
	Duration    time.Duration `json:"duration_ns"`
	Outcome     string        `json:"outcome"` // done, failed, skipped, undone, undo_failed, undo_skipped
	Error       string        `json:"error,omitempty"`
}

// Result is what Execute did.
type Result struct {
	Outcome Outcome      `json:"outcome"`
	Steps   []StepResult `json:"steps"`
	// Err is the first failure, nil on success.
	Err error `json:"-"`
	// Remaining lists the steps that failed or did not run past the point
	// of no return: what the operator still has to do.
	Remaining []string `json:"remaining,omitempty"`
	// Left lists what a failed operation could not put back (an undo
	// skipped because the lock was lost, or an undo that failed), with what
	// to do about each.
	Left []string `json:"left,omitempty"`
	// Warnings are failures that did not change the outcome, such as a
	// history record that could not be written.
	Warnings []string `json:"warnings,omitempty"`
}

// undoTimeout bounds each undo of a step without a Timeout of its own (an
// undo gets its step's); undos run even when the operation's context is
// cancelled (the lock was lost, or the operator pressed ^C).
const undoTimeout = 30 * time.Second

// Execute runs the plan's steps in order. Before every mutating step it asks
// the guard to confirm the lock with the step's budget, and it runs each step
// under the step's own Timeout. A failure before the point of no return
// undoes the failed step's own partial change and then the completed steps,
// in reverse order, on a context detached from ctx's cancellation; each undo
// of a mutating step first re-checks the lock, and once the lock is lost no
// undo runs: each is reported as skipped with what it would have done, so
// that a fenced primary stays fenced while another operator may be promoting
// a replica. After the point of no return, the remaining steps are reported
// and the outcome is partial.
func Execute(ctx context.Context, p *Plan, guard Guard, sink Sink, now func() time.Time) *Result {
	if sink == nil {
		sink = func(Event) {}
	}
	if now == nil {
		now = time.Now
	}
	res := &Result{Outcome: OutcomeSucceeded}
	var journal Journaler // nil, or the queue over the guard's journal
	// jot journals an event that does not gate a change (a step's end, a
	// step that changes nothing) in the background; note journals one
	// before going on (an undo's start). A failure of either is a warning:
	// the step already ran; record also shows it.
	jot, note := func(Event) {}, func(Event) {}
	if j, ok := guard.(Journaler); ok {
		q := newJournalQueue(ctx, j)
		defer func() { res.Warnings = append(res.Warnings, q.close()...) }()
		journal, jot, note = q, q.later, q.now
		if err := journal.Journal(ctx, Event{Type: PlanStarted, Time: now(), Plan: p.Summary()}); err != nil {
			res.Outcome, res.Err = OutcomeFailed, fmt.Errorf("journal the plan before running it: %w", err)
			return res
		}
	}
	record := func(e Event) { sink(e); jot(e) }
	committed := false
	// touched are the steps whose Run was called, done or failed: each may
	// have changed something its undo must restore.
	var touched []int
	for i, s := range p.Steps {
		if ctx.Err() != nil && committed {
			// The operation was stopped (lock lost, interrupted) after it
			// committed: the rest is left to the operator.
			res.Outcome = OutcomePartial
			res.Err = errors.Join(res.Err, fmt.Errorf("stopped before %q: %w", s.ID, context.Cause(ctx)))
			for _, rest := range p.Steps[i:] {
				res.Remaining = append(res.Remaining, rest.Description)
			}
			return res
		}
		start := now()
		started := Event{Type: StepStarted, StepID: s.ID, Node: s.Node, Description: s.Description, Time: start}
		sink(started)
		var err error
		if ctx.Err() != nil {
			// The cause says why (the lock was lost), where Err says only
			// "context canceled".
			err = context.Cause(ctx)
		}
		if err == nil && s.Mutates && guard != nil {
			if gerr := guard.Check(ctx, s.Budget); gerr != nil {
				err = fmt.Errorf("lock check before %q: %w", s.ID, gerr)
			}
		}
		switch {
		case err == nil && s.Mutates && journal != nil:
			// The intent is on record before anything changes.
			if jerr := journal.Journal(ctx, started); jerr != nil {
				err = fmt.Errorf("journal the start of %q: %w", s.ID, jerr)
			}
		case err == nil:
			jot(started)
		}
		if err == nil && s.Run != nil {
			fire(s.ID, PhaseBefore)
			touched = append(touched, i)
			err = runStep(withStep(ctx, s, journal), s)
			if err == nil {
				fire(s.ID, PhaseAfter)
			}
		}
		end := now()
		sr := StepResult{ID: s.ID, Node: s.Node, Description: s.Description, Start: start, End: end, Duration: end.Sub(start), Outcome: "done"}
		if err != nil {
			sr.Outcome, sr.Error = "failed", err.Error()
			res.Steps = append(res.Steps, sr)
			record(Event{Type: StepFailed, StepID: s.ID, Node: s.Node, Description: s.Description, Time: end, Duration: sr.Duration, Error: err.Error()})
			if s.Optional {
				continue
			}
			res.Err = errors.Join(res.Err, err)
			if committed {
				// Past the point of no return going back is worse than going
				// on: finish what can be finished and report what remains.
				res.Outcome = OutcomePartial
				res.Remaining = append(res.Remaining, s.Description)
				continue
			}
			res.Outcome = OutcomeFailed
			undo(ctx, p, touched, guard, res, record, note, now)
			return res
		}
		res.Steps = append(res.Steps, sr)
		record(Event{Type: StepDone, StepID: s.ID, Node: s.Node, Description: s.Description, Time: end, Duration: sr.Duration})
		if s.PointOfNoReturn {
			committed = true
		}
	}
	return res
}

// runStep runs s within its own timeout. The deadline is the step's, not a
// lease margin: a promote that hangs on a stopped postmaster fails at its
// timeout instead of holding the lock and the write outage for ever.
func runStep(ctx context.Context, s Step) error {
	if s.Timeout <= 0 {
		return s.Run(ctx)
	}
	c, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	err := s.Run(c)
	if err != nil && ctx.Err() == nil && c.Err() != nil {
		var te *StepTimeoutError
		if !errors.As(err, &te) {
			err = &StepTimeoutError{Step: s.ID, Timeout: s.Timeout, Err: err}
		}
	}
	return err
}

// StepTimeoutError is a step stopped by its own timeout.
type StepTimeoutError struct {
	Step    string
	Timeout time.Duration
	Err     error
}

func (e *StepTimeoutError) Error() string {
	return fmt.Sprintf("step %s timed out after %s: %v", e.Step, e.Timeout, e.Err)
}

func (e *StepTimeoutError) Unwrap() error { return e.Err }

// undo runs the undos of the touched steps (the failed one first), newest
// first. Each undo of a mutating step re-checks the lock: once it is lost,
// this undo and every later one is skipped and reported, since the cluster
// may now be another operation's.
func undo(ctx context.Context, p *Plan, touched []int, guard Guard, res *Result, sink, note Sink, now func() time.Time) {
	uctx := context.WithoutCancel(ctx)
	var lockErr error
	for j := len(touched) - 1; j >= 0; j-- {
		s := p.Steps[touched[j]]
		if s.Undo == nil {
			continue
		}
		start := now()
		desc := s.UndoDescription
		if desc == "" {
			desc = "undo: " + s.Description
		}
		sr := StepResult{ID: "undo-" + s.ID, Node: s.Node, Description: desc, Start: start, Outcome: "undone"}
		if lockErr == nil && s.Mutates && guard != nil {
			c, cancel := context.WithTimeout(uctx, undoTimeout)
			if err := guard.Check(c, s.Budget); err != nil {
				lockErr = err
			}
			cancel()
		}
		var err error
		if lockErr == nil {
			// Journaled like a step, so that recover knows an undo may have
			// begun; a journal that cannot be written does not stop the
			// way back.
			note(Event{Type: StepStarted, StepID: sr.ID, Node: s.Node, Description: desc, Time: start})
			fire(s.ID, PhaseUndo)
			d := undoTimeout
			if s.Timeout > 0 {
				d = s.Timeout
			}
			c, cancel := context.WithTimeout(uctx, d)
			err = s.Undo(c)
			cancel()
		}
		end := now()
		sr.End, sr.Duration = end, end.Sub(start)
		ev := Event{Type: StepUndone, StepID: sr.ID, Node: s.Node, Description: desc, Time: end, Duration: sr.Duration}
		switch {
		case lockErr != nil:
			why := "the lock could not be confirmed"
			if errors.Is(lockErr, ErrLockLost) {
				why = "the lock was lost"
			}
			left := "left as it is because " + why
			if s.Fences {
				left = fmt.Sprintf("%s left fenced because %s", s.Node, why)
			}
			sr.Outcome, sr.Error = "undo_skipped", fmt.Sprintf("%s (%v); to undo it by hand, once you are sure no other operation is running: %s", left, lockErr, desc)
			ev.Type, ev.Error = StepUndoSkipped, sr.Error
			res.Left = append(res.Left, sr.Error)
		case err != nil:
			sr.Outcome, sr.Error = "undo_failed", err.Error()
			ev.Type, ev.Error = StepUndoFailed, err.Error()
			res.Err = errors.Join(res.Err, fmt.Errorf("undo %s: %w", s.ID, err))
			res.Left = append(res.Left, fmt.Sprintf("undo of %s failed (%v): %s", s.ID, err, desc))
		}
		res.Steps = append(res.Steps, sr)
		sink(ev)
	}
}
