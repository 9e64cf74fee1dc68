// Package checks holds replctl's named health checks: pure functions over a
// topology snapshot. The same checks feed the warnings of status, the exit
// code of check (monitoring) and the preflight of promotion, so a condition
// is judged in one place only.
//
// Monitoring checks (run by "replctl check" without names):
//
//	single_primary          exactly one writable member (out of recovery, not read-only, not SQL-fenced); split brain, a fenced node writable again, or no writable node is critical
//	same_system_identifier  every reachable node shares the cluster's system identifier (a foreign node is critical)
//	reachable               every configured node answers
//	timelines               every replica is on its primary's timeline
//	streaming               every replica's WAL receiver is streaming
//	lag                     replay lag in bytes and time under lag_warning/lag_critical and delay_warning/delay_critical
//	replay_paused           no replica has WAL replay paused
//	slots                   no inactive physical slot, none retaining more than slot_retained_warning, none lost
//	logical_slots           the same for logical slots (a synced copy on a standby may be inactive)
//	subscriptions           on writable nodes: enabled, apply worker running, no apply or sync errors counted
//	logical_failover        each logical slot of the primary would survive a promotion (PostgreSQL 17+ failover slots)
//	sync_quorum             enough eligible standbys are connected for synchronous_standby_names
//	min_replicas            at least min_replicas replicas are streaming
//	zone_spread             when zones are configured, the replicas are not all in one zone
//	unmanaged_replicas      every walsender serves a configured node
//	recorded_primary        the primary in the etcd cluster record is the observed one
//
// Preflight-only checks (run when named, and by promotion):
//
//	recovery_target_timeline  replicas follow recovery_target_timeline = latest
//	major_version             every reachable node runs the same major version
package checks

import (
	"fmt"
	"slices"
	"strings"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/topology"
)

// Level is a check result's severity. The values are the monitoring-plugins
// exit codes.
type Level int

// Levels.
const (
	OK       Level = 0
	Warning  Level = 1
	Critical Level = 2
	Unknown  Level = 3
)

// String is the level's name as monitoring systems print it.
func (l Level) String() string {
	switch l {
	case OK:
		return "OK"
	case Warning:
		return "WARNING"
	case Critical:
		return "CRITICAL"
	}
	return "UNKNOWN"
}

// MarshalText writes the level in lower case ("warning").
func (l Level) MarshalText() ([]byte, error) { return []byte(strings.ToLower(l.String())), nil }

// severity orders levels the monitoring-plugins way: critical, then
// warning, then unknown, then OK.
func (l Level) severity() int {
	return [...]int{OK: 0, Warning: 2, Critical: 3, Unknown: 1}[l]
}

// Worse reports whether l is more severe than o.
func (l Level) Worse(o Level) bool { return l.severity() > o.severity() }

// Result is one finding of a check. A check returns one OK result when it
// finds nothing, so every check run shows up in the output.
type Result struct {
	// Name is the check's name.
	Name  string `json:"check"`
	Level Level  `json:"level"`
	// Code identifies the finding (split_brain, lag, slot...): several
	// checks may share one and one check may report several.
	Code    string `json:"code"`
	Message string `json:"message"`
	// Node is the node concerned, "" for the cluster as a whole.
	Node string `json:"node"`
	// Hint says what the operator should do.
	Hint string `json:"hint,omitempty"`
}

// Func is a check: a pure function of the snapshot and the configuration.
type Func func(s *topology.Snapshot, cfg *config.Config) []Result

// Check is a named check.
type Check struct {
	Name        string
	Description string
	// Preflight checks guard promotion and run only when named.
	Preflight bool
	Run       Func
}

// All returns every check, monitoring checks first, in a stable order.
func All() []Check {
	return []Check{
		{Name: "single_primary", Description: "exactly one writable member, not fenced", Run: singlePrimary},
		{Name: "same_system_identifier", Description: "every reachable node belongs to this cluster", Run: sameSystemID},
		{Name: "reachable", Description: "every configured node answers", Run: reachable},
		{Name: "timelines", Description: "replicas are on their primary's timeline", Run: timelines},
		{Name: "streaming", Description: "replicas' WAL receivers are streaming", Run: streaming},
		{Name: "lag", Description: "replay lag in bytes and time under the thresholds", Run: lag},
		{Name: "replay_paused", Description: "no replica has replay paused", Run: replayPaused},
		{Name: "slots", Description: "physical slots are active and retain a bounded amount of WAL", Run: slots},
		{Name: "logical_slots", Description: "logical slots are active, retain a bounded amount of WAL and have lost none", Run: logicalSlots},
		{Name: "subscriptions", Description: "subscriptions are enabled, their workers run, without errors", Run: subscriptions},
		{Name: "logical_failover", Description: "a promotion would keep the primary's logical slots", Run: logicalFailover},
		{Name: "sync_quorum", Description: "synchronous_standby_names can be satisfied", Run: syncQuorum},
		{Name: "min_replicas", Description: "enough replicas are streaming", Run: minReplicas},
		{Name: "zone_spread", Description: "replicas are not all in one zone", Run: zoneSpread},
		{Name: "unmanaged_replicas", Description: "every walsender serves a configured node", Run: unmanagedReplicas},
		{Name: "recorded_primary", Description: "the etcd record names the observed primary", Run: recordedPrimary},
		{Name: "recovery_target_timeline", Description: "replicas follow the latest timeline", Preflight: true, Run: recoveryTargetTimeline},
		{Name: "major_version", Description: "every node runs the same major version", Preflight: true, Run: majorVersion},
	}
}

// Names lists every check's name.
func Names() []string {
	var out []string
	for _, c := range All() {
		out = append(out, c.Name)
	}
	return out
}

// Run runs the named checks, or every monitoring check when no name is
// given, and returns their results in registry order.
func Run(s *topology.Snapshot, cfg *config.Config, names ...string) ([]Result, error) {
	all := All()
	for _, n := range names {
		if !slices.ContainsFunc(all, func(c Check) bool { return c.Name == n }) {
			return nil, fmt.Errorf("unknown check %q: known checks are %s", n, strings.Join(Names(), ", "))
		}
	}
	var out []Result
	for _, c := range all {
		if len(names) == 0 && c.Preflight || len(names) > 0 && !slices.Contains(names, c.Name) {
			continue
		}
		rs := c.Run(s, cfg)
		if len(rs) == 0 {
			rs = []Result{{Level: OK, Code: "ok", Message: c.Description}}
		}
		for i := range rs {
			rs[i].Name = c.Name
		}
		out = append(out, rs...)
	}
	return out, nil
}

// Worst returns the most severe level among results, OK for none.
func Worst(rs []Result) Level {
	w := OK
	for _, r := range rs {
		if r.Level.Worse(w) {
			w = r.Level
		}
	}
	return w
}

// Problems returns the results that are not OK.
func Problems(rs []Result) []Result {
	var out []Result
	for _, r := range rs {
		if r.Level != OK {
			out = append(out, r)
		}
	}
	return out
}
