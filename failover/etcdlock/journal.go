package etcdlock

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/plan"
)

// OutcomeInterrupted is an operation whose process died (or lost its lock)
// before it could finish or undo what it began, once `replctl recover` has
// dealt with it. RecoveredBy names the recover operation.
const OutcomeInterrupted plan.Outcome = "interrupted"

// interruptedScan is how many of the newest records are searched for an
// interrupted operation. While one is pending every operation but recover
// refuses, so only recover, forced lock breaks and lock runs can pile up
// after it.
const interruptedScan = 50

// Interrupted reports whether r is an operation that began and did not
// finish under its lock, and is not yet recovered: its journal says running
// while no live lock was taken with its token, or the holder is a process
// of this host that is gone (the process died), or it stopped because its
// lock was lost or broken after it had begun to change things that it then
// could not undo. holder is the lock's current holder (nil
// when free). Records without a journal (lock runs, lock breaks) never are.
func (r *OpRecord) Interrupted(holder *LockHolder) bool {
	if r.Plan == nil || r.RecoveredBy != "" {
		return false
	}
	switch r.Outcome {
	case OutcomeRunning:
		// Between the lock's acquisition and the holder record naming the
		// operation the token already matches.
		return holder == nil || holder.Token != r.Token || holder.Dead()
	case OutcomeLockLost, OutcomeLockBroken:
		return r.changedAndNotUndone()
	case plan.OutcomeFailed, plan.OutcomePartial:
		// Failed, and the undo of a fence failed or was skipped: a node
		// is left fenced, possibly without a primary, as after a process
		// that died. Other failed undos (a slot on a node that is down)
		// are reported by the operation itself and block nothing.
		// Partial too: a drill whose promotion failed that way ends
		// partial (it needs attention), not failed. A partial plan (one
		// that committed) never undoes anything, so for the other kinds
		// this finds nothing.
		for _, js := range r.Journal() {
			if js.Fences && (js.Undo == string(plan.StepUndoFailed) || js.Undo == string(plan.StepUndoSkipped)) {
				return true
			}
		}
	}
	return false
}

// changedAndNotUndone reports whether a mutating step of the journaled plan
// began and was not undone.
func (r *OpRecord) changedAndNotUndone() bool {
	for _, js := range r.Journal() {
		if js.Began && js.Mutates && js.Undo != string(plan.StepUndone) {
			return true
		}
	}
	return false
}

// JournalStep is the journal's account of one step of the plan: whether it
// began, how it ended and what it captured.
type JournalStep struct {
	plan.StepSummary
	Began bool `json:"began"`
	// Outcome is the step's last recorded outcome: running (began, no
	// end recorded), done, failed, interrupted.
	Outcome  string          `json:"outcome,omitempty"`
	Captured json.RawMessage `json:"-"`
	// Undo is the outcome of its undo, if one began.
	Undo string `json:"undo,omitempty"`
}

// Journal pairs the plan's steps with what the record says of each, in plan
// order.
func (r *OpRecord) Journal() []JournalStep {
	if r.Plan == nil {
		return nil
	}
	out := make([]JournalStep, 0, len(r.Plan.Steps))
	for _, s := range r.Plan.Steps {
		js := JournalStep{StepSummary: s}
		for _, rec := range r.Steps {
			switch rec.ID {
			case r.PlanPrefix + s.ID:
				js.Began, js.Outcome = true, rec.Outcome
				if len(rec.Captured) > 0 {
					js.Captured = rec.Captured
				}
			case r.PlanPrefix + "undo-" + s.ID:
				js.Undo = rec.Outcome
			}
		}
		out = append(out, js)
	}
	return out
}

// LastBegun is the last step of the plan that began, nil when none did.
func (r *OpRecord) LastBegun() *JournalStep {
	j := r.Journal()
	for i := len(j) - 1; i >= 0; i-- {
		if j[i].Began {
			return &j[i]
		}
	}
	return nil
}

// FindInterrupted returns the interrupted operations among the newest
// records, oldest first, with the lock's holder as read (nil when free).
// It needs no lock.
func FindInterrupted(ctx context.Context, cli *clientv3.Client, prefix, cluster string) ([]OpRecord, *LockHolder, error) {
	h, err := ReadLockHolder(ctx, cli, prefix, cluster)
	if err != nil {
		return nil, nil, err
	}
	recs, err := ListHistory(ctx, cli, prefix, cluster, interruptedScan)
	if err != nil {
		return nil, h, err
	}
	var out []OpRecord
	for _, r := range recs {
		if r.Interrupted(h) {
			out = append(out, r)
		}
	}
	slices.Reverse(out)
	return out, h, nil
}

// CloseInterrupted marks the interrupted operation id as dealt with by the
// operation running under l (recover): outcome interrupted, its running
// steps interrupted, note appended to its error. It is written under the
// lock, compare-and-swap on the record.
func (l *Lock) CloseInterrupted(ctx context.Context, id, note string) error {
	if err := l.Err(); err != nil {
		return err
	}
	n, err := opNumber(id)
	if err != nil {
		return err
	}
	key := l.k.operation(n)
	resp, err := l.cli.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("read operation %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return fmt.Errorf("operation %s is not in the history", id)
	}
	kv := resp.Kvs[0]
	rec := decodeRecord(l.k, kv.Key, kv.Value)
	now := time.Now()
	if rec.Finished == nil {
		rec.Finished = &now
	}
	for i := range rec.Steps {
		if rec.Steps[i].Outcome == stepRunning {
			rec.Steps[i].Finished, rec.Steps[i].Outcome = &now, "interrupted"
		}
	}
	rec.Outcome = OutcomeInterrupted
	l.mu.Lock()
	rec.RecoveredBy = l.opID
	l.mu.Unlock()
	if note != "" {
		if rec.Error != "" {
			rec.Error += "; "
		}
		rec.Error += config.Scrub(note)
	}
	val, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	_, err = l.Txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)}, clientv3.OpPut(key, string(val)))
	if err != nil {
		return fmt.Errorf("close interrupted operation %s: %w", id, err)
	}
	return nil
}
