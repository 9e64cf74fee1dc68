package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/replctl/replctl/testenv"
)

// TestenvOptions are the inputs of replctl testenv.
type TestenvOptions struct {
	IO     *IOStreams
	Output string
	Dir    string
	Keep   bool
	// NoFence leaves commands.fence out of the sandbox's replctl.yaml;
	// by default up writes it (testenv.Options.FenceCommand).
	NoFence bool
	Options testenv.Options
	// Self re-executes this binary to serve etcd in a detached process.
	Self func() (string, error)
}

const defaultSandboxDir = ".replctl-testenv"

func newCmdTestenv(f *Factory) *cobra.Command {
	o := &TestenvOptions{IO: f.IO, Self: f.Executable}
	c := &cobra.Command{
		Use:   "testenv",
		Short: "Run a local sandbox cluster (PostgreSQL + etcd) for tests and demos",
		Long: `A real local cluster on 127.0.0.1: one primary and N streaming replicas, plus an
etcd, with a ready replctl.yaml in its directory. As root, the PostgreSQL
servers run as the unprivileged "postgres" OS user (created when missing).
With up --tls every connection, replication and etcd included, is TLS with
certificates from a throwaway CA in DIR/tls.`,
	}
	c.PersistentFlags().StringVar(&o.Dir, "dir", defaultSandboxDir, "sandbox `DIR`ectory (data, logs, state, replctl.yaml)")

	up := &cobra.Command{
		Use:   "up",
		Short: "Create and start the sandbox; returns when every replica streams",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f); err != nil {
				return err
			}
			o.Output = f.Output
			return runTestenvUp(cmd.Context(), o)
		},
	}
	uf := up.Flags()
	uf.IntVar(&o.Options.Replicas, "replicas", 2, "number of streaming replicas")
	uf.BoolVar(&o.Options.Sync, "sync", false, "make the primary's commits wait for one standby (ANY 1 (...))")
	uf.IntVar(&o.Options.BasePort, "base-port", 0, "use ports from `PORT` up instead of free ports")
	uf.StringVar(&o.Options.Cluster, "cluster", "demo", "cluster name written to replctl.yaml")
	uf.BoolVar(&o.Options.NoEtcd, "no-etcd", false, "do not start etcd")
	uf.IntVar(&o.Options.EtcdMembers, "etcd-members", 1, "number of etcd members, each a detached process with its own ports and DIR/etcd-N (3: a cluster whose leader can be killed)")
	uf.BoolVar(&o.Options.NoCommands, "no-commands", false, "write no node commands to replctl.yaml (SQL-only mode)")
	uf.BoolVar(&o.NoFence, "no-fence", false, "write no commands.fence (the sandbox's STONITH: stop the node at once, SIGKILL if hung) to replctl.yaml")
	uf.DurationVar(&o.Options.ReceiverTimeout, "receiver-timeout", 0, "set wal_receiver_timeout and wal_sender_timeout on every node (default PostgreSQL's 60s); replicas notice a hung primary only after it")
	uf.BoolVar(&o.Options.Zones, "zones", false, "give the nodes zones z1/z2 in replctl.yaml")
	uf.StringVar(&o.Options.PGBinDir, "pg-bindir", "", "PostgreSQL server binaries `DIR` (default $PG_BINDIR, else the OS packages'); server binaries alone will do, e.g. from make deps PG=17")
	uf.BoolVar(&o.Options.TLS, "tls", false, "TLS everywhere: a throwaway CA, server and client certificates, PostgreSQL with hostssl/cert only, etcd with client-certificate auth, sslmode=verify-full DSNs")

	down := &cobra.Command{
		Use:   "down",
		Short: "Stop every process of the sandbox and remove its data",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runTestenvDown(o)
		},
	}
	down.Flags().BoolVar(&o.Keep, "keep", false, "stop the processes but keep the data directory")

	status := &cobra.Command{
		Use:   "status",
		Short: "Show what runs where",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f); err != nil {
				return err
			}
			o.Output = f.Output
			return runTestenvStatus(o)
		},
	}
	reap := &cobra.Command{
		Use:   "reap",
		Short: "Stop servers left behind by killed test runs (found by the PID files in their temporary directories)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return testenv.ReapStale()
		},
	}
	serve := &cobra.Command{
		Use:                "etcd-serve",
		Hidden:             true,
		Short:              "Serve the sandbox's etcd (started detached by up)",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return testenv.RunEtcdServe(cmd.Context(), args)
		},
	}
	report := &cobra.Command{
		Use:    "report",
		Hidden: true,
		Short:  "Summarise `go test -json` from stdin for a CI log (make test uses it)",
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := testenv.Report(cmd.InOrStdin(), f.IO.Out)
			return err
		},
	}
	c.AddCommand(up, down, status, reap, serve, report, newCmdTestenvFetchPG(f), newCmdTestenvClone(), newCmdTestenvMatrix(f))
	return c
}

func runTestenvUp(ctx context.Context, o *TestenvOptions) error {
	if o.Options.Replicas < 0 {
		return usageError("--replicas must be 0 or more")
	}
	if o.Options.Replicas == 0 {
		o.Options.Replicas = -1 // testenv reads 0 as "default"
	}
	if o.Options.EtcdMembers < 1 {
		return usageError("--etcd-members must be 1 or more")
	}
	if o.Options.ReceiverTimeout < 0 {
		return usageError("--receiver-timeout must be 0 (PostgreSQL's default) or more")
	}
	// The demo sandbox shows the whole emergency path, STONITH included;
	// testenv.Start leaves it off so that existing tests keep their plans.
	o.Options.FenceCommand = !o.NoFence
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return err
	}
	o.Options.Dir = dir
	exe, err := o.Self()
	if err != nil {
		return fmt.Errorf("find replctl's own executable: %w", err)
	}
	start := time.Now()
	st, err := testenv.UpDetached(ctx, o.Options, []string{exe, "testenv", "etcd-serve"})
	if errors.Is(err, testenv.ErrAlreadyUp) {
		fmt.Fprintf(o.IO.ErrOut, "the sandbox in %s is already up\n", dir)
		return runTestenvStatus(o)
	}
	if errors.Is(err, testenv.ErrNoBinaries) {
		return &ExitError{Code: ExitFailed, Err: err}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(o.IO.ErrOut, "sandbox up in %s (%s)\n", dir, time.Since(start).Round(10*time.Millisecond))
	// The same table (and JSON) as testenv status: the PIDs just started.
	if rep, err := testenv.Status(dir); err == nil {
		return renderTestenv(o, rep.State, rep)
	}
	return renderTestenv(o, st, nil)
}

func runTestenvDown(o *TestenvOptions) error {
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return err
	}
	err = testenv.Down(dir, o.Keep)
	if errors.Is(err, testenv.ErrNotUp) {
		fmt.Fprintf(o.IO.ErrOut, "no sandbox in %s: nothing to take down\n", dir)
		return nil
	}
	if err != nil {
		return err
	}
	if o.Keep {
		fmt.Fprintf(o.IO.ErrOut, "sandbox in %s stopped; data kept\n", dir)
	} else {
		fmt.Fprintf(o.IO.ErrOut, "sandbox in %s stopped and removed\n", dir)
	}
	return nil
}

func runTestenvStatus(o *TestenvOptions) error {
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return err
	}
	rep, err := testenv.Status(dir)
	if errors.Is(err, testenv.ErrNotUp) {
		return &ExitError{Code: ExitFailed, Err: fmt.Errorf("no sandbox in %s: start one with 'replctl testenv up --dir %s'", dir, o.Dir)}
	}
	if err != nil {
		return err
	}
	return renderTestenv(o, rep.State, rep)
}

func renderTestenv(o *TestenvOptions, st *testenv.State, rep *testenv.StatusReport) error {
	var v any = st
	if rep != nil {
		v = rep
	}
	return render(o.IO, o.Output, v, func(w io.Writer) error {
		running := map[string]testenv.ProcessStatus{}
		if rep != nil {
			for _, p := range rep.Nodes {
				running[p.Name] = p
			}
		}
		var rows [][]string
		for _, n := range st.Nodes {
			state := "started"
			pid := ""
			if p, ok := running[n.Name]; ok {
				state, pid = "stopped", ""
				if p.Running {
					state, pid = "running", strconv.Itoa(p.PID)
				}
			}
			rows = append(rows, []string{n.Name, string(n.Role), "127.0.0.1:" + strconv.Itoa(n.Port), state, pid, n.DataDir})
		}
		etcdRow := func(name, endpoint, dataDir string, p *testenv.ProcessStatus) {
			state, pid := "started", ""
			if p != nil {
				state = "stopped"
				if p.Running {
					state, pid = "running", strconv.Itoa(p.PID)
				}
			}
			rows = append(rows, []string{name, "etcd", endpoint, state, pid, dataDir})
		}
		switch {
		case st.Etcd != nil && len(st.Etcd.Members) > 0:
			// One row per member: a fault test may have killed any of them.
			for i, m := range st.Etcd.Members {
				var p *testenv.ProcessStatus
				if rep != nil && i < len(rep.EtcdMembers) {
					p = &rep.EtcdMembers[i]
				}
				etcdRow(m.Name, m.Endpoint, m.DataDir, p)
			}
		case st.Etcd != nil:
			var p *testenv.ProcessStatus
			if rep != nil {
				p = rep.Etcd
			}
			etcdRow("etcd", st.Etcd.Endpoint, "", p)
		}
		if err := writeTable(w, o.IO.StdoutTTY, []string{"NAME", "ROLE", "ADDRESS", "STATE", "PID", "DATA"}, rows); err != nil {
			return err
		}
		fmt.Fprintf(w, "PostgreSQL %s (%s), servers run as OS user %s\n", st.PGVersion, st.BinDir, st.OSUser)
		if st.TLS != nil {
			fmt.Fprintf(w, "TLS: CA %s, client certificate %s (user postgres)\n", st.TLS.CAFile, st.TLS.ClientCert)
		}
		fmt.Fprintf(w, "config: %s\n  export REPLCTL_CONFIG=%s\n", st.Config, st.Config)
		return nil
	})
}
