package runbooks

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/failover/writeprobe"
	"github.com/replctl/replctl/topology"
)

// KindDrill is the history record kind of a drill.
const KindDrill = "drill"

// finalTimeout bounds what runs after the steps (stopping the probe, the
// last look at the cluster), detached from an interrupted context.
const finalTimeout = 30 * time.Second

// drill is one run of a runbook.
type drill struct {
	e    *Engine
	rb   *Runbook
	rep  *Report
	lock *etcdlock.Lock
	op   *etcdlock.Operation
	ctl  *pgctl.PG

	initial string
	// initialLogical names the initial primary's logical slots at the
	// drill's start: what logical_slots_kept counts on the primary later.
	initialLogical []string
	started        time.Time
	// changed is set once a step that changes the cluster has run.
	changed bool

	probe      *writeprobe.Probe
	probeRep   *writeprobe.Report
	missing    []int64
	verified   bool
	promoteOut *time.Duration
	durations  map[string]time.Duration
}

// Run executes the runbook under the cluster lock, held from the first step
// to the last, and records it in the history as one operation of kind
// "drill". A step that fails stops the steps and runs the on_failure
// steps; those that change the cluster are skipped once the lock is lost.
// The report is returned in every case; the error is non-nil only when the
// drill could not start: a *etcdlock.LockHeldError (another operation holds
// the lock: the drill is skipped) or a failure to take the lock.
func (e *Engine) Run(ctx context.Context, rb *Runbook) (*Report, error) {
	rep := &Report{Runbook: rb.Name, Description: rb.Description, File: rb.File, Cluster: rb.Cluster, Started: e.now(), Outcome: Skipped}
	for _, s := range append(slices.Clone(rb.Steps), rb.OnFailure...) {
		sr := &StepReport{ID: s.ID, Kind: s.Kind, Phase: s.Phase, Description: s.Describe(), Outcome: NotRun}
		// Listed before they run, so that a CI system sees the same test
		// cases whether or not the drill got to them.
		for _, a := range s.Assertions {
			sr.Assertions = append(sr.Assertions, AssertionResult{Expr: a.Expr, Error: "not run"})
		}
		rep.Steps = append(rep.Steps, sr)
	}
	finish := func() {
		rep.Finished = e.now()
		rep.DurationSeconds = rep.Finished.Sub(rep.Started).Seconds()
	}
	if e.Cli == nil {
		rep.Outcome, rep.Error = Failed, "a drill needs etcd for the cluster lock: add etcd.endpoints to "+e.Cfg.File
		finish()
		return rep, errors.New(rep.Error)
	}
	lock, err := etcdlock.Acquire(ctx, e.Cli, etcdlock.LockOptions{
		Prefix: e.Cfg.Etcd.Prefix, Cluster: e.Cfg.Cluster, TTL: e.Cfg.Lock.TTL, Wait: e.LockWait,
		HistoryKeep: e.Cfg.History.Keep, Actor: etcdlock.CurrentActor(e.Command), OnWait: e.OnWait,
	})
	if err != nil {
		var held *etcdlock.LockHeldError
		if !errors.As(err, &held) {
			rep.Outcome = Failed
		}
		rep.Error = err.Error()
		finish()
		return rep, err
	}
	defer func() { _ = lock.Release(context.WithoutCancel(ctx)) }()
	if ir, _, err := etcdlock.FindInterrupted(ctx, e.Cli, e.Cfg.Etcd.Prefix, e.Cfg.Cluster); err != nil || len(ir) > 0 {
		rep.Outcome, rep.Refused = Failed, true
		if err != nil {
			rep.Error = "cannot tell whether an operation was interrupted: " + err.Error()
		} else {
			c := failover.InterruptedCheck(ir[0])
			rep.Error = c.Message + ": " + c.Hint
		}
		finish()
		return rep, nil
	}
	op, err := lock.StartOperation(ctx, KindDrill, map[string]string{"runbook": rb.Name, "file": rb.File})
	if err != nil {
		rep.Outcome, rep.Error = Failed, err.Error()
		finish()
		return rep, err
	}
	rep.OperationID, rep.Token = op.ID(), lock.Token()
	d := &drill{e: e, rb: rb, rep: rep, lock: lock, op: op, ctl: pgctl.NewPG(e.Cfg, e.timeout()),
		started: rep.Started, durations: map[string]time.Duration{}}
	defer d.ctl.Close()

	// The lock's context ends when the lock is lost: no main step starts,
	// or goes on, after that.
	lctx := lock.Context()
	first := e.observe(lctx)
	d.initial = string(first.Snap.Primary)
	d.initialLogical = logicalSlotNames(first.Snap.PrimaryNode())
	if err := failover.SaveSyncSettings(lctx, lock, first.Snap.PrimaryNode()); err != nil {
		e.emit(Event{Type: EventDrillStarted, Message: "warning: could not save the primary's synchronous settings in the cluster record: " + err.Error()})
	}
	rep.InitialPrimary = d.initial
	e.emit(Event{Type: EventDrillStarted, Message: fmt.Sprintf("drill %s on cluster %s: lock taken (token %d), operation %s, initial primary %s",
		rb.Name, rb.Cluster, lock.Token(), op.ID(), orNone(d.initial))})

	var failed *StepReport
	changedBefore := false
	for i, s := range rb.Steps {
		sr := rep.Steps[i]
		if err := lctx.Err(); err != nil {
			sr.Outcome, sr.Error = Failed, "not started: "+context.Cause(lctx).Error()
			failed = sr
			break
		}
		changedBefore = d.changed
		d.run(lctx, s, sr, i+1, len(rb.Steps))
		if sr.Outcome == Failed {
			failed = sr
			break
		}
	}
	rep.Outcome = Passed
	if failed != nil {
		rep.Outcome = Failed
		rep.Error = fmt.Sprintf("step %s (%s) failed: %s", failed.ID, failed.Description, failed.Error)
		rep.Refused = failed.Refused && !changedBefore
		if lock.Err() != nil {
			rep.NeedsAttention = true
		}
		d.onFailure(ctx)
	}
	// Cleanup runs even when the drill was interrupted, with its own bound.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalTimeout)
	defer cancel()
	if d.probe != nil {
		if err := d.stopProbe(fctx); err != nil && rep.Error == "" {
			rep.Error = err.Error()
		}
	}
	final := e.observe(fctx)
	rep.FinalPrimary = string(final.Snap.Primary)
	d.summarize(final.Snap)
	finish()

	outcome := plan.OutcomeSucceeded
	var opErr error
	if rep.Outcome == Failed {
		outcome, opErr = plan.OutcomeFailed, errors.New(rep.Error)
		var lost *etcdlock.LockLostError
		switch {
		case errors.As(lock.Err(), &lost):
			outcome = etcdlock.OutcomeLockLost
		case rep.NeedsAttention:
			outcome = plan.OutcomePartial
		}
	}
	_ = op.Finish(context.WithoutCancel(ctx), outcome, opErr)
	return rep, nil
}

// onFailure runs the on_failure steps, all of them, whatever each gives:
// they are the way back. They run detached from an interrupt, and those
// that change the cluster only while the lock is still held.
func (d *drill) onFailure(ctx context.Context) {
	if len(d.rb.OnFailure) == 0 {
		return
	}
	d.e.emit(Event{Type: EventOnFailure, Message: fmt.Sprintf("running %d on_failure steps", len(d.rb.OnFailure))})
	octx := context.WithoutCancel(ctx)
	base := len(d.rb.Steps)
	for j, s := range d.rb.OnFailure {
		sr := d.rep.Steps[base+j]
		if err := d.lock.Err(); err != nil && s.Kind.Changes() {
			now := d.e.now()
			sr.Started, sr.Outcome = &now, Skipped
			sr.Error = "skipped: it changes the cluster and the lock is no longer held (" + err.Error() + ")"
			sr.Hint = "do by hand what this step would have done, after checking replctl status"
			d.rep.NeedsAttention = true
			d.e.emit(Event{Type: EventStepEnded, Step: sr, Index: j + 1, Total: len(d.rb.OnFailure)})
			continue
		}
		d.run(octx, s, sr, j+1, len(d.rb.OnFailure))
		if sr.Outcome == Failed {
			d.rep.NeedsAttention = true
		}
	}
}

// run executes one step and records it in the report and the history.
func (d *drill) run(ctx context.Context, s *Step, sr *StepReport, index, total int) {
	start := d.e.now()
	sr.Started, sr.Outcome = &start, ""
	d.e.emit(Event{Type: EventStepStarted, Step: sr, Index: index, Total: total, Time: start})
	_ = d.op.Observe(ctx, plan.Event{Type: plan.StepStarted, StepID: s.ID, Description: sr.Description, Time: start})
	err := d.exec(ctx, s, sr)
	end := d.e.now()
	sr.duration = end.Sub(start)
	sr.DurationSeconds = sr.duration.Seconds()
	d.durations[s.ID] = sr.duration
	typ := plan.StepDone
	switch {
	case err != nil:
		sr.Outcome, sr.Error = Failed, config.Scrub(err.Error())
		typ = plan.StepFailed
	case sr.Outcome == Skipped:
		typ = plan.StepSkipped
	default:
		sr.Outcome = Passed
	}
	if s.Kind.Changes() && sr.Outcome != Skipped && !sr.Refused {
		d.changed = true
	}
	_ = d.op.Observe(ctx, plan.Event{Type: typ, StepID: s.ID, Description: sr.Description, Time: end, Duration: sr.duration, Error: sr.Error})
	d.e.emit(Event{Type: EventStepEnded, Step: sr, Index: index, Total: total, Time: end})
}

func (d *drill) exec(ctx context.Context, s *Step, sr *StepReport) error {
	switch s.Kind {
	case KindCheck:
		return d.check(ctx, s, sr)
	case KindPromote:
		return d.promote(ctx, s, sr)
	case KindRejoin:
		return d.rejoin(ctx, s, sr)
	case KindNode:
		return d.node(ctx, s, sr)
	case KindWait:
		return d.wait(ctx, s, sr)
	case KindProbe:
		if s.Action == ProbeStart {
			return d.startProbe(ctx, sr)
		}
		if d.probe == nil {
			sr.Outcome = Skipped
			sr.measure("probe", "not running")
			return nil
		}
		return d.stopProbe(ctx)
	case KindAssert:
		return d.assert(ctx, s, sr)
	case KindSleep:
		t := time.NewTimer(s.Duration)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-t.C:
			return nil
		}
	}
	return fmt.Errorf("unknown step kind %q", s.Kind)
}

func (d *drill) check(ctx context.Context, s *Step, sr *StepReport) error {
	snap := d.e.observe(ctx).Snap
	rs, err := checks.Run(snap, d.e.Cfg, s.Checks...)
	if err != nil {
		return err
	}
	sr.Checks = checks.Problems(rs)
	sr.measure("worst", strings.ToLower(checks.Worst(rs).String()))
	if bad := failing(rs, s.FailOn); len(bad) > 0 {
		sr.Refused, sr.Hint = true, bad[0].Hint
		return fmt.Errorf("%d failed: %s", len(bad), checkSummary(bad))
	}
	return nil
}

// env is what a promotion or rejoin plan acts through, its waits reported
// as progress of the drill step.
func (d *drill) env(sr *StepReport) *failover.Env {
	return &failover.Env{Ctl: d.ctl, Progress: func(step, msg string) {
		d.e.emit(Event{Type: EventProgress, Step: sr, Message: step + ": " + msg})
	}}
}

// sink forwards a plan's events as the drill step's to the caller.
func (d *drill) sink(s *Step, sr *StepReport) plan.Sink {
	return func(ev plan.Event) {
		ev.StepID = s.ID + "/" + ev.StepID
		d.e.emit(Event{Type: EventPlanStep, Step: sr, Plan: &ev})
	}
}

// journal writes a plan's journal into the drill's history record, its
// step IDs prefixed with the drill step's (the plan's own prefix is then
// "<step>/"), so that recover finds the promotion inside the drill.
func (d *drill) journal(s *Step) func(ctx context.Context, events ...plan.Event) error {
	return func(ctx context.Context, events ...plan.Event) error {
		prefixed := make([]plan.Event, len(events))
		for i, ev := range events {
			ev.StepID = s.ID + "/" + ev.StepID
			prefixed[i] = ev
		}
		return d.op.Observe(ctx, prefixed...)
	}
}

// execute runs a promotion or rejoin, prepared and planned with env, under
// the drill's lock, through the driver.
func (d *drill) execute(ctx context.Context, s *Step, sr *StepReport, drv *failover.Driver, prep *failover.Prepared, op *failover.OperationPlan, env *failover.Env) error {
	if err := d.lock.Check(ctx, time.Second); err != nil {
		return err
	}
	res := drv.Run(ctx, prep, op, env, failover.OperationSpec{Cfg: d.e.Cfg, Cli: d.e.Cli, Held: d.lock,
		Sink: d.sink(s, sr), Journal: d.journal(s), Now: d.e.Now})
	sr.Plan = res
	switch res.Outcome {
	case plan.OutcomeSucceeded:
		return nil
	case plan.OutcomePartial:
		d.rep.NeedsAttention = true
		sr.Hint = "the promotion happened but some steps did not: finish them by hand (see remaining), then check replctl status"
		return fmt.Errorf("partly done: %w; remaining: %s", res.Err, strings.Join(res.Remaining, "; "))
	}
	var refused *failover.RefusedError
	var changed *failover.PlanChangedError
	if errors.As(res.Err, &refused) || errors.As(res.Err, &changed) {
		sr.Refused = true
	}
	sr.Hint = "the steps done were undone, unless the lock was lost (then nothing was undone) or an undo failed: see plan_result.left and the status after the step"
	return res.Err
}

func (d *drill) promote(ctx context.Context, s *Step, sr *StepReport) error {
	obs := d.e.observe(ctx)
	cand, err := resolveCandidate(s.Candidate, d.initial, obs.Snap)
	if err != nil {
		return err
	}
	if cand != "" && alreadyPrimary(obs.Snap, cand) {
		sr.Node, sr.Outcome = cand, Skipped
		sr.measure("skipped", cand+" is already the primary")
		return nil
	}
	err = d.operate(ctx, s, sr, d.e.request(s, cand))
	if out := promoteOutage(sr.Plan); out != nil {
		sr.measure(MetricPromoteOutage, roundDur(*out).String())
		if d.promoteOut == nil || *out > *d.promoteOut {
			d.promoteOut = out
		}
	}
	return err
}

// operate prepares req with the driver (observe, confirm, plan), reports a
// refusal, and otherwise runs the plan under the drill's lock. Under the
// lock the candidate chosen here is kept (the driver pins it): every check
// of the preflight still runs on the fresh look.
func (d *drill) operate(ctx context.Context, s *Step, sr *StepReport, req failover.Request) error {
	drv := d.e.driver(func(msg string) { d.e.emit(Event{Type: EventProgress, Step: sr, Message: msg}) })
	prep := drv.Prepare(ctx, req, nil)
	op := prep.Op
	sr.Node = op.Candidate
	if failed := checks.Failed(op.Checks); len(failed) > 0 {
		sr.Checks, sr.Refused, sr.Hint = failed, true, failed[0].Hint
		return &failover.RefusedError{Failed: failed}
	}
	if op.Error != "" || op.Plan == nil {
		sr.Refused = true
		return errors.New(op.Error)
	}
	if req.Kind == failover.KindRejoin {
		sr.measure("primary", op.Primary)
	} else {
		sr.measure("candidate", op.Candidate)
		sr.measure("from", op.Primary)
	}
	env := d.env(sr)
	run := drv.Replan(prep, env)
	if run.Plan == nil || run.Error != "" {
		sr.Refused = true
		return fmt.Errorf("the plan could not be built again: %s", run.Error)
	}
	return d.execute(ctx, s, sr, drv, prep, run, env)
}

func (d *drill) rejoin(ctx context.Context, s *Step, sr *StepReport) error {
	obs := d.e.observe(ctx)
	node, err := resolve(s.Target, d.initial, obs.Snap)
	if err != nil {
		return err
	}
	sr.Node = node
	if failover.FollowsPrimary(obs.Snap, node) {
		sr.Outcome = Skipped
		sr.measure("skipped", node+" already streams from "+string(obs.Snap.Primary))
		return nil
	}
	// On the way back from a failure that came before the failover, the
	// node to rejoin may still be the primary: there is nothing to rejoin.
	if s.Phase == PhaseOnFailure && alreadyPrimary(obs.Snap, node) {
		sr.Outcome = Skipped
		sr.measure("skipped", node+" is the primary")
		return nil
	}
	return d.operate(ctx, s, sr, failover.Request{Kind: failover.KindRejoin, Node: node})
}

func (d *drill) node(ctx context.Context, s *Step, sr *StepReport) error {
	obs := d.e.observe(ctx)
	snap := obs.Snap
	node, err := resolve(s.Target, d.initial, snap)
	if err != nil {
		return err
	}
	sr.Node = node
	cn, _ := d.e.Cfg.Node(node)
	if pgctl.CommandFor(cn, s.Action) == "" {
		sr.Refused, sr.Hint = true, fmt.Sprintf("configure commands.%s for %s in %s", s.Action, node, d.e.Cfg.File)
		return fmt.Errorf("%s has no commands.%s: refusing", node, s.Action)
	}
	// Starting a server that runs fails (pg_ctl refuses), and on_failure
	// steps start nodes without knowing whether an earlier step stopped them.
	if n := snap.Node(node); s.Action == NodeStart && n != nil && n.Reachable {
		sr.Outcome = Skipped
		sr.measure("skipped", node+" already answers")
		return nil
	}
	// A fenced former primary starts writable: with another primary in
	// place that is a split brain. It comes back through a rejoin.
	if s.Action == NodeStart && obs.State != nil && obs.State.IsFenced(node) {
		sr.Refused, sr.Hint = true, fmt.Sprintf("bring it back as a replica with a rejoin step (rejoin: %s)", s.Target)
		return fmt.Errorf("%s is marked fenced in the cluster record: starting it could make a second writable primary", node)
	}
	if err := d.lock.Check(ctx, time.Second); err != nil {
		return err
	}
	res, err := d.ctl.RunCommand(ctx, node, s.Action, nil)
	sr.Command = &res
	return err
}

func (d *drill) wait(ctx context.Context, s *Step, sr *StepReport) error {
	wctx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	start := d.e.now()
	last := ""
	for {
		snap := d.e.observe(wctx).Snap
		// A look cut short by the deadline shows nodes as unreachable that
		// are not: it must not satisfy "unreachable".
		if wctx.Err() == nil {
			ok, msg := waitHolds(d.e.Cfg, s, snap, d.initial)
			if ok {
				sr.measure("waited", roundDur(d.e.now().Sub(start)).String())
				sr.measure("seen", msg)
				return nil
			}
			if msg != last {
				d.e.emit(Event{Type: EventProgress, Step: sr, Message: msg})
				last = msg
			}
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			sr.Hint = "the cluster did not get there in time: see replctl status, or raise the step's timeout"
			return fmt.Errorf("timed out after %s: %s", s.Timeout, last)
		case <-time.After(d.e.poll()):
		}
	}
}

func (d *drill) startProbe(ctx context.Context, sr *StepReport) error {
	if d.probe != nil {
		return errors.New("the probe is already running")
	}
	ps := d.rb.Probe
	dsn, err := probeDSN(d.e.Cfg, ps)
	if err != nil {
		return err
	}
	// The probe keeps writing through the on_failure steps and stops when
	// told, or when the drill ends, never because a step was interrupted.
	p, err := writeprobe.Start(context.WithoutCancel(ctx), writeprobe.Options{DSN: dsn, Table: ps.Table, Interval: ps.Interval, WriteTimeout: ps.WriteTimeout})
	if err != nil {
		sr.Hint = "the probe needs a writable primary reachable through the nodes' DSNs, and CREATE on the database"
		return err
	}
	d.probe = p
	d.rep.Probe = &ProbeSummary{Table: ps.Table, Database: ps.Database, DSN: config.RedactDSN(dsn)}
	sr.measure("dsn", config.RedactDSN(dsn))
	return nil
}

// stopProbe stops the probe and counts the acknowledged writes missing on
// the node that takes writes now.
func (d *drill) stopProbe(ctx context.Context) error {
	p := d.probe
	d.probe = nil
	r := p.Stop()
	d.probeRep = &r
	ps := d.rep.Probe
	ps.Attempts, ps.Acked, ps.Failed = int64(r.Attempts), int64(r.Acked), int64(r.Failed)
	ps.LongestOutageSeconds = r.LongestOutage.Seconds()
	missing, err := p.Verify(ctx)
	if err != nil {
		ps.VerifyError = err.Error()
		return fmt.Errorf("count lost writes: %w", err)
	}
	d.missing, d.verified = missing, true
	ps.Verified, ps.MissingCount = true, int64(len(missing))
	ps.Missing = missing[:min(len(missing), 100)]
	sr := d.current()
	if sr != nil {
		sr.measure(MetricWriteOutage, roundDur(r.LongestOutage).String())
		sr.measure(MetricWritesAcked, fmt.Sprint(r.Acked))
		sr.measure(MetricWritesFailed, fmt.Sprint(r.Failed))
		sr.measure(MetricLostWrites, fmt.Sprint(len(missing)))
	}
	return nil
}

// current is the step running now, for measurements made by helpers.
func (d *drill) current() *StepReport {
	for _, s := range d.rep.Steps {
		if s.Outcome == "" {
			return s
		}
	}
	return nil
}

func (d *drill) assert(ctx context.Context, s *Step, sr *StepReport) error {
	var snap *topology.Snapshot
	look := func() *topology.Snapshot {
		if snap == nil {
			snap = d.e.observe(ctx).Snap
		}
		return snap
	}
	var failed []string
	sr.Assertions = nil
	for _, a := range s.Assertions {
		ar := AssertionResult{Expr: a.Expr}
		got, ok := d.metric(a.Metric, look)
		var bound Value
		var berr error
		if a.Type == TypeNode {
			bound, berr = boundValue(a, d.initial, look())
		} else {
			bound = a.Value
		}
		switch {
		case !ok:
			ar.Error = a.Metric + " was not measured"
			if probeMetric(a.Metric) {
				ar.Error += ": the probe was not stopped before this step"
			}
		case berr != nil:
			ar.Actual, ar.Error = got.String(), berr.Error()
		default:
			ar.Actual, ar.Passed = got.String(), a.Eval(got, bound)
		}
		if !ar.Passed {
			msg := fmt.Sprintf("%s (measured %s)", a.Expr, orDash(ar.Actual))
			if ar.Error != "" {
				msg = a.Expr + ": " + ar.Error
			}
			failed = append(failed, msg)
		}
		sr.measure(a.Metric, orDash(ar.Actual))
		sr.Assertions = append(sr.Assertions, ar)
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d assertions failed: %s", len(failed), len(s.Assertions), strings.Join(failed, "; "))
	}
	return nil
}

// metric returns a measured value; ok is false when it was not measured.
func (d *drill) metric(name string, look func() *topology.Snapshot) (Value, bool) {
	if liveMetric(name) {
		return liveValue(name, look())
	}
	r := d.probeRep
	switch name {
	case MetricWriteOutage:
		if r == nil {
			return Value{}, false
		}
		return Value{Type: TypeDuration, N: int64(r.LongestOutage)}, true
	case MetricWritesAcked, MetricWritesFailed, MetricWritesAttempted:
		if r == nil {
			return Value{}, false
		}
		n := map[string]int{MetricWritesAcked: r.Acked, MetricWritesFailed: r.Failed, MetricWritesAttempted: r.Attempts}[name]
		return Value{Type: TypeInt, N: int64(n)}, true
	case MetricLostWrites:
		return Value{Type: TypeInt, N: int64(len(d.missing))}, d.verified
	case MetricPromoteOutage:
		if d.promoteOut == nil {
			return Value{}, false
		}
		return Value{Type: TypeDuration, N: int64(*d.promoteOut)}, true
	case MetricElapsed:
		return Value{Type: TypeDuration, N: int64(d.e.now().Sub(d.started))}, true
	case MetricLogicalSlotsKept:
		return logicalSlotsKept(d.initialLogical, look())
	}
	if id, ok := strings.CutSuffix(name, durationSuffix); ok {
		dur, ran := d.durations[id]
		return Value{Type: TypeDuration, N: int64(dur)}, ran
	}
	return Value{}, false
}

// summarize fills the report's metrics from what was measured and a last
// look at the cluster.
func (d *drill) summarize(snap *topology.Snapshot) {
	m := &d.rep.Metrics
	if r := d.probeRep; r != nil {
		m.WriteOutageSeconds = ptr(r.LongestOutage.Seconds())
		m.WritesAcked, m.WritesFailed, m.WritesAttempted = ptr(int64(r.Acked)), ptr(int64(r.Failed)), ptr(int64(r.Attempts))
	}
	if d.verified {
		m.LostWrites = ptr(int64(len(d.missing)))
	}
	if d.promoteOut != nil {
		m.PromoteOutageSeconds = ptr(d.promoteOut.Seconds())
	}
	m.ReplicasStreaming = ptr(int64(streamingReplicas(snap)))
	if lag, ok := largestLag(snap); ok && snap.Primary != "" {
		m.ReplicaLagBytes = ptr(int64(lag))
	}
	if v, ok := logicalSlotsKept(d.initialLogical, snap); ok {
		m.LogicalSlotsKept = ptr(v.N)
	}
	if snap.Primary != "" {
		m.Primary = ptr(string(snap.Primary))
		if p := snap.PrimaryNode(); p.Timeline != nil {
			m.Timeline = ptr(int64(*p.Timeline))
		}
	}
}

// promoteOutage is the time from the fence going up to the candidate being
// promoted, from the executed plan; nil when no promotion completed.
func promoteOutage(res *plan.Result) *time.Duration {
	if res == nil {
		return nil
	}
	var from, to time.Time
	for _, s := range res.Steps {
		switch s.ID {
		case failover.StepFence, failover.StepFenceCommand, failover.StepFenceSQL:
			if from.IsZero() {
				from = s.Start
			}
		case failover.StepPromote:
			if s.Outcome == string(plan.StepDone) {
				to = s.End
				if from.IsZero() {
					from = s.Start
				}
			}
		}
	}
	if to.IsZero() {
		return nil
	}
	d := to.Sub(from)
	return &d
}

func ptr[T any](v T) *T { return &v }

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// roundDur keeps durations readable in reports: milliseconds below ten
// seconds, tenths above.
func roundDur(d time.Duration) time.Duration {
	if d >= 10*time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}

// logicalSlotNames lists n's non-temporary logical slots (none for nil).
func logicalSlotNames(n *topology.Node) []string {
	var out []string
	if n == nil {
		return out
	}
	for _, sl := range n.Slots {
		if sl.Logical() && !sl.Temporary {
			out = append(out, sl.Name)
		}
	}
	return out
}

// logicalSlotsKept counts the slots of initial (the initial primary's
// logical slots) that snap's primary has as logical slots; ok is false
// without a readable primary.
func logicalSlotsKept(initial []string, snap *topology.Snapshot) (Value, bool) {
	p := snap.PrimaryNode()
	if p == nil || p.Slots == nil {
		return Value{Type: TypeInt}, false
	}
	now := logicalSlotNames(p)
	n := 0
	for _, name := range initial {
		if slices.Contains(now, name) {
			n++
		}
	}
	return Value{Type: TypeInt, N: int64(n)}, true
}
