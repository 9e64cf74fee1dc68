package cmd

import "github.com/spf13/cobra"

func newCmdTestenv(f *Factory) *cobra.Command {
	return &cobra.Command{Use: "testenv", Short: "Run a local sandbox cluster (PostgreSQL + etcd) for tests and demos"}
}
