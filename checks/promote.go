package checks

import (
	"fmt"
	"strings"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/topology"
)

// MinPromoteVersion is the oldest PostgreSQL replctl promotes: pg_promote()
// and a reloadable primary_conninfo arrived in 13.
const MinPromoteVersion = 130000

// SwitchoverOptions are the inputs of the planned switchover preflight.
type SwitchoverOptions struct {
	// Candidate is the node to promote.
	Candidate string
	// MaxLag is the most replay lag the candidate may have, in bytes.
	MaxLag uint64
	// RequireStop refuses unless the primary has a stop command.
	RequireStop bool
}

func lagText(n *topology.Node) string {
	if n.LagBytes == nil {
		return "unknown"
	}
	return config.HumanBytes(*n.LagBytes)
}

// SwitchoverPreflight checks that a planned switchover to o.Candidate is
// safe. Every failed check is Critical and carries a hint; it is pure.
func SwitchoverPreflight(s *topology.Snapshot, cfg *config.Config, o SwitchoverOptions) []Result {
	var out []Result
	add := func(name, node string, ok bool, okMsg, badMsg, hint string) {
		r := Result{Name: name, Node: node, Level: OK, Code: "ok", Message: okMsg}
		if !ok {
			r.Level, r.Code, r.Message, r.Hint = Critical, name, badMsg, hint
		}
		out = append(out, r)
	}
	p := s.PrimaryNode()
	add("primary", string(s.Primary), p != nil && len(s.SplitBrain) == 0,
		fmt.Sprintf("one reachable primary: %s", s.Primary),
		primaryProblem(s), "planned switchover needs a healthy primary; when it is down use replctl promote --emergency")
	add("split_brain", "", len(s.SplitBrain) == 0, "no split brain",
		"more than one writable node: "+strings.Join(s.SplitBrain, ", "), "fence all but one writable node before anything else")

	c := s.Node(o.Candidate)
	if _, ok := cfg.Node(o.Candidate); !ok || c == nil {
		add("candidate_configured", o.Candidate, false, "", fmt.Sprintf("%q is not a configured node", o.Candidate),
			"name one of: "+strings.Join(cfg.NodeNames(), ", "))
		return out
	}
	if p != nil && c.Name == p.Name {
		add("candidate_not_primary", c.Name, false, "", c.Name+" is already the primary", "name a replica to promote")
		return out
	}
	add("candidate_reachable", c.Name, c.Reachable, "reachable", "unreachable: "+c.Error, "check that the node runs and the DSN is right")
	if !c.Reachable {
		return out
	}
	add("candidate_system_identifier", c.Name, !c.Foreign, "same system identifier",
		fmt.Sprintf("system identifier %s differs from the cluster's %s: a foreign node", c.SystemID, s.SystemID),
		"it belongs to another cluster: fix the configuration")
	add("candidate_in_recovery", c.Name, c.InRecovery, "in recovery (a replica)", "not in recovery: it is writable", "only a replica can be promoted")
	if p != nil {
		add("candidate_upstream", c.Name, string(c.Upstream) == p.Name && c.Streaming(),
			"streams from "+p.Name, upstreamProblem(c, p), "pick a replica streaming directly from the primary, or fix its primary_conninfo")
		add("candidate_timeline", c.Name, c.Timeline != nil && p.Timeline != nil && *c.Timeline == *p.Timeline,
			fmt.Sprintf("on the primary's timeline %s", tl(p.Timeline)),
			fmt.Sprintf("timeline %s, primary's %s", tl(c.Timeline), tl(p.Timeline)), "wait for the replica to follow the primary's timeline")
	}
	add("candidate_replay_not_paused", c.Name, !c.ReplayPaused(), "replay running", "replay is paused",
		"resume it: SELECT pg_wal_replay_resume()")
	lagOK := c.LagBytes != nil && *c.LagBytes <= o.MaxLag
	add("candidate_lag", c.Name, lagOK, fmt.Sprintf("lag %s within %s", lagText(c), config.HumanBytes(o.MaxLag)),
		fmt.Sprintf("lag %s over --max-lag %s", lagText(c), config.HumanBytes(o.MaxLag)),
		"wait for it to catch up, or raise --max-lag")
	add("candidate_priority", c.Name, c.Priority > 0, fmt.Sprintf("priority %d", c.Priority), "priority 0: never promote",
		"raise its priority in the configuration if it may be promoted")

	involved := []*topology.Node{c}
	if p != nil {
		involved = append(involved, p)
	}
	for _, n := range s.Nodes {
		if n.Member() && n.Role == topology.RoleReplica && n.Name != c.Name && p != nil && string(n.Upstream) == p.Name {
			involved = append(involved, n)
		}
	}
	for _, n := range involved {
		if n.Role != topology.RoleReplica {
			continue
		}
		rtt := ""
		if n.Settings.RecoveryTargetTimeline != nil {
			rtt = *n.Settings.RecoveryTargetTimeline
		}
		add("recovery_target_timeline", n.Name, rtt == "latest", "recovery_target_timeline = latest",
			fmt.Sprintf("recovery_target_timeline = %q", rtt), "set recovery_target_timeline = 'latest' so it follows the new timeline")
	}
	// Every check shows in a dry-run with its result, passed or not, so
	// that the operator sees what was verified.
	for _, n := range involved {
		if !n.Reachable {
			continue
		}
		add("version", n.Name, n.VersionNum >= MinPromoteVersion, fmt.Sprintf("PostgreSQL %s (13 or newer)", n.Version),
			fmt.Sprintf("PostgreSQL %s is older than 13", n.Version), "upgrade: replctl promotes PostgreSQL 13 or newer")
		if p != nil && p.Reachable && n.Name != p.Name {
			add("major_version", n.Name, n.Major() == p.Major(), fmt.Sprintf("major version %d, the primary's", n.Major()),
				fmt.Sprintf("major version %d differs from the primary's %d", n.Major(), p.Major()),
				"all nodes of a physical replication cluster must run the same major version")
		}
	}
	if p != nil && o.RequireStop {
		pn, _ := cfg.Node(p.Name)
		add("stop_command", p.Name, pn.Commands.Stop != "", "has commands.stop for a stop fence",
			"--require-stop given but the primary has no commands.stop", "configure commands.stop for the node, or drop --require-stop to accept the SQL fence")
	}
	return out
}

func primaryProblem(s *topology.Snapshot) string {
	if len(s.SplitBrain) > 0 {
		return "several writable nodes: " + strings.Join(s.SplitBrain, ", ")
	}
	if ro := s.Unwritable(); len(ro) > 0 {
		return "no reachable writable primary; out of recovery but accepting no writes: " + describeNodes(ro)
	}
	return "no reachable primary"
}

func upstreamProblem(c, p *topology.Node) string {
	if c.Upstream == "" {
		return "not streaming from " + p.Name
	}
	if string(c.Upstream) != p.Name {
		return fmt.Sprintf("streams from %s, not directly from %s", c.Upstream, p.Name)
	}
	return "WAL receiver not streaming"
}

func tl(t *uint32) string {
	if t == nil {
		return "unknown"
	}
	return fmt.Sprint(*t)
}

// Failed returns the critical results: what blocks an operation.
func Failed(rs []Result) []Result {
	var out []Result
	for _, r := range rs {
		if r.Level == Critical || r.Level == Unknown {
			out = append(out, r)
		}
	}
	return out
}
