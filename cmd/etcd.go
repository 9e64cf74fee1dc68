package cmd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/etcdlock"
)

// Etcd connects to the configured etcd, proving within etcd.dial_timeout
// that it answers. It is lazy in that nothing dials etcd until a command
// asks; each call dials a new client, which the caller closes. Without
// etcd.endpoints it fails with exit code 2, naming the file to fix.
func (f *Factory) Etcd(ctx context.Context) (*clientv3.Client, error) {
	cfg, err := f.Config()
	if err != nil {
		return nil, err
	}
	return connectEtcd(ctx, cfg)
}

// configAndEtcd loads the configuration and connects to its etcd, for the
// commands that need both; the caller closes the client.
func configAndEtcd(ctx context.Context, load func() (*config.Config, error), connect func(context.Context) (*clientv3.Client, error)) (*config.Config, *clientv3.Client, error) {
	cfg, err := load()
	if err != nil {
		return nil, nil, err
	}
	cli, err := connect(ctx)
	if err != nil {
		return nil, nil, err
	}
	return cfg, cli, nil
}

func connectEtcd(ctx context.Context, cfg *config.Config) (*clientv3.Client, error) {
	if !cfg.Etcd.Configured() {
		return nil, &ExitError{Code: ExitUsage, Err: fmt.Errorf("etcd is not configured: add etcd.endpoints to %s", cfg.File)}
	}
	return etcdlock.Connect(ctx, cfg.Etcd)
}

// commandLine rebuilds the command line a user typed for c, as recorded in
// the lock holder and the history: the command path without the program
// name, the command's own flags that were set, and the arguments. Global
// flags (--config, -o, --timeout) are left out: they say how replctl was
// invoked, not what the operation does. Secrets are masked by
// etcdlock.ScrubCommand.
func commandLine(c *cobra.Command, args []string) []string {
	parts := strings.Fields(c.CommandPath())
	if len(parts) > 0 {
		parts = parts[1:]
	}
	inherited := c.InheritedFlags()
	c.Flags().VisitAll(func(fl *pflag.Flag) {
		if !fl.Changed || inherited.Lookup(fl.Name) != nil {
			return
		}
		if fl.Value.Type() == "bool" {
			if fl.Value.String() == "true" {
				parts = append(parts, "--"+fl.Name)
			} else {
				parts = append(parts, "--"+fl.Name+"=false")
			}
			return
		}
		parts = append(parts, "--"+fl.Name, fl.Value.String())
	})
	if dash := c.ArgsLenAtDash(); dash >= 0 && dash <= len(args) {
		parts = append(parts, args[:dash]...)
		parts = append(parts, "--")
		return append(parts, args[dash:]...)
	}
	return append(parts, args...)
}

// lockError maps the lock's errors to exit codes: held by another
// operation is 5, with what to do about it.
func lockError(err error) error {
	var held *etcdlock.LockHeldError
	if errors.As(err, &held) {
		hint := "wait for it to finish, or pass --lock-wait DURATION"
		if held.Waited > 0 {
			hint = "wait longer with a larger --lock-wait"
		}
		return &ExitError{Code: ExitLocked, Err: fmt.Errorf("%w: %s; if its process is gone, break the lock with 'replctl lock release --force'", err, hint)}
	}
	return err
}

// addLockWaitFlag adds --lock-wait to a command that takes the lock.
func addLockWaitFlag(c *cobra.Command, d *time.Duration) {
	c.Flags().DurationVar(d, "lock-wait", 0, "wait up to `DURATION` for the cluster lock instead of failing at once when another operation holds it")
}
