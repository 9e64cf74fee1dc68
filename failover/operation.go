package failover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/topology"
)

// RefusedError is a refusal by preflight checks: nothing was changed.
type RefusedError struct {
	Failed []checks.Result
	// UnderLock is set when the refusal came from the re-check under the
	// lock, i.e. the cluster changed after the plan was shown.
	UnderLock bool
}

func (e *RefusedError) Error() string {
	var parts []string
	for _, r := range e.Failed {
		s := r.Name
		if r.Node != "" {
			s += " (" + r.Node + ")"
		}
		s += ": " + r.Message
		if r.Hint != "" {
			s += ": " + r.Hint
		}
		parts = append(parts, s)
	}
	prefix := "refused: "
	if e.UnderLock {
		prefix = "refused under the lock: "
	}
	return prefix + strings.Join(parts, "; ")
}

// PlanChangedError means the plan rebuilt under the lock differs from the
// one shown (and confirmed): the topology changed in between.
type PlanChangedError struct{ Diff string }

func (e *PlanChangedError) Error() string {
	return fmt.Sprintf("the topology changed since the plan was made (now: %s): nothing was changed; run the command again", e.Diff)
}

// OperationSpec describes an operation that runs a plan under the lock.
type OperationSpec struct {
	Cfg *config.Config
	Cli *clientv3.Client
	// Kind and Params are recorded in the history.
	Kind   string
	Params map[string]string
	// Command is the command line recorded as the lock holder's.
	Command []string
	// LockWait is how long to wait for a held lock (0 fails fast).
	LockWait time.Duration
	OnWait   func(*etcdlock.LockHolder)
	// Held is a lock the caller already holds (a drill holds it for all its
	// steps); the operation then neither takes nor releases it, nor starts
	// a history record of its own: the caller records its steps.
	Held HeldLock
	// Locker takes the lock when nothing is Held; nil is the etcd lock
	// over Cli.
	Locker Locker
	// Rebuild re-plans from a fresh look at the cluster under the lock and
	// returns the preflight results with it.
	Rebuild func(ctx context.Context) (*plan.Plan, []checks.Result, error)
	Sink    plan.Sink
	// Journal receives the journal when the caller holds the lock and
	// the record (Held: a drill journals its promotion in its own record).
	Journal func(ctx context.Context, events ...plan.Event) error
	Now     func() time.Time
}

// HeldLock is the cluster lock as an operation holds it: *etcdlock.Lock.
type HeldLock interface {
	Recorder
	// Context ends when the lock is lost or released; Err says which.
	Context() context.Context
	Err() error
	// OperationID is the history record the lock's holder named.
	OperationID() string
	Release(ctx context.Context) error
}

// History records one operation: *etcdlock.Operation.
type History interface {
	ID() string
	Observe(ctx context.Context, events ...plan.Event) error
	Finish(ctx context.Context, outcome plan.Outcome, err error) error
}

// Locker takes the cluster lock for an operation and starts its history
// record.
type Locker interface {
	Lock(ctx context.Context, spec OperationSpec) (HeldLock, History, error)
}

// etcdLocker is the Locker over etcd.
type etcdLocker struct{}

// EtcdLocker is the Locker operations use by default: the etcd lock.
func EtcdLocker() Locker { return etcdLocker{} }

func (etcdLocker) Lock(ctx context.Context, spec OperationSpec) (HeldLock, History, error) {
	l, err := etcdlock.Acquire(ctx, spec.Cli, etcdlock.LockOptions{
		Prefix: spec.Cfg.Etcd.Prefix, Cluster: spec.Cfg.Cluster, TTL: spec.Cfg.Lock.TTL, Wait: spec.LockWait,
		HistoryKeep: spec.Cfg.History.Keep, Actor: etcdlock.CurrentActor(spec.Command), OnWait: spec.OnWait,
	})
	if err != nil {
		return nil, nil, err
	}
	op, err := l.StartOperation(ctx, spec.Kind, spec.Params)
	if err != nil {
		return l, nil, err
	}
	return l, op, nil
}

// RunOperation executes p, built with env, under the cluster lock. The
// plan's first step (StepLock) takes the lock, re-reads the topology under
// it and refuses with a *PlanChangedError when the plan would now differ
// from p, or a *RefusedError when the preflight now fails. The lock's loss
// cancels the remaining steps. The operation is recorded in the history.
func RunOperation(ctx context.Context, spec OperationSpec, p *plan.Plan, env *Env) *plan.Result {
	opCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var lock HeldLock
	var op History
	// opMu guards op: the executor journals in the background, and the
	// lock step sets op once the lock and the record exist. Events before
	// that (the lock step's start) have no record to go to.
	var opMu sync.Mutex
	history := func() History {
		opMu.Lock()
		defer opMu.Unlock()
		return op
	}
	watch := func(l HeldLock) {
		go func() {
			<-l.Context().Done()
			if err := l.Err(); err != nil && !errors.Is(err, etcdlock.ErrReleased) {
				cancel(err)
			}
		}()
	}
	locker := spec.Locker
	if locker == nil {
		locker = etcdLocker{}
	}
	env.Acquire = func(actx context.Context) error {
		if spec.Held != nil {
			if err := spec.Held.Err(); err != nil {
				return err
			}
			lock = spec.Held
			watch(lock)
		} else {
			l, h, err := locker.Lock(actx, spec)
			if l != nil {
				lock = l
				watch(l)
			}
			if err != nil {
				return err
			}
			var jerr error
			if h != nil {
				// The journal starts with the plan, before any change.
				jerr = h.Observe(actx, plan.Event{Type: plan.PlanStarted, Time: time.Now(), Plan: p.Summary()})
			}
			// Published also when the plan could not be journaled: the
			// record must still be finished.
			opMu.Lock()
			op = h
			opMu.Unlock()
			if jerr != nil {
				return fmt.Errorf("journal the plan in history record %s: %w", h.ID(), jerr)
			}
		}
		env.Lock = lock
		p2, results, err := spec.Rebuild(actx)
		if failed := checks.Failed(results); len(failed) > 0 {
			return &RefusedError{Failed: failed, UnderLock: true}
		}
		if err != nil {
			return err
		}
		if want, got := p.Descriptions(), p2.Descriptions(); !slices.Equal(want, got) {
			return &PlanChangedError{Diff: firstDifference(want, got)}
		}
		return nil
	}
	env.OperationID = func() string {
		switch {
		case op != nil:
			return op.ID()
		case lock != nil:
			return lock.OperationID() // the caller's, e.g. a drill's
		}
		return ""
	}
	var histErr error
	env.JournalTo = func(ctx context.Context, events ...plan.Event) error {
		op := history()
		switch {
		case spec.Journal != nil:
			return spec.Journal(ctx, events...)
		case op != nil:
			return op.Observe(ctx, events...)
		}
		return nil
	}
	res := plan.Execute(opCtx, p, env, spec.Sink, spec.Now)
	if len(res.Warnings) > 0 && op != nil {
		histErr = errors.New(strings.Join(res.Warnings, "; "))
		res.Warnings = nil
	}
	if res.Err != nil && (res.Outcome == plan.OutcomeFailed || res.Outcome == plan.OutcomePartial) {
		// A step the lock's loss cut short fails with a bare "context
		// canceled" (pgx: "operation was canceled"); the cause says why,
		// and makes the record lock_lost. Partial too: when that step is
		// the last one past the point of no return, no "stopped before"
		// error carries the cause.
		if cause := context.Cause(opCtx); cause != nil && !errors.Is(res.Err, cause) {
			res.Err = errors.Join(res.Err, cause)
		}
	}
	if op != nil {
		outcome := res.Outcome
		var lost *etcdlock.LockLostError
		if errors.As(res.Err, &lost) {
			outcome = etcdlock.OutcomeLockLost
		}
		if err := op.Finish(context.WithoutCancel(ctx), outcome, res.Err); err != nil {
			histErr = errors.Join(histErr, err)
		}
		if histErr != nil {
			res.Warnings = append(res.Warnings, fmt.Sprintf("history record %s is incomplete: %v", op.ID(), histErr))
		}
	}
	if lock != nil && spec.Held == nil {
		if err := lock.Release(context.WithoutCancel(ctx)); err != nil {
			res.Err = errors.Join(res.Err, err)
		}
	}
	return res
}

func firstDifference(a, b []string) string {
	for i := 0; i < max(len(a), len(b)); i++ {
		switch {
		case i >= len(a):
			return "an extra step: " + b[i]
		case i >= len(b):
			return "a step fewer: " + a[i]
		case a[i] != b[i]:
			return fmt.Sprintf("step %d would be %q", i+1, b[i])
		}
	}
	return "same steps"
}

// PlanSwitchover chooses the candidate (when opts.Candidate is empty), runs
// the switchover preflight and builds the plan, all from one snapshot: the
// same function serves the dry-run, the real run and the re-check under the
// lock. A nil plan with failed results means refused.
func PlanSwitchover(cfg *config.Config, snap *topology.Snapshot, opts SwitchoverOptions, env *Env) (*plan.Plan, *Ranking, []checks.Result, error) {
	var rank *Ranking
	if opts.Candidate == "" {
		r, err := ChooseSwitchoverCandidate(snap)
		if err != nil {
			return nil, nil, []checks.Result{{Name: "candidate", Level: checks.Critical, Code: "candidate", Message: err.Error(),
				Hint: "name a node, or fix the replicas so one is eligible"}}, nil
		}
		rank = &r
		opts.Candidate = r.Chosen
	}
	results := checks.SwitchoverPreflight(snap, cfg, checks.SwitchoverOptions{Candidate: opts.Candidate, MaxLag: opts.MaxLag, RequireStop: opts.RequireStop})
	if len(checks.Failed(results)) > 0 {
		return nil, rank, results, nil
	}
	p, err := BuildSwitchoverPlan(cfg, snap, opts, env)
	return p, rank, results, err
}

// OperationPlan is a promotion or rejoin planned from one look at the
// cluster: what promote --dry-run, rejoin --dry-run and a drill's plan
// report. Its JSON field names are a stable contract.
type OperationPlan struct {
	// Kind is switchover, failover or rejoin.
	Kind      string             `json:"kind"`
	Primary   string             `json:"primary"`
	Candidate string             `json:"candidate"`
	Choice    *Ranking           `json:"choice,omitempty"`
	Checks    []checks.Result    `json:"checks"`
	Proceed   bool               `json:"would_proceed"`
	Plan      *plan.Plan         `json:"plan"`
	Emergency *EmergencyAnalysis `json:"emergency,omitempty"`
	Error     string             `json:"error,omitempty"`
}
