package checks

import (
	"fmt"
	"slices"
	"strings"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/topology"
)

// logicalSlots judges logical slots the way slots judges physical ones,
// naming what matters for a logical consumer: its plugin and database, and
// the confirmed position it would have to resynchronise from.
func logicalSlots(s *topology.Snapshot, cfg *config.Config) []Result {
	var out []Result
	for _, n := range s.Nodes {
		if !n.Member() {
			continue
		}
		for _, sl := range n.Slots {
			if !sl.Logical() {
				continue
			}
			where := "logical slot " + slotLabel(sl) + " on " + n.Name
			from := ""
			if sl.ConfirmedFlushLSN != nil {
				from = " from " + sl.ConfirmedFlushLSN.String()
			}
			switch {
			case sl.WALStatus != nil && *sl.WALStatus == "lost":
				out = append(out, Result{Level: Critical, Code: "logical_slot", Node: n.Name,
					Message: where + " has lost WAL it needed: its consumer cannot continue and must resynchronise" + from,
					Hint:    fmt.Sprintf("drop it (SELECT pg_drop_replication_slot('%s') on %s), recreate it and resynchronise its consumer", sl.Name, n.Name)})
				continue
			case sl.InvalidationReason != nil || sl.Conflicting != nil && *sl.Conflicting:
				why := "a recovery conflict"
				if sl.InvalidationReason != nil {
					why = *sl.InvalidationReason
				}
				out = append(out, Result{Level: Critical, Code: "logical_slot", Node: n.Name,
					Message: where + " is invalidated (" + why + "): its consumer must resynchronise" + from,
					Hint:    "drop the slot, recreate it and resynchronise its consumer"})
				continue
			case sl.WALStatus != nil && *sl.WALStatus == "unreserved":
				out = append(out, Result{Level: Warning, Code: "logical_slot", Node: n.Name,
					Message: where + " is about to lose WAL (wal_status unreserved): its consumer is far behind",
					Hint:    "let its consumer catch up, or raise max_slot_wal_keep_size"})
			}
			// A synced copy on a standby (17+) is inactive by design: the
			// consumer uses the primary's slot until a promotion.
			synced := sl.Synced != nil && *sl.Synced
			if !sl.Active && !sl.Temporary && !synced {
				out = append(out, Result{Level: Warning, Code: "logical_slot", Node: n.Name,
					Message: where + " is inactive: no consumer is connected, and it retains WAL (and old catalog rows) until one is",
					Hint:    fmt.Sprintf("restart its consumer (subscriber or CDC client), or drop it: SELECT pg_drop_replication_slot('%s') on %s", sl.Name, n.Name)})
			}
			if sl.RetainedBytes != nil && *sl.RetainedBytes >= uint64(cfg.Thresholds.SlotRetainedWarning) {
				out = append(out, Result{Level: Warning, Code: "logical_slot", Node: n.Name,
					Message: fmt.Sprintf("%s retains %s of WAL (warning at %s): the disk may fill", where,
						config.HumanBytes(*sl.RetainedBytes), cfg.Thresholds.SlotRetainedWarning),
					Hint: "let its consumer catch up, or drop the slot if the consumer is gone"})
			}
		}
	}
	return out
}

// slotLabel is "name (plugin, database)".
func slotLabel(sl topology.Slot) string {
	var parts []string
	if sl.Plugin != nil {
		parts = append(parts, *sl.Plugin)
	}
	if sl.Database != nil {
		parts = append(parts, "database "+*sl.Database)
	}
	if len(parts) == 0 {
		return sl.Name
	}
	return sl.Name + " (" + strings.Join(parts, ", ") + ")"
}

// subscriptions judges the subscriptions of the writable nodes: only there
// do apply workers run (a standby's are catalog copies of its primary's).
// Error counts are cumulative since the statistics were last reset: one look
// cannot tell whether they still grow, so any count is reported, saying so,
// until the operator resets them.
func subscriptions(s *topology.Snapshot, _ *config.Config) []Result {
	var out []Result
	for _, n := range s.Nodes {
		if !n.Writable() {
			continue
		}
		for _, su := range n.Subscriptions {
			where := fmt.Sprintf("subscription %s (database %s) on %s", su.Name, su.Database, n.Name)
			from := publisherLabel(su)
			switch su.WorkerState {
			case topology.WorkerDisabled:
				out = append(out, Result{Level: Warning, Code: "subscription_disabled", Node: n.Name,
					Message: where + " is disabled: changes from " + from + " are not applied, and its slot there retains WAL",
					Hint:    fmt.Sprintf("ALTER SUBSCRIPTION %s ENABLE in database %s on %s, or drop it", su.Name, su.Database, n.Name)})
			case topology.WorkerNotRunning:
				out = append(out, Result{Level: Warning, Code: "subscription_not_running", Node: n.Name,
					Message: where + " is enabled but its apply worker is not running: nothing from " + from + " is applied",
					Hint:    "read " + n.Name + "'s log: the publisher may be unreachable, its slot missing, or the worker failing on a conflict"})
			}
			var errs []string
			if su.ApplyErrorCount != nil && *su.ApplyErrorCount > 0 {
				errs = append(errs, fmt.Sprintf("%d apply", *su.ApplyErrorCount))
			}
			if su.SyncErrorCount != nil && *su.SyncErrorCount > 0 {
				errs = append(errs, fmt.Sprintf("%d sync", *su.SyncErrorCount))
			}
			if len(errs) > 0 {
				out = append(out, Result{Level: Warning, Code: "subscription_errors", Node: n.Name,
					Message: fmt.Sprintf("%s has had %s errors since its statistics were reset (%s)",
						where, strings.Join(errs, " and "), errorTrend(s.Previous, n, su)),
					Hint: fmt.Sprintf("read %s's log for the failing change (often a conflicting row), fix it or ALTER SUBSCRIPTION %s SKIP, then clear the count: SELECT pg_stat_reset_subscription_stats(oid) FROM pg_subscription WHERE subname = '%s'",
						n.Name, su.Name, su.Name)})
			}
		}
	}
	return out
}

// errorTrend says whether a subscription's error counts grew since the
// previous look, or that one look cannot tell.
func errorTrend(prev *topology.Snapshot, n *topology.Node, su topology.Subscription) string {
	if prev == nil {
		return "one look: whether they still grow shows at the next one"
	}
	pn := prev.Node(n.Name)
	if pn == nil {
		return "one look: whether they still grow shows at the next one"
	}
	i := slices.IndexFunc(pn.Subscriptions, func(p topology.Subscription) bool { return p.Name == su.Name && p.Database == su.Database })
	if i < 0 {
		return "one look: whether they still grow shows at the next one"
	}
	p := pn.Subscriptions[i]
	grown := func(now, before *int64) int64 {
		if now == nil || before == nil {
			return 0 // unknown
		}
		return *now - *before
	}
	since := ""
	if n.ServerTime != nil && pn.ServerTime != nil && n.ServerTime.After(*pn.ServerTime) {
		since = " " + FormatDelay(n.ServerTime.Sub(*pn.ServerTime)) + " ago"
	}
	reset := func(now, before *int64) bool { return now != nil && before != nil && *now < *before }
	if reset(su.ApplyErrorCount, p.ApplyErrorCount) || reset(su.SyncErrorCount, p.SyncErrorCount) {
		return "the counts were reset since the previous look" + since + ": these errors are new"
	}
	a, y := grown(su.ApplyErrorCount, p.ApplyErrorCount), grown(su.SyncErrorCount, p.SyncErrorCount)
	if a == 0 && y == 0 {
		return "not grown since the previous look" + since
	}
	return fmt.Sprintf("growing: %d apply and %d sync errors more than at the previous look%s", a, y, since)
}

// publisherLabel is "host:port/db (node, internal)" as far as known.
func publisherLabel(su topology.Subscription) string {
	if su.PublisherHost == nil {
		return "its publisher"
	}
	addr := *su.PublisherHost
	if su.PublisherPort != nil && *su.PublisherPort != "" {
		addr += ":" + *su.PublisherPort
	}
	if su.PublisherDB != nil && *su.PublisherDB != "" {
		addr += "/" + *su.PublisherDB
	}
	if su.PublisherNode != "" {
		addr += " (" + string(su.PublisherNode) + ")"
	}
	return addr
}

// logicalFailover says, for each logical slot on the primary, whether a
// promotion would keep it. Before PostgreSQL 17 no standby has a copy of a
// logical slot, so a promotion loses it: its consumer stops on the new
// primary with "replication slot does not exist", and a slot re-created
// later silently skips every change in between. From 17 a slot created
// with failover = true is copied to standbys that run with
// sync_replication_slots = on (synced = true there).
func logicalFailover(s *topology.Snapshot, _ *config.Config) []Result {
	p := s.PrimaryNode()
	if p == nil {
		return nil
	}
	var cands []*topology.Node
	for _, n := range s.Replicas() {
		if string(n.Upstream) == p.Name && n.Priority > 0 {
			cands = append(cands, n)
		}
	}
	if !slices.ContainsFunc(p.Slots, func(sl topology.Slot) bool { return sl.Logical() && !sl.Temporary }) {
		return ok("%s has no logical slots", p.Name)
	}
	var out []Result
	var guarded []string // failover slots the candidates copy
	for _, sl := range p.Slots {
		if !sl.Logical() || sl.Temporary {
			continue
		}
		where := "logical slot " + slotLabel(sl) + " on " + p.Name
		resync := "its consumer would have to resynchronise"
		if sl.ConfirmedFlushLSN != nil {
			resync += " from " + sl.ConfirmedFlushLSN.String()
		}
		if p.Major() < 17 {
			out = append(out, Result{Level: Warning, Code: "logical_failover", Node: p.Name,
				Message: fmt.Sprintf("%s would be lost by an emergency failover: PostgreSQL %d keeps logical slots on the primary only, "+
					"so the new primary would have no slot %s (%s); a planned switchover hands it over (replctl promote --logical-slots handover, the default)", where, p.Major(), sl.Name, resync),
				Hint: "give its consumer a connection string naming every node with target_session_attrs=read-write, so that it follows a handover; " +
					"to survive a failover too, upgrade to PostgreSQL 17 and use failover slots (failover = true, sync_replication_slots = on on the standbys)"})
			continue
		}
		if sl.Failover == nil || !*sl.Failover {
			out = append(out, Result{Level: Warning, Code: "logical_failover", Node: p.Name,
				Message: where + " has failover = false: no standby keeps a copy, so a promotion loses it (" + resync + ")",
				Hint: "for a subscription: ALTER SUBSCRIPTION ... DISABLE, SET (failover = true), ENABLE on the subscriber; " +
					"for a CDC slot: re-create it with pg_create_logical_replication_slot(name, plugin, failover => true)"})
			continue
		}
		if len(cands) == 0 {
			continue
		}
		var missing []string
		for _, c := range cands {
			if why := syncedOn(c, sl); why != "" {
				missing = append(missing, c.Name+" "+why)
			}
		}
		if len(missing) > 0 {
			out = append(out, Result{Level: Warning, Code: "logical_failover", Node: p.Name,
				Message: fmt.Sprintf("%s would be lost by a promotion of %s", where, strings.Join(missing, "; ")),
				Hint:    "on each standby: sync_replication_slots = on, hot_standby_feedback = on, primary_slot_name set and dbname in primary_conninfo"})
		}
		guarded = append(guarded, sl.Name)
	}
	if len(guarded) > 0 {
		out = append(out, standbySlotsGuard(p, guarded, cands)...)
	}
	if len(out) == 0 {
		return ok("every logical slot of %s is a failover slot synced to each candidate", p.Name)
	}
	return out
}

// syncedOn says why replica c would not keep the primary's failover slot
// sl, "" when it would.
func syncedOn(c *topology.Node, sl topology.Slot) string {
	if v := c.Settings.SyncReplicationSlots; v == nil || *v != "on" {
		return "(sync_replication_slots is not on)"
	}
	i := slices.IndexFunc(c.Slots, func(x topology.Slot) bool { return x.Name == sl.Name })
	if i < 0 {
		return "(it has no copy of the slot yet)"
	}
	cp := c.Slots[i]
	if cp.Synced == nil || !*cp.Synced {
		return "(its slot of that name is not a synced copy)"
	}
	if cp.Temporary {
		// A copy stays temporary until the primary's slot has moved past
		// where the copy could start; promotion drops temporary copies.
		return "(its copy is not persistent yet: the primary's slot has not advanced since it was copied)"
	}
	if cp.InvalidationReason != nil || cp.WALStatus != nil && *cp.WALStatus == "lost" {
		return "(its copy is invalidated)"
	}
	return ""
}

// standbySlotsGuard warns when the primary lets logical consumers confirm
// changes before the candidates have them (synchronized_standby_slots):
// after a promotion such a consumer would be ahead of the new primary.
func standbySlotsGuard(p *topology.Node, slots []string, cands []*topology.Node) []Result {
	guard := map[string]bool{}
	if v := p.Settings.SynchronizedStandbySlots; v != nil {
		for _, name := range strings.Split(*v, ",") {
			guard[strings.TrimSpace(name)] = true
		}
	}
	var unguarded []string
	for _, c := range cands {
		slot := c.Name
		if v := c.Settings.PrimarySlotName; v != nil && *v != "" {
			slot = *v
		}
		if !guard[slot] && !guard["*"] {
			unguarded = append(unguarded, c.Name)
		}
	}
	if len(unguarded) == 0 {
		return nil
	}
	return []Result{{Level: Warning, Code: "logical_failover", Node: p.Name,
		Message: fmt.Sprintf("failover slots %s on %s: synchronized_standby_slots does not name the slot of %s, so their consumers may confirm changes those standbys lack, and be ahead of one promoted",
			strings.Join(slots, ", "), p.Name, strings.Join(unguarded, ", ")),
		Hint: "set synchronized_standby_slots on " + p.Name + " to the candidates' physical slots"}}
}
