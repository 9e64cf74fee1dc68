package etcdlock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/topology"
)

// ErrStaleToken is returned when the cluster record was written under a
// newer fencing token than the lock's: another operation ran after this
// lock was taken, so this one is acting on an outdated view.
var ErrStaleToken = errors.New("stale fencing token")

// State is the cluster record, <prefix>/<cluster>/state: what the last
// operation holding the lock established. status compares it with what it
// observes; a difference means something changed outside replctl.
// Its JSON field names are a stable contract.
type State struct {
	// Primary is the node replctl last made or confirmed primary.
	Primary string `json:"primary"`
	// Timeline and LSN are the primary's when the record was written.
	Timeline uint32       `json:"timeline"`
	LSN      topology.LSN `json:"lsn"`
	// Sync is the primary's synchronous replication settings as last seen
	// by an operation holding the lock.
	Sync SyncSettings `json:"sync"`
	// MaxTimeline is the highest timeline any primary was seen on by an
	// operation under the lock (promotions included): PostgreSQL picks a
	// promoted node's new timeline ID from the history files it has, so a
	// candidate behind a lost promotion would reuse an ID, and two
	// histories with one ID cannot be told apart by pg_rewind.
	MaxTimeline uint32 `json:"max_timeline,omitempty"`
	// Fenced lists nodes an operation fenced, which must not be written to
	// or promoted until rejoined.
	Fenced []FencedNode `json:"fenced"`
	// SyncRestore is set while synchronous replication runs lowered
	// because an operation fenced a node it needed (see
	// topology.SyncRestore); the rejoin of that node clears it.
	SyncRestore *topology.SyncRestore `json:"sync_restore,omitempty"`
	// Token and OperationID are the lock and history record under which the
	// record was written.
	Token       int64     `json:"token"`
	OperationID string    `json:"operation_id,omitempty"`
	UpdatedAt   time.Time `json:"updated_at"`
	UpdatedBy   string    `json:"updated_by"`
}

// SyncSettings are the primary's synchronous replication settings.
type SyncSettings struct {
	StandbyNames string    `json:"synchronous_standby_names"`
	Commit       string    `json:"synchronous_commit"`
	SeenAt       time.Time `json:"seen_at"`
}

// FencedNode is a node marked as fenced.
type FencedNode struct {
	Node   string `json:"node"`
	Reason string `json:"reason,omitempty"`
	// Token, OperationID and Since say which operation fenced it; UpdateState
	// fills them in for new entries.
	Token       int64     `json:"token"`
	OperationID string    `json:"operation_id,omitempty"`
	Since       time.Time `json:"since"`
}

// TopologyRecord is what classification and planning take from the
// record.
func (s *State) TopologyRecord() *topology.Record {
	rec := &topology.Record{Primary: s.Primary, SyncRestore: s.SyncRestore}
	for _, f := range s.Fenced {
		rec.Fenced = append(rec.Fenced, f.Node)
	}
	return rec
}

// IsFenced reports whether node is marked as fenced.
func (s *State) IsFenced(node string) bool {
	return slices.ContainsFunc(s.Fenced, func(f FencedNode) bool { return f.Node == node })
}

// Fence marks node as fenced. An earlier entry for it keeps the token,
// operation and time of the operation that fenced it first (recover unmarks
// only what the interrupted operation marked) and takes the new reason.
func (s *State) Fence(node, reason string) {
	for i := range s.Fenced {
		if s.Fenced[i].Node == node {
			s.Fenced[i].Reason = reason
			return
		}
	}
	s.Fenced = append(s.Fenced, FencedNode{Node: node, Reason: reason})
}

// FencedBy is node's fenced entry when the operation opID made it.
func (s *State) FencedBy(node, opID string) bool {
	return slices.ContainsFunc(s.Fenced, func(f FencedNode) bool { return f.Node == node && f.OperationID == opID })
}

// Unfence removes node's fenced mark and reports whether it had one.
func (s *State) Unfence(node string) bool {
	n := len(s.Fenced)
	s.Fenced = slices.DeleteFunc(s.Fenced, func(f FencedNode) bool { return f.Node == node })
	return len(s.Fenced) != n
}

func (s *State) clone() *State {
	c := *s
	c.Fenced = slices.Clone(s.Fenced)
	return &c
}

// ReadState returns the cluster record and its etcd revision (for a later
// compare-and-swap), or nil and 0 when there is none yet. It needs no lock.
func ReadState(ctx context.Context, cli *clientv3.Client, prefix, cluster string) (*State, int64, error) {
	k, err := newKeys(prefix, cluster)
	if err != nil {
		return nil, 0, err
	}
	return readState(ctx, cli, k)
}

func readState(ctx context.Context, cli *clientv3.Client, k keys) (*State, int64, error) {
	resp, err := cli.Get(ctx, k.state())
	if err != nil {
		return nil, 0, fmt.Errorf("read cluster record of %s: %w", k.cluster, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	kv := resp.Kvs[0]
	var s State
	if err := json.Unmarshal(kv.Value, &s); err != nil {
		return nil, 0, fmt.Errorf("cluster record %s is not valid: %w", k.state(), err)
	}
	return &s, kv.ModRevision, nil
}

// UpdateState reads the cluster record, lets fn change it (fn gets a zero
// State when there is none) and writes it back under the lock,
// compare-and-swap on the revision read. It refuses to overwrite a record
// written under a newer token (a *LockLostError wrapping ErrStaleToken:
// someone took the lock since) and reports ErrConflict if
// the record changed in between, which, under the lock, means someone wrote
// it without one. It returns the record written and its revision.
func (l *Lock) UpdateState(ctx context.Context, fn func(*State) error) (*State, int64, error) {
	if err := l.Err(); err != nil {
		return nil, 0, err
	}
	cur, rev, err := readState(ctx, l.cli, l.k)
	if err != nil {
		return nil, 0, err
	}
	next := &State{}
	if cur != nil {
		if cur.Token > l.token {
			// A newer token means a later acquisition: this lock is gone,
			// whether or not the loss was noticed yet.
			lost := l.lose(fmt.Sprintf("the cluster record was written under token %d (operation %s), newer than this lock's: another operation took the lock since", cur.Token, cur.OperationID))
			return nil, 0, fmt.Errorf("%w: %w", lost, ErrStaleToken)
		}
		next = cur.clone()
	}
	if err := fn(next); err != nil {
		return nil, 0, err
	}
	now := time.Now()
	l.mu.Lock()
	opID := l.opID
	l.mu.Unlock()
	next.Token, next.OperationID, next.UpdatedAt, next.UpdatedBy = l.token, opID, now, l.actor.String()
	for i := range next.Fenced {
		f := &next.Fenced[i]
		if f.Token == 0 {
			f.Token, f.OperationID, f.Since = l.token, opID, now
		}
	}
	val, err := json.Marshal(next)
	if err != nil {
		return nil, 0, err
	}
	resp, err := l.Txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(l.k.state()), "=", rev)},
		clientv3.OpPut(l.k.state(), string(val)))
	if errors.Is(err, ErrConflict) {
		return nil, 0, fmt.Errorf("cluster record of %s changed since it was read at revision %d: someone wrote it without the lock: %w", l.k.cluster, rev, err)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("write cluster record of %s: %w", l.k.cluster, err)
	}
	return next, resp.Header.Revision, nil
}
