package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/topology"
)

// CheckOptions are the inputs of replctl check.
type CheckOptions struct {
	IO      *IOStreams
	Config  func() (*config.Config, error)
	Output  string
	Timeout time.Duration
	// Names are the checks to run; empty runs every monitoring check.
	Names  []string
	Prober topology.Prober
	Record func(ctx context.Context) (*recordInfo, error)
}

// checkReport is the result of check, the same for every format.
type checkReport struct {
	Cluster string `json:"cluster"`
	// Status is the worst level: ok, warning, critical or unknown.
	Status checks.Level `json:"status"`
	// ExitCode is the monitoring-plugins exit code, Status as a number.
	ExitCode int             `json:"exit_code"`
	Results  []checks.Result `json:"results"`
	// snap feeds the nagios perfdata; nil when nothing was probed.
	snap *topology.Snapshot
	cfg  *config.Config
}

// unknownErr makes every failure of check exit 3 (UNKNOWN), the
// monitoring-plugins convention, where other commands use their own codes.
func unknownErr(err error) error {
	if err == nil {
		return nil
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return &ExitError{Code: int(checks.Unknown), Err: ee.Err, Quiet: ee.Quiet}
	}
	return &ExitError{Code: int(checks.Unknown), Err: err}
}

func newCmdCheck(f *Factory, runF func(context.Context, *CheckOptions) error) *cobra.Command {
	o := &CheckOptions{IO: f.IO, Config: f.Config}
	o.Record = func(ctx context.Context) (*recordInfo, error) {
		cfg, err := o.Config()
		if err != nil {
			return nil, err
		}
		return readClusterRecord(ctx, cfg)
	}
	c := &cobra.Command{
		Use:   "check [NAME...]",
		Short: "Run health checks; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
		Long: `Run the named checks, or every monitoring check, against a fresh probe of the
cluster, and exit with the monitoring-plugins convention: 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN. A configuration error, a usage error or no reachable
node is UNKNOWN.

Monitoring checks: ` + strings.Join(monitoringNames(), ", ") + `.
Preflight checks (run only when named): ` + strings.Join(preflightNames(), ", ") + `.

-o nagios prints one line with perfdata; -o json prints cluster, status,
exit_code and results[] (check, level, code, message, node, hint).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f, "table", "json", "yaml", "nagios"); err != nil {
				return unknownErr(err)
			}
			for _, a := range args {
				if !slices.Contains(checks.Names(), a) {
					return unknownErr(usageError("unknown check %q: known checks are %s", a, strings.Join(checks.Names(), ", ")))
				}
			}
			o.Output, o.Timeout, o.Names = f.Output, f.Timeout, args
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return runCheck(cmd.Context(), o)
		},
	}
	c.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return unknownErr(fmt.Errorf("%w (see '%s --help')", err, c.CommandPath()))
	})
	return c
}

func monitoringNames() []string {
	var out []string
	for _, c := range checks.All() {
		if !c.Preflight {
			out = append(out, c.Name)
		}
	}
	return out
}

func preflightNames() []string {
	var out []string
	for _, c := range checks.All() {
		if c.Preflight {
			out = append(out, c.Name)
		}
	}
	return out
}

func runCheck(ctx context.Context, o *CheckOptions) error {
	cfg, err := o.Config()
	if err != nil {
		if o.Output == "nagios" {
			fmt.Fprintf(o.IO.Out, "REPLCTL UNKNOWN - %s\n", strings.ReplaceAll(err.Error(), "|", "/"))
		}
		return unknownErr(err)
	}
	obs := observe(ctx, cfg, o.Timeout, o.Prober, o.Record)
	r := &checkReport{Cluster: cfg.Cluster, snap: obs.Snap, cfg: cfg}
	if obs.Snap.Reachable() == 0 {
		r.Results = []checks.Result{{Name: "reachable", Level: checks.Unknown, Code: "no_node_reachable",
			Message: errNoNodeReachable(obs.Snap).Error()}}
	} else if r.Results, err = checks.Run(obs.Snap, cfg, o.Names...); err != nil {
		return unknownErr(usageError("%v", err))
	}
	if len(o.Names) == 0 {
		r.Results = append(r.Results, interruptedChecks(obs)...)
	}
	r.Status = checks.Worst(r.Results)
	r.ExitCode = int(r.Status)
	var werr error
	if o.Output == "nagios" {
		_, werr = fmt.Fprintln(o.IO.Out, nagiosLine(r))
	} else {
		werr = render(o.IO, o.Output, r, func(w io.Writer) error {
			h, rows := checkTable(r.Results)
			return writeTable(w, o.IO.StdoutTTY, h, rows)
		})
	}
	if werr != nil {
		return unknownErr(werr)
	}
	if r.ExitCode != 0 {
		return &ExitError{Code: r.ExitCode, Err: fmt.Errorf("check: %s", r.Status), Quiet: true}
	}
	return nil
}

// checkTable lays out results one per line.
func checkTable(rs []checks.Result) (header []string, rows [][]string) {
	header = []string{"CHECK", "LEVEL", "NODE", "MESSAGE"}
	for _, r := range rs {
		rows = append(rows, []string{r.Name, r.Level.String(), dash(r.Node), r.Message})
	}
	return header, rows
}

// nagiosLine is the monitoring-plugins output: status, the problems (or a
// summary when there are none), and perfdata after "|".
func nagiosLine(r *checkReport) string {
	var text string
	if probs := checks.Problems(r.Results); len(probs) > 0 {
		var parts []string
		for _, p := range probs {
			parts = append(parts, p.Code+": "+p.Message)
		}
		text = strings.Join(parts, "; ")
	} else if r.snap != nil {
		text = statusSummary(r.snap, 0)
	}
	// "|" starts perfdata: keep it out of the text.
	text = strings.ReplaceAll(text, "|", "/")
	line := fmt.Sprintf("REPLCTL %s - %s", r.Status, text)
	if perf := perfdata(r.snap, r.cfg); perf != "" {
		line += " | " + perf
	}
	return line
}

// perfdata reports the replica count and each replica's lag, with the
// configured thresholds, in the 'label'=value[UOM];warn;crit;min format.
func perfdata(s *topology.Snapshot, cfg *config.Config) string {
	if s == nil || s.Reachable() == 0 {
		return ""
	}
	t := cfg.Thresholds
	minRep := ""
	if t.MinReplicas != nil {
		minRep = fmt.Sprintf("%d:", *t.MinReplicas)
	}
	streaming := 0
	for _, n := range s.Replicas() {
		if n.Streaming() {
			streaming++
		}
	}
	parts := []string{
		fmt.Sprintf("'replicas_streaming'=%d;%s;;0", streaming, minRep),
		fmt.Sprintf("'nodes_reachable'=%d;;;0;%d", s.Reachable(), len(s.Nodes)),
	}
	for _, n := range s.Replicas() {
		if n.LagBytes != nil {
			parts = append(parts, fmt.Sprintf("'%s_lag'=%dB;%d;%d;0", n.Name, *n.LagBytes, uint64(t.LagWarning), uint64(t.LagCritical)))
		}
		if d, ok := n.ReplayDelay(); ok {
			parts = append(parts, fmt.Sprintf("'%s_delay'=%.3fs;%g;%g;0", n.Name, d.Seconds(), t.DelayWarning.Seconds(), t.DelayCritical.Seconds()))
		}
	}
	return strings.Join(parts, " ")
}
