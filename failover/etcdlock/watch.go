package etcdlock

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/topology"
)

// The watchers' keys (replctl watch): their election, the maintenance mode
// operators set, and what the leader last saw of the primary.

// electionPrefix is the concurrency.Election prefix the watchers campaign
// under: one key per watcher, the oldest is the leader.
func (k keys) electionPrefix() string { return k.root + "/watch/election" }

// maintenance is the pause record.
func (k keys) maintenance() string { return k.root + "/maintenance" }

// seen is the leader's last look at the live primary.
func (k keys) seen() string { return k.root + "/watch/seen" }

// ElectionPrefix is where the watchers of cluster campaign.
func ElectionPrefix(prefix, cluster string) (string, error) {
	k, err := newKeys(prefix, cluster)
	if err != nil {
		return "", err
	}
	return k.electionPrefix(), nil
}

// WatcherInfo is what a watcher campaigns with: who it is, for status.
type WatcherInfo struct {
	Actor
	Since time.Time `json:"since"`
	// Leader is set by ListWatchers for the one that may act.
	Leader bool `json:"leader"`
}

// ListWatchers lists the watchers campaigning for cluster, the leader
// first (the oldest campaign key is the leader, as in
// concurrency.Election).
func ListWatchers(ctx context.Context, cli *clientv3.Client, prefix, cluster string) ([]WatcherInfo, error) {
	k, err := newKeys(prefix, cluster)
	if err != nil {
		return nil, err
	}
	resp, err := cli.Get(ctx, k.electionPrefix()+"/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("list watchers of %s: %w", cluster, err)
	}
	var out []WatcherInfo
	for i, kv := range resp.Kvs {
		var w WatcherInfo
		if json.Unmarshal(kv.Value, &w) != nil {
			w.Actor = Actor{Host: "unknown", Command: "(unreadable record " + string(kv.Key) + ")"}
		}
		w.Leader = i == 0
		out = append(out, w)
	}
	return out, nil
}

// Maintenance is the pause record: while it is in force, watchers observe
// and report but never act.
type Maintenance struct {
	Paused bool      `json:"paused"`
	Reason string    `json:"reason,omitempty"`
	By     string    `json:"by,omitempty"`
	Since  time.Time `json:"since"`
	// Until ends a pause given with --for; zero is until resumed.
	Until time.Time `json:"until,omitzero"`
	// AcknowledgedAt is when an operator last resumed: an automatic
	// failover that ended before it no longer holds back the next one
	// (watch.min_interval).
	AcknowledgedAt time.Time `json:"acknowledged_at,omitzero"`
}

// Describe says who paused the watchers, since when, until when and why.
func (m *Maintenance) Describe() string {
	msg := fmt.Sprintf("paused by %s since %s", m.By, m.Since.Format(time.RFC3339))
	if !m.Until.IsZero() {
		msg += " until " + m.Until.Format(time.RFC3339)
	}
	if m.Reason != "" {
		msg += " (" + m.Reason + ")"
	}
	return msg
}

// InForce reports whether the pause applies at now.
func (m *Maintenance) InForce(now time.Time) bool {
	return m != nil && m.Paused && (m.Until.IsZero() || now.Before(m.Until))
}

// ReadMaintenance reads the pause record (nil when there is none).
func ReadMaintenance(ctx context.Context, cli *clientv3.Client, prefix, cluster string) (*Maintenance, error) {
	k, err := newKeys(prefix, cluster)
	if err != nil {
		return nil, err
	}
	return readJSON[Maintenance](ctx, cli, k.maintenance(), "maintenance record "+k.maintenance())
}

// readJSON reads the JSON record at key (nil when there is none); what
// names it in errors.
func readJSON[T any](ctx context.Context, cli *clientv3.Client, key, what string) (*T, error) {
	resp, err := cli.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	var v T
	if err := json.Unmarshal(resp.Kvs[0].Value, &v); err != nil {
		return nil, fmt.Errorf("%s is not valid: %w", what, err)
	}
	return &v, nil
}

// WriteMaintenance writes the pause record. Pausing needs no lock: it only
// ever stops actions, and every action reads it first.
func WriteMaintenance(ctx context.Context, cli *clientv3.Client, prefix, cluster string, m Maintenance) error {
	k, err := newKeys(prefix, cluster)
	if err != nil {
		return err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if _, err := cli.Put(ctx, k.maintenance(), string(b)); err != nil {
		return fmt.Errorf("write maintenance record of %s: %w", cluster, err)
	}
	return nil
}

// Seen is the leader watcher's last look at a live primary: kept current
// so that the quorum proof and the data-loss bound of an automatic
// failover are never older than one watch interval.
type Seen struct {
	Primary  string       `json:"primary"`
	Timeline uint32       `json:"timeline"`
	LSN      topology.LSN `json:"lsn"`
	Sync     SyncSettings `json:"sync"`
	At       time.Time    `json:"at"`
	By       string       `json:"by"`
}

// ReadSeen reads the leader's last look (nil when there is none).
func ReadSeen(ctx context.Context, cli *clientv3.Client, prefix, cluster string) (*Seen, error) {
	k, err := newKeys(prefix, cluster)
	if err != nil {
		return nil, err
	}
	return readJSON[Seen](ctx, cli, k.seen(), k.seen())
}

// ErrNotWritten says WriteSeen's guard failed: leadership lost, the lock
// taken, or the cluster record changed since the look.
var ErrNotWritten = fmt.Errorf("not written: the look is stale")

// WriteSeen writes s if, at once: the leader key (leaderKey, created at
// leaderRev) is still the watcher's, no operation holds the lock (an
// operation's fence would be mistaken for the cluster's settings), and the
// cluster record is unchanged since the look (stateRev, 0 for none).
func WriteSeen(ctx context.Context, cli *clientv3.Client, prefix, cluster, leaderKey string, leaderRev, stateRev int64, s Seen) error {
	k, err := newKeys(prefix, cluster)
	if err != nil {
		return err
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	resp, err := cli.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(leaderKey), "=", leaderRev),
		clientv3.Compare(clientv3.CreateRevision(k.lockPrefix()+"/"), "=", 0).WithPrefix(),
		clientv3.Compare(clientv3.ModRevision(k.state()), "=", stateRev),
	).Then(clientv3.OpPut(k.seen(), string(b))).Commit()
	if err != nil {
		return fmt.Errorf("write %s: %w", k.seen(), err)
	}
	if !resp.Succeeded {
		return ErrNotWritten
	}
	return nil
}

// WithSeen is st with the synchronous settings of seen when seen is a newer
// look at the same primary: what an emergency failover proves its quorum
// from. Without a cluster record (no operation ran yet) it is a record of
// what the watcher saw. st itself is not changed.
func WithSeen(st *State, seen *Seen) *State {
	if st == nil && seen != nil && seen.Primary != "" {
		return &State{Primary: seen.Primary, Timeline: seen.Timeline, LSN: seen.LSN, MaxTimeline: seen.Timeline,
			Sync: SyncSettings{StandbyNames: seen.Sync.StandbyNames, Commit: seen.Sync.Commit, SeenAt: seen.At}}
	}
	if st == nil || seen == nil || seen.Primary != st.Primary || !seen.At.After(st.Sync.SeenAt) || seen.Sync.StandbyNames == "" && seen.Sync.Commit == "" {
		return st
	}
	c := *st
	c.Sync = seen.Sync
	c.Sync.SeenAt = seen.At
	return &c
}
