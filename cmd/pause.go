package cmd

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/etcdlock"
)

// PauseOptions are the inputs of replctl pause and replctl resume.
type PauseOptions struct {
	IO      *IOStreams
	Config  func() (*config.Config, error)
	Etcd    func(context.Context) (*clientv3.Client, error)
	Now     func() time.Time
	Output  string
	Resume  bool
	For     time.Duration
	Reason  string
	Command []string
}

func newCmdPause(f *Factory, runF func(context.Context, *PauseOptions) error) *cobra.Command {
	o := &PauseOptions{IO: f.IO, Config: f.Config, Etcd: f.Etcd}
	c := &cobra.Command{
		Use:   "pause",
		Short: "Maintenance mode: watchers observe and report but never act",
		Long: `Put the cluster in maintenance mode: every replctl watch keeps looking and
reporting, but takes no action (no automatic failover, no fence, no rejoin,
no recover) until 'replctl resume', or until --for has passed. The pause is
recorded in etcd and shown by 'replctl status'. Operator commands (promote,
rejoin, ...) are not affected.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.For < 0 {
				return usageError("--for must be positive, e.g. 1h")
			}
			return o.run(cmd, args, f, runF)
		},
	}
	c.Flags().DurationVar(&o.For, "for", 0, "end the pause after `DURATION` (default: until replctl resume)")
	c.Flags().StringVar(&o.Reason, "reason", "", "why, shown by status and in the watchers' log")
	return c
}

func newCmdResume(f *Factory, runF func(context.Context, *PauseOptions) error) *cobra.Command {
	o := &PauseOptions{IO: f.IO, Config: f.Config, Etcd: f.Etcd, Resume: true}
	return &cobra.Command{
		Use:   "resume",
		Short: "End maintenance mode, and acknowledge the last automatic failover",
		Long: `End a pause: the leader watcher acts again. Resuming also acknowledges the
last automatic failover, so that the next dead primary is failed over
automatically even within watch.min_interval (the anti-flapping guard).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd, args, f, runF) },
	}
}

func (o *PauseOptions) run(cmd *cobra.Command, args []string, f *Factory, runF func(context.Context, *PauseOptions) error) error {
	if err := checkOutput(f); err != nil {
		return err
	}
	o.Output, o.Now = f.Output, f.Now
	o.Command = commandLine(cmd, args)
	if runF != nil {
		return runF(cmd.Context(), o)
	}
	return runPause(cmd.Context(), o)
}

func runPause(ctx context.Context, o *PauseOptions) error {
	cfg, err := o.Config()
	if err != nil {
		return err
	}
	if !cfg.Etcd.Configured() {
		return &ExitError{Code: ExitUsage, Err: fmt.Errorf("pause and resume are recorded in etcd: add etcd.endpoints to %s", cfg.File)}
	}
	cli, err := o.Etcd(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	prev, err := etcdlock.ReadMaintenance(ctx, cli, cfg.Etcd.Prefix, cfg.Cluster)
	if err != nil {
		return err
	}
	now := o.Now()
	m := etcdlock.Maintenance{By: etcdlock.CurrentActor(o.Command).String(), Since: now}
	if prev != nil {
		m.AcknowledgedAt = prev.AcknowledgedAt
	}
	if o.Resume {
		m.AcknowledgedAt = now
	} else {
		m.Paused, m.Reason = true, o.Reason
		if o.For > 0 {
			m.Until = now.Add(o.For)
		}
	}
	if err := etcdlock.WriteMaintenance(ctx, cli, cfg.Etcd.Prefix, cfg.Cluster, m); err != nil {
		return err
	}
	return render(o.IO, o.Output, m, func(w io.Writer) error {
		switch {
		case o.Resume && prev.InForce(now):
			fmt.Fprintf(w, "Resumed %s: the leader watcher acts again (it was paused by %s).\n", cfg.Cluster, prev.By)
		case o.Resume:
			fmt.Fprintf(w, "%s was not paused; the last automatic failover is acknowledged.\n", cfg.Cluster)
		case m.Until.IsZero():
			fmt.Fprintf(w, "Paused %s until replctl resume: watchers observe and report but do not act.\n", cfg.Cluster)
		default:
			fmt.Fprintf(w, "Paused %s until %s: watchers observe and report but do not act.\n", cfg.Cluster, m.Until.Format(time.RFC3339))
		}
		return nil
	})
}
