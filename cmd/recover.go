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
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/failover/plan"
)

// RecoverOptions are the inputs of replctl recover.
type RecoverOptions struct {
	IO       *IOStreams
	Config   func() (*config.Config, error)
	Etcd     func(context.Context) (*clientv3.Client, error)
	Factory  *Factory
	Output   string
	Timeout  time.Duration
	DryRun   bool
	Yes      bool
	Resolved bool
	LockWait time.Duration
	Command  []string
	auto     *unattended
}

func newCmdRecover(f *Factory, runF func(context.Context, *RecoverOptions) error) *cobra.Command {
	o := &RecoverOptions{IO: f.IO, Config: f.Config, Etcd: f.Etcd, Factory: f}
	c := &cobra.Command{
		Use:   "recover",
		Short: "Finish or undo an operation that was interrupted",
		Long: `Deal with an operation (switchover, emergency failover, rejoin, drill) whose
process died or lost its lock in the middle: status shows it as the critical
warning interrupted_operation, and every other command that takes the lock
refuses (exit 4) until it is recovered.

recover takes the lock, reads the operation's journal (each step it began,
and the state each step captured before changing it) and the live topology,
and plans either a roll forward, when the operation had begun its point of
no return (the candidate may be promoted: promote it if it is still in
recovery, fence the old primary again if it came back writable, verify,
record, repoint the replicas, carry over the synchronous settings), or a
roll back (restore exactly what the steps captured, newest first: restart
the stopped primary, restore its settings under the SQL fence, restore the
replicas' primary_conninfo, drop the slots it created, unmark the fence).
Evidence it cannot read (a candidate that does not answer) is a refusal
saying what it needs. The plan runs through the same executor as every
operation; --dry-run prints it and changes nothing.

When the interrupted process ran on this host and is gone, recover breaks
its lock at once; otherwise the lock frees itself when its lease expires
(lock.ttl). --resolved closes the interrupted records without changing the
cluster, after you repaired it by hand.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f); err != nil {
				return err
			}
			o.Output, o.Timeout = f.Output, f.Timeout
			o.Command = commandLine(cmd, args)
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return runRecover(cmd.Context(), o)
		},
	}
	c.Flags().BoolVar(&o.DryRun, "dry-run", false, "read the journal and the cluster and print the plan; change nothing")
	c.Flags().BoolVarP(&o.Yes, "yes", "y", false, "do not ask for confirmation (required without a terminal)")
	c.Flags().BoolVar(&o.Resolved, "resolved", false, "close the interrupted records without changing the cluster: you repaired it by hand")
	addLockWaitFlag(c, &o.LockWait)
	return c
}

// recoverReport is the result of recover, the same for every format.
type recoverReport struct {
	DryRun bool `json:"dry_run"`
	// Interrupted are the IDs of the interrupted operations.
	Interrupted []string        `json:"interrupted"`
	Checks      []checks.Result `json:"checks"`
	Proceed     bool            `json:"would_proceed"`
	// BrokeLock describes the dead holder whose lock recover broke.
	BrokeLock string                `json:"broke_lock,omitempty"`
	Plan      *plan.Plan            `json:"plan"`
	Result    *plan.Result          `json:"result,omitempty"`
	Error     string                `json:"error,omitempty"`
	Commands  []pgctl.CommandResult `json:"commands,omitempty"`
	Final     *finalState           `json:"final,omitempty"`
	// NothingToDo is set when no operation is interrupted.
	NothingToDo bool `json:"nothing_to_do,omitempty"`
}

func runRecover(ctx context.Context, o *RecoverOptions) error {
	cfg, err := o.Config()
	if err != nil {
		return err
	}
	if !cfg.Etcd.Configured() {
		return &ExitError{Code: ExitUsage, Err: fmt.Errorf("recover reads the journal in etcd: add etcd.endpoints to %s", cfg.File)}
	}
	cli, recordFn, err := etcdForPlanning(ctx, cfg, o.Etcd, false)
	if err != nil {
		return err
	}
	defer cli.Close()
	drv, last := newDriver(cfg, o.auto.observeTimeout(o.Timeout), recordFn, o.IO)
	req := failover.Request{Kind: failover.KindRecover, Recover: failover.RecoverOptions{Resolved: o.Resolved}}
	prep := drv.Prepare(ctx, req, nil)
	rep := &recoverReport{DryRun: o.DryRun}
	show := func() error {
		return render(o.IO, o.Output, rep, func(w io.Writer) error { return writeRecoverText(w, o.IO.StdoutTTY, rep) })
	}
	if last.RecordErr != nil {
		return &ExitError{Code: ExitFailed, Err: fmt.Errorf("etcd: %w: the journal cannot be read", last.RecordErr)}
	}
	// A holder of this host that is gone holds nothing: its lease would
	// only delay the recovery by up to lock.ttl.
	if h := holderOf(*last); h != nil && h.Dead() {
		if o.DryRun {
			rep.BrokeLock = fmt.Sprintf("would break the lock of %s, which is gone", h.Describe(time.Now()))
		} else {
			if _, err := etcdlock.BreakLock(ctx, cli, cfg.Etcd.Prefix, cfg.Cluster, h, etcdlock.CurrentActor(o.Command), cfg.History.Keep); err != nil && !errors.Is(err, etcdlock.ErrNotHeld) {
				return err
			}
			rep.BrokeLock = fmt.Sprintf("broke the lock of %s, which is gone", h.Describe(time.Now()))
			fmt.Fprintf(o.IO.ErrOut, "%s\n", rep.BrokeLock)
			prep = drv.Prepare(ctx, req, nil)
		}
	}
	for _, r := range interruptedOf(*last) {
		rep.Interrupted = append(rep.Interrupted, r.ID)
	}
	var perr error
	if prep.Op.Error != "" {
		perr = errors.New(prep.Op.Error)
	}
	if p := prep.Op.Plan; p != nil && len(rep.Interrupted) == 0 && perr == nil {
		rep.Checks, rep.Plan, rep.Proceed, rep.NothingToDo = prep.Op.Checks, p, true, true
		if err := show(); err != nil {
			return err
		}
		if lockHeld(*last) {
			// A process that died elsewhere still holds its lease: its
			// operation counts as interrupted once the lease expires.
			return &ExitError{Code: ExitLocked, Err: fmt.Errorf("the lock is held by %s: if that process is gone, its lease expires within %s; run recover again then", last.Record.Lock.Holder, cfg.Lock.TTL)}
		}
		return nil
	}
	gateObs := *last
	if h := holderOf(gateObs); h != nil && h.Dead() && gateObs.Record != nil {
		// A dry-run shows the lock as a real run finds it: broken first.
		rec := *gateObs.Record
		rec.Lock = nil
		gateObs.Record = &rec
	}
	lockCheck, err := lockGate(gateObs, cfg, o.DryRun, o.LockWait)
	if err != nil {
		return err
	}
	results := append(slices.Clone(prep.Op.Checks), lockCheck)
	rep.Checks, rep.Plan = results, prep.Op.Plan
	failed := checks.Failed(results)
	rep.Proceed = len(failed) == 0 && perr == nil && rep.Plan != nil
	if o.DryRun || !rep.Proceed {
		if err := show(); err != nil {
			return err
		}
		return refusal(gateObs, o.DryRun, failed, perr)
	}
	if o.Output == "table" {
		fmt.Fprintln(o.IO.ErrOut, "Recover:")
		writePlan(o.IO.ErrOut, rep.Plan)
	}
	if err := o.IO.Confirm("Run this recovery?", o.Yes); err != nil {
		return err
	}
	ctl, closeCtl := o.Factory.Controller(cfg, o.Timeout)
	defer closeCtl()
	env := &failover.Env{Ctl: ctl}
	run := drv.Replan(prep, env)
	if run.Plan == nil || run.Error != "" {
		return &ExitError{Code: ExitUnsafe, Err: fmt.Errorf("the plan could not be built again: %s", run.Error)}
	}
	op := &operation{f: o.Factory, spec: o.auto.spec(failover.OperationSpec{
		Cfg: cfg, Cli: cli, Command: o.Command, LockWait: o.LockWait,
		Params: map[string]string{"interrupted": fmt.Sprint(rep.Interrupted)},
	})}
	res := op.run(ctx, run.Plan, env, func(spec failover.OperationSpec) *plan.Result { return drv.Run(ctx, prep, run, env, spec) })
	rep.Result, rep.Commands = res, op.commands
	if res.Err != nil {
		rep.Error = res.Err.Error()
	}
	if res.Outcome != plan.OutcomeSucceeded {
		rep.Final = probeFinal(ctx, cfg, o.Timeout, recordFn)
	}
	if err := show(); err != nil {
		return err
	}
	return resultCode(res)
}

// holderOf is the lock holder obs read, nil when free or unread.
func holderOf(obs observation) *etcdlock.LockHolder {
	if obs.Record == nil {
		return nil
	}
	return obs.Record.Holder
}

func writeRecoverText(w io.Writer, tty bool, rep *recoverReport) error {
	if rep.BrokeLock != "" {
		fmt.Fprintf(w, "Lock: %s.\n", rep.BrokeLock)
	}
	if rep.NothingToDo {
		fmt.Fprintln(w, "No interrupted operation: nothing to recover. Nothing was changed.")
		return nil
	}
	if rep.Result == nil {
		return writePlanned(w, tty, "Checks", rep.Checks, rep.Plan, "recover", rep.DryRun, rep.Proceed)
	}
	if err := writeStepResults(w, tty, rep.Result); err != nil {
		return err
	}
	writeCommands(w, rep.Commands)
	if rep.Result.Outcome == plan.OutcomeSucceeded {
		fmt.Fprintf(w, "Recovered: operation %v closed. Check `replctl status`.\n", rep.Interrupted)
	} else {
		fmt.Fprintf(w, "Recover %s: %s\n", rep.Result.Outcome, rep.Error)
	}
	writeLeft(w, rep.Result)
	writeFinal(w, rep.Final)
	return nil
}
