package cmd

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/etcdlock"
)

// HistoryOptions are the inputs of replctl history.
type HistoryOptions struct {
	IO      *IOStreams
	Config  func() (*config.Config, error)
	Etcd    func(context.Context) (*clientv3.Client, error)
	Now     func() time.Time
	Output  string
	Timeout time.Duration
	// Limit is -n: how many operations to list.
	Limit int
	// ID, when set, shows that one operation step by step.
	ID string
}

// historyList is the result of replctl history. Its JSON field names are a
// stable contract; operations are etcdlock.OpRecord.
type historyList struct {
	Cluster    string              `json:"cluster"`
	Operations []etcdlock.OpRecord `json:"operations"`
	// Interrupted are the IDs of listed operations that began and never
	// finished and are not recovered yet; they are listed with outcome
	// interrupted.
	Interrupted []string `json:"interrupted"`
}

func newCmdHistory(f *Factory, runF func(context.Context, *HistoryOptions) error) *cobra.Command {
	o := &HistoryOptions{IO: f.IO, Config: f.Config, Etcd: f.Etcd, Now: f.Now}
	c := &cobra.Command{
		Use:   "history [ID]",
		Short: "List the operations that changed the cluster, or show one",
		Long: `List the operations recorded in etcd, newest first: switchovers, failovers,
rejoins, lock runs and forced lock breaks (dry-runs are not recorded). The
history keeps the newest history.keep operations (default 500).

'replctl history ID' shows one operation step by step.

-o json prints {cluster, operations[]} for the list and the operation itself
for an ID. An operation is {id, kind, cluster, by {user, host, pid, command},
params, token, forced, started, finished, outcome, error, after_lock_lost,
steps[] {id, description, started, finished, outcome, error}}.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f); err != nil {
				return err
			}
			if o.Limit < 1 {
				return usageError("-n must be at least 1")
			}
			o.Output, o.Timeout = f.Output, f.Timeout
			o.ID = ""
			if len(args) == 1 {
				if n, err := strconv.ParseInt(args[0], 10, 64); err != nil || n < 1 {
					return usageError("invalid operation ID %q: IDs are positive numbers, as listed by 'replctl history'", args[0])
				}
				o.ID = args[0]
			}
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return runHistory(cmd.Context(), o)
		},
	}
	c.Flags().IntVarP(&o.Limit, "limit", "n", 20, "list at most `N` operations")
	return c
}

func runHistory(ctx context.Context, o *HistoryOptions) error {
	cfg, cli, err := configAndEtcd(ctx, o.Config, o.Etcd)
	if err != nil {
		return err
	}
	defer cli.Close()
	rctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	now := o.Now()
	if o.ID != "" {
		rec, err := etcdlock.ReadOperation(rctx, cli, cfg.Etcd.Prefix, cfg.Cluster, o.ID)
		if err != nil {
			return err
		}
		if rec == nil {
			return fmt.Errorf("operation %s is not in the history of %s: see 'replctl history' (only the newest %d are kept)", o.ID, cfg.Cluster, cfg.History.Keep)
		}
		if h, err := etcdlock.ReadLockHolder(rctx, cli, cfg.Etcd.Prefix, cfg.Cluster); err == nil && rec.Interrupted(h) {
			rec.Outcome = etcdlock.OutcomeInterrupted
			rec.Error = strings.TrimPrefix(rec.Error+"; not recovered: run `replctl recover`", "; ")
		}
		return render(o.IO, o.Output, rec, func(w io.Writer) error { return writeOperation(w, o.IO.StdoutTTY, *rec, now) })
	}
	ops, err := etcdlock.ListHistory(rctx, cli, cfg.Etcd.Prefix, cfg.Cluster, o.Limit)
	if err != nil {
		return err
	}
	res := historyList{Cluster: cfg.Cluster, Operations: ops, Interrupted: []string{}}
	if h, err := etcdlock.ReadLockHolder(rctx, cli, cfg.Etcd.Prefix, cfg.Cluster); err == nil {
		for i := range ops {
			if ops[i].Interrupted(h) {
				// A killed run's record says running for ever: say what
				// it is and what to do, without rewriting the record.
				res.Interrupted = append(res.Interrupted, ops[i].ID)
				ops[i].Outcome = etcdlock.OutcomeInterrupted
				ops[i].Error = strings.TrimPrefix(ops[i].Error+"; not recovered: run `replctl recover`", "; ")
			}
		}
	}
	return render(o.IO, o.Output, res, func(w io.Writer) error {
		if len(ops) == 0 {
			_, err := fmt.Fprintf(w, "no operations recorded for %s\n", cfg.Cluster)
			return err
		}
		header, rows := historyTable(ops, now, o.IO.StdoutTTY)
		return writeTable(w, o.IO.StdoutTTY, header, rows)
	})
}

// historyTable lists operations one per row, in the order given. On a
// terminal a long detail is shortened (the whole of it is in -o json and
// in replctl history ID); piped, nothing is cut: grep and awk see it all.
func historyTable(ops []etcdlock.OpRecord, now time.Time, tty bool) (header []string, rows [][]string) {
	header = []string{"ID", "STARTED", "KIND", "BY", "OUTCOME", "DURATION", "DETAIL"}
	for _, r := range ops {
		detail := r.Error
		if detail == "" {
			detail = formatParams(r.Params)
		}
		if r.Forced {
			detail = strings.TrimSpace("forced: " + detail)
		}
		rows = append(rows, []string{r.ID, fmtTime(r.Started, now), orDash(r.Kind), fmt.Sprintf("%s@%s", r.By.User, r.By.Host),
			string(r.Outcome), fmtDuration(r, now), orDash(cell(detail, 80, tty))})
	}
	return header, rows
}

// writeOperation shows one operation: a header, then its steps as a table.
func writeOperation(w io.Writer, tty bool, r etcdlock.OpRecord, now time.Time) error {
	var b strings.Builder
	fmt.Fprintf(&b, "operation %s: %s on %s\n", r.ID, orDash(r.Kind), r.Cluster)
	fmt.Fprintf(&b, "by:       %s", r.By.String())
	if r.By.Command != "" {
		fmt.Fprintf(&b, " running `%s`", r.By.Command)
	}
	b.WriteString("\n")
	if r.Forced {
		b.WriteString("forced:   yes, written without the lock\n")
	} else {
		fmt.Fprintf(&b, "token:    %d\n", r.Token)
	}
	fmt.Fprintf(&b, "started:  %s\n", fmtTime(r.Started, now))
	if r.Finished != nil {
		fmt.Fprintf(&b, "finished: %s (%s)\n", fmtTime(*r.Finished, now), fmtDuration(r, now))
	}
	fmt.Fprintf(&b, "outcome:  %s\n", r.Outcome)
	if r.Error != "" {
		fmt.Fprintf(&b, "error:    %s\n", r.Error)
	}
	if r.AfterLockLost {
		b.WriteString("note:     the final update was written after the lock was lost\n")
	}
	if len(r.Params) > 0 {
		fmt.Fprintf(&b, "params:   %s\n", formatParams(r.Params))
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	if len(r.Steps) == 0 {
		_, err := io.WriteString(w, "no steps recorded\n")
		return err
	}
	if _, err := io.WriteString(w, "\n"); err != nil {
		return err
	}
	header, rows := operationStepsTable(r, now, tty)
	if err := writeTable(w, tty, header, rows); err != nil {
		return err
	}
	if tty && slices.ContainsFunc(r.Steps, func(s etcdlock.StepRecord) bool { return len([]rune(s.Description)) > stepCell }) {
		_, err := fmt.Fprintf(w, "(descriptions shortened; the full text: replctl history %s -o json, or piped)\n", r.ID)
		return err
	}
	return nil
}

// stepCell is the widest a step's description is shown on a terminal.
const stepCell = 72

// operationStepsTable lists an operation's steps in the order they ran.
func operationStepsTable(r etcdlock.OpRecord, now time.Time, tty bool) (header []string, rows [][]string) {
	header = []string{"STEP", "DESCRIPTION", "STARTED", "DURATION", "OUTCOME", "ERROR"}
	for _, s := range r.Steps {
		d := "-"
		if s.Finished != nil {
			d = s.Finished.Sub(s.Started).Round(time.Millisecond).String()
		}
		rows = append(rows, []string{s.ID, cell(s.Description, stepCell, tty), fmtTime(s.Started, now), d, s.Outcome, orDash(s.Error)})
	}
	return header, rows
}

// fmtTime shows a time in the clock's zone, to the second.
func fmtTime(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.In(now.Location()).Format("2006-01-02 15:04:05")
}

func fmtDuration(r etcdlock.OpRecord, now time.Time) string {
	if r.Finished == nil {
		if r.Outcome == etcdlock.OutcomeRunning {
			return "running " + now.Sub(r.Started).Round(time.Second).String()
		}
		return "-"
	}
	return r.Finished.Sub(r.Started).Round(time.Millisecond).String()
}

// formatParams shows parameters as sorted key=value pairs.
func formatParams(p map[string]string) string {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + p[k]
	}
	return strings.Join(parts, " ")
}

// cell shortens s to n characters on a terminal; piped output is never
// cut.
func cell(s string, n int, tty bool) string {
	if r := []rune(s); tty && len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
