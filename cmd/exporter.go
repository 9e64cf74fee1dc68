package cmd

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/failover/watch"
	"github.com/replctl/replctl/topology"
)

// kindAutomatic is the history kind of a failover the watcher ran itself
// (issue 12); it is counted with the operator's switchovers and failovers.
const kindAutomatic = "automatic"

// failoverKinds are the history kinds replctl_failovers_total counts: the
// operations that promote a node. Each is reported, 0 when none happened,
// so that increase() sees the first one.
var failoverKinds = []string{failover.KindSwitchover, failover.KindFailover, kindAutomatic}

// readMetricsRecord is readRecord plus the operation history the failover
// counters come from, over the one connection.
func readMetricsRecord(ctx context.Context, cfg *config.Config) (*recordInfo, error) {
	if !cfg.Etcd.Configured() {
		return nil, errEtcdNotConfigured
	}
	cli, err := etcdlock.Connect(ctx, cfg.Etcd)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	info, err := readRecordWith(ctx, cli, cfg)
	if err != nil {
		return nil, err
	}
	// All of it (history.keep records at most): the counters count every
	// failover the history still holds.
	if info.History, err = etcdlock.ListHistory(ctx, cli, cfg.Etcd.Prefix, cfg.Cluster, 0); err != nil {
		return nil, err
	}
	return info, nil
}

// metricsInput is what the metrics report of one observation, for
// `status -o prometheus` and the watcher's /metrics alike, so that the two
// cannot tell different stories: the nodes with lag, replay delay and
// timeline as status shows them, the primary as status and the
// single_primary check judge it, and from etcd the lock, the failovers in
// obs.Record.History and paused (the maintenance record, which the caller
// reads). The watcher sets Watch on the result; status leaves it nil.
func metricsInput(cfg *config.Config, obs observation, paused bool) watch.Input {
	s := obs.Snap
	in := watch.Input{Cluster: cfg.Cluster, Paused: paused, PrimaryUnreachable: primaryUnreachable(s)}
	for _, n := range s.Nodes {
		ni := watch.NodeInput{Name: n.Name, Up: n.Reachable, IsPrimary: n.Name == string(s.Primary)}
		if n.Reachable && n.Timeline != nil {
			ni.Timeline = ptrTo(float64(*n.Timeline))
		}
		// Only what the status table shows in LAG and REPLAY DELAY: a
		// member replica's, measured against its primary.
		if n.Member() && n.Role == topology.RoleReplica {
			if n.LagBytes != nil {
				ni.LagBytes = ptrTo(float64(*n.LagBytes))
			}
			if d, ok := n.ReplayDelay(); ok {
				ni.ReplayDelaySeconds = ptrTo(d.Seconds())
			}
		}
		in.Nodes = append(in.Nodes, ni)
	}
	// The check's verdict, not s.Primary alone: in a split brain the record
	// names a primary, yet there is not exactly one writable node.
	if rs, err := checks.Run(s, cfg, "single_primary"); err == nil {
		in.PrimaryKnown = checks.Worst(rs) == checks.OK
	}
	if obs.RecordErr != nil || obs.Record == nil {
		in.EtcdUnread = true
		return in
	}
	in.LockHeld = obs.Record.Lock != nil && obs.Record.Lock.Held
	in.FailoversTotal = map[string]float64{}
	for _, k := range failoverKinds {
		in.FailoversTotal[k] = 0
	}
	for _, r := range obs.Record.History {
		if _, ok := in.FailoversTotal[r.Kind]; !ok || !promoted(r) {
			continue
		}
		in.FailoversTotal[r.Kind]++
		if r.Finished != nil && r.Finished.After(in.LastFailover) {
			in.LastFailover = *r.Finished
		}
	}
	return in
}

// promoted reports whether an operation got as far as promoting a node: it
// succeeded, or failed after its point of no return (partial). An attempt
// that was refused or undone changed no primary and is no failover.
func promoted(r etcdlock.OpRecord) bool {
	return r.Outcome == plan.OutcomeSucceeded || r.Outcome == plan.OutcomePartial
}

// primaryUnreachable reports a primary replctl cannot reach while a replica
// still streams from it: unreachable, not dead. A WAL receiver keeps the
// streaming state until it has heard nothing for the replica's own
// wal_receiver_timeout, so "streaming" is the replicas' verdict that the
// primary lives. With a cluster record, only the recorded primary counts:
// an unreachable cascading replica with a replica of its own is not the
// primary.
func primaryUnreachable(s *topology.Snapshot) bool {
	if s.Primary != "" {
		return false
	}
	for _, n := range s.Nodes {
		if n.Reachable || s.Record != nil && s.Record.Primary != "" && n.Name != s.Record.Primary {
			continue
		}
		for _, r := range s.Replicas() {
			if r.Streaming() && string(r.Upstream) == n.Name {
				return true
			}
		}
	}
	return false
}

func ptrTo(v float64) *float64 { return &v }

// writeStatusPrometheus renders an observation in the text exposition
// format, for node_exporter's textfile collector.
func writeStatusPrometheus(w io.Writer, cfg *config.Config, obs observation) error {
	paused := obs.Record != nil && obs.Record.Maintenance.InForce(time.Now())
	if err := watch.WriteText(w, metricsInput(cfg, obs, paused)); err != nil {
		return fmt.Errorf("write metrics: %w", err)
	}
	return nil
}
