package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/runbooks"
)

// RunbookOptions are the inputs of replctl runbook validate|plan|run.
type RunbookOptions struct {
	IO      *IOStreams
	Config  func() (*config.Config, error)
	Etcd    func(context.Context) (*clientv3.Client, error)
	Now     func() time.Time
	Output  string
	Timeout time.Duration
	Verbose bool

	Files []string
	// Run only.
	Yes        bool
	ReportJSON string
	JUnit      string
	Quiet      bool
	LockWait   time.Duration
	// Command is the command line, recorded in the lock and the history.
	Command []string
}

func newRunbookOptions(f *Factory) *RunbookOptions {
	return &RunbookOptions{IO: f.IO, Config: f.Config, Etcd: f.Etcd, Now: f.Now}
}

func (o *RunbookOptions) fromFactory(f *Factory, c *cobra.Command, args []string) {
	o.Output, o.Timeout, o.Verbose, o.Files = f.Output, f.Timeout, f.Verbose, args
	o.Command = commandLine(c, args)
}

func newCmdRunbook(f *Factory) *cobra.Command {
	c := &cobra.Command{
		Use:   "runbook",
		Short: "Failover drills: validate, plan and run runbooks",
		Long: `A runbook is a failover drill in a YAML file: checks, promotions, node stops and
kills, rejoins, waits, a write probe that measures the outage and the lost
writes, and assertions on what was measured, with on_failure steps that bring
the cluster back when a step fails. See the README for the format.

  replctl runbook validate FILE...   static checks only
  replctl runbook plan FILE          the dry-run: changes nothing
  replctl runbook run FILE           the drill, under the cluster lock`,
	}
	c.AddCommand(newCmdRunbookValidate(f, nil), newCmdRunbookPlan(f, nil), newCmdRunbookRun(f, nil))
	return c
}

func newCmdRunbookValidate(f *Factory, runF func(context.Context, *RunbookOptions) error) *cobra.Command {
	o := newRunbookOptions(f)
	return &cobra.Command{
		Use:   "validate FILE...",
		Short: "Check runbooks without touching the cluster",
		Long: `Check runbook files: unknown keys and step kinds, missing fields, bad
durations, sizes and assertions, the probe stopped before what it measures is
asserted, and, when a configuration is found, the cluster and the node names.
Every problem is reported with its file and line. Nothing is contacted.
Exit 0 when every file is valid, 2 otherwise.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f); err != nil {
				return err
			}
			o.fromFactory(f, cmd, args)
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return runRunbookValidate(cmd.Context(), o)
		},
	}
}

func newCmdRunbookPlan(f *Factory, runF func(context.Context, *RunbookOptions) error) *cobra.Command {
	o := newRunbookOptions(f)
	return &cobra.Command{
		Use:   "plan FILE",
		Short: "Dry-run a runbook: evaluate what can be now, change nothing",
		Long: `Evaluate, read-only, every step that can be evaluated against the cluster as it
is now (checks, waits, live assertions, and the first promotion with its full
plan, the one promote --dry-run prints), and show the steps that depend on
earlier ones (a promotion after a kill) with what they will check, marked as
planned at run time. Nothing is changed: no etcd write, no SQL that writes, no
node command, no probe table.

Exit 0 when a run would proceed as far as can be told now, 4 when a step that
can be evaluated now would be refused or fail, 5 when another operation holds
the cluster lock.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f); err != nil {
				return err
			}
			o.fromFactory(f, cmd, args)
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return runRunbookPlan(cmd.Context(), o)
		},
	}
}

func newCmdRunbookRun(f *Factory, runF func(context.Context, *RunbookOptions) error) *cobra.Command {
	o := newRunbookOptions(f)
	c := &cobra.Command{
		Use:   "run FILE",
		Short: "Run a failover drill under the cluster lock and report what it measured",
		Long: `Run the runbook's steps in order under the cluster lock, held from the first
step to the last, and record the drill in the history. A step that fails
stops the steps and runs the on_failure steps. Progress goes to stderr, one
line per step (-v adds the steps of each promotion); the result table, or the
report with -o json, goes to stdout. --report-json and --junit write the
report and JUnit XML (one test case per step and per assertion) for CI.

A runbook that changes the cluster asks for confirmation on a terminal and
needs --yes without one. With --quiet nothing is printed when the drill
passes (the report files are still written): cron mails only failures.

Exit codes: 0 every step and assertion passed; 1 the drill failed (the
on_failure steps ran and passed); 2 usage or an invalid runbook; 4 the drill
stopped at a step refused as unsafe before anything changed; 5 another
operation holds the lock (the drill was skipped, not failed); 6 the drill
failed and an on_failure step failed too, or the lock was lost: check the
cluster.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f); err != nil {
				return err
			}
			o.fromFactory(f, cmd, args)
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return runRunbookRun(cmd.Context(), o)
		},
	}
	fl := c.Flags()
	fl.BoolVarP(&o.Yes, "yes", "y", false, "do not ask for confirmation (required without a terminal)")
	fl.StringVar(&o.ReportJSON, "report-json", "", "write the report as JSON to `FILE`")
	fl.StringVar(&o.JUnit, "junit", "", "write JUnit XML to `FILE`: one test case per step and per assertion")
	fl.BoolVarP(&o.Quiet, "quiet", "q", false, "print nothing when the drill passes (report files are still written)")
	addLockWaitFlag(c, &o.LockWait)
	return c
}

// validateResult is one file's validation, for -o json.
type validateResult struct {
	File      string   `json:"file"`
	Valid     bool     `json:"valid"`
	Name      string   `json:"name,omitempty"`
	Steps     int      `json:"steps"`
	OnFailure int      `json:"on_failure"`
	Errors    []string `json:"errors,omitempty"`
}

func runRunbookValidate(_ context.Context, o *RunbookOptions) error {
	cfg, err := o.Config()
	if err != nil {
		// Without any configuration the runbooks are still worth checking
		// (in a repository's CI, say); a broken configuration is an error.
		var ce *config.Error
		if !errors.As(err, &ce) || ce.File != "" {
			return err
		}
		fmt.Fprintf(o.IO.ErrOut, "warning: %v: the cluster and node names are not checked\n", err)
		cfg = nil
	}
	var results []validateResult
	invalid := 0
	for _, file := range o.Files {
		r := validateResult{File: file}
		rb, err := runbooks.Load(file, cfg)
		if err != nil {
			invalid++
			var le *runbooks.LoadError
			if errors.As(err, &le) {
				for _, e := range le.Errs {
					r.Errors = append(r.Errors, e.Error())
				}
			} else {
				r.Errors = []string{err.Error()}
			}
		} else {
			r.Valid, r.Name, r.Steps, r.OnFailure = true, rb.Name, len(rb.Steps), len(rb.OnFailure)
		}
		results = append(results, r)
	}
	err = render(o.IO, o.Output, results, func(w io.Writer) error {
		for _, r := range results {
			if r.Valid {
				fmt.Fprintf(w, "%s: ok: %s, %d steps, %d on_failure steps\n", r.File, r.Name, r.Steps, r.OnFailure)
				continue
			}
			for _, e := range r.Errors {
				fmt.Fprintln(o.IO.ErrOut, e)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if invalid > 0 {
		return &ExitError{Code: ExitUsage, Err: fmt.Errorf("%d of %d runbooks invalid", invalid, len(o.Files))}
	}
	return nil
}

// loadRunbook loads the configuration and one runbook; both errors exit 2.
func (o *RunbookOptions) loadRunbook() (*config.Config, *runbooks.Runbook, error) {
	cfg, err := o.Config()
	if err != nil {
		return nil, nil, err
	}
	rb, err := runbooks.Load(o.Files[0], cfg)
	if err != nil {
		return nil, nil, &ExitError{Code: ExitUsage, Err: fmt.Errorf("invalid runbook:\n%w", err)}
	}
	return cfg, rb, nil
}

func runRunbookPlan(ctx context.Context, o *RunbookOptions) error {
	cfg, rb, err := o.loadRunbook()
	if err != nil {
		return err
	}
	eng := &runbooks.Engine{Cfg: cfg, Timeout: o.Timeout, Now: o.Now}
	var etcdErr error
	if cfg.Etcd.Configured() {
		cli, err := o.Etcd(ctx)
		if err != nil {
			etcdErr = err
		} else {
			defer cli.Close()
			eng.Cli = cli
		}
	}
	rep := eng.Plan(ctx, rb, etcdErr)
	if err := render(o.IO, o.Output, rep, func(w io.Writer) error { return writeRunbookPlan(w, o.IO.StdoutTTY, rep) }); err != nil {
		return err
	}
	switch {
	case rep.LockHeld:
		return &ExitError{Code: ExitLocked, Err: fmt.Errorf("a run now would be skipped: lock %s", rep.Lock)}
	case !rep.WouldProceed:
		return &ExitError{Code: ExitUnsafe, Err: errors.New("a run now would be refused or fail (see the steps marked refused or fails); nothing was changed")}
	}
	return nil
}

var planStatusText = map[runbooks.PlanStatus]string{
	runbooks.PlanOK: "ok", runbooks.PlanWaits: "waits", runbooks.PlanRefused: "REFUSED",
	runbooks.PlanFails: "FAILS", runbooks.PlanAtRunTime: "at run time",
}

// writeRunbookPlan prints the dry-run: each step with what was found now or
// what it will check at run time, and the first promotion's full plan.
func writeRunbookPlan(w io.Writer, tty bool, rep *runbooks.PlanReport) error {
	fmt.Fprintf(w, "Runbook %s (%s), cluster %s\n", rep.Runbook, rep.File, rep.Cluster)
	if rep.Description != "" {
		fmt.Fprintf(w, "%s\n", strings.TrimSpace(rep.Description))
	}
	fmt.Fprintf(w, "Primary now (initial_primary): %s. Lock: %s.\n", dash(rep.Primary), rep.Lock)
	phase := runbooks.Phase("")
	n := 0
	for _, ps := range rep.Steps {
		if ps.Phase != phase {
			phase, n = ps.Phase, 0
			if phase == runbooks.PhaseOnFailure {
				fmt.Fprintln(w, "\nOn failure (run after a failed step, each planned at run time):")
			} else {
				fmt.Fprintln(w, "\nSteps:")
			}
		}
		n++
		fmt.Fprintf(w, "%2d. [%s] %s: %s\n", n, planStatusText[ps.Status], ps.ID, ps.Description)
		if ps.Detail != "" {
			fmt.Fprintf(w, "      %s\n", ps.Detail)
		}
		for _, wc := range ps.WillCheck {
			fmt.Fprintf(w, "      will check: %s\n", wc)
		}
		if ps.Promote != nil {
			fmt.Fprintln(w)
			if err := writeOperationPlan(w, tty, rep.Cluster, ps.Promote); err != nil {
				return err
			}
			fmt.Fprintln(w)
		} else if len(ps.Checks) > 0 {
			if err := writeChecks(&indentWriter{w: w, prefix: "      "}, tty, ps.Checks); err != nil {
				return err
			}
		}
	}
	fmt.Fprintln(w)
	switch {
	case rep.LockHeld:
		fmt.Fprintln(w, "Plan: another operation holds the lock: a run now would be skipped (exit 5). Nothing was changed.")
	case rep.WouldProceed:
		fmt.Fprintln(w, "Plan: a run would proceed as far as can be told now; steps marked \"at run time\" are checked when the run gets there. Nothing was changed.")
	default:
		fmt.Fprintln(w, "Plan: a run now would be refused or fail (see REFUSED and FAILS above). Nothing was changed.")
	}
	return nil
}

// writeOperationPlan prints a promotion or rejoin exactly as promote
// --dry-run or rejoin --dry-run print it.
func writeOperationPlan(w io.Writer, tty bool, cluster string, op *runbooks.OperationPlan) error {
	if op.Kind == "rejoin" {
		return writeRejoinText(w, tty, &rejoinReport{Node: op.Candidate, Primary: op.Primary, Checks: op.Checks, Proceed: op.Proceed, Plan: op.Plan, Error: op.Error})
	}
	return writePromoteText(w, tty, &promoteReport{Cluster: cluster, OperationPlan: *op})
}

func runRunbookRun(ctx context.Context, o *RunbookOptions) error {
	cfg, rb, err := o.loadRunbook()
	if err != nil {
		return err
	}
	if !cfg.Etcd.Configured() {
		return &ExitError{Code: ExitUsage, Err: fmt.Errorf("a drill needs etcd for the cluster lock: add etcd.endpoints to %s", cfg.File)}
	}
	if rb.Writes() {
		if !o.Quiet && o.Output == "table" && o.IO.StdinTTY && !o.Yes {
			fmt.Fprintf(o.IO.ErrOut, "Drill %s on cluster %s changes the cluster or writes to it (see 'replctl runbook plan %s').\n", rb.Name, cfg.Cluster, o.Files[0])
		}
		if err := o.IO.Confirm(fmt.Sprintf("Run drill %s on cluster %s?", rb.Name, cfg.Cluster), o.Yes); err != nil {
			return err
		}
	}
	cli, err := o.Etcd(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	pr := &progress{w: o.IO.ErrOut, verbose: o.Verbose, quiet: o.Quiet}
	eng := &runbooks.Engine{Cfg: cfg, Cli: cli, Timeout: o.Timeout, Command: o.Command, LockWait: o.LockWait, Now: o.Now, Sink: pr.event,
		OnWait: func(h *etcdlock.LockHolder) {
			if !o.Quiet {
				fmt.Fprintf(o.IO.ErrOut, "waiting up to %s for the lock: %s\n", o.LockWait, h.Describe(time.Now()))
			}
		}}
	rep, runErr := eng.Run(ctx, rb)
	if err := o.writeFiles(rep); err != nil {
		return err
	}
	var held *etcdlock.LockHeldError
	if errors.As(runErr, &held) {
		// One line that says the drill did not run, and why: a cron job
		// that meets a running operation skips, it does not fail.
		fmt.Fprintf(o.IO.ErrOut, "skipped: drill %s not run: %v\n", rb.Name, held)
		return &ExitError{Code: ExitLocked, Err: held, Quiet: true}
	}
	if runErr != nil && rep.OperationID == "" {
		return runErr
	}
	if !(o.Quiet && rep.Outcome == runbooks.Passed) {
		if err := render(o.IO, o.Output, rep, func(w io.Writer) error { return writeRunbookResult(w, o.IO.StdoutTTY, rep) }); err != nil {
			return err
		}
	}
	switch {
	case rep.Outcome == runbooks.Passed:
		return nil
	case rep.NeedsAttention:
		return &ExitError{Code: ExitPartial, Err: fmt.Errorf("drill %s failed and the cluster needs attention: %s", rb.Name, rep.Error)}
	case rep.Refused:
		return &ExitError{Code: ExitUnsafe, Err: fmt.Errorf("drill %s refused before changing anything: %s", rb.Name, rep.Error)}
	}
	return &ExitError{Code: ExitFailed, Err: fmt.Errorf("drill %s failed: %s", rb.Name, rep.Error)}
}

// writeFiles writes the report files, whatever the outcome: CI reads them
// for skipped and failed drills too.
func (o *RunbookOptions) writeFiles(rep *runbooks.Report) error {
	if o.ReportJSON != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.ReportJSON, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("write --report-json: %w", err)
		}
	}
	if o.JUnit != "" {
		var buf bytes.Buffer
		if err := runbooks.WriteJUnit(&buf, rep); err != nil {
			return err
		}
		if err := os.WriteFile(o.JUnit, buf.Bytes(), 0o644); err != nil {
			return fmt.Errorf("write --junit: %w", err)
		}
	}
	return nil
}

// progress renders the drill's events on stderr: one line per step when
// it ends, and with -v the steps of the plans it executes.
type progress struct {
	w       io.Writer
	verbose bool
	quiet   bool
}

func (p *progress) event(e runbooks.Event) {
	if p.quiet {
		return
	}
	switch e.Type {
	case runbooks.EventDrillStarted, runbooks.EventOnFailure:
		fmt.Fprintln(p.w, e.Message)
	case runbooks.EventStepStarted:
		if p.verbose {
			fmt.Fprintf(p.w, "[%d/%d] %s: %s ...\n", e.Index, e.Total, e.Step.ID, e.Step.Description)
		}
	case runbooks.EventStepEnded:
		s := e.Step
		line := fmt.Sprintf("[%d/%d] %s: %s: %s in %s", e.Index, e.Total, s.ID, s.Description, s.Outcome, roundDur(s.Duration()))
		if m := measuredText(s); m != "" {
			line += " (" + m + ")"
		}
		if s.Error != "" {
			line += ": " + s.Error
		}
		fmt.Fprintln(p.w, line)
	case runbooks.EventPlanStep:
		if !p.verbose || e.Plan == nil {
			return
		}
		pe := e.Plan
		switch pe.Type {
		case plan.StepStarted:
			fmt.Fprintf(p.w, "      %s: %s\n", pe.StepID, pe.Description)
		case plan.StepFailed, plan.StepUndoFailed, plan.StepUndoSkipped:
			fmt.Fprintf(p.w, "      %s %s: %s\n", pe.StepID, pe.Type, pe.Error)
		case plan.StepUndone:
			fmt.Fprintf(p.w, "      %s undone: %s\n", pe.StepID, pe.Description)
		}
	case runbooks.EventProgress:
		if p.verbose {
			fmt.Fprintf(p.w, "      %s\n", e.Message)
		}
	}
}

func measuredText(s *runbooks.StepReport) string {
	var parts []string
	for _, k := range sortedKeys(s.Measured) {
		if k == "dsn" {
			continue
		}
		parts = append(parts, k+"="+s.Measured[k])
	}
	return strings.Join(parts, " ")
}

// runbookTable is the result table: step, outcome, duration, measured.
func runbookTable(rep *runbooks.Report) ([]string, [][]string) {
	var rows [][]string
	for _, s := range rep.Steps {
		if s.Phase == runbooks.PhaseOnFailure && s.Outcome == runbooks.NotRun {
			continue
		}
		dur := "-"
		if s.Started != nil {
			dur = roundDur(s.Duration()).String()
		}
		id := s.ID
		rows = append(rows, []string{id, string(s.Kind), strings.ToUpper(string(s.Outcome)), dur, dash(measuredText(s))})
	}
	return []string{"STEP", "KIND", "OUTCOME", "DURATION", "MEASURED"}, rows
}

func writeRunbookResult(w io.Writer, tty bool, rep *runbooks.Report) error {
	header, rows := runbookTable(rep)
	if err := writeTable(w, tty, header, rows); err != nil {
		return err
	}
	for _, s := range rep.Steps {
		if s.Outcome != runbooks.Failed && !(s.Outcome == runbooks.Skipped && s.Error != "") {
			continue
		}
		fmt.Fprintf(w, "%s %s: %s\n", s.ID, s.Outcome, s.Error)
		for _, a := range s.Assertions {
			if !a.Passed {
				msg := "measured " + dash(a.Actual)
				if a.Error != "" {
					msg = a.Error
				}
				fmt.Fprintf(w, "  assertion failed: %s: %s\n", a.Expr, msg)
			}
		}
		if s.Hint != "" {
			fmt.Fprintf(w, "  hint: %s\n", s.Hint)
		}
	}
	var nums []string
	m := rep.Metrics
	if m.WriteOutageSeconds != nil {
		nums = append(nums, fmt.Sprintf("write outage %s", roundDur(time.Duration(*m.WriteOutageSeconds*float64(time.Second)))))
	}
	if m.LostWrites != nil {
		nums = append(nums, fmt.Sprintf("lost writes %d of %d acknowledged", *m.LostWrites, *m.WritesAcked))
	}
	if m.PromoteOutageSeconds != nil {
		nums = append(nums, fmt.Sprintf("longest promotion outage %s", roundDur(time.Duration(*m.PromoteOutageSeconds*float64(time.Second)))))
	}
	summary := fmt.Sprintf("Drill %s %s in %s", rep.Runbook, strings.ToUpper(string(rep.Outcome)), roundDur(time.Duration(rep.DurationSeconds*float64(time.Second))))
	if len(nums) > 0 {
		summary += ": " + strings.Join(nums, ", ")
	}
	fmt.Fprintf(w, "%s. Primary: %s (was %s).", summary, dash(rep.FinalPrimary), dash(rep.InitialPrimary))
	if rep.OperationID != "" {
		fmt.Fprintf(w, " History: replctl history %s.", rep.OperationID)
	}
	fmt.Fprintln(w)
	if rep.NeedsAttention {
		fmt.Fprintln(w, "The cluster needs attention: an on_failure step failed or was skipped, or a promotion is partly done. Check replctl status.")
	}
	return nil
}

// indentWriter prefixes every line written through it.
type indentWriter struct {
	w      io.Writer
	prefix string
	mid    bool
}

// Write indents each line as it starts.
func (iw *indentWriter) Write(p []byte) (int, error) {
	var b bytes.Buffer
	for _, c := range p {
		if !iw.mid {
			b.WriteString(iw.prefix)
			iw.mid = true
		}
		b.WriteByte(c)
		if c == '\n' {
			iw.mid = false
		}
	}
	if _, err := iw.w.Write(b.Bytes()); err != nil {
		return 0, err
	}
	return len(p), nil
}
