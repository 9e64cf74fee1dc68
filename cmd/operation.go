package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/failover/plan"
)

// readRecord reads the fencing lock and the cluster record from etcd for
// status and planning. It never writes.
func readRecord(ctx context.Context, cfg *config.Config) (*recordInfo, error) {
	if !cfg.Etcd.Configured() {
		return nil, errEtcdNotConfigured
	}
	cli, err := etcdlock.Connect(ctx, cfg.Etcd)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	return readRecordWith(ctx, cli, cfg)
}

func readRecordWith(ctx context.Context, cli *clientv3.Client, cfg *config.Config) (*recordInfo, error) {
	info := &recordInfo{}
	ir, h, err := etcdlock.FindInterrupted(ctx, cli, cfg.Etcd.Prefix, cfg.Cluster)
	if err != nil {
		return nil, err
	}
	info.Interrupted, info.Holder = ir, h
	if h != nil {
		info.Lock = &lockInfo{Held: true, Holder: h.Describe(time.Now()), Token: h.Token}
	}
	st, rev, err := etcdlock.ReadState(ctx, cli, cfg.Etcd.Prefix, cfg.Cluster)
	if err != nil {
		return nil, err
	}
	info.StateRev = rev
	if info.Maintenance, err = etcdlock.ReadMaintenance(ctx, cli, cfg.Etcd.Prefix, cfg.Cluster); err != nil {
		return nil, err
	}
	if info.Seen, err = etcdlock.ReadSeen(ctx, cli, cfg.Etcd.Prefix, cfg.Cluster); err != nil {
		return nil, err
	}
	if info.Watchers, err = etcdlock.ListWatchers(ctx, cli, cfg.Etcd.Prefix, cfg.Cluster); err != nil {
		return nil, err
	}
	if st != nil {
		info.RecordedPrimary = st.Primary
		for _, fn := range st.Fenced {
			info.Fenced = append(info.Fenced, fn.Node)
		}
	}
	// The leader watcher's look is newer than any operation's: the quorum
	// proof of an emergency failover is made from it.
	info.State = etcdlock.WithSeen(st, info.Seen)
	return info, nil
}

// interruptedChecks are the critical findings of the interrupted
// operations obs read.
func interruptedChecks(obs observation) []checks.Result {
	var out []checks.Result
	if obs.Record != nil {
		for _, r := range obs.Record.Interrupted {
			out = append(out, failover.InterruptedCheck(r))
		}
	}
	return out
}

// interruptedOf is the interrupted operations obs read.
func interruptedOf(obs observation) []etcdlock.OpRecord {
	if obs.Record == nil {
		return nil
	}
	return obs.Record.Interrupted
}

// writePlanned prints what a dry-run or a refusal of promote, rejoin or
// recover shows: the checks under heading, the plan under its title, and a
// dry-run's verdict.
func writePlanned(w io.Writer, tty bool, heading string, results []checks.Result, p *plan.Plan, title string, dryRun, proceed bool) error {
	fmt.Fprintln(w, heading+":")
	if err := writeChecks(w, tty, results); err != nil {
		return err
	}
	if p != nil {
		fmt.Fprintf(w, "\nPlan (%s):\n", title)
		writePlan(w, p)
	}
	switch {
	case dryRun && proceed:
		fmt.Fprintln(w, "\nDry-run: a real run would proceed. Nothing was changed.")
	case dryRun:
		fmt.Fprintln(w, "\nDry-run: a real run would be refused (see the failed checks). Nothing was changed.")
	}
	return nil
}

// operation runs a plan under the cluster lock and prints its progress on
// stderr; the engine itself is failover.RunOperation.
type operation struct {
	f    *Factory
	spec failover.OperationSpec
	// commands are the node commands the run executed.
	commands []pgctl.CommandResult
}

// run executes p through exec (the driver's Run), with o's spec completed
// by the progress printing and the command log.
func (o *operation) run(ctx context.Context, p *plan.Plan, env *failover.Env, exec func(failover.OperationSpec) *plan.Result) *plan.Result {
	total := len(p.Steps)
	index := map[string]int{}
	for i, s := range p.Steps {
		index[s.ID] = i + 1
	}
	o.spec.Sink = func(e plan.Event) { o.printEvent(e, index[e.StepID], total) }
	o.spec.Now = o.f.Now
	o.spec.OnWait = func(h *etcdlock.LockHolder) {
		fmt.Fprintf(o.f.IO.ErrOut, "waiting up to %s for the lock: %s\n", o.spec.LockWait, h.Describe(time.Now()))
	}
	env.Progress = func(step, msg string) {
		if o.f.IO.StdoutTTY || o.f.Verbose {
			fmt.Fprintf(o.f.IO.ErrOut, "      %s\n", msg)
		}
	}
	log := &commandLog{Controller: env.Ctl}
	env.Ctl = log
	res := exec(o.spec)
	o.commands = log.all()
	return res
}

// commandLog keeps every node command and hook an operation ran, with its
// captured output, for the report: the steps themselves only carry errors.
type commandLog struct {
	failover.Controller
	mu   sync.Mutex
	runs []pgctl.CommandResult
}

func (c *commandLog) RunCommand(ctx context.Context, node, action string, env map[string]string) (pgctl.CommandResult, error) {
	r, err := c.Controller.RunCommand(ctx, node, action, env)
	c.mu.Lock()
	c.runs = append(c.runs, r)
	c.mu.Unlock()
	return r, err
}

func (c *commandLog) RunHook(ctx context.Context, name, command, node string, env map[string]string) (pgctl.CommandResult, error) {
	r, err := c.Controller.RunHook(ctx, name, command, node, env)
	if r.Action != "" {
		c.mu.Lock()
		c.runs = append(c.runs, r)
		c.mu.Unlock()
	}
	return r, err
}

func (c *commandLog) all() []pgctl.CommandResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.runs)
}

// writeCommands prints the node commands an operation ran and their output.
func writeCommands(w io.Writer, runs []pgctl.CommandResult) {
	if len(runs) == 0 {
		return
	}
	fmt.Fprintln(w, "Node commands:")
	for _, r := range runs {
		shown := r.Command
		if len(shown) > longCommand {
			ref := "commands." + r.Action
			if hook, ok := strings.CutPrefix(r.Action, "hook "); ok {
				ref = "hooks." + hook
			}
			shown = ref + ", in full in the plan (and in -o json)"
		}
		fmt.Fprintf(w, "  %s %s (exit %d, %s): %s\n", r.Node, r.Action, r.ExitCode, roundDur(r.Duration), shown)
		for _, line := range strings.Split(strings.TrimRight(r.Output, "\n"), "\n") {
			if line != "" {
				fmt.Fprintf(w, "    | %s\n", line)
			}
		}
	}
}

// longCommand is the length past which a node command is shown in full
// once, in the plan, and referred to after that.
const longCommand = 60

// referToCommands replaces the long node commands and hooks in a step's
// description with a reference: the plan printed just before shows them in
// full.
func referToCommands(cfg *config.Config, desc string) string {
	if cfg == nil {
		return desc
	}
	long := []string{cfg.Hooks.PreFence, cfg.Hooks.PostPromote}
	for _, n := range cfg.Nodes {
		c := n.Commands
		long = append(long, c.Stop, c.Start, c.Kill, c.Fence, c.Rejoin)
	}
	for _, cmd := range long {
		if len(cmd) > longCommand {
			desc = strings.ReplaceAll(desc, cmd, "as in the plan")
		}
	}
	return desc
}

func (o *operation) printEvent(e plan.Event, i, total int) {
	w := o.f.IO.ErrOut
	switch e.Type {
	case plan.StepStarted:
		fmt.Fprintf(w, "[%d/%d] %s\n", i, total, referToCommands(o.spec.Cfg, e.Description))
	case plan.StepDone:
		fmt.Fprintf(w, "      done in %s\n", roundDur(e.Duration))
	case plan.StepFailed:
		fmt.Fprintf(w, "      FAILED after %s: %s\n", roundDur(e.Duration), e.Error)
	case plan.StepUndone:
		fmt.Fprintf(w, "[undo] %s: done in %s\n", e.Description, roundDur(e.Duration))
	case plan.StepUndoFailed:
		fmt.Fprintf(w, "[undo] %s: FAILED: %s\n", e.Description, e.Error)
	case plan.StepUndoSkipped:
		fmt.Fprintf(w, "[undo] SKIPPED: %s\n", e.Error)
	}
}

func roundDur(d time.Duration) time.Duration {
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond)
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	default:
		return d.Round(100 * time.Microsecond)
	}
}

// resultCode maps an operation's result to the exit code.
func resultCode(res *plan.Result) error {
	switch res.Outcome {
	case plan.OutcomeSucceeded:
		return nil
	case plan.OutcomePartial:
		return &ExitError{Code: ExitPartial, Err: fmt.Errorf("partly done: %w; remaining: %s", res.Err, strings.Join(res.Remaining, "; "))}
	}
	var held *etcdlock.LockHeldError
	var refused *failover.RefusedError
	var changed *failover.PlanChangedError
	var lost *etcdlock.LockLostError
	switch {
	case errors.As(res.Err, &held):
		return lockError(held)
	case errors.As(res.Err, &refused), errors.As(res.Err, &changed):
		return &ExitError{Code: ExitUnsafe, Err: res.Err}
	case errors.As(res.Err, &lost):
		return &ExitError{Code: ExitFailed, Err: fmt.Errorf("%w: the operation stopped; no undo was run without the lock, so what it changed is left as it is (see the report's 'left' lines and 'replctl status')", res.Err)}
	}
	return &ExitError{Code: ExitFailed, Err: res.Err}
}

// etcdForPlanning connects to etcd for an operation. A dry-run goes on when
// etcd is down (the lock check then reports it); a real run does not.
func etcdForPlanning(ctx context.Context, cfg *config.Config, connect func(context.Context) (*clientv3.Client, error), dryRun bool) (*clientv3.Client, func(context.Context) (*recordInfo, error), error) {
	if !cfg.Etcd.Configured() {
		return nil, func(context.Context) (*recordInfo, error) { return nil, errEtcdNotConfigured }, nil
	}
	cli, err := connect(ctx)
	if err != nil {
		if !dryRun {
			return nil, nil, err
		}
		return nil, func(context.Context) (*recordInfo, error) { return nil, err }, nil
	}
	return cli, func(rctx context.Context) (*recordInfo, error) { return readRecordWith(rctx, cli, cfg) }, nil
}

// writeStepResults prints what each executed step did.
func writeStepResults(w io.Writer, tty bool, res *plan.Result) error {
	var rows [][]string
	for _, s := range res.Steps {
		rows = append(rows, []string{s.ID, s.Outcome, roundDur(s.Duration).String(), s.Error})
	}
	return writeTable(w, tty, []string{"STEP", "OUTCOME", "DURATION", "ERROR"}, rows)
}

// writeChecks prints preflight results as a table.
func writeChecks(w io.Writer, tty bool, rs []checks.Result) error {
	var rows [][]string
	for _, r := range rs {
		msg := r.Message
		if r.Level != checks.OK && r.Hint != "" {
			msg += ": " + r.Hint
		}
		rows = append(rows, []string{strings.ToUpper(r.Level.String()), r.Name, dash(r.Node), msg})
	}
	return writeTable(w, tty, []string{"LEVEL", "CHECK", "NODE", "MESSAGE"}, rows)
}

// writePlan prints a plan's steps, numbered, and its notes.
func writePlan(w io.Writer, p *plan.Plan) {
	for i, s := range p.Steps {
		fmt.Fprintf(w, "%2d. %s\n", i+1, s.Description)
		if s.UndoDescription != "" {
			fmt.Fprintf(w, "    undo: %s\n", s.UndoDescription)
		}
	}
	for _, n := range p.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

// lockHeldError is exit 5 for a lock seen held before the operation began:
// failing then rather than in Acquire leaves etcd untouched.
func lockHeldError(cluster, holder string) error {
	return &ExitError{Code: ExitLocked, Err: fmt.Errorf("lock on cluster %s held by %s: wait for it to finish, or pass --lock-wait DURATION; "+
		"if its process is gone, break the lock with 'replctl lock release --force'", cluster, holder)}
}

// refusal is the exit of a planned operation that will not run: 4 when
// preflight checks failed or the plan could not be built, nil otherwise.
func refusal(obs observation, dryRun bool, failed []checks.Result, planErr error) error {
	switch {
	case dryRun && lockHeld(obs):
		// A held lock is exit 5 for every command, dry-runs included
		// (runbook plan too): a cron job tells "busy" from "unsafe".
		return &ExitError{Code: ExitLocked, Err: fmt.Errorf("a real run now would wait for the lock, held by %s (see the checks)", obs.Record.Lock.Holder)}
	case len(failed) > 0:
		return &ExitError{Code: ExitUnsafe, Err: &failover.RefusedError{Failed: failed}}
	case planErr != nil:
		return &ExitError{Code: ExitUnsafe, Err: planErr}
	}
	return nil
}

// lockHeld reports whether obs saw the lock held by another operation.
func lockHeld(obs observation) bool {
	return obs.RecordErr == nil && obs.Record != nil && obs.Record.Lock != nil
}

// lockGate turns the observed lock into a preflight result. For a real run
// a lock held by another operation is no refusal: it is exit 5 at once,
// naming the holder (whose operation in flight may be what fails the other
// checks), or with --lock-wait a wait when taking it, which refusing here
// would make impossible. A dry-run only reports it.
func lockGate(obs observation, cfg *config.Config, dryRun bool, lockWait time.Duration) (checks.Result, error) {
	r := lockPreflight(obs, cfg)
	if !dryRun && lockHeld(obs) {
		if lockWait <= 0 {
			return r, lockHeldError(cfg.Cluster, obs.Record.Lock.Holder)
		}
		r.Level = checks.Warning
		r.Message += fmt.Sprintf(": waiting up to %s for it", lockWait)
	}
	return r, nil
}

// lockPreflight reports whether the lock is free (dry-runs only report it).
func lockPreflight(obs observation, cfg *config.Config) checks.Result {
	r := checks.Result{Name: "lock", Level: checks.OK, Code: "ok", Message: "the cluster lock is free"}
	switch {
	case !cfg.Etcd.Configured():
		r.Level, r.Code, r.Message, r.Hint = checks.Critical, "lock", "etcd is not configured: no fencing lock", "add etcd.endpoints to "+cfg.File
	case obs.RecordErr != nil:
		r.Level, r.Code, r.Message, r.Hint = checks.Critical, "lock", "etcd: "+obs.RecordErr.Error(), "the lock cannot be taken while etcd is unreachable"
	case obs.Record != nil && obs.Record.Lock != nil:
		r.Level, r.Code, r.Message, r.Hint = checks.Critical, "lock", "held by "+obs.Record.Lock.Holder, "wait for it, or use --lock-wait"
	}
	return r
}
