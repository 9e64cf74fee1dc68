package checks

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/topology"
)

func lag(s *topology.Snapshot, cfg *config.Config) []Result {
	t := cfg.Thresholds
	var out []Result
	for _, n := range s.Replicas() {
		delay, delayKnown := n.ReplayDelay()
		if n.LagBytes == nil && !delayKnown {
			out = append(out, Result{Level: Unknown, Code: "lag", Node: n.Name,
				Message: fmt.Sprintf("%s: lag unknown (no primary position to compare, or replay position unreadable)", n.Name)})
			continue
		}
		level := OK
		var parts []string
		if n.LagBytes != nil {
			b := *n.LagBytes
			switch {
			case b >= uint64(t.LagCritical):
				level = Critical
			case b >= uint64(t.LagWarning):
				level = max(level, Warning)
			}
			parts = append(parts, config.HumanBytes(b)+" behind")
		}
		if delayKnown {
			switch {
			case delay >= t.DelayCritical:
				level = Critical
			case delay >= t.DelayWarning:
				level = max(level, Warning)
			}
			parts = append(parts, "replay delay "+FormatDelay(delay))
		}
		if level == OK {
			continue
		}
		out = append(out, Result{Level: level, Code: "lag", Node: n.Name,
			Message: fmt.Sprintf("%s is %s (warning at %s / %s, critical at %s / %s)", n.Name, strings.Join(parts, ", "),
				t.LagWarning, FormatDelay(t.DelayWarning), t.LagCritical, FormatDelay(t.DelayCritical)),
			Hint: "check the replica's disk and network, and long queries delaying replay"})
	}
	return out
}

// FormatDelay renders a delay compactly: "0s", "850ms", "12.3s", "5m3s".
func FormatDelay(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func slots(s *topology.Snapshot, cfg *config.Config) []Result {
	var out []Result
	for _, n := range s.Nodes {
		if !n.Member() {
			continue
		}
		for _, sl := range n.Slots {
			if sl.Logical() {
				continue // logical_slots judges them, naming their consumer's position
			}
			where := fmt.Sprintf("slot %s on %s", sl.Name, n.Name)
			switch {
			case sl.WALStatus != nil && *sl.WALStatus == "lost":
				out = append(out, Result{Level: Critical, Code: "slot", Node: n.Name,
					Message: where + " has lost required WAL: its consumer cannot catch up",
					Hint:    "rebuild the replica that used it and drop the slot"})
				continue
			case sl.InvalidationReason != nil || sl.Conflicting != nil && *sl.Conflicting:
				// 16 and 17+ say why a slot is unusable beyond lost WAL
				// (a recovery conflict, rows removed, idle timeout).
				why := "a recovery conflict"
				if sl.InvalidationReason != nil {
					why = *sl.InvalidationReason
				}
				out = append(out, Result{Level: Critical, Code: "slot", Node: n.Name,
					Message: where + " is invalidated (" + why + "): its consumer cannot use it",
					Hint:    "drop the slot and recreate it, and rebuild its consumer"})
				continue
			case sl.WALStatus != nil && *sl.WALStatus == "unreserved":
				out = append(out, Result{Level: Warning, Code: "slot", Node: n.Name,
					Message: where + " is about to lose WAL (wal_status unreserved)",
					Hint:    "let its consumer catch up, or raise max_slot_wal_keep_size"})
			}
			if !sl.Active && !sl.Temporary {
				out = append(out, Result{Level: Warning, Code: "slot", Node: n.Name,
					Message: where + " is inactive: it retains WAL for a consumer that is not connected",
					Hint:    fmt.Sprintf("restart its consumer, or drop it: SELECT pg_drop_replication_slot('%s') on %s", sl.Name, n.Name)})
			}
			if sl.RetainedBytes != nil && *sl.RetainedBytes >= uint64(cfg.Thresholds.SlotRetainedWarning) {
				out = append(out, Result{Level: Warning, Code: "slot", Node: n.Name,
					Message: fmt.Sprintf("%s retains %s of WAL (warning at %s): the disk may fill", where,
						config.HumanBytes(*sl.RetainedBytes), cfg.Thresholds.SlotRetainedWarning),
					Hint: "let its consumer catch up, or drop the slot if the consumer is gone"})
			}
		}
	}
	return out
}

func syncQuorum(s *topology.Snapshot, _ *config.Config) []Result {
	out := syncQuorumOf(s)
	if r := syncLowered(s); r != nil {
		if len(out) == 1 && out[0].Level == OK {
			r.Message += "; " + out[0].Message
			return []Result{*r}
		}
		out = append(out, *r)
	}
	return out
}

// syncLowered warns of synchronous replication that an operation lowered
// when it fenced a node it needed (the record's sync_restore), while the
// primary still runs the lowered setting: commits wait for fewer standbys
// than the operator asked for, until that node rejoins.
func syncLowered(s *topology.Snapshot) *Result {
	p := s.PrimaryNode()
	if p == nil || s.Record == nil || s.Record.SyncRestore == nil || p.Settings.SynchronousStandbyNames == nil {
		return nil
	}
	r := s.Record.SyncRestore
	if r.Primary != p.Name || topology.CanonicalSyncStandbyNames(*p.Settings.SynchronousStandbyNames) != topology.CanonicalSyncStandbyNames(r.Set) {
		return nil
	}
	set := "'" + r.Set + "'"
	if r.Set == "" {
		set = "empty (asynchronous)"
	}
	why := r.Node + " was fenced"
	if r.Why != "" {
		why = r.Why
	}
	return &Result{Level: Warning, Code: "sync_lowered", Node: p.Name,
		Message: fmt.Sprintf("%s's synchronous_standby_names is %s, lowered from '%s' when %s: commits wait for fewer standbys than configured", p.Name, set, r.Before, why),
		Hint:    fmt.Sprintf("replctl rejoin %s raises it back once %s streams; or set synchronous_standby_names on %s by hand", r.Node, r.Node, p.Name)}
}

func syncQuorumOf(s *topology.Snapshot) []Result {
	p := s.PrimaryNode()
	if p == nil {
		return []Result{{Level: Unknown, Code: "sync_quorum", Message: "no primary to read synchronous_standby_names from"}}
	}
	set := p.Settings
	if set.SyncStandbysError != "" {
		return []Result{{Level: Critical, Code: "sync_quorum", Node: p.Name, Message: set.SyncStandbysError}}
	}
	if set.SyncStandbys == nil {
		return []Result{{Level: Unknown, Code: "sync_quorum", Node: p.Name, Message: "synchronous_standby_names unreadable on " + p.Name}}
	}
	ss := *set.SyncStandbys
	if !ss.Enabled() {
		return ok("synchronous replication is off")
	}
	var connected []string
	for _, r := range p.Replication {
		if r.Streaming() && r.ApplicationName != nil && ss.Matches(*r.ApplicationName) {
			connected = append(connected, *r.ApplicationName)
		}
	}
	slices.Sort(connected)
	if len(connected) >= ss.Num {
		return ok("%s: %d eligible standbys connected (%s)", ss, len(connected), strings.Join(connected, ", "))
	}
	level, effect := Critical, "commits wait until enough standbys connect"
	if c := set.SynchronousCommit; c != nil && (*c == "off" || *c == "local") {
		level, effect = Warning, "synchronous_commit is "+*c+" so commits do not wait, but nothing is synchronously replicated"
	}
	return []Result{{Level: level, Code: "sync_quorum", Node: p.Name,
		Message: fmt.Sprintf("%s needs %d standbys, %d connected: %s", ss, ss.Num, len(connected), effect),
		Hint:    "bring a standby back, or lower the number in synchronous_standby_names"}}
}

func streamingReplicas(s *topology.Snapshot) []*topology.Node {
	var out []*topology.Node
	for _, n := range s.Replicas() {
		if n.Streaming() {
			out = append(out, n)
		}
	}
	return out
}

func minReplicas(s *topology.Snapshot, cfg *config.Config) []Result {
	want := 2
	if cfg.Thresholds.MinReplicas != nil {
		want = *cfg.Thresholds.MinReplicas
	}
	got := len(streamingReplicas(s))
	if got >= want {
		return ok("%s streaming (minimum %d)", replicas(got), want)
	}
	level := Warning
	if got == 0 {
		level = Critical
	}
	return []Result{{Level: level, Code: "min_replicas",
		Message: fmt.Sprintf("%s streaming, fewer than min_replicas %d", replicas(got), want),
		Hint:    "a failover now could lose data or leave the cluster without a standby: restore or add replicas"}}
}

func zoneSpread(s *topology.Snapshot, _ *config.Config) []Result {
	zoned := false
	for _, n := range s.Nodes {
		zoned = zoned || n.Zone != ""
	}
	if !zoned {
		return ok("no zones configured")
	}
	reps := streamingReplicas(s)
	zones := map[string]bool{}
	for _, n := range reps {
		zones[n.Zone] = true
	}
	if len(reps) < 2 || len(zones) > 1 {
		return nil
	}
	z := reps[0].Zone
	if z == "" {
		z = "(none)"
	}
	return []Result{{Level: Warning, Code: "zone_spread",
		Message: fmt.Sprintf("all %d streaming replicas are in zone %s", len(reps), z),
		Hint:    "losing that zone loses every standby: place a replica in another zone"}}
}

func replicas(n int) string {
	if n == 1 {
		return "1 replica"
	}
	return fmt.Sprintf("%d replicas", n)
}
