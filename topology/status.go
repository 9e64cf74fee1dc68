package topology

import (
	"context"
	"strings"
	"time"

	"github.com/replctl/replctl/config"
)

// Prober reads one node's replication state. It never changes anything on
// the node. Probe returns a NodeStatus with Reachable false and Error set
// when the node cannot be read; it returns within the ctx deadline.
type Prober interface {
	Probe(ctx context.Context, node config.Node) NodeStatus
}

// NodeStatus is what one probe read from one node, as PostgreSQL reported
// it. A nil pointer means the value could not be read (the node is down, the
// role lacks pg_monitor, the column does not apply): unknown, never zero.
type NodeStatus struct {
	Name      string `json:"name"`
	Reachable bool   `json:"reachable"`
	// Error says why the node could not be read; passwords are scrubbed.
	Error string `json:"error"`
	// ServerTime is now() on the node when it was probed; replay delays are
	// computed on the primary's clock, never on the operator's.
	ServerTime *time.Time `json:"server_time"`
	// VersionNum is server_version_num, e.g. 150018.
	VersionNum int    `json:"server_version_num"`
	Version    string `json:"server_version"`
	// SystemID is pg_control_system().system_identifier as a decimal
	// string: it exceeds 2^53 and so cannot be a JSON number. "" is unknown.
	SystemID   string `json:"system_identifier"`
	InRecovery bool   `json:"in_recovery"`
	// Timeline is the node's current timeline: from the WAL file being
	// written on a primary, from the WAL receiver on a replica. A replica
	// without a receiver (its primary died) falls back to the newest
	// timeline history file in its pg_wal, else its last restartpoint's
	// timeline; TimelineSource says which. Nil when none is readable.
	Timeline *uint32 `json:"timeline"`
	// TimelineSource is where Timeline comes from: "wal", "receiver", or
	// the replica's fallbacks "history" and "checkpoint".
	TimelineSource string `json:"timeline_source,omitempty"`
	// CheckpointTimeline is the last checkpoint's timeline, for diagnosis
	// only: it stays on the old timeline for a while after a promotion.
	CheckpointTimeline *uint32 `json:"checkpoint_timeline"`
	// CurrentLSN is pg_current_wal_lsn() on a primary.
	CurrentLSN *LSN `json:"current_lsn"`
	// ReceiveLSN and ReplayLSN are pg_last_wal_receive_lsn() and
	// pg_last_wal_replay_lsn() on a replica.
	ReceiveLSN *LSN `json:"receive_lsn"`
	ReplayLSN  *LSN `json:"replay_lsn"`
	// ReplayPauseState is pg_get_wal_replay_pause_state(): "not paused",
	// "pause requested" or "paused"; "" on a primary.
	ReplayPauseState string `json:"replay_pause_state"`
	// LastReplayTime is pg_last_xact_replay_timestamp(): the commit time of
	// the last transaction replayed, nil before the first one.
	LastReplayTime *time.Time    `json:"last_xact_replay_timestamp"`
	WALReceiver    *WALReceiver  `json:"wal_receiver"`
	Replication    []Replication `json:"replication"`
	Slots          []Slot        `json:"slots"`
	Settings       Settings      `json:"settings"`
	// Database is the database the probe connected to: the only one whose
	// publications it can see (see Publications).
	Database string `json:"database"`
	// Publications are pg_publication in Database only: publications are
	// per-database catalog rows, and the probe connects to one database, so
	// those of the node's other databases are not seen. Empty when there
	// are none, nil when unreadable.
	Publications []Publication `json:"publications"`
	// Subscriptions are every database's (pg_subscription is a cluster-wide
	// catalog), with their apply workers. On a standby they are catalog
	// copies whose workers run only once it is promoted.
	Subscriptions []Subscription `json:"subscriptions"`
}

// Timeline sources, from the most to the least direct.
const (
	TimelineFromWAL        = "wal"
	TimelineFromReceiver   = "receiver"
	TimelineFromHistory    = "history"
	TimelineFromCheckpoint = "checkpoint"
)

// ReadOnly reports whether sessions start read-only
// (default_transaction_read_only = on), as on a primary under the SQL
// fence: not in recovery, yet ordinary clients cannot write.
func (n *NodeStatus) ReadOnly() bool {
	v := n.Settings.DefaultTransactionReadOnly
	return v != nil && *v == "on"
}

// FenceStandbyName is the synchronous standby name the SQL fence sets
// (with default_transaction_read_only = on): no standby has it, so a commit
// that slips past the read-only default waits for it, unacknowledged.
const FenceStandbyName = "replctl_fenced"

// SyncFenced reports whether commits wait for FenceStandbyName, as under
// the SQL fence: synchronous_standby_names cannot make up its number of
// standbys without that name, which no standby has, so no commit is ever
// acknowledged. A list whose other names (or "*") suffice is no fence.
func (n *NodeStatus) SyncFenced() bool {
	ss := n.Settings.SyncStandbys
	if ss == nil && n.Settings.SynchronousStandbyNames != nil {
		if p, err := ParseSyncStandbyNames(*n.Settings.SynchronousStandbyNames); err == nil {
			ss = &p
		}
	}
	if ss == nil || !ss.Enabled() {
		return false
	}
	fence, others := false, map[string]bool{}
	for _, name := range ss.Names {
		switch {
		case name == "*":
			return false
		case strings.EqualFold(name, FenceStandbyName):
			fence = true
		default:
			others[strings.ToLower(name)] = true
		}
	}
	return fence && len(others) < ss.Num
}

// ReplayPaused reports whether replay is paused or a pause was requested.
func (n *NodeStatus) ReplayPaused() bool {
	return n.ReplayPauseState == "paused" || n.ReplayPauseState == "pause requested"
}

// Position is the node's own WAL position: current on a primary, replayed
// on a replica. Nil when unknown.
func (n *NodeStatus) Position() *LSN {
	if n.InRecovery {
		return n.ReplayLSN
	}
	return n.CurrentLSN
}

// Major is the PostgreSQL major version (15 for 150018), 0 when unknown.
func (n *NodeStatus) Major() int { return n.VersionNum / 10000 }

// WALReceiver is the node's row of pg_stat_wal_receiver.
type WALReceiver struct {
	PID    *int   `json:"pid"`
	Status string `json:"status"` // "" when the role may not read it
	// SenderHost and SenderPort are the upstream the receiver connected to.
	SenderHost         *string    `json:"sender_host"`
	SenderPort         *int       `json:"sender_port"`
	SlotName           *string    `json:"slot_name"`
	ReceiveStartLSN    *LSN       `json:"receive_start_lsn"`
	ReceivedTLI        *uint32    `json:"received_tli"`
	WrittenLSN         *LSN       `json:"written_lsn"`
	FlushedLSN         *LSN       `json:"flushed_lsn"`
	LatestEndLSN       *LSN       `json:"latest_end_lsn"`
	LatestEndTime      *time.Time `json:"latest_end_time"`
	LastMsgSendTime    *time.Time `json:"last_msg_send_time"`
	LastMsgReceiptTime *time.Time `json:"last_msg_receipt_time"`
	// Conninfo is the receiver's connection string, passwords scrubbed.
	Conninfo *string `json:"conninfo"`
}

// Replication is one row of pg_stat_replication: a walsender serving a
// standby (or pg_basebackup, or pg_receivewal).
type Replication struct {
	PID             *int       `json:"pid"`
	ApplicationName *string    `json:"application_name"`
	ClientAddr      *string    `json:"client_addr"`
	ClientHostname  *string    `json:"client_hostname"`
	ClientPort      *int       `json:"client_port"`
	State           *string    `json:"state"`
	SentLSN         *LSN       `json:"sent_lsn"`
	WriteLSN        *LSN       `json:"write_lsn"`
	FlushLSN        *LSN       `json:"flush_lsn"`
	ReplayLSN       *LSN       `json:"replay_lsn"`
	WriteLagSeconds *float64   `json:"write_lag_seconds"`
	FlushLagSeconds *float64   `json:"flush_lag_seconds"`
	ReplayLagSecs   *float64   `json:"replay_lag_seconds"`
	SyncPriority    *int       `json:"sync_priority"`
	SyncState       *string    `json:"sync_state"`
	ReplyTime       *time.Time `json:"reply_time"`
	// Database is the database a logical walsender decodes (a physical
	// one connects to none): a subscriber, its table synchronisation or a
	// CDC client, never a replica.
	Database *string `json:"database"`
	// LogicalSlot is the logical slot this walsender holds, nil for a
	// physical one or while a table synchronisation copies (it holds its
	// slot only to stream).
	LogicalSlot *string `json:"logical_slot"`
}

// Logical reports whether the walsender serves logical replication.
func (r Replication) Logical() bool { return r.Database != nil || r.LogicalSlot != nil }

// Streaming reports whether the walsender is in the streaming state.
func (r Replication) Streaming() bool { return r.State != nil && *r.State == "streaming" }

// LogicalSlotPIDs are the process IDs holding a logical slot: the logical
// walsenders (subscribers, CDC clients), which pg_stat_replication lists
// among the physical ones.
func (n *NodeStatus) LogicalSlotPIDs() map[int]string {
	out := map[int]string{}
	for _, sl := range n.Slots {
		if sl.Logical() && sl.ActivePID != nil {
			out[*sl.ActivePID] = sl.Name
		}
	}
	return out
}

// Slot is one row of pg_replication_slots.
type Slot struct {
	Name       string  `json:"slot_name"`
	Type       string  `json:"slot_type"`
	Temporary  bool    `json:"temporary"`
	Active     bool    `json:"active"`
	ActivePID  *int    `json:"active_pid"`
	RestartLSN *LSN    `json:"restart_lsn"`
	WALStatus  *string `json:"wal_status"`
	// SafeWALSize is how many more bytes can be written before the slot
	// loses WAL (max_slot_wal_keep_size); nil when unlimited.
	SafeWALSize *int64 `json:"safe_wal_size"`
	// RetainedBytes is WAL kept for the slot: the node's position minus
	// restart_lsn. This is the disk-space risk of a lagging or dead slot.
	RetainedBytes *uint64 `json:"retained_bytes"`
	// Columns newer than PostgreSQL 13, nil where the server's version
	// has not got them: two_phase (14), conflicting (16: a logical slot
	// invalidated by a recovery conflict), invalidation_reason, failover
	// and synced (17: logical failover slots and their copies on standbys).
	TwoPhase           *bool   `json:"two_phase"`
	Conflicting        *bool   `json:"conflicting"`
	InvalidationReason *string `json:"invalidation_reason"`
	Failover           *bool   `json:"failover"`
	Synced             *bool   `json:"synced"`
	// Plugin, Database and ConfirmedFlushLSN are a logical slot's output
	// plugin, the database it decodes and the position its consumer has
	// confirmed: where that consumer resumes, and so where it must
	// resynchronise from if the slot is lost. Nil on a physical slot.
	Plugin            *string `json:"plugin"`
	Database          *string `json:"database"`
	ConfirmedFlushLSN *LSN    `json:"confirmed_flush_lsn"`
}

// Logical reports whether the slot is a logical one.
func (s Slot) Logical() bool { return s.Type == "logical" }

// Publication is one publication of the probed database.
type Publication struct {
	Name     string `json:"name"`
	Database string `json:"database"`
	// AllTables is FOR ALL TABLES (new tables included as they appear).
	AllTables bool `json:"all_tables"`
	// Tables is how many tables it publishes now (pg_publication_tables).
	Tables int `json:"tables"`
}

// Worker states of a subscription (Subscription.WorkerState).
const (
	WorkerRunning    = "running"
	WorkerNotRunning = "not running"
	WorkerDisabled   = "disabled"
	// WorkerStandby is a subscription seen on a standby: a catalog copy
	// whose worker starts only if the standby is promoted.
	WorkerStandby = "standby"
)

// Subscription is one row of pg_subscription with its apply worker
// (pg_stat_subscription) and error counts (pg_stat_subscription_stats).
type Subscription struct {
	Name     string `json:"name"`
	Database string `json:"database"`
	Enabled  bool   `json:"enabled"`
	// SlotName is the slot on the publisher (subslotname), nil for NONE.
	SlotName     *string  `json:"slot_name"`
	Publications []string `json:"publications"`
	// PublisherHost, PublisherPort and PublisherDB are read from
	// subconninfo as written (host and port may list several; an empty
	// port is libpq's default, 5432). The connection string itself is
	// never kept, so its password cannot leak. Nil when the role may not
	// read subconninfo (superuser only).
	PublisherHost *string `json:"publisher_host"`
	PublisherPort *string `json:"publisher_port"`
	PublisherDB   *string `json:"publisher_dbname"`
	// WorkerState is WorkerRunning, WorkerNotRunning, WorkerDisabled or
	// WorkerStandby; "" when unknown (PostgreSQL 13 without superuser,
	// where the worker cannot be matched to its subscription).
	WorkerState string `json:"worker_state"`
	WorkerPID   *int   `json:"worker_pid"`
	// SyncWorkers counts table synchronisation workers (initial copies).
	SyncWorkers  int  `json:"sync_workers"`
	ReceivedLSN  *LSN `json:"received_lsn"`
	LatestEndLSN *LSN `json:"latest_end_lsn"`
	// LastMsgReceiptTime is when the worker last heard from the publisher.
	LastMsgReceiptTime *time.Time `json:"last_msg_receipt_time"`
	// ApplyErrorCount and SyncErrorCount are pg_stat_subscription_stats
	// (PostgreSQL 15+; nil before): errors since the statistics were reset.
	ApplyErrorCount *int64 `json:"apply_error_count"`
	SyncErrorCount  *int64 `json:"sync_error_count"`
	// Origin is suborigin (16+): "none" publishes only changes made on the
	// publisher itself, what bidirectional setups need to avoid loops.
	Origin *string `json:"origin"`

	// Set by Classify from the configuration:

	// PublisherNode is the configured node whose DSN's host and port the
	// publisher address matches, null when none does.
	PublisherNode NodeName `json:"publisher_node"`
	// Kind is "internal" when the publisher is a node of this
	// configuration, "peer" when it is a node of a peer cluster (the
	// configuration's peers), "external" when it is neither, "" when
	// unknown (the publisher address is unreadable).
	Kind string `json:"kind"`
	// PublisherCluster names the peer cluster of a "peer" publisher
	// (PublisherNode is then that cluster's node), "" otherwise.
	PublisherCluster string `json:"publisher_cluster,omitempty"`
	// BidirectionalWith names the subscription replicating the other way
	// ("node/database/name"): it consumes from this one's database and
	// this one consumes from its database. Null when there is none.
	BidirectionalWith *string `json:"bidirectional_with"`
}

// Subscription kinds (Subscription.Kind).
const (
	SubscriptionInternal = "internal"
	SubscriptionPeer     = "peer"
	SubscriptionExternal = "external"
)

// Settings are the configuration parameters promotion and the checks need.
// Nil when the role may not read them (primary_conninfo is superuser-only).
type Settings struct {
	SynchronousStandbyNames *string `json:"synchronous_standby_names"`
	// SyncStandbys is synchronous_standby_names parsed; nil when unknown or
	// unparseable (SyncStandbysError says why).
	SyncStandbys           *SyncStandbys `json:"sync_standbys"`
	SyncStandbysError      string        `json:"sync_standbys_error,omitempty"`
	SynchronousCommit      *string       `json:"synchronous_commit"`
	RecoveryTargetTimeline *string       `json:"recovery_target_timeline"`
	// PrimaryConninfo has its password scrubbed.
	PrimaryConninfo      *string `json:"primary_conninfo"`
	PrimarySlotName      *string `json:"primary_slot_name"`
	WALReceiverTimeoutMS *int64  `json:"wal_receiver_timeout_ms"`
	WALSenderTimeoutMS   *int64  `json:"wal_sender_timeout_ms"`
	// RecoveryMinApplyDelayMS is a replica's recovery_min_apply_delay: a
	// delayed replica replays (and so acts on a new primary_conninfo) only
	// that long after the WAL arrived.
	RecoveryMinApplyDelayMS *int64  `json:"recovery_min_apply_delay_ms"`
	ClusterName             *string `json:"cluster_name"`
	// DefaultTransactionReadOnly is "on" on a primary under the SQL fence:
	// ordinary sessions cannot write.
	DefaultTransactionReadOnly *string `json:"default_transaction_read_only"`
	// WALLevel is wal_level: "logical" is needed for logical slots.
	WALLevel *string `json:"wal_level"`
	// HotStandbyFeedback, SyncReplicationSlots and SynchronizedStandbySlots
	// make a standby keep synchronised copies of the primary's failover
	// slots (PostgreSQL 17+; the last two are nil before).
	HotStandbyFeedback       *string `json:"hot_standby_feedback"`
	SyncReplicationSlots     *string `json:"sync_replication_slots"`
	SynchronizedStandbySlots *string `json:"synchronized_standby_slots"`
}
