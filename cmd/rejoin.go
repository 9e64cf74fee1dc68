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
)

// RejoinOptions are the inputs of replctl rejoin.
type RejoinOptions struct {
	IO       *IOStreams
	Config   func() (*config.Config, error)
	Etcd     func(context.Context) (*clientv3.Client, error)
	Factory  *Factory
	Output   string
	Timeout  time.Duration
	Node     string
	DryRun   bool
	Yes      bool
	LockWait time.Duration
	Command  []string
	auto     *unattended
}

func newCmdRejoin(f *Factory, runF func(context.Context, *RejoinOptions) error) *cobra.Command {
	o := &RejoinOptions{IO: f.IO, Config: f.Config, Etcd: f.Etcd, Factory: f}
	c := &cobra.Command{
		Use:   "rejoin NODE",
		Short: "Make a former primary (or a diverged node) a replica of the current primary",
		Long: `Turn NODE into a streaming replica of the current primary through its
commands.rejoin (which stops it, runs pg_rewind when its WAL diverged, writes
standby.signal and primary_conninfo, and starts it), with
REPLCTL_PRIMARY_CONNINFO and REPLCTL_PRIMARY_SLOT set. replctl first creates
the node's slot on the primary, then waits until the node streams on the
primary's timeline, drops the slots it kept from its time as a primary, and
removes its fenced mark from the cluster record. It refuses on the current
primary. --dry-run prints the checks and the plan and changes nothing.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f); err != nil {
				return err
			}
			o.Node, o.Output, o.Timeout = args[0], f.Output, f.Timeout
			o.Command = commandLine(cmd, args)
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return runRejoin(cmd.Context(), o)
		},
	}
	c.Flags().BoolVar(&o.DryRun, "dry-run", false, "run the checks read-only and print the plan; change nothing")
	c.Flags().BoolVarP(&o.Yes, "yes", "y", false, "do not ask for confirmation (required without a terminal)")
	addLockWaitFlag(c, &o.LockWait)
	return c
}

// rejoinReport is the result of rejoin, the same for every format.
type rejoinReport struct {
	DryRun  bool            `json:"dry_run"`
	Node    string          `json:"node"`
	Primary string          `json:"primary"`
	Checks  []checks.Result `json:"checks"`
	Proceed bool            `json:"would_proceed"`
	Plan    *plan.Plan      `json:"plan"`
	Result  *plan.Result    `json:"result,omitempty"`
	Error   string          `json:"error,omitempty"`
	// Commands are the node commands the run executed, with their output.
	Commands []pgctl.CommandResult `json:"commands,omitempty"`
	// Final is every node as probed after a rejoin that did not succeed.
	Final *finalState `json:"final,omitempty"`
	// NothingToDo is set when the node already is a healthy replica.
	NothingToDo bool `json:"nothing_to_do,omitempty"`
}

func runRejoin(ctx context.Context, o *RejoinOptions) error {
	cfg, err := o.Config()
	if err != nil {
		return err
	}
	if _, ok := cfg.Node(o.Node); !ok {
		return &ExitError{Code: ExitUsage, Err: fmt.Errorf("node %q is not in %s: configured nodes are %v", o.Node, cfg.File, cfg.NodeNames())}
	}
	if !cfg.Etcd.Configured() && !o.DryRun {
		return &ExitError{Code: ExitUsage, Err: fmt.Errorf("rejoin needs etcd for the fencing lock: add etcd.endpoints to %s", cfg.File)}
	}
	cli, recordFn, err := etcdForPlanning(ctx, cfg, o.Etcd, o.DryRun)
	if err != nil {
		return err
	}
	if cli != nil {
		defer cli.Close()
	}
	drv, last := newDriver(cfg, o.auto.observeTimeout(o.Timeout), recordFn, o.IO)
	prep := drv.Prepare(ctx, failover.Request{Kind: failover.KindRejoin, Node: o.Node}, nil)
	rep := &rejoinReport{DryRun: o.DryRun, Node: o.Node, Primary: prep.Op.Primary}
	var perr error
	if prep.Op.Error != "" {
		perr = errors.New(prep.Op.Error)
	}
	show := func() error {
		return render(o.IO, o.Output, rep, func(w io.Writer) error { return writeRejoinText(w, o.IO.StdoutTTY, rep) })
	}
	if p := prep.Op.Plan; p != nil && len(p.Steps) == 0 && perr == nil {
		// Already a healthy replica: nothing to run, no lock to take.
		rep.Checks, rep.Plan, rep.Proceed, rep.NothingToDo = prep.Op.Checks, p, true, true
		return show()
	}
	lockCheck, err := lockGate(*last, cfg, o.DryRun, o.LockWait)
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
		return refusal(*last, o.DryRun, failed, perr)
	}
	if o.Output == "table" {
		fmt.Fprintf(o.IO.ErrOut, "Rejoin %s as a replica of %s:\n", o.Node, rep.Primary)
		writePlan(o.IO.ErrOut, rep.Plan)
	}
	if err := o.IO.Confirm(fmt.Sprintf("Rejoin %s as a replica of %s?", o.Node, rep.Primary), o.Yes); err != nil {
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
		Params: map[string]string{"node": o.Node, "primary": rep.Primary},
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

func writeRejoinText(w io.Writer, tty bool, rep *rejoinReport) error {
	if rep.NothingToDo {
		fmt.Fprintf(w, "%s already streams from %s: nothing to do. Nothing was changed.\n", rep.Node, rep.Primary)
		return nil
	}
	if rep.Result == nil {
		return writePlanned(w, tty, "Checks", rep.Checks, rep.Plan, fmt.Sprintf("rejoin %s as a replica of %s", rep.Node, rep.Primary), rep.DryRun, rep.Proceed)
	}
	if err := writeStepResults(w, tty, rep.Result); err != nil {
		return err
	}
	writeCommands(w, rep.Commands)
	if rep.Result.Outcome == plan.OutcomeSucceeded {
		fmt.Fprintf(w, "Rejoin done: %s streams from %s.\n", rep.Node, rep.Primary)
	} else {
		fmt.Fprintf(w, "Rejoin %s: %s\n", rep.Result.Outcome, rep.Error)
	}
	writeLeft(w, rep.Result)
	writeFinal(w, rep.Final)
	return nil
}
