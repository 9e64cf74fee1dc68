package cmd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/topology"
)

// StatusOptions are the inputs of replctl status.
type StatusOptions struct {
	IO      *IOStreams
	Config  func() (*config.Config, error)
	Output  string
	Timeout time.Duration
	Watch   time.Duration
	Now     func() time.Time
	// Prober reads the nodes; nil means PostgreSQL over pgx.
	Prober topology.Prober
	// Record reads the lock and the cluster record from etcd; tests replace it.
	Record func(ctx context.Context) (*recordInfo, error)
}

// recordInfo is what etcd says about the cluster.
type recordInfo struct {
	// Lock is the fencing lock; nil when free.
	Lock            *lockInfo
	RecordedPrimary string
	Fenced          []string
	// State is the whole cluster record, nil when none was written yet.
	State *etcdlock.State
	// Holder is the lock's holder as read, nil when free.
	Holder *etcdlock.LockHolder
	// Interrupted are operations that began and never finished, oldest
	// first (etcdlock.FindInterrupted).
	Interrupted []etcdlock.OpRecord
	// StateRev is the cluster record's mod revision (0: none).
	StateRev int64
	// Maintenance is the pause record (replctl pause), nil when none.
	Maintenance *etcdlock.Maintenance
	// Seen is the leader watcher's last look at the primary, nil when none.
	Seen *etcdlock.Seen
	// Watchers campaign for automatic failover, the leader first.
	Watchers []etcdlock.WatcherInfo
	// History is the operation history, newest first, read only for the
	// metrics (readMetricsRecord): the failover counters come from it.
	History []etcdlock.OpRecord
}

// lockInfo describes who holds the fencing lock.
type lockInfo struct {
	Held   bool   `json:"held"`
	Holder string `json:"holder"`
	// Token is the fencing token: the etcd revision the lock was taken at.
	Token int64 `json:"token,omitempty"`
}

// errEtcdNotConfigured means the configuration has no etcd section: the
// normal case for read-only use, not a failure.
var errEtcdNotConfigured = errors.New("etcd not configured")

func newCmdStatus(f *Factory, runF func(context.Context, *StatusOptions) error) *cobra.Command {
	o := &StatusOptions{IO: f.IO, Config: f.Config, Now: f.Now}
	o.Record = o.clusterRecord
	c := &cobra.Command{
		Use:   "status",
		Short: "Show the replication topology, lag and warnings",
		Long: `Probe every configured node concurrently and show the replication tree: the
primary, its replicas and cascades, timelines, positions, lag in bytes and
replay delay, synchronous state and zones, then a summary and the warnings
of the monitoring checks (see 'replctl check').

status exits 0 whenever it produced a report, however unhealthy the cluster:
use 'replctl check' for an exit code that reflects health. It exits 2 on a
configuration error and 1 when no node could be reached.

-o json and -o yaml print the documented schema (see the README): cluster,
primary, system_identifier, nodes[] (name, role, reachable, error, upstream,
timeline, lsn, lag_bytes, replay_delay_seconds, sync_state, replay_paused,
system_identifier, zone, fenced, and the full probe, with logical slots,
publications and subscriptions), unmanaged_replicas[],
split_brain[], lock, recorded_primary, etcd, summary and warnings[] (check,
level, code, message, node, hint).

When anything logical exists (logical slots, publications, subscriptions),
a second table lists it; only the probed database's publications are seen.

-o prometheus prints the same gauges as replctl watch's /metrics, in the
Prometheus text format, for node_exporter's textfile collector (see the
README's Metrics section): replctl_node_up, replctl_node_is_primary,
replctl_replication_lag_bytes, replctl_replay_delay_seconds,
replctl_timeline, replctl_primary_known, replctl_primary_unreachable, and
from etcd replctl_failovers_total, replctl_last_failover_timestamp_seconds,
replctl_watch_paused and replctl_lock_held. Write it to a temporary file and
rename it into the collector's directory, so a scrape never reads half of it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f, "table", "json", "yaml", "prometheus"); err != nil {
				return err
			}
			if o.Watch < 0 {
				return usageError("--watch must be positive, e.g. 2s")
			}
			if o.Watch > 0 && f.Output == "prometheus" {
				// Concatenated expositions are not one valid exposition.
				return usageError("--watch does not apply to -o prometheus: run it from cron for the textfile collector, or scrape replctl watch's /metrics")
			}
			o.Output, o.Timeout = f.Output, f.Timeout
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return runStatus(cmd.Context(), o)
		},
	}
	c.Flags().DurationVar(&o.Watch, "watch", 0, "redraw every `DURATION` until interrupted")
	return c
}

// clusterRecord reads the fencing lock and the cluster record from etcd.
func (o *StatusOptions) clusterRecord(ctx context.Context) (*recordInfo, error) {
	cfg, err := o.Config()
	if err != nil {
		return nil, err
	}
	if o.Output == "prometheus" {
		return readMetricsRecord(ctx, cfg)
	}
	return readClusterRecord(ctx, cfg)
}

// readClusterRecord reads the lock and the cluster record from etcd; an
// unreachable etcd is an error status reports, never a failure of status.
func readClusterRecord(ctx context.Context, cfg *config.Config) (*recordInfo, error) {
	return readRecord(ctx, cfg)
}

// observation is one look at the cluster: the nodes and etcd's record.
type observation struct {
	Snap      *topology.Snapshot
	Record    *recordInfo
	RecordErr error
}

// observe probes every node and reads the record concurrently, each bounded
// by timeout, and classifies the nodes with the record's fenced nodes.
func observe(ctx context.Context, cfg *config.Config, timeout time.Duration, p topology.Prober,
	record func(context.Context) (*recordInfo, error)) observation {
	if p == nil {
		p = topology.PgProber{Timeout: timeout}
	}
	var obs observation
	var wg sync.WaitGroup
	if record != nil {
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			obs.Record, obs.RecordErr = record(rctx)
		})
	}
	statuses := topology.ProbeAll(ctx, p, cfg.Nodes, timeout)
	wg.Wait()
	var rec *topology.Record
	if obs.RecordErr == nil && obs.Record != nil {
		rec = &topology.Record{Primary: obs.Record.RecordedPrimary, Fenced: obs.Record.Fenced}
		if st := obs.Record.State; st != nil {
			rec.SyncRestore = st.SyncRestore
		}
	}
	obs.Snap = topology.Classify(cfg, statuses, rec)
	return obs
}

// errNoNodeReachable is returned (exit 1) when not one node answered.
func errNoNodeReachable(s *topology.Snapshot) error {
	var errs []string
	for _, n := range s.Nodes {
		errs = append(errs, n.Name+": "+n.Error)
	}
	return fmt.Errorf("no node reachable (%s)", strings.Join(errs, "; "))
}

// statusReport is the result of status, the same for every format.
type statusReport struct {
	*topology.Snapshot
	Nodes []statusNode `json:"nodes"`
	// Lock is null when etcd is not configured or unreadable.
	Lock            *lockInfo         `json:"lock"`
	RecordedPrimary topology.NodeName `json:"recorded_primary"`
	// Etcd is "ok", "not configured", or why it could not be read.
	Etcd     string          `json:"etcd"`
	Summary  string          `json:"summary"`
	Warnings []checks.Result `json:"warnings"`
	// Watchers are the replctl watch processes campaigning for this
	// cluster, the leader first; empty when none runs (or etcd is unread).
	Watchers []etcdlock.WatcherInfo `json:"watchers"`
	// Maintenance is the pause record (replctl pause), null when none.
	Maintenance *etcdlock.Maintenance `json:"maintenance"`
}

// statusNode adds the stable summary fields to a node's full probe.
type statusNode struct {
	*topology.Node
	LSN          *topology.LSN `json:"lsn"`
	ReplayPaused bool          `json:"replay_paused"`
}

func buildStatusReport(cfg *config.Config, obs observation) (*statusReport, error) {
	r := &statusReport{Snapshot: obs.Snap, Warnings: []checks.Result{}}
	for _, n := range obs.Snap.Nodes {
		r.Nodes = append(r.Nodes, statusNode{Node: n, LSN: n.Position(), ReplayPaused: n.ReplayPaused()})
	}
	switch {
	case errors.Is(obs.RecordErr, errEtcdNotConfigured):
		r.Etcd = "not configured"
	case obs.RecordErr != nil:
		r.Etcd = "unavailable: " + obs.RecordErr.Error()
	default:
		r.Etcd = "ok"
		if obs.Record != nil {
			r.Lock = obs.Record.Lock
			if r.Lock == nil {
				r.Lock = &lockInfo{}
			}
			r.RecordedPrimary = topology.NodeName(obs.Record.RecordedPrimary)
			r.Watchers = obs.Record.Watchers
			r.Maintenance = obs.Record.Maintenance
		}
	}
	results, err := checks.Run(obs.Snap, cfg)
	if err != nil {
		return nil, err
	}
	r.Warnings = append(r.Warnings, checks.Problems(results)...)
	r.Warnings = append(r.Warnings, interruptedChecks(obs)...)
	if m := r.Maintenance; m.InForce(time.Now()) {
		r.Warnings = append(r.Warnings, checks.Result{Name: "maintenance", Level: checks.Warning, Code: "watch_paused",
			Message: "maintenance mode: " + m.Describe() + "; watchers do not act", Hint: "replctl resume"})
	}
	if r.Watchers == nil {
		r.Watchers = []etcdlock.WatcherInfo{}
	}
	r.Summary = statusSummary(obs.Snap, len(r.Warnings))
	return r, nil
}

// statusSummary names the primary: Classify makes it a writable node, never
// one out of recovery under the SQL fence (on the old timeline, typically);
// those are named as what they are when there is no primary.
func statusSummary(s *topology.Snapshot, warnings int) string {
	primary := "no primary"
	if ro := s.Unwritable(); len(ro) > 0 {
		var parts []string
		for _, n := range ro {
			parts = append(parts, n.Name+" "+n.State)
		}
		primary += " (" + strings.Join(parts, "; ") + ")"
	}
	if p := s.PrimaryNode(); p != nil {
		primary = "primary " + p.Name
		if p.Timeline != nil {
			primary += fmt.Sprintf(" on timeline %d", *p.Timeline)
		}
	}
	streaming := 0
	reps := s.Replicas()
	for _, n := range reps {
		if n.Streaming() {
			streaming++
		}
	}
	return fmt.Sprintf("cluster %s: %s, %d/%d replicas streaming, %d/%d nodes reachable, %s",
		s.Cluster, primary, streaming, len(reps), s.Reachable(), len(s.Nodes), plural(warnings, "warning"))
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}

// statusTable lays out the nodes in tree order. It is pure: golden files pin it.
func statusTable(s *topology.Snapshot) (header []string, rows [][]string) {
	header = []string{"NODE", "ROLE", "STATE", "UPSTREAM", "TL", "LSN", "LAG", "REPLAY DELAY", "SYNC", "ZONE"}
	for _, n := range s.Nodes {
		role := string(n.Role)
		if n.Foreign {
			role = "foreign"
		}
		upstream := string(n.Upstream)
		if upstream == "" {
			upstream = n.UpstreamAddress
		}
		tl, lag, delay := "-", "-", "-"
		if n.Reachable {
			if n.Timeline != nil {
				tl = strconv.FormatUint(uint64(*n.Timeline), 10)
			}
		}
		if n.Member() && n.Role == topology.RoleReplica {
			if n.LagBytes != nil {
				lag = config.HumanBytes(*n.LagBytes)
			}
			if d, ok := n.ReplayDelay(); ok {
				delay = checks.FormatDelay(d)
			}
		}
		lsn := "-"
		if p := n.Position(); p != nil {
			lsn = p.String()
		}
		sync := "-"
		if n.SyncState != nil {
			sync = *n.SyncState
		}
		rows = append(rows, []string{
			strings.Repeat("  ", n.Depth) + n.Name, role, n.State, dash(upstream), tl, lsn, lag, delay, sync, dash(n.Zone),
		})
	}
	return header, rows
}

// logicalTable lists logical replication: every member's logical slots
// (on a standby only synced copies or its own exist), and the publications
// and subscriptions of the nodes out of recovery (a standby's are catalog
// copies of its primary's). No rows means nothing logical exists, and
// status then prints no section. It is pure: golden files pin it.
func logicalTable(s *topology.Snapshot) (header []string, rows [][]string) {
	header = []string{"LOGICAL", "NODE", "NAME", "DATABASE", "STATE", "LSN", "DETAIL"}
	lsn := func(l *topology.LSN) string {
		if l == nil {
			return "-"
		}
		return l.String()
	}
	for _, n := range s.Nodes {
		if !n.Member() {
			continue
		}
		for _, sl := range n.Slots {
			if !sl.Logical() {
				continue
			}
			state := "inactive"
			if sl.Active {
				state = "active"
			}
			if sl.WALStatus != nil {
				state += ", " + *sl.WALStatus
			}
			var detail []string
			if sl.Plugin != nil {
				detail = append(detail, *sl.Plugin)
			}
			if sl.RetainedBytes != nil {
				detail = append(detail, "retains "+config.HumanBytes(*sl.RetainedBytes))
			}
			if sl.Temporary {
				detail = append(detail, "temporary")
			}
			if sl.Failover != nil && *sl.Failover {
				detail = append(detail, "failover")
			}
			if sl.Synced != nil && *sl.Synced {
				detail = append(detail, "synced")
			}
			rows = append(rows, []string{"slot", n.Name, sl.Name, dash(derefOr(sl.Database)), state, lsn(sl.ConfirmedFlushLSN), dash(strings.Join(detail, ", "))})
		}
	}
	for _, n := range s.Nodes {
		if !n.Member() || n.InRecovery {
			continue
		}
		for _, p := range n.Publications {
			detail := plural(p.Tables, "table")
			if p.AllTables {
				detail = "all tables (" + detail + ")"
			}
			rows = append(rows, []string{"publication", n.Name, p.Name, p.Database, "-", "-", detail})
		}
		for _, su := range n.Subscriptions {
			var detail []string
			if su.PublisherHost != nil {
				from := "from " + *su.PublisherHost
				if su.PublisherPort != nil && *su.PublisherPort != "" {
					from += ":" + *su.PublisherPort
				}
				if su.PublisherDB != nil && *su.PublisherDB != "" {
					from += "/" + *su.PublisherDB
				}
				if su.PublisherCluster != "" {
					from += " (" + su.PublisherCluster + "/" + string(su.PublisherNode) + ", " + su.Kind + ")"
				} else if su.PublisherNode != "" {
					from += " (" + string(su.PublisherNode) + ", " + su.Kind + ")"
				} else if su.Kind != "" {
					from += " (" + su.Kind + ")"
				}
				detail = append(detail, from)
			}
			if su.BidirectionalWith != nil {
				detail = append(detail, "bidirectional with "+*su.BidirectionalWith)
			}
			if su.ApplyErrorCount != nil && (*su.ApplyErrorCount > 0 || su.SyncErrorCount != nil && *su.SyncErrorCount > 0) {
				detail = append(detail, fmt.Sprintf("errors: %d apply, %d sync", *su.ApplyErrorCount, derefOr(su.SyncErrorCount)))
			}
			if su.Origin != nil {
				detail = append(detail, "origin "+*su.Origin)
			}
			rows = append(rows, []string{"subscription", n.Name, su.Name, su.Database, su.WorkerState, lsn(su.ReceivedLSN), dash(strings.Join(detail, ", "))})
		}
	}
	return header, rows
}

// derefOr is *p, or the zero value for nil.
func derefOr[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// writeStatusText renders the table, the summary, etcd's view and the warnings.
func writeStatusText(w io.Writer, tty bool, r *statusReport) error {
	h, rows := statusTable(r.Snapshot)
	if err := writeTable(w, tty, h, rows); err != nil {
		return err
	}
	if h, rows := logicalTable(r.Snapshot); len(rows) > 0 {
		fmt.Fprintln(w)
		if err := writeTable(w, tty, h, rows); err != nil {
			return err
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, r.Summary)
	if r.Etcd != "not configured" {
		switch {
		case r.Lock == nil:
			fmt.Fprintf(w, "etcd: %s\n", r.Etcd)
		case r.Lock.Held:
			fmt.Fprintf(w, "lock: held by %s (token %d)\n", r.Lock.Holder, r.Lock.Token)
		default:
			fmt.Fprintln(w, "lock: free")
		}
		if r.RecordedPrimary != "" {
			fmt.Fprintf(w, "recorded primary: %s\n", r.RecordedPrimary)
		}
		for _, wi := range r.Watchers {
			role := "standby"
			if wi.Leader {
				role = "leader"
			}
			fmt.Fprintf(w, "watcher: %s, %s@%s pid %d, since %s\n", role, wi.User, wi.Host, wi.PID, wi.Since.Format(time.RFC3339))
		}
	}
	for _, x := range r.Warnings {
		fmt.Fprintf(w, "%-8s %s: %s\n", x.Level, x.Code, x.Message)
	}
	return nil
}

func runStatus(ctx context.Context, o *StatusOptions) error {
	cfg, err := o.Config()
	if err != nil {
		return err
	}
	if o.Watch == 0 {
		var buf bytes.Buffer
		_, err := statusOnce(ctx, o, cfg, &buf, nil)
		if _, werr := o.IO.Out.Write(buf.Bytes()); werr != nil {
			return werr
		}
		return err
	}
	// Each look is compared with the one before it, for what one look
	// cannot tell (whether error counts grow).
	var prev *topology.Snapshot
	for {
		// Render off screen first so the redraw does not flicker.
		var buf bytes.Buffer
		if o.IO.StdoutTTY {
			fmt.Fprintf(&buf, "\x1b[H\x1b[2JEvery %s: replctl status    %s\n\n", o.Watch, o.Now().Format(time.DateTime))
		}
		snap, err := statusOnce(ctx, o, cfg, &buf, prev)
		if snap != nil {
			snap.Previous, prev = nil, snap
		}
		if err != nil {
			fmt.Fprintf(&buf, "error: %v\n", err)
		}
		if !o.IO.StdoutTTY {
			buf.WriteString("\n")
		}
		if _, err := o.IO.Out.Write(buf.Bytes()); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(o.Watch):
		}
	}
}

// statusOnce takes one look and renders it; prev is the look before, nil
// for the first. It returns the snapshot it rendered.
func statusOnce(ctx context.Context, o *StatusOptions, cfg *config.Config, w io.Writer, prev *topology.Snapshot) (*topology.Snapshot, error) {
	obs := observe(ctx, cfg, o.Timeout, o.Prober, o.Record)
	obs.Snap.Previous = prev
	if err := linkPeers(ctx, cfg, obs.Snap, o.Timeout, o.Prober); err != nil {
		return nil, err
	}
	if o.Output == "prometheus" {
		if err := writeStatusPrometheus(w, cfg, obs); err != nil {
			return obs.Snap, err
		}
	} else {
		r, err := buildStatusReport(cfg, obs)
		if err != nil {
			return nil, err
		}
		s := *o.IO
		s.Out = w
		if err := render(&s, o.Output, r, func(w io.Writer) error { return writeStatusText(w, o.IO.StdoutTTY, r) }); err != nil {
			return obs.Snap, err
		}
	}
	if obs.Snap.Reachable() == 0 {
		return obs.Snap, withCode(ExitFailed, errNoNodeReachable(obs.Snap))
	}
	return obs.Snap, nil
}

// linkPeers probes the nodes of the peer clusters (config peers),
// read-only and concurrently, and names the subscriptions of snap that
// cross clusters. A peer configuration that cannot be read is an error
// naming it.
func linkPeers(ctx context.Context, cfg *config.Config, snap *topology.Snapshot, timeout time.Duration, p topology.Prober) error {
	if len(cfg.Peers) == 0 {
		return nil
	}
	if p == nil {
		p = topology.PgProber{Timeout: timeout}
	}
	peers := make([]topology.Peer, len(cfg.Peers))
	errs := make([]error, len(cfg.Peers))
	var wg sync.WaitGroup
	for i, path := range cfg.Peers {
		if !filepath.IsAbs(path) && cfg.File != "" {
			path = filepath.Join(filepath.Dir(cfg.File), path)
		}
		wg.Go(func() {
			if _, err := os.Stat(path); err != nil {
				errs[i] = &ExitError{Code: ExitUsage, Err: fmt.Errorf("%s: peers[%d]: %w: give the path of another cluster's replctl.yaml (relative to this file)", cfg.File, i, err)}
				return
			}
			pc, err := config.Load(path)
			if err != nil {
				errs[i] = &ExitError{Code: ExitUsage, Err: fmt.Errorf("%s: peers[%d]: %w", cfg.File, i, err)}
				return
			}
			if pc.Cluster == cfg.Cluster {
				errs[i] = &ExitError{Code: ExitUsage, Err: fmt.Errorf("%s: peers[%d] (%s) is cluster %s, this one: list other clusters' files", cfg.File, i, path, pc.Cluster)}
				return
			}
			peers[i] = topology.Peer{Cfg: pc, Snap: topology.Classify(pc, topology.ProbeAll(ctx, p, pc.Nodes, timeout), nil)}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	topology.LinkPeers(cfg, snap, peers)
	return nil
}
