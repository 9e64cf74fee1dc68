package failover

import (
	"fmt"
	"slices"
	"strings"

	"github.com/replctl/replctl/topology"
)

// logicalSlotNotes says, for the plan's notes, what promoting cand does to
// each logical slot of the old primary. replctl does not carry logical
// slots over itself (yet): a slot survives only as a PostgreSQL 17
// failover slot that cand holds a synced copy of. Every other one is lost
// to the slot's consumer, which must resynchronise from the position it had
// confirmed: a slot re-created on cand later starts at cand's position
// then and silently skips the changes in between.
//
// old may be unreadable (an emergency failover's dead primary): then only
// cand's synced copies are known, and the note says that any other slot is
// lost without being able to name it. A cluster showing no sign of logical
// replication (no logical slot on either node, and wal_level below
// logical on cand) gets no note.
func logicalSlotNotes(old, cand *topology.Node) []string {
	if cand == nil {
		return nil
	}
	copyOf := func(name string) *topology.Slot { return logicalCopy(cand, name) }
	kept := func(sl topology.Slot) (bool, string) { return logicalKept(sl, cand) }
	var notes []string
	if old != nil && old.Reachable && old.Slots != nil {
		for _, sl := range old.Slots {
			if !sl.Logical() || sl.Temporary {
				continue
			}
			label := logicalLabel(sl)
			if ok, _ := kept(sl); ok {
				// The copy trails the primary's slot by up to the slot sync
				// worker's nap: the consumer resumes from its own position,
				// which the copy only has to precede.
				notes = append(notes, fmt.Sprintf("logical slot %s on %s: kept: %s holds a synced copy (a failover slot; confirmed up to %s there, %s on %s); once promoted its consumer reconnects to %s and resumes from its own position",
					label, old.Name, cand.Name, lsnOrDash(copyOf(sl.Name).ConfirmedFlushLSN), lsnOrDash(sl.ConfirmedFlushLSN), old.Name, cand.Name))
				continue
			}
			_, why := kept(sl)
			from := "the position it last confirmed"
			if sl.ConfirmedFlushLSN != nil {
				from = sl.ConfirmedFlushLSN.String() + " (its confirmed_flush_lsn now)"
			}
			notes = append(notes, fmt.Sprintf("logical slot %s on %s: LOST by this promotion (%s): replctl does not carry it over, so on %s its consumer fails with 'replication slot \"%s\" does not exist'; "+
				"re-creating it there later skips every change in between: its consumer must resynchronise from %s. The slot itself stays on %s, holding back WAL there, until dropped",
				label, old.Name, why, cand.Name, sl.Name, from, old.Name))
		}
		return notes
	}
	// The old primary cannot be read: only cand's synced copies are known.
	for _, c := range cand.Slots {
		if c.Logical() && c.Synced != nil && *c.Synced && !c.Temporary && c.InvalidationReason == nil {
			notes = append(notes, fmt.Sprintf("logical slot %s: kept: %s holds a synced copy (a failover slot, confirmed up to %s there); its consumer reconnects to %s and resumes",
				logicalLabel(c), cand.Name, lsnOrDash(c.ConfirmedFlushLSN), cand.Name))
		}
	}
	if len(notes) > 0 || cand.Settings.WALLevel != nil && *cand.Settings.WALLevel == "logical" {
		oldName := "the old primary"
		if old != nil {
			oldName = old.Name
		}
		notes = append(notes, fmt.Sprintf("%s cannot be read: every logical slot it had without a synced copy on %s is LOST, and replctl cannot name them. "+
			"Each consumer must resynchronise from its own last confirmed position (a subscriber's is remote_lsn in pg_replication_origin_status on its node); a slot re-created on %s starts at %s's position then",
			oldName, cand.Name, cand.Name, cand.Name))
	}
	return notes
}

// logicalLabel is "name (plugin, database)".
func logicalLabel(sl topology.Slot) string {
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

func lsnOrDash(l *topology.LSN) string {
	if l == nil {
		return "-"
	}
	return l.String()
}

// subscriptionNotes names the subscriptions that will run on cand once it
// is promoted (its catalog copies of the old primary's) and whose
// publisher is the old primary itself: their connection string names that
// host, so after the promotion they consume from a node that is no longer
// the primary. replctl does not rewrite them: the operator repoints them,
// or gives them a connection string that follows the primary.
func subscriptionNotes(old string, cand *topology.Node) []string {
	if cand == nil {
		return nil
	}
	var notes []string
	for _, su := range cand.Subscriptions {
		if string(su.PublisherNode) != old {
			continue
		}
		notes = append(notes, fmt.Sprintf("subscription %s (database %s) consumes from %s itself (%s/%s): once %s is promoted it runs there and still connects to %s. "+
			"Repoint it in database %s on %s (ALTER SUBSCRIPTION %s CONNECTION '...'), or give it a connection string naming every node with target_session_attrs=read-write",
			su.Name, su.Database, old, derefOrEmpty(su.PublisherHost)+portSuffix(su.PublisherPort), derefOrEmpty(su.PublisherDB), cand.Name, old, su.Database, cand.Name, su.Name))
	}
	return notes
}

func derefOrEmpty(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func portSuffix(p *string) string {
	if p == nil || *p == "" {
		return ""
	}
	return ":" + *p
}

// logicalCopy is cand's logical slot named name, nil when it has none.
func logicalCopy(cand *topology.Node, name string) *topology.Slot {
	i := slices.IndexFunc(cand.Slots, func(s topology.Slot) bool { return s.Name == name && s.Logical() })
	if i < 0 {
		return nil
	}
	return &cand.Slots[i]
}

// logicalKept reports whether promoting cand keeps the old primary's
// logical slot sl (a PostgreSQL 17 failover slot cand holds a persistent,
// valid synced copy of), and why not.
func logicalKept(sl topology.Slot, cand *topology.Node) (bool, string) {
	c := logicalCopy(cand, sl.Name)
	switch {
	case cand.Major() > 0 && cand.Major() < 17:
		return false, fmt.Sprintf("PostgreSQL %d keeps logical slots on the primary only", cand.Major())
	case sl.Failover != nil && !*sl.Failover:
		return false, "it has failover = false, so no standby keeps a copy"
	case c == nil || c.Synced == nil || !*c.Synced:
		return false, cand.Name + " holds no synced copy of it"
	case c.Temporary:
		// Promotion drops a copy that has not become persistent yet.
		return false, cand.Name + "'s copy is not persistent yet"
	case c.InvalidationReason != nil || c.WALStatus != nil && *c.WALStatus == "lost":
		return false, cand.Name + "'s copy is invalidated"
	}
	return true, ""
}

// What a planned switchover does with the logical slots a promotion
// would lose (--logical-slots).
const (
	// LogicalHandover carries them over: after the SQL fence each
	// consumer confirms the final position, the candidate is promoted with
	// writes held, each slot is created on it, and writes are released:
	// nothing is written between the final position and the new slot, so
	// a consumer that reconnects misses nothing.
	LogicalHandover = "handover"
	// LogicalDrop lets the promotion lose them: their consumers must
	// resynchronise.
	LogicalDrop = "drop"
	// LogicalRefuse refuses a switchover that would lose one.
	LogicalRefuse = "refuse"
)

// lostLogicalSlots are old's persistent logical slots that promoting cand
// does not keep by itself.
func lostLogicalSlots(old, cand *topology.Node) []topology.Slot {
	if old == nil || cand == nil {
		return nil
	}
	var out []topology.Slot
	for _, sl := range old.Slots {
		if !sl.Logical() || sl.Temporary {
			continue
		}
		if ok, _ := logicalKept(sl, cand); !ok {
			out = append(out, sl)
		}
	}
	return out
}

func slotNames(sl []topology.Slot) string {
	var n []string
	for _, s := range sl {
		n = append(n, s.Name)
	}
	return strings.Join(n, ", ")
}
