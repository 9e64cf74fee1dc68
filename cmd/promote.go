package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/topology"
)

// PromoteOptions are the inputs of replctl promote.
type PromoteOptions struct {
	IO      *IOStreams
	Config  func() (*config.Config, error)
	Etcd    func(context.Context) (*clientv3.Client, error)
	Factory *Factory
	Output  string
	Timeout time.Duration

	Node           string
	DryRun         bool
	Yes            bool
	MaxLag         config.Size
	CatchupTimeout time.Duration
	NoRejoin       bool
	RequireStop    bool
	LogicalSlots   string
	LockWait       time.Duration
	// Emergency failover.
	Emergency     bool
	AllowDataLoss bool
	Force         bool
	NoFence       bool
	// Command is the command line, recorded in the lock and the history.
	Command []string
	// auto is set when replctl watch runs the failover.
	auto *unattended
}

// unattended is what replctl watch adds to an operation it runs through the
// command's own code: the history kind, the lock tied to its leadership,
// the probes that confirmed the primary dead, and (promote) the report,
// kept for the watcher's log.
type unattended struct {
	kind   string
	locker failover.Locker
	probes []failover.ProbeAttempt
	report any
	// observe bounds each probe of the operation's looks at the cluster
	// (0: --timeout): the watcher's probe budget, so that a hung node
	// costs each look its interval rather than --timeout. The steps' own
	// calls keep --timeout.
	observe time.Duration
}

// observeTimeout is the probe budget of the operation's observations.
func (u *unattended) observeTimeout(call time.Duration) time.Duration {
	if u == nil || u.observe <= 0 {
		return call
	}
	return min(call, u.observe)
}

// spec completes an operation's spec with what the watcher adds.
func (u *unattended) spec(s failover.OperationSpec) failover.OperationSpec {
	if u != nil {
		s.Kind, s.Locker = u.kind, u.locker // kind "" is the plan's
	}
	return s
}

func newCmdPromote(f *Factory, runF func(context.Context, *PromoteOptions) error) *cobra.Command {
	o := &PromoteOptions{IO: f.IO, Config: f.Config, Etcd: f.Etcd, Factory: f, MaxLag: 16 << 20}
	c := &cobra.Command{
		Use:   "promote [NODE]",
		Short: "Switch the primary role over to a replica, guarded by the fencing lock",
		Long: `Planned switchover: move the primary role to NODE (or the best candidate) with no
lost acknowledged write, a short write outage and never two writable primaries.

The plan is computed from the observed topology and printed; --dry-run runs
every preflight check read-only, prints the checks and the plan, and exits 0
when a real run would proceed, 4 when it would be refused, 5 when another
operation holds the lock. A dry-run changes
nothing: no etcd write, no SQL that writes, no node command.

A real run takes the cluster lock, re-reads the topology under it and refuses
if the plan changed, waits for the candidate to catch up, fences the old
primary (a clean stop through commands.stop, or the SQL fence without one),
waits for the candidate to replay the final WAL position, promotes it,
repoints the other replicas, rejoins the old primary through commands.rejoin
(unless --no-rejoin), carries the synchronous replication settings over, and
records the new state and the operation in etcd. A failure before the
promotion undoes the fence and leaves the old primary serving.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f); err != nil {
				return err
			}
			if len(args) == 1 {
				o.Node = args[0]
			}
			if o.CatchupTimeout <= 0 {
				return usageError("--catchup-timeout must be positive, e.g. 30s")
			}
			for _, name := range []string{"allow-data-loss", "force", "no-fence"} {
				if cmd.Flags().Changed(name) && !o.Emergency {
					return usageError("--%s applies only to --emergency", name)
				}
			}
			switch o.LogicalSlots {
			case failover.LogicalHandover, failover.LogicalDrop, failover.LogicalRefuse:
			default:
				return usageError("--logical-slots %q: use handover, drop or refuse", o.LogicalSlots)
			}
			for _, name := range []string{"max-lag", "no-rejoin", "require-stop", "logical-slots"} {
				if cmd.Flags().Changed(name) && o.Emergency {
					return usageError("--%s applies only to a planned switchover, not --emergency", name)
				}
			}
			o.Output, o.Timeout = f.Output, f.Timeout
			o.Command = commandLine(cmd, args)
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return runPromote(cmd.Context(), o)
		},
	}
	fl := c.Flags()
	fl.BoolVar(&o.DryRun, "dry-run", false, "run the preflight read-only and print the plan; change nothing")
	fl.BoolVarP(&o.Yes, "yes", "y", false, "do not ask for confirmation (required without a terminal)")
	fl.Var(&o.MaxLag, "max-lag", "refuse when the candidate's replay lag exceeds `SIZE`")
	fl.DurationVar(&o.CatchupTimeout, "catchup-timeout", 30*time.Second, "how long to wait for the candidate to catch up and replay the final position")
	fl.BoolVar(&o.NoRejoin, "no-rejoin", false, "leave the old primary fenced instead of rejoining it as a replica")
	fl.BoolVar(&o.RequireStop, "require-stop", false, "refuse unless the primary can be stopped (commands.stop): no SQL fence")
	fl.StringVar(&o.LogicalSlots, "logical-slots", failover.LogicalHandover, "logical slots the promotion would lose: handover (carry them over with writes held; needs the SQL fence), drop (their consumers resynchronise) or refuse")
	fl.BoolVar(&o.Emergency, "emergency", false, "emergency failover: the primary is dead; prove it, fence it, promote the most advanced replica")
	fl.BoolVar(&o.AllowDataLoss, "allow-data-loss", false, "emergency: promote even when another node is ahead or the sync quorum proof fails")
	fl.BoolVar(&o.Force, "force", false, "emergency: override the evidence that the primary is dead (only that check)")
	fl.BoolVar(&o.NoFence, "no-fence", false, "emergency: skip fencing the old primary (dangerous if it is alive)")
	addLockWaitFlag(c, &o.LockWait)
	return c
}

// promoteReport is the result of promote, the same for every format: the
// planned operation, and what running it did.
type promoteReport struct {
	DryRun  bool   `json:"dry_run"`
	Cluster string `json:"cluster"`
	failover.OperationPlan
	Result *plan.Result `json:"result,omitempty"`
	// WriteOutageSeconds is the time from the fence to the promoted
	// candidate accepting writes, null when no promotion ran.
	WriteOutageSeconds *float64 `json:"write_outage_seconds"`
	// Commands are the node commands the run executed, with their output.
	Commands []pgctl.CommandResult `json:"commands,omitempty"`
	// Final is every node as probed once the operation ended: what the
	// report says about the end is what this shows, not what the steps
	// hoped.
	Final *finalState `json:"final,omitempty"`
	// SyncRestore is the cluster record's note, read back once the run
	// ended, that the primary runs fewer synchronous standbys than the old
	// primary did (absent when it does not).
	SyncRestore *topology.SyncRestore `json:"sync_restore,omitempty"`
}

// finalState is the cluster as probed after an operation.
type finalState struct {
	Primary string      `json:"primary"`
	Nodes   []finalNode `json:"nodes"`
}

type finalNode struct {
	Node  string `json:"node"`
	Role  string `json:"role"`
	State string `json:"state"`
}

// probeFinal looks at every node once more after an operation, with the
// cluster record for what it says of fences.
func probeFinal(ctx context.Context, cfg *config.Config, timeout time.Duration, record func(context.Context) (*recordInfo, error)) *finalState {
	obs := observe(context.WithoutCancel(ctx), cfg, timeout, nil, record)
	f := &finalState{Primary: string(obs.Snap.Primary)}
	for _, n := range obs.Snap.Nodes {
		f.Nodes = append(f.Nodes, finalNode{Node: n.Name, Role: string(n.Role), State: n.State})
	}
	return f
}

// syncLoweredOn is the cluster record's note of synchronous replication
// lowered on primary, read once more after an operation; nil when there is
// none or the record cannot be read.
func syncLoweredOn(ctx context.Context, timeout time.Duration, record func(context.Context) (*recordInfo, error), primary string) *topology.SyncRestore {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	info, err := record(ctx)
	if err != nil || info == nil || info.State == nil || info.State.SyncRestore == nil || info.State.SyncRestore.Primary != primary {
		return nil
	}
	return info.State.SyncRestore
}

// writeFinal says what is true at the end, as probed.
func writeFinal(w io.Writer, f *finalState) {
	if f == nil {
		return
	}
	fmt.Fprintln(w, "At the end (probed):")
	for _, n := range f.Nodes {
		fmt.Fprintf(w, "  %s: %s, %s\n", n.Node, n.Role, n.State)
	}
}

// writeSyncLowered says that the primary runs fewer synchronous standbys
// than the old primary's setting asked for, and how to raise it.
func writeSyncLowered(w io.Writer, r *topology.SyncRestore) {
	if r == nil {
		return
	}
	fmt.Fprintf(w, "warning: %s runs synchronous_standby_names %s, fewer standbys than %s: once %s streams from it, `replctl rejoin %s` raises it back\n",
		r.Primary, pgctl.QuoteLiteral(r.Set), pgctl.QuoteLiteral(r.Before), r.Node, r.Node)
}

// writeLeft prints what a failed operation could not put back.
func writeLeft(w io.Writer, res *plan.Result) {
	for _, l := range res.Left {
		fmt.Fprintf(w, "left: %s\n", l)
	}
	for _, l := range res.Warnings {
		fmt.Fprintf(w, "warning: %s\n", l)
	}
}

func runPromote(ctx context.Context, o *PromoteOptions) error {
	cfg, err := o.Config()
	if err != nil {
		return err
	}
	if !cfg.Etcd.Configured() && !o.DryRun {
		return &ExitError{Code: ExitUsage, Err: fmt.Errorf("promote needs etcd for the fencing lock: add etcd.endpoints to %s", cfg.File)}
	}
	if o.Node != "" {
		if _, ok := cfg.Node(o.Node); !ok {
			return &ExitError{Code: ExitUsage, Err: fmt.Errorf("node %q is not in %s: configured nodes are %v", o.Node, cfg.File, cfg.NodeNames())}
		}
	}
	cli, recordFn, err := etcdForPlanning(ctx, cfg, o.Etcd, o.DryRun)
	if err != nil {
		return err
	}
	if cli != nil {
		defer cli.Close()
	}
	drv, last := newDriver(cfg, o.auto.observeTimeout(o.Timeout), recordFn, o.IO)
	if o.auto != nil && o.Emergency {
		// The watcher confirmed the primary dead over the window already.
		drv.Confirm = func(context.Context, failover.Observation) []failover.ProbeAttempt { return o.auto.probes }
	}
	req := failover.Request{Kind: failover.KindSwitchover, Switchover: failover.SwitchoverOptions{
		Candidate: o.Node, MaxLag: uint64(o.MaxLag), CatchupTimeout: o.CatchupTimeout, CallTimeout: o.Timeout, NoRejoin: o.NoRejoin, RequireStop: o.RequireStop,
		LogicalSlots: o.LogicalSlots,
	}}
	params := map[string]string{"max_lag": o.MaxLag.String(), "catchup_timeout": o.CatchupTimeout.String(), "no_rejoin": fmt.Sprint(o.NoRejoin), "logical_slots": o.LogicalSlots}
	if o.Emergency {
		req = failover.Request{Kind: failover.KindFailover, Emergency: failover.EmergencyOptions{Candidate: o.Node, AllowDataLoss: o.AllowDataLoss,
			Force: o.Force, NoFence: o.NoFence, CatchupTimeout: o.CatchupTimeout, CallTimeout: o.Timeout}}
		params = map[string]string{"allow_data_loss": fmt.Sprint(o.AllowDataLoss), "force": fmt.Sprint(o.Force), "no_fence": fmt.Sprint(o.NoFence)}
	}
	prep := drv.Prepare(ctx, req, nil)
	lockCheck, err := lockGate(*last, cfg, o.DryRun, o.LockWait)
	if err != nil {
		return err
	}
	rep := &promoteReport{DryRun: o.DryRun, Cluster: cfg.Cluster, OperationPlan: *prep.Op}
	if o.auto != nil {
		o.auto.report = rep
	}
	rep.Checks = append(slices.Clone(rep.Checks), lockCheck)
	failed := checks.Failed(rep.Checks)
	var perr error
	if rep.Error != "" {
		perr = errors.New(rep.Error)
	}
	rep.Proceed = len(failed) == 0 && perr == nil && rep.Plan != nil
	if an := rep.Emergency; an != nil {
		if o.Force && !an.Evidence.Conclusive {
			fmt.Fprintf(o.IO.ErrOut, "WARNING: --force: proceeding although %s\n", an.Evidence.Verdict)
		}
		if o.NoFence {
			fmt.Fprintf(o.IO.ErrOut, "WARNING: --no-fence: %s will not be fenced; if it is alive, this makes two writable primaries\n", an.OldPrimary)
		}
	}
	if o.DryRun || !rep.Proceed {
		if err := o.render(rep); err != nil {
			return err
		}
		return refusal(*last, o.DryRun, failed, perr)
	}

	// A real run: show the plan where someone can read it, then confirm.
	question := fmt.Sprintf("Promote %s and demote %s?", rep.Candidate, rep.Primary)
	if o.Output == "table" {
		if rep.Emergency != nil {
			fmt.Fprintf(o.IO.ErrOut, "Emergency failover of %s from %s to %s:\n%s\n", cfg.Cluster, rep.Primary, rep.Candidate, rep.Emergency.Choice.Proof.Message)
		} else {
			fmt.Fprintf(o.IO.ErrOut, "Switchover of %s from %s to %s (%s fence):\n", cfg.Cluster, rep.Primary, rep.Candidate, rep.Plan.Fence)
		}
		writePlan(o.IO.ErrOut, rep.Plan)
	}
	if rep.Emergency != nil {
		question = fmt.Sprintf("Fence %s and promote %s?", rep.Primary, rep.Candidate)
	}
	if err := o.IO.Confirm(question, o.Yes); err != nil {
		return err
	}
	ctl, closeCtl := o.Factory.Controller(cfg, o.Timeout)
	defer closeCtl()
	env := &failover.Env{Ctl: ctl}
	op := drv.Replan(prep, env)
	if op.Plan == nil || op.Error != "" {
		return &ExitError{Code: ExitUnsafe, Err: fmt.Errorf("the plan could not be built again: %s", op.Error)}
	}
	rep.Plan = op.Plan
	params["candidate"], params["primary"] = rep.Candidate, rep.Primary
	if an := rep.Emergency; an != nil {
		params["old_primary"], params["evidence"], params["sync_proof"] = an.OldPrimary, an.Evidence.Verdict, an.Choice.Proof.Message
	} else {
		params["fence"] = op.Plan.Fence
	}
	run := &operation{f: o.Factory, spec: o.auto.spec(failover.OperationSpec{Cfg: cfg, Cli: cli, Command: o.Command, LockWait: o.LockWait, Params: params})}
	res := run.run(ctx, op.Plan, env, func(spec failover.OperationSpec) *plan.Result { return drv.Run(ctx, prep, op, env, spec) })
	rep.Result, rep.Commands = res, run.commands
	if res.Err != nil {
		rep.Error = res.Err.Error()
	}
	primary := rep.Candidate
	if res.Outcome != plan.OutcomeSucceeded {
		rep.Final = probeFinal(ctx, cfg, o.Timeout, recordFn)
		primary = rep.Final.Primary
	}
	rep.SyncRestore = syncLoweredOn(ctx, o.Timeout, recordFn, primary)
	if rep.Emergency == nil {
		rep.WriteOutageSeconds = writeOutage(res)
	}
	if err := o.render(rep); err != nil {
		return err
	}
	return resultCode(res)
}

// newDriver is the operation driver over this command's observations. The
// last observation it made is kept for the lock gate, which needs the
// lock's holder as seen by the same look.
func newDriver(cfg *config.Config, timeout time.Duration, recordFn func(context.Context) (*recordInfo, error), ios *IOStreams) (*failover.Driver, *observation) {
	last := &observation{}
	return &failover.Driver{
		Cfg: cfg,
		Observe: func(ctx context.Context) failover.Observation {
			*last = observe(ctx, cfg, timeout, nil, recordFn)
			return failover.Observation{Snap: last.Snap, State: stateOf(*last), Interrupted: interruptedOf(*last)}
		},
		Confirm: func(ctx context.Context, obs failover.Observation) []failover.ProbeAttempt {
			return failover.ConfirmDown(ctx, cfg, obs.Snap, obs.State, timeout, func(old string) {
				fmt.Fprintf(ios.ErrOut, "probing %s over %s (failover.confirm_window)...\n", old, cfg.Failover.ConfirmWindow)
			})
		},
	}, last
}

func (o *PromoteOptions) render(rep *promoteReport) error {
	return render(o.IO, o.Output, rep, func(w io.Writer) error { return writePromoteText(w, o.IO.StdoutTTY, rep) })
}

func writePromoteText(w io.Writer, tty bool, rep *promoteReport) error {
	if rep.Emergency != nil && rep.Result == nil {
		if err := writeEvidence(w, tty, rep.Emergency); err != nil {
			return err
		}
	}
	if rep.Choice != nil {
		fmt.Fprintf(w, "Candidate: %s (%s)\n", rep.Choice.Chosen, rep.Choice.Why)
		for _, n := range sortedKeys(rep.Choice.Rejected) {
			fmt.Fprintf(w, "  not %s: %s\n", n, rep.Choice.Rejected[n])
		}
	}
	if rep.Result == nil {
		title := ""
		if rep.Plan != nil {
			title = fmt.Sprintf("%s %s -> %s, %s fence", rep.Kind, rep.Primary, rep.Candidate, rep.Plan.Fence)
		}
		return writePlanned(w, tty, "Preflight", rep.Checks, rep.Plan, title, rep.DryRun, rep.Proceed)
	}
	if err := writeStepResults(w, tty, rep.Result); err != nil {
		return err
	}
	writeCommands(w, rep.Commands)
	if rep.WriteOutageSeconds != nil {
		fmt.Fprintf(w, "Write outage (fence to writable %s): %.3fs\n", rep.Candidate, *rep.WriteOutageSeconds)
	}
	switch rep.Result.Outcome {
	case plan.OutcomeSucceeded:
		fmt.Fprintf(w, "%s done: %s is the primary.\n", titleKind(rep.Kind), rep.Candidate)
	case plan.OutcomePartial:
		fmt.Fprintf(w, "Partly done: %s was promoted, but some steps failed. Remaining:\n", rep.Candidate)
		for _, r := range rep.Result.Remaining {
			fmt.Fprintf(w, "  - %s\n", r)
		}
	default:
		fmt.Fprintf(w, "%s failed: %s\n", titleKind(rep.Kind), rep.Error)
	}
	writeLeft(w, rep.Result)
	if f := rep.Final; f != nil {
		writeFinal(w, f)
		switch f.Primary {
		case "":
			fmt.Fprintln(w, "No node accepts writes: see what was left above, and `replctl status`.")
		case rep.Primary:
			fmt.Fprintf(w, "%s is the primary, as before.\n", f.Primary)
		default:
			fmt.Fprintf(w, "%s is the primary now.\n", f.Primary)
		}
	}
	writeSyncLowered(w, rep.SyncRestore)
	for _, n := range rep.Plan.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	return nil
}

// writeOutage measures the write outage from the fence's start to the
// promotion's end, from the step results.
func writeOutage(res *plan.Result) *float64 {
	var fence, promoted time.Time
	for _, s := range res.Steps {
		switch s.ID {
		case failover.StepFence:
			fence = s.Start
		case failover.StepPromote:
			if s.Outcome == "done" {
				promoted = s.End
			}
		}
	}
	if fence.IsZero() || promoted.IsZero() {
		return nil
	}
	v := promoted.Sub(fence).Seconds()
	return &v
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func titleKind(k string) string {
	if k == "failover" {
		return "Failover"
	}
	return "Switchover"
}
