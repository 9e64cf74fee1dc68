package failover

import (
	"context"
	"errors"
	"fmt"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/topology"
)

// Operation kinds a Driver plans and runs.
const (
	KindSwitchover = "switchover"
	KindFailover   = "failover"
	KindRejoin     = "rejoin"
)

// Observation is one look at the cluster: every node probed, and the
// cluster record (nil when there is none or etcd is not reachable).
type Observation struct {
	Snap  *topology.Snapshot
	State *etcdlock.State
	// Interrupted are the operations whose journal says they began and
	// never finished (etcdlock.FindInterrupted), oldest first: every
	// operation but recover refuses while there is one.
	Interrupted []etcdlock.OpRecord
}

// Request is an operation to plan: its kind and the options of that kind.
type Request struct {
	Kind       string
	Switchover SwitchoverOptions
	Emergency  EmergencyOptions
	Recover    RecoverOptions
	// Node is the node a rejoin makes a replica.
	Node string
}

// candidate is the node the request names ("" lets replctl choose).
func (r Request) candidate() string {
	if r.Kind == KindFailover {
		return r.Emergency.Candidate
	}
	return r.Switchover.Candidate
}

// pinned is the request with the candidate fixed, for the plan rebuilt
// under the lock: under write load two replicas equally caught up swap
// places with every write, and the re-check is about safety, not about
// choosing again. Every check of the preflight still runs on the fresh
// look, so a pinned candidate that became unsafe is refused.
func (r Request) pinned(candidate string) Request {
	switch r.Kind {
	case KindFailover:
		r.Emergency.Candidate = candidate
	case KindSwitchover:
		r.Switchover.Candidate = candidate
	}
	return r
}

// Driver runs an operation the one way every caller (promote, promote
// --emergency, rejoin, a drill's step) runs it: observe -> confirm (an
// emergency probes a silent primary over the confirmation window) -> plan
// -> lock -> observe and plan again under the lock, refusing if the plan
// changed -> execute the plan rebuilt under the lock -> record.
type Driver struct {
	Cfg *config.Config
	// Observe looks at the cluster.
	Observe func(ctx context.Context) Observation
	// Confirm probes the old primary over the confirmation window when the
	// observation shows it silent, and returns the attempts (nil when
	// there was nothing to confirm). Nil skips confirmation.
	Confirm func(ctx context.Context, obs Observation) []ProbeAttempt
}

// Prepared is a request planned from one observation: what a dry-run
// reports, and what Run executes.
type Prepared struct {
	Request Request
	Obs     Observation
	Probes  []ProbeAttempt
	Op      *OperationPlan
}

// Prepare observes, confirms and plans, with env (nil for a dry-run: the
// plan is the same either way).
func (d *Driver) Prepare(ctx context.Context, req Request, env *Env) *Prepared {
	obs := d.Observe(ctx)
	var probes []ProbeAttempt
	if req.Kind == KindFailover && d.Confirm != nil {
		if probes = d.Confirm(ctx, obs); probes != nil {
			// The replicas' receivers are judged as they are now, after
			// the window.
			obs = d.Observe(ctx)
		}
	}
	return &Prepared{Request: req, Obs: obs, Probes: probes, Op: PlanFrom(d.Cfg, req, obs, probes, env)}
}

// Replan builds prep's plan again with env, from the same observation:
// the steps a confirmed dry-run showed, now able to run.
func (d *Driver) Replan(prep *Prepared, env *Env) *OperationPlan {
	return PlanFrom(d.Cfg, prep.Request.pinned(prep.Op.Candidate), prep.Obs, prep.Probes, env)
}

// Run executes op, planned with env (Replan), under the lock: spec's
// Rebuild is the driver's, from a fresh observation with the candidate
// pinned.
func (d *Driver) Run(ctx context.Context, prep *Prepared, op *OperationPlan, env *Env, spec OperationSpec) *plan.Result {
	if op.Plan == nil {
		return &plan.Result{Outcome: plan.OutcomeFailed, Err: errors.New("no plan to run")}
	}
	if spec.Kind == "" {
		spec.Kind = op.Kind // the history's kind, unless the caller names one (automatic)
	}
	spec.Rebuild = d.rebuild(prep, op)
	return RunOperation(ctx, spec, op.Plan, env)
}

// rebuild plans op again from a fresh observation, the candidate pinned:
// what RunOperation compares with op's plan under the lock. Under the lock
// the evidence is the fresh look only: the window was spent before the
// plan was shown.
func (d *Driver) rebuild(prep *Prepared, op *OperationPlan) func(ctx context.Context) (*plan.Plan, []checks.Result, error) {
	req := prep.Request.pinned(op.Candidate)
	return func(ctx context.Context) (*plan.Plan, []checks.Result, error) {
		o := PlanFrom(d.Cfg, req, d.Observe(ctx), nil, nil)
		var err error
		if o.Error != "" {
			err = errors.New(o.Error)
		}
		return o.Plan, o.Checks, err
	}
}

// PlanFrom chooses the candidate, runs the preflight and builds the plan
// for req from one observation: the same pure function for the dry-run,
// the real run and the re-check under the lock.
func PlanFrom(cfg *config.Config, req Request, obs Observation, probes []ProbeAttempt, env *Env) *OperationPlan {
	op := &OperationPlan{Kind: req.Kind, Candidate: req.candidate()}
	if obs.Snap != nil {
		op.Primary = string(obs.Snap.Primary)
	}
	if len(obs.Interrupted) > 0 && req.Kind != KindRecover {
		for _, r := range obs.Interrupted {
			op.Checks = append(op.Checks, InterruptedCheck(r))
		}
		return op
	}
	var err error
	switch req.Kind {
	case KindRecover:
		op.Plan, op.Checks, err = PlanRecover(cfg, obs, req.Recover, env)
		if op.Plan != nil {
			op.Primary, op.Candidate = op.Plan.Primary, op.Plan.Candidate
		}
	case KindSwitchover:
		var rank *Ranking
		op.Plan, rank, op.Checks, err = PlanSwitchover(cfg, obs.Snap, req.Switchover, env)
		if rank != nil {
			op.Choice, op.Candidate = rank, rank.Chosen
		}
	case KindFailover:
		var an *EmergencyAnalysis
		op.Plan, an, err = PlanEmergency(cfg, obs.Snap, obs.State, probes, req.Emergency, env)
		op.Emergency, op.Checks = an, an.Checks
		op.Primary, op.Candidate = an.OldPrimary, an.Choice.Chosen
		if an.Choice.Chosen != "" {
			op.Choice = &an.Choice.Ranking
		}
	case KindRejoin:
		op.Candidate = req.Node
		op.Plan, op.Checks, err = PlanRejoin(cfg, obs.Snap, req.Node, env)
	default:
		err = fmt.Errorf("unknown operation kind %q", req.Kind)
	}
	if err != nil {
		op.Error = err.Error()
	}
	if req.Kind == KindSwitchover || req.Kind == KindFailover {
		if r := timelineReuse(obs, op.Candidate); r != nil {
			op.Checks = append(op.Checks, *r)
		}
	}
	if len(checks.Failed(op.Checks)) > 0 {
		op.Plan = nil
	}
	op.Proceed = len(checks.Failed(op.Checks)) == 0 && err == nil && op.Plan != nil
	return op
}

// timelineReuse refuses a candidate whose promotion would reuse a timeline
// ID the record says a primary already had: PostgreSQL picks the next ID
// from the history files the candidate has, and a candidate behind a lost
// promotion lacks that promotion's. Nil when the record says nothing.
func timelineReuse(obs Observation, candidate string) *checks.Result {
	n := obs.Snap.Node(candidate)
	if obs.State == nil || n == nil || n.Timeline == nil || *n.Timeline+1 > obs.State.MaxTimeline {
		return nil
	}
	next := *n.Timeline + 1
	return &checks.Result{Name: "timeline_reuse", Level: checks.Critical, Code: "timeline_reuse", Node: candidate,
		Message: fmt.Sprintf("%s is on timeline %d and would promote onto timeline %d, but the cluster record says a primary already ran on timeline %d: two histories with one timeline ID diverge where pg_rewind cannot see it",
			candidate, *n.Timeline, next, obs.State.MaxTimeline),
		Hint: fmt.Sprintf("promote a node on timeline %d or later, or rebuild %s from the current primary (pg_basebackup); copying the history files %08X.history to %08X.history from a node that has them into %s's pg_wal also makes PostgreSQL choose timeline %d",
			obs.State.MaxTimeline, candidate, next, obs.State.MaxTimeline, candidate, obs.State.MaxTimeline+1)}
}
