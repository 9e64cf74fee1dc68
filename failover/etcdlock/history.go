package etcdlock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/plan"
)

// Outcomes that only history records have, besides Execute's.
const (
	// OutcomeRunning is an operation that has not finished (or whose
	// process died before it could say how it ended).
	OutcomeRunning plan.Outcome = "running"
	// OutcomeLockLost is an operation stopped because its lock was lost.
	OutcomeLockLost plan.Outcome = "lock_lost"
	// OutcomeLockBroken is an operation whose lock someone broke with
	// `replctl lock release --force` while it was recorded as running.
	OutcomeLockBroken plan.Outcome = "lock_broken"
)

// Kinds of the records this file writes itself.
const (
	// KindLockBreak records a `replctl lock release --force`.
	KindLockBreak = "lock-break"
)

// stepRunning is the outcome of a step that has started and not ended.
// The other step outcomes are Execute's: done, failed, skipped, undone,
// undo_failed.
const stepRunning = "running"

// OpRecord is one operation in the history. Its JSON field names are a
// stable contract (replctl history -o json).
type OpRecord struct {
	// ID is a positive number, increasing with creation.
	ID      string `json:"id"`
	Kind    string `json:"kind"`
	Cluster string `json:"cluster"`
	// By is who ran it.
	By Actor `json:"by"`
	// Params are the operation's parameters, secrets masked.
	Params map[string]string `json:"params,omitempty"`
	// Token is the fencing token it ran under; 0 for forced records,
	// written without the lock they break.
	Token int64 `json:"token"`
	// Forced marks records written without the lock.
	Forced   bool         `json:"forced"`
	Started  time.Time    `json:"started"`
	Finished *time.Time   `json:"finished,omitempty"`
	Outcome  plan.Outcome `json:"outcome"`
	Error    string       `json:"error,omitempty"`
	// AfterLockLost marks a final update written after the lock was lost,
	// conditional only on the record itself being unchanged.
	AfterLockLost bool `json:"after_lock_lost,omitempty"`
	// Plan is the journal's account of the plan the operation ran (for a
	// drill, its latest promotion or rejoin, whose step IDs in Steps carry
	// PlanPrefix): what `replctl recover` reads with Steps.
	Plan       *plan.Summary `json:"plan,omitempty"`
	PlanPrefix string        `json:"plan_prefix,omitempty"`
	// RecoveredBy names the `replctl recover` operation that dealt with
	// this one after it was interrupted.
	RecoveredBy string       `json:"recovered_by,omitempty"`
	Steps       []StepRecord `json:"steps"`
}

// StepRecord is one step of an operation.
type StepRecord struct {
	ID          string `json:"id"`
	Node        string `json:"node,omitempty"`
	Description string `json:"description"`
	// Captured is the node's state the step captured before changing it
	// (its journal entry): what recover restores when it rolls back.
	Captured json.RawMessage `json:"captured,omitempty"`
	Started  time.Time       `json:"started"`
	Finished *time.Time      `json:"finished,omitempty"`
	// Outcome is running, done, failed, skipped, undone or undo_failed.
	Outcome string `json:"outcome"`
	Error   string `json:"error,omitempty"`
}

// Duration is how long the operation ran, or has run so far by now.
func (r *OpRecord) Duration(now time.Time) time.Duration {
	if r.Finished != nil {
		return r.Finished.Sub(r.Started)
	}
	return now.Sub(r.Started)
}

func (r *OpRecord) clone() OpRecord {
	c := *r
	c.Params = maps.Clone(r.Params)
	c.Steps = slices.Clone(r.Steps)
	return c
}

// scrubErr renders an error for the record without secrets.
func scrubErr(err error) string {
	if err == nil {
		return ""
	}
	return config.Scrub(err.Error())
}

// scrubJSON masks passwords in a journaled capture (a primary_conninfo
// may carry one). Masking happens on the text, inside JSON strings; should
// that ever break the JSON, the capture is replaced by a note rather than
// stored half-masked.
func scrubJSON(raw json.RawMessage) json.RawMessage {
	out := json.RawMessage(config.Scrub(string(raw)))
	if !json.Valid(out) {
		return json.RawMessage(`{"unreadable":"the capture could not be stored without its secrets"}`)
	}
	return out
}

func scrubParams(p map[string]string) map[string]string {
	if len(p) == 0 {
		return nil
	}
	out := make(map[string]string, len(p))
	for k, v := range p {
		if secretName(k) {
			v = mask(v)
		}
		out[k] = config.Scrub(v)
	}
	return out
}

// Operation is a history record being written while an operation runs
// under the lock. Its methods are safe for concurrent use. Every write is
// guarded by the lock and is made even when the caller's context is
// cancelled (an interrupted operation's undo steps are worth recording),
// bounded by the lock TTL.
type Operation struct {
	l   *Lock
	mu  sync.Mutex
	rec OpRecord
	key string
	rev int64
}

// StartOperation creates the history record of an operation run under the
// lock, with its kind ("switchover", "failover", ...) and parameters, and
// names it in the lock's holder record. Dry-runs must not call it.
func (l *Lock) StartOperation(ctx context.Context, kind string, params map[string]string) (*Operation, error) {
	if err := l.Err(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.ttl)
	defer cancel()
	rec := OpRecord{Kind: kind, Cluster: l.k.cluster, By: l.actor, Params: scrubParams(params), Token: l.token,
		Started: time.Now(), Outcome: OutcomeRunning, Steps: []StepRecord{}}
	key, rev, err := createRecord(ctx, l.cli, l.Txn, l.k, &rec, l.keep)
	if err != nil {
		return nil, fmt.Errorf("start %s in history: %w", kind, err)
	}
	if err := l.setOperation(ctx, rec.ID); err != nil {
		return nil, fmt.Errorf("start %s in history: %w", kind, err)
	}
	return &Operation{l: l, rec: rec, key: key, rev: rev}, nil
}

// ID is the operation's history ID.
func (o *Operation) ID() string { return o.rec.ID }

// Record returns a copy of the record as last written (or attempted).
func (o *Operation) Record() OpRecord {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.rec.clone()
}

// StartStep records that a step started.
func (o *Operation) StartStep(ctx context.Context, id, description string) error {
	return o.update(ctx, func(r *OpRecord) {
		r.Steps = append(r.Steps, StepRecord{ID: id, Description: config.Scrub(description), Started: time.Now(), Outcome: stepRunning})
	})
}

// EndStep records how a step ended (done, failed, skipped, undone,
// undo_failed). A step never started (an undo, a skip) is added whole.
func (o *Operation) EndStep(ctx context.Context, id, outcome string, stepErr error) error {
	return o.endStep(ctx, id, "", outcome, scrubErr(stepErr), time.Now(), 0)
}

func (o *Operation) endStep(ctx context.Context, id, description, outcome, errText string, end time.Time, d time.Duration) error {
	return o.update(ctx, func(r *OpRecord) { r.endStep(id, description, outcome, errText, end, d) })
}

// endStep closes the newest running entry of step id, or adds the step
// whole when it never started (an undo, a skip).
func (r *OpRecord) endStep(id, description, outcome, errText string, end time.Time, d time.Duration) {
	for i := len(r.Steps) - 1; i >= 0; i-- {
		s := &r.Steps[i]
		if s.ID == id && s.Outcome == stepRunning {
			s.Finished, s.Outcome, s.Error = &end, outcome, errText
			return
		}
	}
	r.Steps = append(r.Steps, StepRecord{ID: id, Description: config.Scrub(description), Started: end.Add(-d),
		Finished: &end, Outcome: outcome, Error: errText})
}

// Observe records executor events, in order and in one write, so that a
// Sink can feed the history:
//
//	sink := func(e plan.Event) { _ = op.Observe(ctx, e); show(e) }
func (o *Operation) Observe(ctx context.Context, events ...plan.Event) error {
	var kept []plan.Event
	for _, e := range events {
		switch e.Type {
		case plan.PlanStarted, plan.StepStarted, plan.StepCaptured,
			plan.StepDone, plan.StepFailed, plan.StepSkipped, plan.StepUndone, plan.StepUndoFailed, plan.StepUndoSkipped:
			kept = append(kept, e)
		}
	}
	if len(kept) == 0 {
		return nil
	}
	return o.update(ctx, func(r *OpRecord) {
		for _, e := range kept {
			r.Apply(e)
		}
	})
}

// Apply records an executor event in r, as Observe writes it: the journal's
// one definition, also for tests that keep a record without etcd. Secrets
// in descriptions, errors and captures are masked.
func (r *OpRecord) Apply(e plan.Event) {
	at := e.Time
	if at.IsZero() {
		at = time.Now()
	}
	switch e.Type {
	case plan.PlanStarted:
		r.Plan, r.PlanPrefix = e.Plan, e.StepID
	case plan.StepStarted:
		r.Steps = append(r.Steps, StepRecord{ID: e.StepID, Node: e.Node, Description: config.Scrub(e.Description), Started: at, Outcome: stepRunning})
	case plan.StepCaptured:
		data := scrubJSON(e.Data)
		for i := len(r.Steps) - 1; i >= 0; i-- {
			if r.Steps[i].ID == e.StepID && r.Steps[i].Outcome == stepRunning {
				r.Steps[i].Captured = data
				return
			}
		}
		r.Steps = append(r.Steps, StepRecord{ID: e.StepID, Node: e.Node, Description: config.Scrub(e.Description), Started: at, Outcome: stepRunning, Captured: data})
	case plan.StepDone, plan.StepFailed, plan.StepSkipped, plan.StepUndone, plan.StepUndoFailed, plan.StepUndoSkipped:
		r.endStep(e.StepID, e.Description, string(e.Type), config.Scrub(e.Error), at, e.Duration)
	}
}

// Finish records how the operation ended. If the lock was lost, the record
// is still updated, conditional only on being unchanged since this process
// last wrote it, and marked AfterLockLost: it is the one account of what the
// operation did before it stopped, and it cannot overwrite anyone else's.
func (o *Operation) Finish(ctx context.Context, outcome plan.Outcome, opErr error) error {
	end := time.Now()
	apply := func(r *OpRecord) {
		r.Finished, r.Outcome, r.Error = &end, outcome, scrubErr(opErr)
		for i := range r.Steps {
			if r.Steps[i].Outcome == stepRunning {
				r.Steps[i].Finished, r.Steps[i].Outcome = &end, "interrupted"
			}
		}
	}
	err := o.update(ctx, apply)
	var lost *LockLostError
	if !errors.As(err, &lost) {
		return err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	rec := o.rec.clone()
	apply(&rec)
	if rec.Outcome == OutcomeRunning || rec.Outcome == plan.OutcomeSucceeded {
		// An operation that lost its lock did not verifiably succeed.
		rec.Outcome = OutcomeLockLost
	}
	rec.AfterLockLost = true
	if rec.Error == "" {
		rec.Error = scrubErr(lost)
	}
	val, merr := json.Marshal(rec)
	if merr != nil {
		return merr
	}
	c, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.l.ttl)
	defer cancel()
	resp, terr := o.l.cli.Txn(c).If(clientv3.Compare(clientv3.ModRevision(o.key), "=", o.rev)).
		Then(clientv3.OpPut(o.key, string(val))).Commit()
	switch {
	case terr != nil:
		return fmt.Errorf("record the end of operation %s after losing the lock: %w", o.rec.ID, terr)
	case !resp.Succeeded:
		return fmt.Errorf("record the end of operation %s after losing the lock: the record was changed by someone else (lock broken?)", o.rec.ID)
	}
	o.rec, o.rev = rec, resp.Header.Revision
	return nil
}

// update applies fn to the record and writes it under the lock,
// compare-and-swap on the record's revision.
func (o *Operation) update(ctx context.Context, fn func(*OpRecord)) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	rec := o.rec.clone()
	fn(&rec)
	val, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	c, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.l.ttl)
	defer cancel()
	resp, err := o.l.Txn(c, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(o.key), "=", o.rev)},
		clientv3.OpPut(o.key, string(val)))
	if err != nil {
		if errors.Is(err, ErrConflict) {
			return fmt.Errorf("update operation %s: its record was changed by someone else (lock broken, or trimmed by history.keep): %w", o.rec.ID, err)
		}
		return fmt.Errorf("update operation %s: %w", o.rec.ID, err)
	}
	o.rec, o.rev = rec, resp.Header.Revision
	return nil
}

// txnFunc runs a transaction with conditions, returning ErrConflict when
// they fail: Lock.Txn under the lock, plainTxn without it.
type txnFunc func(ctx context.Context, conds []clientv3.Cmp, ops ...clientv3.Op) (*clientv3.TxnResponse, error)

func plainTxn(cli *clientv3.Client) txnFunc {
	return func(ctx context.Context, conds []clientv3.Cmp, ops ...clientv3.Op) (*clientv3.TxnResponse, error) {
		resp, err := cli.Txn(ctx).If(conds...).Then(ops...).Commit()
		if err != nil {
			return nil, err
		}
		if !resp.Succeeded {
			return resp, ErrConflict
		}
		return resp, nil
	}
}

// createRecord numbers rec (one more than both the sequence key and the
// newest record, so that deleting the sequence key cannot reuse a number)
// and writes it, then trims the history to keep records.
func createRecord(ctx context.Context, cli *clientv3.Client, txn txnFunc, k keys, rec *OpRecord, keep int) (key string, rev int64, err error) {
	for range 8 {
		resp, err := cli.Txn(ctx).Then(clientv3.OpGet(k.historySeq()),
			clientv3.OpGet(k.history(), clientv3.WithLastKey()...)).Commit()
		if err != nil {
			return "", 0, err
		}
		var seq, seqRev int64
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			seq, _ = strconv.ParseInt(string(kvs[0].Value), 10, 64)
			seqRev = kvs[0].ModRevision
		}
		if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
			last, _ := strconv.ParseInt(strings.TrimPrefix(string(kvs[0].Key), k.history()), 10, 64)
			seq = max(seq, last)
		}
		n := seq + 1
		rec.ID = strconv.FormatInt(n, 10)
		val, err := json.Marshal(rec)
		if err != nil {
			return "", 0, err
		}
		key := k.operation(n)
		tresp, err := txn(ctx, []clientv3.Cmp{
			clientv3.Compare(clientv3.ModRevision(k.historySeq()), "=", seqRev),
			clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
		}, clientv3.OpPut(k.historySeq(), rec.ID), clientv3.OpPut(key, string(val)))
		if errors.Is(err, ErrConflict) {
			continue // another writer took the number
		}
		if err != nil {
			return "", 0, err
		}
		// Trimming is housekeeping: a failure must not fail the operation,
		// and the next record retries it.
		_ = trimHistory(ctx, cli, txn, k, keep)
		return key, tresp.Header.Revision, nil
	}
	return "", 0, errors.New("could not allocate a history ID: too many concurrent writers")
}

// trimHistory deletes all but the newest keep records, in one range delete.
func trimHistory(ctx context.Context, cli *clientv3.Client, txn txnFunc, k keys, keep int) error {
	if keep <= 0 {
		keep = config.DefaultHistoryKeep
	}
	resp, err := cli.Get(ctx, k.history(), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(int64(keep)+1))
	if err != nil {
		return err
	}
	if len(resp.Kvs) <= keep {
		return nil
	}
	oldestKept := string(resp.Kvs[keep-1].Key)
	_, err = txn(ctx, nil, clientv3.OpDelete(k.history(), clientv3.WithRange(oldestKept)))
	return err
}

// ListHistory returns up to limit operations, newest first. It needs no
// lock. A record that does not decode is listed with its ID and outcome
// "unknown" rather than hiding the rest.
func ListHistory(ctx context.Context, cli *clientv3.Client, prefix, cluster string, limit int) ([]OpRecord, error) {
	k, err := newKeys(prefix, cluster)
	if err != nil {
		return nil, err
	}
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)}
	if limit > 0 {
		opts = append(opts, clientv3.WithLimit(int64(limit)))
	}
	resp, err := cli.Get(ctx, k.history(), opts...)
	if err != nil {
		return nil, fmt.Errorf("read history of %s: %w", cluster, err)
	}
	out := make([]OpRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, decodeRecord(k, kv.Key, kv.Value))
	}
	return out, nil
}

func decodeRecord(k keys, key, val []byte) OpRecord {
	var r OpRecord
	if err := json.Unmarshal(val, &r); err != nil {
		id := strings.TrimLeft(strings.TrimPrefix(string(key), k.history()), "0")
		return OpRecord{ID: id, Cluster: k.cluster, Outcome: "unknown", Error: "unreadable record: " + err.Error()}
	}
	return r
}

// ReadOperation returns one operation by ID, or nil when there is none
// (never recorded, or trimmed).
func ReadOperation(ctx context.Context, cli *clientv3.Client, prefix, cluster, id string) (*OpRecord, error) {
	k, err := newKeys(prefix, cluster)
	if err != nil {
		return nil, err
	}
	n, err := opNumber(id)
	if err != nil {
		return nil, err
	}
	resp, err := cli.Get(ctx, k.operation(n))
	if err != nil {
		return nil, fmt.Errorf("read operation %s of %s: %w", id, cluster, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	r := decodeRecord(k, resp.Kvs[0].Key, resp.Kvs[0].Value)
	return &r, nil
}

// ErrNotHeld is returned by BreakLock when the holder it was asked to break
// no longer holds the lock.
var ErrNotHeld = errors.New("the lock is no longer held by that holder")

// BreakLock breaks a stale lock by revoking the lease of holder (as read by
// ReadLockHolder and shown to the operator), which deletes the lock key and
// lets the next contender in. Only that lease is revoked, so a holder that
// released meanwhile, or a newer one, is left alone (ErrNotHeld). The break
// is recorded in the history as a forced record, since it cannot be written
// under the lock it breaks, and the holder's operation, if recorded as
// running, is marked lock_broken.
func BreakLock(ctx context.Context, cli *clientv3.Client, prefix, cluster string, holder *LockHolder, by Actor, keep int) (*OpRecord, error) {
	k, err := newKeys(prefix, cluster)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	desc := fmt.Sprintf("revoke lease %x of %s", holder.LeaseID, holder.Actor.String())
	if holder.LeaseID != 0 {
		if _, err := cli.Revoke(ctx, clientv3.LeaseID(holder.LeaseID)); err != nil {
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				return nil, ErrNotHeld
			}
			return nil, fmt.Errorf("break lock of %s: revoke lease %x: %w", cluster, holder.LeaseID, err)
		}
	} else {
		// A lock key without a lease was not written by replctl; delete it
		// only if it is still the same key.
		desc = "delete lock key " + holder.Key
		resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(holder.Key), "=", holder.createRev)).
			Then(clientv3.OpDelete(holder.Key)).Commit()
		if err != nil {
			return nil, fmt.Errorf("break lock of %s: %w", cluster, err)
		}
		if !resp.Succeeded {
			return nil, ErrNotHeld
		}
	}
	end := time.Now()
	params := map[string]string{
		"holder":               holder.Actor.String(),
		"holder_command":       holder.Command,
		"holder_fencing_token": strconv.FormatInt(holder.Token, 10),
		"lease":                fmt.Sprintf("%x", holder.LeaseID),
	}
	if holder.OperationID != "" {
		params["holder_operation"] = holder.OperationID
	}
	rec := OpRecord{Kind: KindLockBreak, Cluster: k.cluster, By: by, Params: scrubParams(params), Forced: true,
		Started: start, Finished: &end, Outcome: plan.OutcomeSucceeded,
		Steps: []StepRecord{{ID: "break-lock", Description: desc, Started: start, Finished: &end, Outcome: string(plan.StepDone)}}}
	if _, _, err := createRecord(ctx, cli, plainTxn(cli), k, &rec, keep); err != nil {
		return nil, fmt.Errorf("lock of %s broken, but recording it in the history failed: %w", cluster, err)
	}
	if holder.OperationID != "" {
		markBroken(ctx, cli, k, holder.OperationID, rec)
	}
	return &rec, nil
}

// markBroken closes the broken holder's record if it still says running:
// its process cannot do it any more, at least not under the lock.
func markBroken(ctx context.Context, cli *clientv3.Client, k keys, id string, brk OpRecord) {
	n, err := opNumber(id)
	if err != nil {
		return
	}
	resp, err := cli.Get(ctx, k.operation(n))
	if err != nil || len(resp.Kvs) == 0 {
		return
	}
	kv := resp.Kvs[0]
	var r OpRecord
	if json.Unmarshal(kv.Value, &r) != nil || r.Outcome != OutcomeRunning {
		return
	}
	r.Outcome = OutcomeLockBroken
	r.Error = fmt.Sprintf("lock broken by %s (operation %s) while this operation was running", brk.By.String(), brk.ID)
	val, err := json.Marshal(r)
	if err != nil {
		return
	}
	_, _ = cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)).
		Then(clientv3.OpPut(string(kv.Key), string(val))).Commit()
}
