package failover

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/topology"
)

// The logical slot handover's steps (--logical-slots handover).
const (
	StepWaitLogical    = "wait-logical"
	StepHoldWrites     = "hold-writes"
	StepCreateLogical  = "create-logical-slots"
	StepReleaseWrites  = "release-writes"
	StepEndLogical     = "end-logical-senders"
	StepVerifyLogical  = "verify-logical-slots"
	holdWritesSettings = "default_transaction_read_only"
)

// planHandover decides, for the switchover of old to cand, what happens to
// the logical slots the promotion would lose, by mode. It returns the
// slots to hand over (none for drop, or when nothing would be lost) or why
// the switchover is refused.
func planHandover(old, cand *topology.Node, mode string, requireStop bool) ([]pgctl.LogicalSlot, error) {
	lost := lostLogicalSlots(old, cand)
	if len(lost) == 0 {
		return nil, nil
	}
	switch mode {
	case "", LogicalHandover:
	case LogicalDrop:
		return nil, nil
	case LogicalRefuse:
		return nil, fmt.Errorf("promoting %s would lose the logical slots %s of %s (--logical-slots refuse): use --logical-slots handover to carry them over, or --logical-slots drop to let their consumers resynchronise",
			cand.Name, slotNames(lost), old.Name)
	default:
		return nil, fmt.Errorf("--logical-slots %q: use handover, drop or refuse", mode)
	}
	if requireStop {
		return nil, fmt.Errorf("logical slots %s: a handover needs the SQL fence (once stopped, %s cannot tell whether their consumers confirmed its last WAL), and --require-stop forbids it: use --logical-slots drop, or leave out --require-stop",
			slotNames(lost), old.Name)
	}
	if w := cand.Settings.WALLevel; w == nil || *w != "logical" {
		return nil, fmt.Errorf("logical slots %s cannot be handed over to %s: its wal_level is %s, not logical (set wal_level = logical there, which needs a restart), or use --logical-slots drop",
			slotNames(lost), cand.Name, orUnknown(cand.Settings.WALLevel))
	}
	var out []pgctl.LogicalSlot
	for _, sl := range lost {
		if sl.Plugin == nil || sl.Database == nil {
			return nil, fmt.Errorf("logical slot %s on %s: its plugin or database cannot be read (grant pg_monitor), so it cannot be re-created on %s; or use --logical-slots drop", sl.Name, old.Name, cand.Name)
		}
		out = append(out, pgctl.LogicalSlot{Name: sl.Name, Plugin: *sl.Plugin, Database: *sl.Database})
	}
	return out, nil
}

func handoverNames(ss []pgctl.LogicalSlot) string {
	var n []string
	for _, s := range ss {
		n = append(n, fmt.Sprintf("%s (%s, database %s)", s.Name, s.Plugin, s.Database))
	}
	return strings.Join(n, ", ")
}

// stepWaitLogical waits, after the SQL fence, until every handed-over
// slot's consumer has confirmed the final position: then the slot created
// on the candidate later loses it nothing. A consumer that does not is
// reported, and the switchover is undone.
func (sw *switchover) stepWaitLogical() plan.Step {
	old := sw.primary.Name
	return plan.Step{ID: StepWaitLogical, Node: old, Timeout: sw.t.Catchup,
		Description: fmt.Sprintf("%s: wait until the consumers of the logical slots %s have confirmed its final position (confirmed_flush_lsn, timeout %s)", old, handoverNames(sw.handover), sw.t.Catchup),
		Run: func(ctx context.Context) error {
			var behind string
			err := pgctl.PollUntil(ctx, sw.env.Clock, 10*time.Millisecond, func(ctx context.Context) (bool, error) {
				pos, err := sw.env.Ctl.LogicalSlotPositions(ctx, old)
				if err != nil {
					return false, err
				}
				var left []string
				for _, s := range sw.handover {
					l, ok := pos[s.Name]
					switch {
					case !ok:
						left = append(left, s.Name+" (gone)")
					case l < sw.finalLSN:
						left = append(left, fmt.Sprintf("%s at %s, %s to go", s.Name, l, config.HumanBytes(topology.LagBytes(sw.finalLSN, l))))
					}
				}
				behind = strings.Join(left, "; ")
				if behind != "" {
					sw.env.progress(StepWaitLogical, "waiting for %s", behind)
				}
				return behind == "", nil
			}, "")
			if err != nil && behind != "" {
				return fmt.Errorf("logical slot consumers did not confirm %s's final position %s within %s: %s; the switchover is undone: fix the consumer, or run it again with --logical-slots drop (the consumer must then resynchronise)",
					old, sw.finalLSN, sw.t.Catchup, behind)
			}
			return err
		}}
}

// stepHoldWrites makes the candidate start every session read-only before
// it is promoted, so that nothing is written between the final position
// and the slots' creation.
func (sw *switchover) stepHoldWrites() plan.Step {
	c := sw.candidate.Name
	return plan.Step{ID: StepHoldWrites, Node: c, Mutates: true, Timeout: sw.t.Call, Budget: sw.budget(2 * sw.t.Call),
		Description:     fmt.Sprintf("%s: hold writes until the logical slots exist: capture default_transaction_read_only, ALTER SYSTEM SET default_transaction_read_only = on; SELECT pg_reload_conf(), and wait until it took effect", c),
		UndoDescription: fmt.Sprintf("%s: restore default_transaction_read_only as captured (ALTER SYSTEM), SELECT pg_reload_conf()", c),
		Run: func(ctx context.Context) error {
			snap, err := sw.env.Ctl.CaptureSettings(ctx, c, holdWritesSettings)
			if err != nil {
				return err
			}
			sw.holdCapture = snap
			if err := captureSettings(ctx, snap); err != nil {
				return err
			}
			err = sw.env.Ctl.HoldWrites(ctx, c)
			plan.Changed(ctx)
			return err
		},
		Undo: sw.releaseWrites}
}

func (sw *switchover) releaseWrites(ctx context.Context) error {
	if sw.holdCapture == nil {
		return nil
	}
	return sw.env.Ctl.RestoreSettings(ctx, sw.candidate.Name, sw.holdCapture)
}

// stepCreateLogical creates each handed-over slot on the new primary. A
// slot it cannot create does not keep writes held: the failure is reported
// by the final verification, with the position its consumer must
// resynchronise from.
func (sw *switchover) stepCreateLogical() plan.Step {
	c := sw.candidate.Name
	return plan.Step{ID: StepCreateLogical, Node: c, Mutates: true, Timeout: sw.t.Call * time.Duration(1+len(sw.handover)), Budget: sw.budget(2 * time.Second),
		Description: fmt.Sprintf("%s: create the logical slots %s, each in its database, at its position now (writes are held: nothing was written since %s's final position)", c, handoverNames(sw.handover), sw.primary.Name),
		Run: func(ctx context.Context) error {
			var names []string
			for _, s := range sw.handover {
				names = append(names, s.Name)
			}
			if err := captureSlots(ctx, names, nil); err != nil {
				return err
			}
			_, err := sw.env.Ctl.CreateLogicalSlots(ctx, c, sw.handover)
			plan.Changed(ctx)
			if err != nil {
				sw.logicalErr = err
				sw.env.progress(StepCreateLogical, "%v: writes are released all the same; the verification below reports it", err)
			}
			return nil
		}}
}

func (sw *switchover) stepReleaseWrites() plan.Step {
	c := sw.candidate.Name
	return plan.Step{ID: StepReleaseWrites, Node: c, Mutates: true, Timeout: sw.t.Call, Budget: sw.budget(2 * sw.t.Call),
		Description: fmt.Sprintf("%s: release writes: restore default_transaction_read_only as captured (ALTER SYSTEM), SELECT pg_reload_conf()", c),
		Run: func(ctx context.Context) error {
			err := sw.releaseWrites(ctx)
			plan.Changed(ctx)
			return err
		}}
}

// stepEndLogical ends the old primary's walsenders of the handed-over
// slots, so that their consumers reconnect (to the new primary, through a
// connection string that names every node with
// target_session_attrs=read-write) instead of waiting on the fenced node.
func (sw *switchover) stepEndLogical() plan.Step {
	old := sw.primary.Name
	return plan.Step{ID: StepEndLogical, Node: old, Mutates: true, Timeout: sw.t.Call, Budget: sw.budget(2 * sw.t.Call),
		Description: fmt.Sprintf("%s: end the walsenders of the logical slots %s, so that their consumers reconnect to %s", old, handoverNames(sw.handover), sw.candidate.Name),
		Run: func(ctx context.Context) error {
			for _, s := range sw.handover {
				if _, err := sw.env.Ctl.TerminateWALSenders(ctx, old, s.Name, ""); err != nil {
					sw.env.progress(StepEndLogical, "%s: %v", s.Name, err)
				}
			}
			return nil
		}}
}

// stepVerifyLogical verifies every handed-over slot exists on the new
// primary; a missing one fails the operation as partly done, naming the
// position its consumer must resynchronise from.
func (sw *switchover) stepVerifyLogical() plan.Step {
	c := sw.candidate.Name
	return plan.Step{ID: StepVerifyLogical, Node: c, Timeout: sw.t.Call,
		Description: fmt.Sprintf("%s: verify the logical slots %s exist", c, handoverNames(sw.handover)),
		Run: func(ctx context.Context) error {
			pos, err := sw.env.Ctl.LogicalSlotPositions(ctx, c)
			if err != nil {
				return err
			}
			var missing []string
			for _, s := range sw.handover {
				if _, ok := pos[s.Name]; !ok {
					missing = append(missing, s.Name)
				}
			}
			if len(missing) > 0 {
				return fmt.Errorf("logical slots %s were not created on %s (%v): their consumers must resynchronise from %s", strings.Join(missing, ", "), c, sw.logicalErr, sw.finalLSN)
			}
			return nil
		}}
}

// handoverNotes replaces the notes of the slots handed over, which would
// otherwise say they are lost.
func handoverNotes(notes []string, old, cand string, handover []pgctl.LogicalSlot) []string {
	if len(handover) == 0 {
		return notes
	}
	var out []string
	for _, n := range notes {
		if !slices.ContainsFunc(handover, func(s pgctl.LogicalSlot) bool {
			return strings.HasPrefix(n, "logical slot "+s.Name+" ") && strings.Contains(n, "LOST")
		}) {
			out = append(out, n)
		}
	}
	for _, s := range handover {
		out = append(out, fmt.Sprintf("logical slot %s (%s, database %s) on %s: handed over to %s: its consumer confirms %s's final position, %s is promoted with writes held, the slot is created there, writes are released; a consumer whose connection string names every node with target_session_attrs=read-write then resumes on %s without a gap (--logical-slots drop lets it be lost instead)",
			s.Name, s.Plugin, s.Database, old, cand, old, cand, cand))
	}
	return out
}
