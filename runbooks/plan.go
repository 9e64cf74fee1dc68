package runbooks

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/topology"
)

// PlanStatus is what the plan found about a step.
type PlanStatus string

// Plan statuses.
const (
	// PlanOK: evaluated against the cluster now; a run would pass it.
	PlanOK PlanStatus = "ok"
	// PlanWaits: a wait whose condition does not hold now; a run waits for
	// it up to its timeout.
	PlanWaits PlanStatus = "waits"
	// PlanRefused: evaluated now; a run would be refused at this step.
	PlanRefused PlanStatus = "refused"
	// PlanFails: an assertion that is false now.
	PlanFails PlanStatus = "fails"
	// PlanAtRunTime: the step depends on what earlier steps change; the
	// run evaluates it when it gets there (WillCheck says what it checks).
	PlanAtRunTime PlanStatus = "at_run_time"
)

// PlanReport is the dry-run of a runbook. Its JSON field names are a
// stable contract (replctl runbook plan -o json).
type PlanReport struct {
	Runbook     string `json:"runbook"`
	Description string `json:"description,omitempty"`
	File        string `json:"file"`
	Cluster     string `json:"cluster"`
	// Primary is the primary now: what initial_primary would name.
	Primary string `json:"primary"`
	// Lock says whether a run could take the cluster lock now.
	Lock     string `json:"lock"`
	LockHeld bool   `json:"lock_held"`
	// WouldProceed is true when no step that can be evaluated now would be
	// refused or fail, and the lock is free.
	WouldProceed bool           `json:"would_proceed"`
	Steps        []*PlannedStep `json:"steps"`
}

// PlannedStep is one step of the dry-run.
type PlannedStep struct {
	ID          string     `json:"id"`
	Kind        Kind       `json:"kind"`
	Phase       Phase      `json:"phase"`
	Description string     `json:"description"`
	Status      PlanStatus `json:"status"`
	// Node is the node the step would act on, when it is known now.
	Node   string          `json:"node,omitempty"`
	Detail string          `json:"detail,omitempty"`
	Checks []checks.Result `json:"checks,omitempty"`
	// Promote is the full plan of a promotion or rejoin evaluated now: the
	// very plan `replctl promote --dry-run` (or `rejoin --dry-run`) prints.
	Promote *OperationPlan `json:"operation,omitempty"`
	// WillCheck says what a step planned at run time will check then.
	WillCheck []string `json:"will_check,omitempty"`
}

// OperationPlan is a promotion or rejoin planned from the current topology,
// the same shape promote --dry-run reports.
type OperationPlan = failover.OperationPlan

// Plan evaluates, read-only, every step that can be evaluated against the
// cluster as it is now, and describes the others: it probes the nodes and
// reads etcd, and writes nothing anywhere. etcdErr says why e.Cli is nil,
// when it is.
func (e *Engine) Plan(ctx context.Context, rb *Runbook, etcdErr error) *PlanReport {
	obs := e.observe(ctx)
	snap := obs.Snap
	rep := &PlanReport{Runbook: rb.Name, Description: rb.Description, File: rb.File, Cluster: rb.Cluster, Primary: string(snap.Primary)}
	lockRes := e.lockResult(obs, etcdErr)
	rep.Lock = lockRes.Message
	rep.LockHeld = obs.Holder != nil
	initial := string(snap.Primary)
	changed := false
	for _, s := range rb.Steps {
		ps := &PlannedStep{ID: s.ID, Kind: s.Kind, Phase: s.Phase, Description: s.Describe()}
		if changed {
			e.planLater(ps, s, rb, initial)
		} else {
			e.planNow(ctx, ps, s, rb, obs, initial, lockRes)
		}
		rep.Steps = append(rep.Steps, ps)
		changed = changed || s.Kind.Changes()
	}
	for _, s := range rb.OnFailure {
		ps := &PlannedStep{ID: s.ID, Kind: s.Kind, Phase: s.Phase, Description: s.Describe()}
		e.planLater(ps, s, rb, initial)
		rep.Steps = append(rep.Steps, ps)
	}
	noteLossBound(rb, snap, rep.Steps)
	rep.WouldProceed = lockRes.Level == checks.OK
	for _, ps := range rep.Steps {
		if ps.Status == PlanRefused || ps.Status == PlanFails {
			rep.WouldProceed = false
		}
	}
	return rep
}

// noteLossBound warns on a `lost_writes` assertion that an emergency
// failover in the runbook cannot be held to on this cluster: without
// synchronous replication (synchronous_standby_names set, synchronous_commit
// on or remote_apply) acknowledged writes may be missing from every replica
// when the primary dies, so the assertion may fail through no fault of the
// drill.
func noteLossBound(rb *Runbook, snap *topology.Snapshot, steps []*PlannedStep) {
	emergency := slices.ContainsFunc(rb.Steps, func(s *Step) bool { return s.Kind == KindPromote && s.Promote == PromoteEmergency })
	if !emergency {
		return
	}
	why := "the primary cannot be read now"
	if p := snap.PrimaryNode(); p != nil {
		ss, commit := p.Settings.SyncStandbys, p.Settings.SynchronousCommit
		if ss != nil && ss.Enabled() && commit != nil && (*commit == "on" || *commit == "remote_apply") {
			return
		}
		why = p.Name + " replicates asynchronously"
	}
	for i, s := range rb.Steps {
		if s.Kind != KindAssert || i >= len(steps) {
			continue
		}
		for _, a := range s.Assertions {
			if a.Metric == MetricLostWrites {
				note := fmt.Sprintf("%s cannot be guaranteed: %s, so an emergency failover may lose acknowledged writes", a.Expr, why)
				if steps[i].Detail != "" {
					note = steps[i].Detail + "; " + note
				}
				steps[i].Detail = note
			}
		}
	}
}

// lockResult is the lock line of promote --dry-run's preflight.
func (e *Engine) lockResult(obs observation, etcdErr error) checks.Result {
	r := checks.Result{Name: "lock", Level: checks.OK, Code: "ok", Message: "the cluster lock is free"}
	switch {
	case !e.Cfg.Etcd.Configured():
		r.Level, r.Code, r.Message, r.Hint = checks.Critical, "lock", "etcd is not configured: no fencing lock", "add etcd.endpoints to "+e.Cfg.File
	case e.Cli == nil:
		msg := "etcd is unreachable"
		if etcdErr != nil {
			msg = "etcd: " + etcdErr.Error()
		}
		r.Level, r.Code, r.Message, r.Hint = checks.Critical, "lock", msg, "the lock cannot be taken while etcd is unreachable"
	case obs.EtcdErr != nil:
		r.Level, r.Code, r.Message, r.Hint = checks.Critical, "lock", "etcd: "+obs.EtcdErr.Error(), "the lock cannot be taken while etcd is unreachable"
	case obs.Holder != nil:
		r.Level, r.Code, r.Message, r.Hint = checks.Critical, "lock", "held by "+obs.Holder.Describe(e.now()), "wait for it, or use --lock-wait"
	}
	return r
}

func (e *Engine) planNow(ctx context.Context, ps *PlannedStep, s *Step, rb *Runbook, obs observation, initial string, lockRes checks.Result) {
	snap := obs.Snap
	ps.Status = PlanOK
	refuse := func(msg string) { ps.Status, ps.Detail = PlanRefused, msg }
	switch s.Kind {
	case KindCheck:
		rs, err := checks.Run(snap, e.Cfg, s.Checks...)
		if err != nil {
			refuse(err.Error())
			return
		}
		ps.Checks = checks.Problems(rs)
		if bad := failing(rs, s.FailOn); len(bad) > 0 {
			refuse(checkSummary(bad))
			return
		}
		ps.Detail = fmt.Sprintf("passes now: %d results, worst %s", len(rs), checks.Worst(rs))
	case KindPromote:
		cand, err := resolveCandidate(s.Candidate, initial, snap)
		if err != nil {
			refuse(err.Error())
			return
		}
		if cand != "" && alreadyPrimary(snap, cand) {
			ps.Node, ps.Detail = cand, cand+" is already the primary: a run skips this step"
			return
		}
		op := e.planPromotion(s, snap, obs.State, cand, nil, nil)
		op.Checks = append(op.Checks, lockRes)
		op.Proceed = op.Proceed && lockRes.Level == checks.OK
		ps.Promote, ps.Node = op, op.Candidate
		if failed := checks.Failed(op.Checks); len(failed) > 0 && !(len(failed) == 1 && failed[0].Name == "lock") {
			refuse(checkSummary(failed))
			ps.Checks = failed
		} else if op.Error != "" {
			refuse(op.Error)
		} else {
			ps.Detail = fmt.Sprintf("%s %s -> %s would proceed", op.Kind, op.Primary, op.Candidate)
		}
	case KindRejoin:
		node, err := resolve(s.Target, initial, snap)
		if err != nil {
			refuse(err.Error())
			return
		}
		ps.Node = node
		if failover.FollowsPrimary(snap, node) {
			ps.Detail = node + " already streams from " + string(snap.Primary) + ": a run skips this step"
			return
		}
		op := failover.PlanFrom(e.Cfg, failover.Request{Kind: failover.KindRejoin, Node: node}, failover.Observation{Snap: snap, State: obs.State}, nil, nil)
		op.Checks = append(op.Checks, lockRes)
		failed := checks.Failed(op.Checks)
		op.Proceed = op.Proceed && lockRes.Level == checks.OK
		ps.Promote = op
		if len(failed) > 0 && !(len(failed) == 1 && failed[0].Name == "lock") {
			refuse(checkSummary(failed))
			ps.Checks = failed
		} else if op.Error != "" {
			refuse(op.Error)
		}
	case KindNode:
		e.planNode(ps, s, initial, snap)
	case KindWait:
		holds, msg := waitHolds(e.Cfg, s, snap, initial)
		if holds {
			ps.Detail = "holds now: " + msg
		} else {
			ps.Status, ps.Detail = PlanWaits, fmt.Sprintf("does not hold now (%s): a run waits up to %s", msg, s.Timeout)
		}
	case KindProbe:
		ps.Detail = probeDetail(e.Cfg, s, rb)
	case KindAssert:
		var later, now []string
		for _, a := range s.Assertions {
			if !liveMetric(a.Metric) {
				later = append(later, a.Expr)
				continue
			}
			got, ok := liveValue(a.Metric, snap)
			bound, err := boundValue(a, initial, snap)
			switch {
			case err != nil:
				now = append(now, fmt.Sprintf("%s: %v", a.Expr, err))
				ps.Status = PlanFails
			case !ok:
				now = append(now, a.Expr+": not measurable now")
				ps.Status = PlanFails
			case !a.Eval(got, bound):
				now = append(now, fmt.Sprintf("%s is false now (measured %s)", a.Expr, got))
				ps.Status = PlanFails
			default:
				now = append(now, fmt.Sprintf("%s holds now (measured %s)", a.Expr, got))
			}
		}
		if len(later) > 0 {
			now = append(now, "measured at run time: "+strings.Join(later, ", "))
			if ps.Status == PlanOK && len(later) == len(s.Assertions) {
				ps.Status = PlanAtRunTime
			}
		}
		ps.Detail = strings.Join(now, "; ")
	case KindSleep:
		ps.Detail = "sleeps " + s.Duration.String()
	}
}

// planLater describes a step whose preconditions depend on earlier steps,
// checking what does not (a literal node's commands).
func (e *Engine) planLater(ps *PlannedStep, s *Step, rb *Runbook, initial string) {
	ps.Status = PlanAtRunTime
	switch s.Kind {
	case KindCheck:
		names := "the monitoring checks"
		if len(s.Checks) > 0 {
			names = strings.Join(s.Checks, ", ")
		}
		ps.WillCheck = []string{fmt.Sprintf("run %s on the cluster as it is then; fail on %s", names, strings.ToLower(s.FailOn.String()))}
	case KindPromote:
		ps.WillCheck = promoteWillCheck(e.Cfg, s)
		if n, err := resolve(s.Candidate, initial, nil); err == nil && n != "" {
			ps.Node = n
		}
	case KindRejoin:
		ps.WillCheck = []string{"skip it when the node already streams from the primary",
			"the rejoin preflight: a reachable primary, the node is not it, commands.rejoin configured, same system identifier",
			"then the rejoin plan built from the topology at that moment (slot, commands.rejoin, wait until it streams, drop old slots, unfence)"}
		if n, err := resolve(s.Target, initial, nil); err == nil && n != "" {
			ps.Node = n
			if cn, _ := e.Cfg.Node(n); cn.Commands.Rejoin == "" {
				ps.Status, ps.Detail = PlanRefused, n+" has no commands.rejoin: a run would be refused"
			}
		}
	case KindNode:
		e.planNode(ps, s, initial, nil)
		if ps.Status == PlanOK {
			ps.Status = PlanAtRunTime
		}
	case KindWait:
		ps.WillCheck = []string{fmt.Sprintf("poll every %s until %s, for up to %s", e.poll(), s.describeCondition(), s.Timeout)}
	case KindProbe:
		ps.Detail = probeDetail(e.Cfg, s, rb)
	case KindAssert:
		for _, a := range s.Assertions {
			ps.WillCheck = append(ps.WillCheck, a.Expr)
		}
	case KindSleep:
		ps.Detail = "sleeps " + s.Duration.String()
	}
}

func (e *Engine) planNode(ps *PlannedStep, s *Step, initial string, snap *topology.Snapshot) {
	ps.Status = PlanOK
	if s.Target.Kind == RefPrimary && snap == nil {
		ps.Status = PlanAtRunTime
		ps.WillCheck = []string{fmt.Sprintf("run commands.%s of the primary at that moment; refuse when it has none", s.Action)}
		return
	}
	node, err := resolve(s.Target, initial, snap)
	if err != nil {
		ps.Status, ps.Detail = PlanRefused, err.Error()
		return
	}
	ps.Node = node
	cn, _ := e.Cfg.Node(node)
	cmd := pgctl.CommandFor(cn, s.Action)
	if cmd == "" {
		ps.Status, ps.Detail = PlanRefused, fmt.Sprintf("%s has no commands.%s: a run would refuse this step", node, s.Action)
		return
	}
	ps.Detail = fmt.Sprintf("will run commands.%s of %s: %s", s.Action, node, cmd)
	if s.Action == NodeStart {
		ps.WillCheck = []string{"refuse when the cluster record marks the node fenced (a former primary comes back through rejoin)"}
	}
	if n := snapNode(snap, node); s.Action == NodeStart && n != nil && n.Reachable {
		ps.Detail = node + " answers now: a run skips this step"
	}
}

func snapNode(snap *topology.Snapshot, name string) *topology.Node {
	if snap == nil {
		return nil
	}
	return snap.Node(name)
}

func promoteWillCheck(cfg *config.Config, s *Step) []string {
	var out []string
	if s.Promote == PromoteEmergency {
		out = append(out,
			fmt.Sprintf("when the primary does not answer, probe it over failover.confirm_window (%s) and judge the evidence that it is dead", cfg.Failover.ConfirmWindow))
		if s.Candidate.Kind == RefAuto {
			out = append(out, "choose the most advanced reachable replica (received LSN, then priority, then name)")
		} else {
			out = append(out, fmt.Sprintf("promote %s, never skipping a safety check", s.Candidate))
		}
		out = append(out, "the emergency preflight: evidence of death, timelines agree, no replica ahead of the candidate, the synchronous quorum proof (unless allow_data_loss)",
			"then the failover plan built from the topology at that moment: fence, mark fenced, replay what was received, promote, verify, record, repoint")
		return out
	}
	if s.Candidate.Kind == RefAuto {
		out = append(out, "choose the candidate among the replicas streaming from the primary then: least lag, then priority, then name")
	} else {
		out = append(out, fmt.Sprintf("promote %s; skip the step when it already is the primary", s.Candidate))
	}
	out = append(out, fmt.Sprintf("the switchover preflight: one reachable primary, no split brain, the candidate reachable, same system identifier, in recovery, streaming from the primary on its timeline, replay not paused, lag within %s, priority above 0, recovery_target_timeline = latest", s.MaxLag))
	if s.RequireStop {
		out = append(out, "the primary has commands.stop (require_stop)")
	}
	out = append(out, "then the switchover plan built from the topology at that moment, as promote --dry-run would print it")
	return out
}

// request is the promotion a step asks for, with cand as the candidate
// ("" lets replctl choose).
func (e *Engine) request(s *Step, cand string) failover.Request {
	if s.Promote == PromoteEmergency {
		return failover.Request{Kind: failover.KindFailover, Emergency: emergencyOptions(s, cand, e.timeout())}
	}
	return failover.Request{Kind: failover.KindSwitchover, Switchover: switchoverOptions(s, cand, e.timeout())}
}

// planPromotion plans a step's promotion from one observation with the
// driver's own planning function, for the dry-run (env nil) and the run
// alike, so the two show the same steps.
func (e *Engine) planPromotion(s *Step, snap *topology.Snapshot, st *etcdlock.State, cand string,
	probes []failover.ProbeAttempt, env *failover.Env) *OperationPlan {
	return failover.PlanFrom(e.Cfg, e.request(s, cand), failover.Observation{Snap: snap, State: st}, probes, env)
}

// driver is the operation driver over the engine's observations.
func (e *Engine) driver(progress func(string)) *failover.Driver {
	return &failover.Driver{
		Cfg: e.Cfg,
		Observe: func(ctx context.Context) failover.Observation {
			o := e.observe(ctx)
			return failover.Observation{Snap: o.Snap, State: o.State}
		},
		Confirm: func(ctx context.Context, obs failover.Observation) []failover.ProbeAttempt {
			// As promote --emergency does: a primary that does not answer
			// is probed over the confirmation window before it is
			// declared dead.
			return failover.ConfirmDown(ctx, e.Cfg, obs.Snap, obs.State, e.timeout(), func(old string) {
				progress(fmt.Sprintf("probing %s over %s (failover.confirm_window)", old, e.Cfg.Failover.ConfirmWindow))
			})
		},
	}
}

func switchoverOptions(s *Step, cand string, call time.Duration) failover.SwitchoverOptions {
	return failover.SwitchoverOptions{Candidate: cand, MaxLag: uint64(s.MaxLag), CatchupTimeout: s.CatchupTimeout, CallTimeout: call, NoRejoin: s.NoRejoin, RequireStop: s.RequireStop}
}

func emergencyOptions(s *Step, cand string, call time.Duration) failover.EmergencyOptions {
	return failover.EmergencyOptions{Candidate: cand, CatchupTimeout: s.CatchupTimeout, CallTimeout: call, AllowDataLoss: s.AllowDataLoss}
}

// resolveCandidate is "" for auto.
func resolveCandidate(r Ref, initial string, snap *topology.Snapshot) (string, error) {
	if r.Kind == RefAuto {
		return "", nil
	}
	return resolve(r, initial, snap)
}

func alreadyPrimary(snap *topology.Snapshot, node string) bool {
	return string(snap.Primary) == node && len(snap.SplitBrain) <= 1
}

// failing returns the results that fail a check step at level failOn.
func failing(rs []checks.Result, failOn checks.Level) []checks.Result {
	var out []checks.Result
	for _, r := range rs {
		if r.Level == checks.Critical || r.Level == checks.Unknown || failOn == checks.Warning && r.Level == checks.Warning {
			out = append(out, r)
		}
	}
	return out
}

func checkSummary(rs []checks.Result) string {
	var parts []string
	for _, r := range rs {
		s := r.Name
		if r.Node != "" {
			s += " (" + r.Node + ")"
		}
		parts = append(parts, s+": "+r.Message)
	}
	return strings.Join(parts, "; ")
}

// boundValue resolves a node bound (initial_primary, primary) now.
func boundValue(a *Assertion, initial string, snap *topology.Snapshot) (Value, error) {
	if a.Type != TypeNode {
		return a.Value, nil
	}
	n, err := resolve(a.Value.Ref, initial, snap)
	if err != nil {
		return Value{}, err
	}
	return Value{Type: TypeNode, Node: n}, nil
}
