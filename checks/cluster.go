package checks

import (
	"fmt"
	"strings"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/topology"
)

func ok(format string, a ...any) []Result {
	return []Result{{Level: OK, Code: "ok", Message: fmt.Sprintf(format, a...)}}
}

// describeNodes names nodes with their state: "pg1 (read-only, fenced)".
func describeNodes(ns []*topology.Node) string {
	var parts []string
	for _, n := range ns {
		parts = append(parts, fmt.Sprintf("%s (%s)", n.Name, n.State))
	}
	return strings.Join(parts, ", ")
}

func singlePrimary(s *topology.Snapshot, _ *config.Config) []Result {
	var out []Result
	for _, n := range s.Nodes {
		// A fenced node that is still up but read-only (the SQL fence) is
		// fenced as intended; one whose read-only default was lifted is
		// not, even while its commits still wait for the fence's standby
		// name: a session that cancels the wait has committed locally.
		if n.Member() && n.Role == topology.RolePrimary && n.Fenced && !n.ReadOnly() {
			msg := fmt.Sprintf("%s is marked fenced but accepts writes", n.Name)
			if n.SyncFenced() {
				msg = fmt.Sprintf("%s is marked fenced but no longer read-only: its commits wait for %s, yet a session that cancels the wait or sets synchronous_commit = local commits on it",
					n.Name, topology.FenceStandbyName)
			}
			out = append(out, Result{Level: Critical, Code: "fenced_writable", Node: n.Name, Message: msg,
				Hint: fmt.Sprintf("stop %s or restart it as a replica (replctl rejoin %s); clients writing to it will lose those writes", n.Name, n.Name)})
		}
	}
	switch {
	case len(s.SplitBrain) > 1:
		out = append(out, Result{Level: Critical, Code: "split_brain",
			Message: fmt.Sprintf("split brain: %s are all writable", strings.Join(s.SplitBrain, ", ")),
			Hint:    "stop writes to all but one, then rebuild the others as replicas; do not fail over until this is resolved"})
	case s.Primary == "" && len(out) == 0:
		r := Result{Level: Critical, Code: "no_primary", Message: "no reachable writable node",
			Hint: "check the primary's host and logs; if it is lost, run replctl failover"}
		if ro := s.Unwritable(); len(ro) > 0 {
			r.Message += "; out of recovery but accepting no writes: " + describeNodes(ro)
			r.Hint = "a switchover or failover that stopped midway leaves its fence in place: read replctl history, and lift the fence " +
				"only on the node that has every acknowledged write, once sure no other node was promoted"
		}
		out = append(out, r)
	}
	if len(out) == 0 {
		return ok("%s is the only writable node", s.Primary)
	}
	return out
}

func sameSystemID(s *topology.Snapshot, _ *config.Config) []Result {
	var out []Result
	for _, n := range s.Nodes {
		if n.Foreign {
			out = append(out, Result{Level: Critical, Code: "foreign_node", Node: n.Name,
				Message: fmt.Sprintf("%s has system identifier %s, the cluster has %s: it is another cluster", n.Name, n.SystemID, s.SystemID),
				Hint:    "fix the node's dsn in the configuration, or remove the node"})
		}
	}
	if len(out) == 0 {
		return ok("all reachable nodes have system identifier %s", s.SystemID)
	}
	return out
}

func reachable(s *topology.Snapshot, _ *config.Config) []Result {
	var out []Result
	for _, n := range s.Nodes {
		if !n.Reachable {
			out = append(out, Result{Level: Warning, Code: "unreachable", Node: n.Name,
				Message: fmt.Sprintf("%s is unreachable: %s", n.Name, n.Error),
				Hint:    "check that the server runs and that the dsn, network and pg_hba.conf allow replctl"})
		}
	}
	if len(out) == 0 {
		return ok("all %d nodes answered", len(s.Nodes))
	}
	return out
}

func timelines(s *topology.Snapshot, _ *config.Config) []Result {
	var out []Result
	for _, n := range s.Replicas() {
		ref := s.Root(n)
		if ref == nil || ref.Timeline == nil || n.Timeline == nil || *n.Timeline == *ref.Timeline {
			continue
		}
		out = append(out, Result{Level: Warning, Code: "timeline_mismatch", Node: n.Name,
			Message: fmt.Sprintf("%s is on timeline %d, its primary %s on %d", n.Name, *n.Timeline, ref.Name, *ref.Timeline),
			Hint:    "a replica that cannot follow the new timeline must be rebuilt (replctl rejoin)"})
	}
	return out
}

func streaming(s *topology.Snapshot, _ *config.Config) []Result {
	var out []Result
	for _, n := range s.Replicas() {
		if n.Streaming() {
			continue
		}
		msg := fmt.Sprintf("%s has no WAL receiver: it is not replicating", n.Name)
		level := Warning
		switch {
		case n.WALReceiver != nil && n.WALReceiver.Status == "":
			msg, level = fmt.Sprintf("%s: WAL receiver state unreadable (grant pg_monitor to replctl's role)", n.Name), Unknown
		case n.WALReceiver != nil:
			msg = fmt.Sprintf("%s's WAL receiver is %s, not streaming", n.Name, n.WALReceiver.Status)
		}
		out = append(out, Result{Level: level, Code: "not_streaming", Node: n.Name, Message: msg,
			Hint: "read the replica's log: its upstream may be down, or the WAL it needs removed"})
	}
	return out
}

func replayPaused(s *topology.Snapshot, _ *config.Config) []Result {
	var out []Result
	for _, n := range s.Replicas() {
		if n.ReplayPaused() {
			out = append(out, Result{Level: Warning, Code: "replay_paused", Node: n.Name,
				Message: fmt.Sprintf("%s has WAL replay %s", n.Name, n.ReplayPauseState),
				Hint:    fmt.Sprintf("resume with SELECT pg_wal_replay_resume() on %s", n.Name)})
		}
	}
	return out
}

func unmanagedReplicas(s *topology.Snapshot, _ *config.Config) []Result {
	var out []Result
	for _, u := range s.Unmanaged {
		who := "unnamed"
		if u.ApplicationName != nil && *u.ApplicationName != "" {
			who = fmt.Sprintf("%q", *u.ApplicationName)
		}
		from := ""
		if u.ClientAddr != nil {
			from = " from " + *u.ClientAddr
		}
		out = append(out, Result{Level: Warning, Code: "unmanaged_replica", Node: u.Upstream,
			Message: fmt.Sprintf("%s streams to a replica not in the configuration (%s%s)", u.Upstream, who, from),
			Hint:    "add the replica to the configuration so failover accounts for it, or remove it"})
	}
	return out
}

func recordedPrimary(s *topology.Snapshot, _ *config.Config) []Result {
	if s.Record == nil || s.Record.Primary == "" {
		return ok("no cluster record to compare")
	}
	if s.Primary == "" || string(s.Primary) == s.Record.Primary {
		return nil
	}
	return []Result{{Level: Warning, Code: "recorded_primary_differs", Node: string(s.Primary),
		Message: fmt.Sprintf("the cluster record names %s as primary, but %s is", s.Record.Primary, s.Primary),
		Hint:    "a promotion happened outside replctl, or the record is stale: check before any failover"}}
}

func recoveryTargetTimeline(s *topology.Snapshot, _ *config.Config) []Result {
	var out []Result
	for _, n := range s.Replicas() {
		v := n.Settings.RecoveryTargetTimeline
		switch {
		case v == nil:
			out = append(out, Result{Level: Unknown, Code: "recovery_target_timeline", Node: n.Name,
				Message: fmt.Sprintf("%s: recovery_target_timeline unreadable", n.Name)})
		case *v != "latest":
			out = append(out, Result{Level: Critical, Code: "recovery_target_timeline", Node: n.Name,
				Message: fmt.Sprintf("%s has recovery_target_timeline = %q: it will not follow a promotion", n.Name, *v),
				Hint:    "set recovery_target_timeline = 'latest' and restart the replica"})
		}
	}
	return out
}

func majorVersion(s *topology.Snapshot, _ *config.Config) []Result {
	ref := s.PrimaryNode()
	var out []Result
	for _, n := range s.Nodes {
		if !n.Member() || n.Major() == 0 {
			continue
		}
		if ref == nil || ref.Major() == 0 {
			ref = n
			continue
		}
		if n.Major() != ref.Major() {
			out = append(out, Result{Level: Critical, Code: "major_version", Node: n.Name,
				Message: fmt.Sprintf("%s runs PostgreSQL %d, %s runs %d", n.Name, n.Major(), ref.Name, ref.Major()),
				Hint:    "replication needs one major version: upgrade the node before promoting"})
		}
	}
	return out
}
