package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/failover/watch"
	"github.com/replctl/replctl/topology"
)

// WatchOptions are the inputs of replctl watch.
type WatchOptions struct {
	IO          *IOStreams
	Config      func() (*config.Config, error)
	Etcd        func(context.Context) (*clientv3.Client, error)
	Factory     *Factory
	Output      string
	Timeout     time.Duration
	Interval    time.Duration
	MetricsAddr string
	Once        bool
	Command     []string
}

func newCmdWatch(f *Factory, runF func(context.Context, *WatchOptions) error) *cobra.Command {
	o := &WatchOptions{IO: f.IO, Config: f.Config, Etcd: f.Etcd, Factory: f}
	c := &cobra.Command{
		Use:   "watch",
		Short: "Watch the cluster and fail over automatically when the primary dies",
		Long: `Automatic failover, agentless: run replctl watch on one or more hosts that are
not database hosts. Every watcher campaigns in an etcd election under the
cluster's prefix; only the leader acts, the others observe and take over
within watch.election_ttl when it dies or loses etcd.

Every interval the watcher probes all nodes concurrently. The primary is
declared dead only when the watcher cannot reach it AND no reachable
replica still receives WAL from it, for failover.confirm_window. A primary
the watcher cannot reach while replicas still stream from it is
"unreachable, not dead": a warning and a metric, no failover.

The leader then runs the emergency failover through the same driver, checks,
quorum proof, fence and lock as 'replctl promote --emergency' (history
kind "automatic"). Without a synchronous quorum proving the candidate has
every acknowledged commit it fails over only within watch.max_data_loss.
It re-fences a fenced node that comes back writable, rejoins it
(watch.rejoin, through commands.rejoin), and runs 'replctl recover' for an
interrupted operation. It never acts while paused (replctl pause), while
an operator holds the lock, or a second time within watch.min_interval
unless an operator acknowledges with 'replctl resume'.

Logs go to stderr, one line per event (JSON lines with -o json). With
--metrics-addr it serves /metrics (Prometheus) and /healthz. SIGINT or
SIGTERM stop it gracefully: an action in flight is finished, then the
watcher resigns so that a standby takes over at once.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f, "table", "json"); err != nil {
				return err
			}
			if o.Interval < 100*time.Millisecond {
				return usageError("--interval %s is too short: use 100ms or more (default 1s)", o.Interval)
			}
			if o.MetricsAddr != "" {
				if _, _, err := net.SplitHostPort(o.MetricsAddr); err != nil {
					return usageError("--metrics-addr %q: %v: use host:port, e.g. 127.0.0.1:9187", o.MetricsAddr, err)
				}
			}
			o.Output, o.Timeout = f.Output, f.Timeout
			o.Command = commandLine(cmd, args)
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return runWatch(cmd.Context(), o)
		},
	}
	c.Flags().DurationVar(&o.Interval, "interval", time.Second, "time between two looks at the cluster")
	c.Flags().StringVar(&o.MetricsAddr, "metrics-addr", "", "serve /metrics and /healthz on `HOST:PORT` (e.g. 127.0.0.1:9187)")
	c.Flags().BoolVar(&o.Once, "once", false, "look once (and act, when elected within a few seconds), print the verdict and exit")
	return c
}

func runWatch(ctx context.Context, o *WatchOptions) error {
	cfg, err := o.Config()
	if err != nil {
		return err
	}
	if !cfg.Etcd.Configured() {
		return &ExitError{Code: ExitUsage, Err: fmt.Errorf("watch needs etcd for its election and the fencing lock: add etcd.endpoints to %s", cfg.File)}
	}
	cli, err := o.Etcd(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	actor := etcdlock.CurrentActor(o.Command)
	el, err := watch.NewElector(cli, cfg.Etcd.Prefix, cfg.Cluster, cfg.Watch.ElectionTTL, etcdlock.WatcherInfo{Actor: actor, Since: o.Factory.Now()})
	if err != nil {
		return err
	}
	logw := &eventLog{w: o.IO.ErrOut, json: o.Output == "json"}
	wc := newWatchCluster(o, cfg, cli, logw)
	w := &watch.Watcher{
		Cfg: cfg, Cluster: wc, Elector: el, Exporter: watch.NewExporter(), Interval: o.Interval,
		Locker: watch.LeaderLocker{Elector: el, Inner: failover.EtcdLocker()},
		Log:    logw.event, Now: o.Factory.Now, Who: actor.String(), Once: o.Once,
	}
	// The election outlives the command's context: a signal stops the
	// looks, the action in flight finishes, and only then does the watcher
	// resign (losing the election would stop the action mid-way).
	ectx, stopElection := context.WithCancel(context.WithoutCancel(ctx))
	var ewg sync.WaitGroup
	ewg.Go(func() { el.Run(ectx, w.SetLeading) })
	defer func() {
		stopElection()
		ewg.Wait()
	}()
	if o.MetricsAddr != "" {
		ln, err := net.Listen("tcp", o.MetricsAddr)
		if err != nil {
			return &ExitError{Code: ExitUsage, Err: fmt.Errorf("--metrics-addr %s: %w", o.MetricsAddr, err)}
		}
		srv := &http.Server{Handler: watch.Handler(w.Exporter, w.Healthy), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		logw.event(watch.Event{Time: o.Factory.Now(), Level: "info", Code: "metrics", Message: "serving /metrics and /healthz on http://" + ln.Addr().String()})
	}
	if o.Once {
		// Give the election a moment, so that a lone watcher acts.
		deadline := time.Now().Add(3 * time.Second)
		for _, _, _, ok := el.Leading(); !ok && time.Now().Before(deadline) && ctx.Err() == nil; _, _, _, ok = el.Leading() {
			time.Sleep(50 * time.Millisecond)
		}
	}
	logw.event(watch.Event{Time: o.Factory.Now(), Level: "info", Code: "start", Message: fmt.Sprintf("watching cluster %s every %s (confirm window %s, min interval %s) as %s", cfg.Cluster, o.Interval, cfg.Failover.ConfirmWindow, cfg.Watch.MinInterval, actor)})
	w.Run(ctx)
	if o.Once {
		a, _ := w.Describe()
		rep := struct {
			Primary string        `json:"primary"`
			Verdict watch.Verdict `json:"verdict"`
			Message string        `json:"message"`
		}{a.Primary, a.Verdict, a.Message}
		return render(o.IO, o.Output, rep, func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "%s: %s (%s)\n", dash(a.Primary), a.Verdict, a.Message)
			return err
		})
	}
	logw.event(watch.Event{Time: o.Factory.Now(), Level: "info", Code: "stop", Message: "stopped: resigning from the election"})
	return nil
}

// eventLog writes the watcher's events, one line each.
type eventLog struct {
	mu   sync.Mutex
	w    io.Writer
	json bool
}

func (l *eventLog) event(e watch.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.json {
		b, _ := json.Marshal(e)
		fmt.Fprintf(l.w, "%s\n", b)
		return
	}
	node := ""
	if e.Node != "" {
		node = " " + e.Node + ":"
	}
	op := ""
	if e.OperationID != "" {
		op = " (operation " + e.OperationID + ")"
	}
	fmt.Fprintf(l.w, "%s %-8s %s%s %s%s\n", e.Time.Format("2006-01-02T15:04:05.000Z07:00"), strings.ToUpper(e.Level), e.Code, node, e.Message, op)
}

// lineWriter turns an operation's progress lines into watcher events.
type lineWriter struct {
	log  func(watch.Event)
	now  func() time.Time
	code string
	buf  bytes.Buffer
}

func (lw *lineWriter) Write(p []byte) (int, error) {
	lw.buf.Write(p)
	for {
		line, err := lw.buf.ReadString('\n')
		if err != nil {
			lw.buf.WriteString(line) // incomplete: keep it for the next write
			return len(p), nil
		}
		if s := strings.TrimRight(line, "\n"); strings.TrimSpace(s) != "" {
			lw.log(watch.Event{Time: lw.now(), Level: "info", Code: lw.code, Message: s})
		}
	}
}

// watchCluster is the watcher's Cluster: replctl's own observation and
// commands, run unattended.
type watchCluster struct {
	o        *WatchOptions
	cfg      *config.Config
	cli      *clientv3.Client
	log      *eventLog
	probeFor time.Duration

	// The history feeds only the failover counters: it is read again
	// every historyEvery, and after each action.
	hist   []etcdlock.OpRecord
	histAt time.Time
}

// historyEvery is how often the watcher reads the whole history again.
const historyEvery = 10 * time.Second

// history is the operation history, read at most every historyEvery.
func (c *watchCluster) history(ctx context.Context) []etcdlock.OpRecord {
	if now := time.Now(); c.hist == nil || now.Sub(c.histAt) > historyEvery {
		if recs, err := etcdlock.ListHistory(ctx, c.cli, c.cfg.Etcd.Prefix, c.cfg.Cluster, 0); err == nil {
			c.hist, c.histAt = recs, now
		}
	}
	return c.hist
}

func newWatchCluster(o *WatchOptions, cfg *config.Config, cli *clientv3.Client, log *eventLog) *watchCluster {
	// A hung node makes a probe last its whole timeout: bound it by the
	// interval so that looks stay on schedule, within --timeout.
	probe := min(o.Timeout, max(o.Interval, 500*time.Millisecond))
	return &watchCluster{o: o, cfg: cfg, cli: cli, log: log, probeFor: probe}
}

func (c *watchCluster) recordFn(ctx context.Context) (*recordInfo, error) {
	return readRecordWith(ctx, c.cli, c.cfg)
}

// Look implements watch.Cluster.
func (c *watchCluster) Look(ctx context.Context) watch.Look {
	obs := observe(ctx, c.cfg, c.probeFor, nil, c.recordFn)
	l := watch.Look{Obs: failover.Observation{Snap: obs.Snap, State: stateOf(obs), Interrupted: interruptedOf(obs)}, RecordErr: obs.RecordErr}
	if r := obs.Record; r != nil {
		l.StateRev, l.Holder, l.Maintenance, l.Seen = r.StateRev, r.Holder, r.Maintenance, r.Seen
	}
	if obs.Record != nil {
		obs.Record.History = c.history(ctx)
	}
	l.Metrics = metricsInput(c.cfg, obs, l.Maintenance.InForce(c.o.Factory.Now()))
	return l
}

// unattendedFactory is a factory whose operations print their progress
// into the watcher's log and their report nowhere: the report is kept.
func (c *watchCluster) unattendedFactory(code string) (*Factory, *IOStreams) {
	c.hist = nil // the action adds to the history
	f := c.o.Factory
	lw := &lineWriter{log: c.log.event, now: f.Now, code: code}
	ios := &IOStreams{In: strings.NewReader(""), Out: io.Discard, ErrOut: lw}
	return &Factory{IO: ios, Output: "json", Timeout: f.Timeout, Now: f.Now, Executable: f.Executable, Controller: f.Controller}, ios
}

func (c *watchCluster) configFn() (*config.Config, error) { return c.cfg, nil }

// commandFor is the command line an unattended action records as its
// actor: the watcher's own, and what it runs.
func (c *watchCluster) commandFor(action string) []string {
	return append(append([]string(nil), c.o.Command...), action)
}

func (c *watchCluster) etcdFn(context.Context) (*clientv3.Client, error) {
	// The commands close the client they are given: hand them a client of
	// their own on the same endpoints.
	return etcdlock.Connect(context.Background(), c.cfg.Etcd)
}

// Failover implements watch.Cluster: replctl promote --emergency, with the
// data-loss rule of watch.max_data_loss.
func (c *watchCluster) Failover(ctx context.Context, look watch.Look, probes []failover.ProbeAttempt, lock failover.Locker) watch.Outcome {
	// The plan from the look that found the primary dead, by the same pure
	// function the run uses: a failover that the quorum does not prove
	// lossless runs only within watch.max_data_loss, even where promote
	// --emergency would only warn (an asynchronous cluster).
	pre := failover.PlanFrom(c.cfg, failover.Request{Kind: failover.KindFailover}, look.Obs, probes, nil)
	var failed []string
	for _, r := range checks.Failed(pre.Checks) {
		failed = append(failed, r.Name)
	}
	an := pre.Emergency
	allowLoss := false
	if len(failed) > 0 || an == nil || !an.Choice.Proof.Proven {
		var seenPrimary string
		var seenLSN *topology.LSN
		if s := look.Seen; s != nil {
			seenPrimary, seenLSN = s.Primary, &s.LSN
		}
		allow, why := watch.LossDecision(c.cfg, failed, seenPrimary, seenLSN, pre.Primary, candidateReceived(an, pre.Candidate))
		if !allow {
			reason := why
			switch {
			case len(failed) > 0:
				reason = failedSummary(pre.Checks) + "; " + why
			case an != nil:
				reason = an.Choice.Proof.Message + "; " + why
			}
			return watch.Outcome{Refused: true, Message: fmt.Sprintf("automatic failover of %s refused: %s", pre.Primary, reason)}
		}
		c.log.event(watch.Event{Time: c.o.Factory.Now(), Level: "warning", Code: "data_loss_allowed", Node: pre.Candidate, Message: why})
		allowLoss = true
	}
	f, ios := c.unattendedFactory("failover")
	u := &unattended{kind: kindAutomatic, locker: lock, probes: probes, observe: c.probeFor}
	o := &PromoteOptions{IO: ios, Config: c.configFn, Etcd: c.etcdFn, Factory: f, Output: "json", Timeout: c.o.Timeout,
		Emergency: true, Yes: true, AllowDataLoss: allowLoss, CatchupTimeout: 30 * time.Second,
		Command: c.commandFor("(automatic failover)"), auto: u}
	err := runPromote(ctx, o)
	rep, _ := u.report.(*promoteReport)
	return outcomeOf(err, func() string {
		if rep == nil {
			return ""
		}
		msg := fmt.Sprintf("%s promoted in place of %s", rep.Candidate, rep.Primary)
		if rep.Emergency != nil {
			msg += ": " + rep.Emergency.Choice.Proof.Message
		}
		return msg
	})
}

// candidateReceived is the candidate's received LSN in the analysis, nil
// when unknown.
func candidateReceived(an *failover.EmergencyAnalysis, candidate string) *topology.LSN {
	if an == nil {
		return nil
	}
	for _, r := range an.Evidence.Receivers {
		if r.Node == candidate && r.ReceiveLSN != "" {
			if l, err := topology.ParseLSN(r.ReceiveLSN); err == nil {
				return &l
			}
		}
	}
	return nil
}

func failedSummary(rs []checks.Result) string {
	var out []string
	for _, r := range checks.Failed(rs) {
		out = append(out, r.Name+": "+r.Message)
	}
	return strings.Join(out, "; ")
}

// outcomeOf maps a command's exit to the watcher's outcome.
func outcomeOf(err error, done func() string) watch.Outcome {
	var ee *ExitError
	switch {
	case err == nil:
		return watch.Outcome{Done: true, Message: done()}
	case errors.As(err, &ee) && (ee.Code == ExitUnsafe || ee.Code == ExitLocked):
		return watch.Outcome{Refused: true, Message: err.Error()}
	}
	return watch.Outcome{Message: err.Error()}
}

// Recover implements watch.Cluster: replctl recover --yes.
func (c *watchCluster) Recover(ctx context.Context, lock failover.Locker) watch.Outcome {
	f, ios := c.unattendedFactory("recover")
	u := &unattended{locker: lock, observe: c.probeFor}
	o := &RecoverOptions{IO: ios, Config: c.configFn, Etcd: c.etcdFn, Factory: f, Output: "json", Timeout: c.o.Timeout, Yes: true,
		Command: c.commandFor("(recover)"), auto: u}
	err := runRecover(ctx, o)
	return outcomeOf(err, func() string { return "the interrupted operation was recovered" })
}

// Rejoin implements watch.Cluster: replctl rejoin NODE --yes.
func (c *watchCluster) Rejoin(ctx context.Context, node string, lock failover.Locker) watch.Outcome {
	f, ios := c.unattendedFactory("rejoin")
	u := &unattended{locker: lock, observe: c.probeFor}
	o := &RejoinOptions{IO: ios, Config: c.configFn, Etcd: c.etcdFn, Factory: f, Output: "json", Timeout: c.o.Timeout, Node: node, Yes: true,
		Command: c.commandFor("(rejoin " + node + ")"), auto: u}
	err := runRejoin(ctx, o)
	return outcomeOf(err, func() string { return node + " rejoined as a replica" })
}

// Fence implements watch.Cluster: commands.fence when configured, then the
// SQL fence. Fencing only ever takes writes away, so it needs no lock; the
// leader checks its election before.
func (c *watchCluster) Fence(ctx context.Context, node string) watch.Outcome {
	ctl, closeCtl := c.o.Factory.Controller(c.cfg, c.o.Timeout)
	defer closeCtl()
	cn, _ := c.cfg.Node(node)
	var done []string
	if cn.Commands.Fence != "" {
		r, err := ctl.RunCommand(ctx, node, pgctl.ActionFence, nil)
		if err != nil {
			return watch.Outcome{Message: fmt.Sprintf("commands.fence on %s failed (exit %d): %v", node, r.ExitCode, err)}
		}
		done = append(done, "commands.fence")
	}
	fctx, cancel := context.WithTimeout(ctx, 2*c.o.Timeout)
	defer cancel()
	if err := ctl.FenceSQL(fctx, node); err != nil {
		if !(len(done) > 0 && errors.Is(err, pgctl.ErrConnect)) {
			return watch.Outcome{Message: fmt.Sprintf("SQL fence of %s failed: %v", node, err)}
		}
	} else {
		done = append(done, "SQL fence")
	}
	return watch.Outcome{Done: true, Message: fmt.Sprintf("%s fenced (%s)", node, strings.Join(done, ", "))}
}

// LastAutomatic implements watch.Cluster: the newest automatic failover in
// the history that promoted a node.
func (c *watchCluster) LastAutomatic(ctx context.Context) (time.Time, error) {
	recs, err := etcdlock.ListHistory(ctx, c.cli, c.cfg.Etcd.Prefix, c.cfg.Cluster, 100)
	if err != nil {
		return time.Time{}, err
	}
	for _, r := range recs {
		if r.Kind != kindAutomatic {
			continue
		}
		for _, s := range r.Steps {
			if s.ID == failover.StepPromote && s.Outcome == "done" {
				if r.Finished != nil {
					return *r.Finished, nil
				}
				return r.Started, nil
			}
		}
	}
	return time.Time{}, nil
}

// Hold implements watch.Cluster: an idle session that only waits, on a
// connection of its own.
func (c *watchCluster) Hold(ctx context.Context, node string) <-chan struct{} {
	cn, ok := c.cfg.Node(node)
	if !ok {
		return nil
	}
	pc, err := pgconn.ParseConfig(cn.DSN)
	if err != nil {
		return nil
	}
	pc.ConnectTimeout = c.probeFor
	pc.RuntimeParams["application_name"] = "replctl watch"
	cctx, cancel := context.WithTimeout(ctx, c.probeFor)
	conn, err := pgconn.ConnectConfig(cctx, pc)
	cancel()
	if err != nil {
		return nil
	}
	ch := make(chan struct{})
	go func() {
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_ = conn.Close(cctx)
			cancel()
		}()
		// No LISTEN: nothing ever arrives, and the wait only ends when the
		// session does (or the watcher lets it go).
		err := conn.WaitForNotification(ctx)
		if ctx.Err() == nil && err != nil {
			close(ch)
		}
	}()
	return ch
}

// WriteSeen implements watch.Cluster.
func (c *watchCluster) WriteSeen(ctx context.Context, leaderKey string, leaderRev, stateRev int64, s etcdlock.Seen) error {
	return etcdlock.WriteSeen(ctx, c.cli, c.cfg.Etcd.Prefix, c.cfg.Cluster, leaderKey, leaderRev, stateRev, s)
}
