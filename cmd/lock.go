package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/failover/plan"
)

// lockRunGrace is how long `lock run` lets its command exit after SIGTERM
// (lock lost, or interrupted) before it is killed.
const lockRunGrace = 10 * time.Second

func newCmdLock(f *Factory) *cobra.Command {
	c := &cobra.Command{
		Use:   "lock",
		Short: "Inspect, break or run a command under the cluster's fencing lock",
		Long: `Every operation that changes the cluster holds the cluster's lock in etcd, a
lease kept alive while it runs. Its fencing token is the etcd revision at
which it was taken, increasing with every acquisition.`,
		Args: cobra.NoArgs,
	}
	c.AddCommand(
		newCmdLockStatus(f, nil),
		newCmdLockRelease(f, nil),
		newCmdLockRun(f, nil),
	)
	return c
}

// takeLock acquires the cluster lock for a command that changes the
// cluster, telling the operator on stderr whom it waits for. A lock held by
// another operation gives exit code 5.
func takeLock(ctx context.Context, cli *clientv3.Client, cfg *config.Config, s *IOStreams, actor etcdlock.Actor, wait time.Duration) (*etcdlock.Lock, error) {
	lk, err := etcdlock.Acquire(ctx, cli, etcdlock.LockOptions{
		Prefix: cfg.Etcd.Prefix, Cluster: cfg.Cluster, TTL: cfg.Lock.TTL, Wait: wait,
		HistoryKeep: cfg.History.Keep, Actor: actor,
		OnWait: func(h *etcdlock.LockHolder) {
			fmt.Fprintf(s.ErrOut, "waiting up to %s for the lock on %s, held by %s\n", wait, cfg.Cluster, h.Describe(time.Now()))
		},
	})
	if err != nil {
		return nil, lockError(err)
	}
	ir, _, err := etcdlock.FindInterrupted(ctx, cli, cfg.Etcd.Prefix, cfg.Cluster)
	if err == nil && len(ir) > 0 {
		_ = lk.Release(context.WithoutCancel(ctx))
		c := failover.InterruptedCheck(ir[0])
		err = fmt.Errorf("refused: %s: %s", c.Message, c.Hint)
	}
	if err != nil {
		return nil, &ExitError{Code: ExitUnsafe, Err: err}
	}
	return lk, nil
}

// ---- lock status ----

// LockStatusOptions are the inputs of replctl lock status.
type LockStatusOptions struct {
	IO      *IOStreams
	Config  func() (*config.Config, error)
	Etcd    func(context.Context) (*clientv3.Client, error)
	Now     func() time.Time
	Output  string
	Timeout time.Duration
}

// lockStatus is the result of lock status, the same for every format. Its
// JSON field names are a stable contract.
type lockStatus struct {
	Cluster string `json:"cluster"`
	Held    bool   `json:"held"`
	// Holder is null when the lock is free.
	Holder *lockHolderInfo `json:"holder"`
}

// lockHolderInfo is the holder as lock status and lock release show it.
type lockHolderInfo struct {
	User        string `json:"user"`
	Host        string `json:"host"`
	PID         int    `json:"pid"`
	Command     string `json:"command"`
	OperationID string `json:"operation_id"`
	// Token is the fencing token, the etcd revision the lock was taken at.
	Token      int64     `json:"token"`
	Since      time.Time `json:"since"`
	AgeSeconds int64     `json:"age_seconds"`
	// LeaseID is hexadecimal, as etcdctl prints it.
	LeaseID         string `json:"lease_id"`
	LeaseTTLSeconds int64  `json:"lease_ttl_seconds"`
	// LeaseLeftSeconds is -1 when it could not be read.
	LeaseLeftSeconds int64  `json:"lease_left_seconds"`
	Key              string `json:"key"`
	Waiters          int    `json:"waiters"`
}

func holderInfo(h *etcdlock.LockHolder, now time.Time) *lockHolderInfo {
	if h == nil {
		return nil
	}
	info := &lockHolderInfo{User: h.User, Host: h.Host, PID: h.PID, Command: h.Command, OperationID: h.OperationID,
		Token: h.Token, Since: h.Since, LeaseID: strconv.FormatInt(h.LeaseID, 16),
		LeaseTTLSeconds: int64(h.LeaseTTL / time.Second), LeaseLeftSeconds: int64(h.LeaseLeft / time.Second),
		Key: h.Key, Waiters: h.Waiters}
	if !h.Since.IsZero() {
		info.AgeSeconds = max(int64(now.Sub(h.Since)/time.Second), 0)
	}
	if h.LeaseLeft < 0 {
		info.LeaseLeftSeconds = -1
	}
	return info
}

func newCmdLockStatus(f *Factory, runF func(context.Context, *LockStatusOptions) error) *cobra.Command {
	o := &LockStatusOptions{IO: f.IO, Config: f.Config, Etcd: f.Etcd, Now: f.Now}
	return &cobra.Command{
		Use:   "status",
		Short: "Show who holds the cluster lock",
		Long: `Show who holds the cluster's lock: user, host, PID and command, the
operation it runs (see 'replctl history ID'), the fencing token, how long it
has been held and how much of its lease is left. A free lock is not an error.

-o json prints {cluster, held, holder} where holder is null when the lock is
free, else {user, host, pid, command, operation_id, token, since,
age_seconds, lease_id, lease_ttl_seconds, lease_left_seconds, key, waiters}.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f); err != nil {
				return err
			}
			o.Output, o.Timeout = f.Output, f.Timeout
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return runLockStatus(cmd.Context(), o)
		},
	}
}

func runLockStatus(ctx context.Context, o *LockStatusOptions) error {
	cfg, cli, err := configAndEtcd(ctx, o.Config, o.Etcd)
	if err != nil {
		return err
	}
	defer cli.Close()
	rctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	h, err := etcdlock.ReadLockHolder(rctx, cli, cfg.Etcd.Prefix, cfg.Cluster)
	if err != nil {
		return err
	}
	res := lockStatus{Cluster: cfg.Cluster, Held: h != nil, Holder: holderInfo(h, o.Now())}
	return render(o.IO, o.Output, res, func(w io.Writer) error {
		header, rows := lockStatusTable(res, o.Now())
		return writeTable(w, o.IO.StdoutTTY, header, rows)
	})
}

// lockStatusTable lays the lock status out as one row.
func lockStatusTable(s lockStatus, now time.Time) (header []string, rows [][]string) {
	header = []string{"CLUSTER", "LOCK", "HOLDER", "COMMAND", "OPERATION", "TOKEN", "SINCE", "AGE", "LEASE LEFT", "WAITERS"}
	h := s.Holder
	if h == nil {
		return header, [][]string{{s.Cluster, "free", "-", "-", "-", "-", "-", "-", "-", "-"}}
	}
	since, age := "-", "-"
	if !h.Since.IsZero() {
		since = h.Since.In(now.Location()).Format("2006-01-02 15:04:05")
		age = (time.Duration(h.AgeSeconds) * time.Second).String()
	}
	left := "-"
	if h.LeaseLeftSeconds >= 0 {
		left = (time.Duration(h.LeaseLeftSeconds) * time.Second).String()
	}
	return header, [][]string{{s.Cluster, "held", fmt.Sprintf("%s@%s (pid %d)", h.User, h.Host, h.PID), orDash(h.Command),
		orDash(h.OperationID), strconv.FormatInt(h.Token, 10), since, age, left, strconv.Itoa(h.Waiters)}}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ---- lock release ----

// LockReleaseOptions are the inputs of replctl lock release.
type LockReleaseOptions struct {
	IO      *IOStreams
	Config  func() (*config.Config, error)
	Etcd    func(context.Context) (*clientv3.Client, error)
	Now     func() time.Time
	Output  string
	Timeout time.Duration
	Force   bool
	Yes     bool
	// Actor is recorded in the history as who broke the lock.
	Actor etcdlock.Actor
}

// lockRelease is the result of lock release. Its JSON field names are a
// stable contract.
type lockRelease struct {
	Cluster string `json:"cluster"`
	// Released is false when there was nothing to break.
	Released bool `json:"released"`
	// Holder is the holder whose lock was broken (or that was found gone).
	Holder *lockHolderInfo `json:"holder"`
	// HistoryID is the forced record of the break.
	HistoryID string `json:"history_id,omitempty"`
	// Reason says why nothing was broken: "free" (no holder) or
	// "released" (the holder released it meanwhile).
	Reason string `json:"reason,omitempty"`
}

func newCmdLockRelease(f *Factory, runF func(context.Context, *LockReleaseOptions) error) *cobra.Command {
	o := &LockReleaseOptions{IO: f.IO, Config: f.Config, Etcd: f.Etcd, Now: f.Now}
	c := &cobra.Command{
		Use:   "release --force",
		Short: "Break a stale cluster lock left by a dead process",
		Long: `Break the cluster lock by revoking its holder's lease, for when the process
holding it is gone (killed, host lost) and waiting for the lease to expire is
not an option. If the holder is in fact alive, breaking the lock lets a
second operation run beside it: its own lock checks stop it at its next step,
but whatever step it is in finishes. Check 'replctl lock status' first.

Requires --force; asks for confirmation on a terminal, or needs --yes. The
break is recorded in the history as a forced record (it cannot be written
under the lock it breaks) and the holder's operation is marked lock_broken.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f); err != nil {
				return err
			}
			o.Output, o.Timeout = f.Output, f.Timeout
			o.Actor = etcdlock.CurrentActor(commandLine(cmd, args))
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return runLockRelease(cmd.Context(), o)
		},
	}
	c.Flags().BoolVar(&o.Force, "force", false, "break the lock even though another operation holds it")
	c.Flags().BoolVarP(&o.Yes, "yes", "y", false, "do not ask for confirmation")
	return c
}

func runLockRelease(ctx context.Context, o *LockReleaseOptions) error {
	if !o.Force {
		return usageError("refusing to break the lock without --force: it belongs to another operation, which may still be changing the cluster (see 'replctl lock status')")
	}
	cfg, cli, err := configAndEtcd(ctx, o.Config, o.Etcd)
	if err != nil {
		return err
	}
	defer cli.Close()
	rctx, cancel := context.WithTimeout(ctx, o.Timeout)
	h, err := etcdlock.ReadLockHolder(rctx, cli, cfg.Etcd.Prefix, cfg.Cluster)
	cancel()
	if err != nil {
		return err
	}
	res := lockRelease{Cluster: cfg.Cluster}
	if h == nil {
		res.Reason = "free"
		return renderRelease(o, res)
	}
	now := o.Now()
	res.Holder = holderInfo(h, now)
	fmt.Fprintf(o.IO.ErrOut, "the lock on %s (token %d) is held by %s\n", cfg.Cluster, h.Token, h.Describe(now))
	fmt.Fprintln(o.IO.ErrOut, "break it only if that process is gone: otherwise it may go on changing the cluster while another operation starts")
	if err := o.IO.Confirm(fmt.Sprintf("Break the lock held by %s?", h.Actor.String()), o.Yes); err != nil {
		return err
	}
	bctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	rec, err := etcdlock.BreakLock(bctx, cli, cfg.Etcd.Prefix, cfg.Cluster, h, o.Actor, cfg.History.Keep)
	if errors.Is(err, etcdlock.ErrNotHeld) {
		res.Reason = "released"
		return renderRelease(o, res)
	}
	if err != nil {
		return err
	}
	res.Released, res.HistoryID = true, rec.ID
	return renderRelease(o, res)
}

func renderRelease(o *LockReleaseOptions, res lockRelease) error {
	return render(o.IO, o.Output, res, func(w io.Writer) error {
		switch {
		case res.Released:
			_, err := fmt.Fprintf(w, "lock on %s broken: revoked lease %s of %s@%s (pid %d); recorded as operation %s\n",
				res.Cluster, res.Holder.LeaseID, res.Holder.User, res.Holder.Host, res.Holder.PID, res.HistoryID)
			return err
		case res.Reason == "released":
			_, err := fmt.Fprintf(w, "lock on %s not broken: %s@%s released it meanwhile (see 'replctl lock status')\n", res.Cluster, res.Holder.User, res.Holder.Host)
			return err
		default:
			_, err := fmt.Fprintf(w, "the lock on %s is free: nothing to release\n", res.Cluster)
			return err
		}
	})
}

// ---- lock run ----

// LockRunOptions are the inputs of replctl lock run.
type LockRunOptions struct {
	IO     *IOStreams
	Config func() (*config.Config, error)
	Etcd   func(context.Context) (*clientv3.Client, error)
	// Wait is --lock-wait: how long to wait for a held lock.
	Wait time.Duration
	// Command is what to run under the lock.
	Command []string
	Actor   etcdlock.Actor
}

func newCmdLockRun(f *Factory, runF func(context.Context, *LockRunOptions) error) *cobra.Command {
	o := &LockRunOptions{IO: f.IO, Config: f.Config, Etcd: f.Etcd}
	c := &cobra.Command{
		Use:   "run [--lock-wait DURATION] -- COMMAND [ARG...]",
		Short: "Run a command while holding the cluster lock",
		Long: `Take the cluster lock, run COMMAND, release the lock: manual maintenance
(a pg_basebackup, a configuration change) that replctl operations must not
run beside. The command's environment has REPLCTL_CLUSTER,
REPLCTL_LOCK_TOKEN (the fencing token) and REPLCTL_OPERATION_ID.

If the lock is lost while the command runs (lease expired, etcd unreachable
for longer than lock.ttl, lock broken), the command gets SIGTERM at once,
then SIGKILL after 10s. The run is recorded in the history as kind lock-run.

Exit codes: 0 the command succeeded, 1 it failed or the lock was lost,
5 another operation holds the lock.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Command = args
			o.Actor = etcdlock.CurrentActor(commandLine(cmd, args))
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return runLockRun(cmd.Context(), o)
		},
	}
	addLockWaitFlag(c, &o.Wait)
	return c
}

func runLockRun(ctx context.Context, o *LockRunOptions) (err error) {
	cfg, cli, err := configAndEtcd(ctx, o.Config, o.Etcd)
	if err != nil {
		return err
	}
	defer cli.Close()
	lk, err := takeLock(ctx, cli, cfg, o.IO, o.Actor, o.Wait)
	if err != nil {
		return err
	}
	defer func() {
		if rerr := lk.Release(ctx); rerr != nil {
			fmt.Fprintln(o.IO.ErrOut, "warning:", rerr)
		}
	}()
	lctx := lk.Context()
	shown := etcdlock.ScrubCommand(o.Command)
	op, err := lk.StartOperation(lctx, "lock-run", map[string]string{"command": shown})
	if err != nil {
		return err
	}
	fmt.Fprintf(o.IO.ErrOut, "lock on %s taken (token %d, operation %s): running %s\n", cfg.Cluster, lk.Token(), op.ID(), shown)
	_ = op.StartStep(lctx, "run", "run `"+shown+"` under the lock")

	runErr := lk.Check(lctx, 0)
	if runErr == nil {
		c := exec.CommandContext(lctx, o.Command[0], o.Command[1:]...)
		c.Stdin, c.Stdout, c.Stderr = o.IO.In, o.IO.Out, o.IO.ErrOut
		c.Env = append(os.Environ(), "REPLCTL_CLUSTER="+cfg.Cluster,
			"REPLCTL_LOCK_TOKEN="+strconv.FormatInt(lk.Token(), 10), "REPLCTL_OPERATION_ID="+op.ID())
		// SIGTERM lets the command clean up; WaitDelay then kills it.
		c.Cancel = func() error { return c.Process.Signal(syscall.SIGTERM) }
		c.WaitDelay = lockRunGrace
		runErr = pgctl.RunTied(c)
	}

	// The record is finished on a context that outlives ^C: an interrupted
	// run must not stay "running" in the history. A failure to write it is
	// reported, not dropped.
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.Lock.TTL)
	defer rcancel()
	record := func(outcome plan.Outcome, stepOutcome string, opErr error) error {
		return errors.Join(op.EndStep(rctx, "run", stepOutcome, opErr), op.Finish(rctx, outcome, opErr))
	}
	var lost *etcdlock.LockLostError
	var exit error
	var herr error
	switch {
	case errors.As(lk.Err(), &lost):
		herr = op.Finish(rctx, etcdlock.OutcomeLockLost, lost)
		exit = &ExitError{Code: ExitFailed, Err: fmt.Errorf("%w: %s was sent SIGTERM and may have left the cluster partly changed: check 'replctl status' and 'replctl history %s'", lost, shown, op.ID())}
	case ctx.Err() != nil:
		herr = record(plan.OutcomeFailed, "failed", fmt.Errorf("interrupted: %w", context.Cause(ctx)))
		exit = &ExitError{Code: ExitFailed, Err: fmt.Errorf("interrupted: %s was sent SIGTERM", shown)}
	case runErr != nil:
		herr = record(plan.OutcomeFailed, "failed", runErr)
		exit = &ExitError{Code: ExitFailed, Err: fmt.Errorf("%s: %w", shown, runErr)}
	default:
		herr = record(plan.OutcomeSucceeded, "done", nil)
	}
	if herr != nil {
		fmt.Fprintf(o.IO.ErrOut, "warning: history record %s not updated: %v\n", op.ID(), herr)
		if exit == nil {
			exit = herr
		}
	}
	return exit
}
