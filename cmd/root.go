// Package cmd holds replctl's cobra commands: one file per command, each with
// an options struct, a constructor that wires flags into it, and a run
// function that does the work.
package cmd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/replctl/replctl/config"
)

// Version is set at build time with -ldflags "-X github.com/replctl/replctl/cmd.Version=...".
var Version = "dev"

// Main runs replctl with args and returns the process exit code.
func Main(ctx context.Context, args []string) int {
	return MainIO(ctx, args, SystemIO())
}

// MainIO is Main on given streams, for tests.
func MainIO(ctx context.Context, args []string, io *IOStreams) int {
	f := NewFactory(io)
	root := NewRootCmd(f)
	root.SetArgs(args)
	root.SetIn(io.In)
	root.SetOut(io.Out)
	root.SetErr(io.ErrOut)
	err := root.ExecuteContext(ctx)
	code := exitCode(err)
	if err != nil {
		var ee *ExitError
		if !(errors.As(err, &ee) && ee.Quiet) {
			fmt.Fprintln(io.ErrOut, "error:", err)
		}
		if code == ExitUsage && isCobraUsage(err) {
			fmt.Fprintln(io.ErrOut, "run 'replctl --help' for usage")
		}
	}
	return code
}

func isCobraUsage(err error) bool {
	var ee *ExitError
	var ce *config.Error
	return !errors.As(err, &ee) && !errors.As(err, &ce)
}

// NewRootCmd builds the command tree.
func NewRootCmd(f *Factory) *cobra.Command {
	root := &cobra.Command{
		Use:   "replctl",
		Short: "Operate a replicated PostgreSQL cluster safely",
		Long: `replctl discovers a PostgreSQL replication cluster over SQL, reports lag and
recovery state, and performs guarded switchover and failover under an etcd
fencing lock. Dry-runs print exactly the steps a real run would execute.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       Version,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if f.Timeout <= 0 {
				return usageError("--timeout must be positive, e.g. 3s")
			}
			return nil
		},
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &ExitError{Code: ExitUsage, Err: fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())}
	})
	pf := root.PersistentFlags()
	pf.StringVar(&f.ConfigPath, "config", "", "configuration file (default: $REPLCTL_CONFIG, ./replctl.yaml, ~/.config/replctl/replctl.yaml)")
	pf.StringVarP(&f.Output, "output", "o", "table", "output format: table, json or yaml; check also takes nagios, endpoints also libpq, status also prometheus (see each command's help)")
	pf.DurationVar(&f.Timeout, "timeout", 3*time.Second, "budget for each call to a node")
	pf.BoolVarP(&f.Verbose, "verbose", "v", false, "print diagnostics on stderr")

	root.AddCommand(
		newCmdVersion(f, nil),
		newCmdStatus(f, nil),
		newCmdCheck(f, nil),
		newCmdEndpoints(f, nil),
		newCmdLock(f),
		newCmdHistory(f, nil),
		newCmdPromote(f, nil),
		newCmdRejoin(f, nil),
		newCmdRecover(f, nil),
		newCmdWatch(f, nil),
		newCmdPause(f, nil),
		newCmdResume(f, nil),
		newCmdRunbook(f),
		newCmdTestenv(f),
	)
	root.CompletionOptions.HiddenDefaultCmd = false
	return root
}

// checkOutput validates -o against the formats a command supports.
func checkOutput(f *Factory, allowed ...string) error {
	if len(allowed) == 0 {
		allowed = []string{"table", "json", "yaml"}
	}
	for _, a := range allowed {
		if f.Output == a {
			return nil
		}
	}
	return usageError("unsupported output format %q: use one of %v", f.Output, allowed)
}
