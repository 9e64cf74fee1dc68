package topology

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replctl/replctl/config"
)

// MinVersionNum is the oldest PostgreSQL the probe supports: 13 renamed
// pg_stat_wal_receiver's columns and added the slots' wal_status.
const MinVersionNum = 130000

// PgProber probes nodes over one pgx connection and one round trip each.
type PgProber struct {
	// Timeout bounds the connection and the query, per node.
	Timeout time.Duration
}

// Probe connects to node, runs the probe query and closes the connection.
func (p PgProber) Probe(ctx context.Context, node config.Node) NodeStatus {
	st := NodeStatus{Name: node.Name}
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	if err := p.probe(ctx, node, &st); err != nil {
		// Driver errors may quote the connection string; never print its password.
		st.Reachable = false
		st.Error = oneLine(config.Scrub(err.Error(), node.DSN))
	}
	return st
}

func (p PgProber) probe(ctx context.Context, node config.Node, st *NodeStatus) error {
	cc, err := pgx.ParseConfig(node.DSN)
	if err != nil {
		return fmt.Errorf("parse dsn of %s: %w", node.Name, err)
	}
	cc.ConnectTimeout = p.Timeout
	cc.RuntimeParams["application_name"] = "replctl"
	// JSON timestamps must be RFC 3339, which odd zone offsets are not.
	cc.RuntimeParams["timezone"] = "UTC"
	// The simple protocol sends the query in one message and reads one
	// reply: one round trip, where the default would first prepare it.
	cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", node.Name, err)
	}
	defer func() {
		// Closing must not hang on a server that stopped answering, nor be
		// skipped because the probe's own deadline passed.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()

	vnum := versionNum(conn.PgConn().ParameterStatus("server_version"))
	if vnum != 0 && vnum < MinVersionNum {
		return fmt.Errorf("probe %s: PostgreSQL %s is not supported, replctl needs 13 or later",
			node.Name, conn.PgConn().ParameterStatus("server_version"))
	}
	var doc string
	// PostgreSQL 13 grants pg_subscription's oid to superusers only, and a
	// query naming it fails for anyone else: is_superuser is reported at
	// connection start, so the probe knows before asking.
	subOID := vnum >= 140000 || conn.PgConn().ParameterStatus("is_superuser") == "on"
	if err := conn.QueryRow(ctx, probeQueryFor(vnum, subOID)).Scan(&doc); err != nil {
		return fmt.Errorf("probe %s: %w", node.Name, err)
	}
	if err := decodeProbe([]byte(doc), node, st); err != nil {
		return fmt.Errorf("probe %s: %w", node.Name, err)
	}
	var want struct {
		HistoryWanted     bool `json:"history_wanted"`
		SubconninfoWanted bool `json:"subconninfo_wanted"`
	}
	if json.Unmarshal([]byte(doc), &want) == nil && want.HistoryWanted {
		var tli *int64
		if err := conn.QueryRow(ctx, historyTimelineQuery).Scan(&tli); err != nil {
			return fmt.Errorf("probe %s: timeline history: %w", node.Name, err)
		}
		applyHistoryTimeline(st, tli)
	}
	if want.SubconninfoWanted {
		rows, err := conn.Query(ctx, subconninfoQuery)
		if err != nil {
			return fmt.Errorf("probe %s: subscriptions: %w", node.Name, err)
		}
		var infos []SubConninfo
		for rows.Next() {
			var c SubConninfo
			if err := rows.Scan(&c.Database, &c.Name, &c.Conninfo); err != nil {
				rows.Close()
				return fmt.Errorf("probe %s: subscriptions: %w", node.Name, err)
			}
			infos = append(infos, c)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("probe %s: subscriptions: %w", node.Name, err)
		}
		ApplySubConninfo(st, infos)
	}
	st.Reachable = true
	return nil
}

// versionNum turns the server_version parameter ("15.18 (Debian ...)",
// "17beta1") into a server_version_num-like number, 0 when unreadable.
func versionNum(v string) int {
	end := 0
	for end < len(v) && (v[end] == '.' || (v[end] >= '0' && v[end] <= '9')) {
		end++
	}
	parts := strings.Split(v[:end], ".")
	major, err := strconv.Atoi(parts[0])
	if err != nil {
		return 0
	}
	minor := 0
	if len(parts) > 1 {
		minor, _ = strconv.Atoi(parts[1])
	}
	return major*10000 + minor
}

// probeQuery is the single statement a probe runs. It returns one JSON
// document so that every column is nullable without ceremony and the same
// text works on primaries and replicas: functions that fail during recovery
// (or outside it) are guarded by CASE. Statistics a role may not read come
// back as nulls, not errors (grant pg_monitor to see them).
//
// It calls the functions under pg_stat_replication, pg_replication_slots,
// pg_stat_wal_receiver, pg_stat_subscription, pg_stat_subscription_stats,
// pg_publication_tables and pg_settings rather than the views: a fresh
// backend pays for every catalog object a query touches, and a watch loop
// opens a fresh backend on every node every second.
func probeQuery(versionNum int) string { return probeQueryFor(versionNum, true) }

// probeQueryFor is probeQuery for a role that may (subOID) or may not read
// pg_subscription.oid, without which a subscription's worker and error
// counts cannot be joined to it: they are then left unknown.
func probeQueryFor(versionNum int, subOID bool) string {
	pause := `pg_get_wal_replay_pause_state()`
	if versionNum != 0 && versionNum < 140000 {
		pause = `CASE WHEN pg_is_wal_replay_paused() THEN 'paused' ELSE 'not paused' END`
	}
	return `WITH s AS MATERIALIZED (
  SELECT pg_is_in_recovery() AS rec, now() AS ts
), w AS MATERIALIZED (
  SELECT CASE WHEN NOT s.rec THEN pg_current_wal_lsn() END AS cur,
         pg_last_wal_receive_lsn() AS rcv,
         pg_last_wal_replay_lsn() AS rpl
  FROM s
)
SELECT json_build_object(
  'server_time', s.ts,
  'server_version_num', current_setting('server_version_num')::int,
  'server_version', current_setting('server_version'),
  'system_identifier', (SELECT system_identifier::text FROM pg_control_system()),
  'checkpoint_timeline', (SELECT timeline_id FROM pg_control_checkpoint()),
  'history_wanted', s.rec AND has_function_privilege('pg_ls_waldir()', 'EXECUTE')
    AND NOT EXISTS (SELECT 1 FROM pg_stat_get_wal_receiver() WHERE received_tli > 0),
  'in_recovery', s.rec,
  'current_lsn', w.cur,
  'walfile', pg_walfile_name(w.cur),
  'receive_lsn', w.rcv,
  'replay_lsn', w.rpl,
  'replay_pause_state', CASE WHEN s.rec THEN ` + pause + ` END,
  'last_xact_replay_timestamp', pg_last_xact_replay_timestamp(),
  'wal_receiver', (SELECT json_build_object(
      'pid', pid, 'status', status, 'sender_host', sender_host, 'sender_port', sender_port,
      'slot_name', slot_name, 'receive_start_lsn', receive_start_lsn, 'received_tli', received_tli,
      'written_lsn', written_lsn, 'flushed_lsn', flushed_lsn, 'latest_end_lsn', latest_end_lsn,
      'latest_end_time', latest_end_time, 'last_msg_send_time', last_msg_send_time,
      'last_msg_receipt_time', last_msg_receipt_time, 'conninfo', conninfo)
    FROM pg_stat_get_wal_receiver() WHERE pid IS NOT NULL),
  'replication', (SELECT json_agg(json_build_object(
      'pid', r.pid, 'application_name', a.application_name, 'client_addr', host(a.client_addr),
      'client_hostname', a.client_hostname, 'client_port', a.client_port, 'state', r.state,
      'sent_lsn', r.sent_lsn, 'write_lsn', r.write_lsn, 'flush_lsn', r.flush_lsn, 'replay_lsn', r.replay_lsn,
      'write_lag_seconds', extract(epoch FROM r.write_lag), 'flush_lag_seconds', extract(epoch FROM r.flush_lag),
      'replay_lag_seconds', extract(epoch FROM r.replay_lag), 'sync_priority', r.sync_priority,
      'sync_state', r.sync_state, 'reply_time', r.reply_time,
      'database', (SELECT datname FROM pg_database d WHERE d.oid = a.datid)) ORDER BY r.pid)
    FROM pg_stat_get_wal_senders() r LEFT JOIN LATERAL pg_stat_get_activity(r.pid) a ON true),
  'slots', (SELECT json_agg(json_build_object(
      'slot_name', slot_name, 'slot_type', slot_type, 'temporary', temporary, 'active', active,
      'active_pid', active_pid, 'restart_lsn', restart_lsn, 'wal_status', wal_status,
      'safe_wal_size', safe_wal_size, 'plugin', plugin, 'confirmed_flush_lsn', confirmed_flush_lsn,
      'database', (SELECT datname FROM pg_database d WHERE d.oid = datoid)` + slotColumns(versionNum) + `) ORDER BY slot_name)
    FROM pg_get_replication_slots()),
  'database', current_database(),
  'publications', (SELECT json_agg(json_build_object(
      'name', p.pubname, 'database', current_database(), 'all_tables', p.puballtables,
      'tables', (SELECT count(*) FROM pg_get_publication_tables(p.pubname))) ORDER BY p.pubname)
    FROM pg_publication p),
  'subscriptions', ` + subscriptionsSQL(versionNum, subOID) + `,
  'subscription_workers', ` + strconv.FormatBool(subOID) + `,
  'subconninfo_wanted', current_setting('is_superuser') = 'on' AND EXISTS (SELECT 1 FROM pg_subscription),
  'settings', json_build_object(
    'synchronous_standby_names', current_setting('synchronous_standby_names'),
    'synchronous_commit', current_setting('synchronous_commit'),
    'recovery_target_timeline', current_setting('recovery_target_timeline'),
    'primary_conninfo', CASE WHEN pg_has_role('pg_read_all_settings', 'USAGE') THEN current_setting('primary_conninfo') END,
    'primary_slot_name', current_setting('primary_slot_name'),
    'wal_receiver_timeout', current_setting('wal_receiver_timeout'),
    'wal_sender_timeout', current_setting('wal_sender_timeout'),
    'recovery_min_apply_delay', current_setting('recovery_min_apply_delay'),
    'cluster_name', current_setting('cluster_name'),
    'default_transaction_read_only', current_setting('default_transaction_read_only'),
    'wal_level', current_setting('wal_level'),
    'hot_standby_feedback', current_setting('hot_standby_feedback'),
    'sync_replication_slots', current_setting('sync_replication_slots', true),
    'synchronized_standby_slots', current_setting('synchronized_standby_slots', true))
)::text
FROM s, w`
}

// slotColumns are the pg_replication_slots columns newer than 13 that the
// probe reads, for the versions that have them; on older ones they stay
// null ("not available on this version"). wal_status and safe_wal_size
// came with 13, the oldest supported version.
func slotColumns(versionNum int) string {
	var b strings.Builder
	for _, c := range []struct {
		since int
		name  string
	}{
		{140000, "two_phase"},
		{160000, "conflicting"},
		{170000, "invalidation_reason"},
		{170000, "failover"},
		{170000, "synced"},
	} {
		if versionNum >= c.since {
			fmt.Fprintf(&b, ", '%s', %s", c.name, c.name)
		}
	}
	return b.String()
}

// subscriptionsSQL reads every database's subscriptions (pg_subscription is
// cluster-wide) with, when subOID, their leader apply worker and error
// counts.
func subscriptionsSQL(versionNum int, subOID bool) string {
	if !subOID {
		return `(SELECT json_agg(json_build_object(
      'name', su.subname, 'database', d.datname, 'enabled', su.subenabled, 'slot_name', su.subslotname,
      'publications', su.subpublications` + originColumn(versionNum) + `) ORDER BY d.datname, su.subname)
    FROM pg_subscription su LEFT JOIN pg_database d ON d.oid = su.subdbid)`
	}
	return `(SELECT json_agg(json_build_object(
      'name', su.subname, 'database', d.datname, 'enabled', su.subenabled, 'slot_name', su.subslotname,
      'publications', su.subpublications, 'worker_pid', w.pid,
      'sync_workers', (SELECT count(*) FROM pg_stat_get_subscription(su.oid) x WHERE x.relid IS NOT NULL),
      'received_lsn', w.received_lsn, 'latest_end_lsn', w.latest_end_lsn,
      'last_msg_receipt_time', w.last_msg_receipt_time` + subscriptionColumns(versionNum) + `) ORDER BY d.datname, su.subname)
    FROM pg_subscription su LEFT JOIN pg_database d ON d.oid = su.subdbid
    LEFT JOIN pg_stat_get_subscription(NULL) w ON w.subid = su.oid AND w.relid IS NULL` + applyWorkerFilter(versionNum) + subscriptionStatsJoin(versionNum) + `)`
}

func originColumn(versionNum int) string {
	if versionNum >= 160000 {
		return ", 'origin', su.suborigin"
	}
	return ""
}

// subscriptionColumns are the subscription columns newer than 13, for the
// versions that have them: pg_stat_subscription_stats came with 15,
// suborigin with 16.
func subscriptionColumns(versionNum int) string {
	var b strings.Builder
	if versionNum >= 150000 {
		b.WriteString(", 'apply_error_count', ss.apply_error_count, 'sync_error_count', ss.sync_error_count")
	}
	b.WriteString(originColumn(versionNum))
	return b.String()
}

// applyWorkerFilter picks the leader apply worker's pg_stat_subscription
// row: 16 added parallel apply workers, which also have no relid but have
// a leader_pid.
func applyWorkerFilter(versionNum int) string {
	if versionNum >= 160000 {
		return " AND w.leader_pid IS NULL"
	}
	return ""
}

func subscriptionStatsJoin(versionNum int) string {
	if versionNum >= 150000 {
		return "\n    LEFT JOIN LATERAL pg_stat_get_subscription_stats(su.oid) ss ON true"
	}
	return ""
}

// subconninfoQuery reads the subscriptions' connection strings. It is a
// second round trip, made only on a node with subscriptions and a
// superuser role: naming subconninfo at all fails for roles that may not
// read it (PostgreSQL grants it to superusers only), whatever CASE guards
// it. The probe asks is_superuser, a setting, rather than
// has_column_privilege(), which costs a fresh backend two milliseconds of
// catalog reads; a role granted the column explicitly sees no publishers.
const subconninfoQuery = `SELECT COALESCE(d.datname, ''), su.subname, su.subconninfo
FROM pg_subscription su LEFT JOIN pg_database d ON d.oid = su.subdbid`

// probeDoc is the JSON document probeQuery returns.
type probeDoc struct {
	NodeStatus
	Walfile *string `json:"walfile"`
	// HistoryWanted asks for historyTimelineQuery: a replica without a
	// receiver timeline, and a role that may list pg_wal.
	HistoryWanted bool               `json:"history_wanted"`
	Settings      map[string]*string `json:"settings"`
	// SubconninfoWanted asks for subconninfoQuery.
	SubconninfoWanted bool `json:"subconninfo_wanted"`
	// SubscriptionWorkers is false when the subscriptions' workers could
	// not be read (probeQueryFor); absent means they were.
	SubscriptionWorkers *bool `json:"subscription_workers"`
}

// historyTimelineQuery reads the newest timeline history file in pg_wal. It
// is a second round trip, made only on a replica whose WAL receiver is
// gone, because a query that so much as names pg_ls_waldir() fails for a
// role without the privilege, even where a CASE would not call it.
const historyTimelineQuery = `SELECT max(('x' || substr(name, 1, 8))::bit(32)::bigint)
FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{8}\.history$'`

// applyHistoryTimeline takes a replica's timeline from its newest history
// file (tli, nil when none) when that is ahead of the restartpoint's:
// recovery_target_timeline = latest switches to the newest timeline it
// fetched, while the last restartpoint's lags a promotion by up to
// checkpoint_timeout. Timeline 1 has no history file.
func applyHistoryTimeline(st *NodeStatus, tli *int64) {
	if tli == nil || *tli <= 0 || *tli > math.MaxUint32 || st.TimelineSource != TimelineFromCheckpoint && st.Timeline != nil {
		return
	}
	if st.Timeline == nil || uint32(*tli) >= *st.Timeline {
		v := uint32(*tli)
		st.Timeline, st.TimelineSource = &v, TimelineFromHistory
	}
}

// decodeProbe fills st from the probe's JSON document. It is separate from
// the connection so it can be tested on recorded documents.
func decodeProbe(doc []byte, node config.Node, st *NodeStatus) error {
	var d probeDoc
	if err := json.Unmarshal(doc, &d); err != nil {
		return fmt.Errorf("decode probe result: %w", err)
	}
	name := st.Name
	*st = d.NodeStatus
	st.Name = name
	st.Settings = decodeSettings(d.Settings, node)

	switch {
	case !st.InRecovery && d.Walfile != nil:
		tli, err := timelineFromWALFile(*d.Walfile)
		if err != nil {
			return err
		}
		st.Timeline, st.TimelineSource = &tli, TimelineFromWAL
	case st.InRecovery && st.WALReceiver != nil && st.WALReceiver.ReceivedTLI != nil && *st.WALReceiver.ReceivedTLI > 0:
		tli := *st.WALReceiver.ReceivedTLI
		st.Timeline, st.TimelineSource = &tli, TimelineFromReceiver
	case st.InRecovery && st.CheckpointTimeline != nil && *st.CheckpointTimeline > 0:
		// No receiver (its upstream died): the last restartpoint's timeline,
		// until applyHistoryTimeline finds a newer one.
		tli := *st.CheckpointTimeline
		st.Timeline, st.TimelineSource = &tli, TimelineFromCheckpoint
	}
	if st.WALReceiver != nil && st.WALReceiver.Conninfo != nil {
		s := config.Scrub(*st.WALReceiver.Conninfo)
		st.WALReceiver.Conninfo = &s
	}
	// Reachable and none is [], unreadable stays null.
	if st.Replication == nil {
		st.Replication = []Replication{}
	}
	if st.Slots == nil {
		st.Slots = []Slot{}
	}
	if st.Publications == nil {
		st.Publications = []Publication{}
	}
	if st.Subscriptions == nil {
		st.Subscriptions = []Subscription{}
	}
	for i := range st.Subscriptions {
		su := &st.Subscriptions[i]
		switch {
		case st.InRecovery:
			su.WorkerState = WorkerStandby
		case !su.Enabled:
			su.WorkerState = WorkerDisabled
		case d.SubscriptionWorkers != nil && !*d.SubscriptionWorkers:
			su.WorkerState = "" // unknown
		case su.WorkerPID != nil:
			su.WorkerState = WorkerRunning
		default:
			su.WorkerState = WorkerNotRunning
		}
	}
	logical := st.LogicalSlotPIDs()
	for i := range st.Replication {
		if r := &st.Replication[i]; r.PID != nil {
			if name, ok := logical[*r.PID]; ok {
				r.LogicalSlot = &name
			}
		}
	}
	if pos := slotReference(st); pos != nil {
		for i := range st.Slots {
			st.Slots[i].RetainedBytes = Lag(pos, st.Slots[i].RestartLSN)
		}
	}
	return nil
}

// slotReference is the position slots retain WAL up to: the insert point on
// a primary, the received WAL on a cascading replica.
func slotReference(st *NodeStatus) *LSN {
	if st.InRecovery {
		if st.ReceiveLSN != nil {
			return st.ReceiveLSN
		}
		return st.ReplayLSN
	}
	return st.CurrentLSN
}

func decodeSettings(m map[string]*string, node config.Node) Settings {
	str := func(k string) *string {
		if v := m[k]; v != nil {
			s := *v
			return &s
		}
		return nil
	}
	var s Settings
	s.SynchronousStandbyNames = str("synchronous_standby_names")
	s.SynchronousCommit = str("synchronous_commit")
	s.RecoveryTargetTimeline = str("recovery_target_timeline")
	s.PrimarySlotName = str("primary_slot_name")
	s.ClusterName = str("cluster_name")
	s.DefaultTransactionReadOnly = str("default_transaction_read_only")
	s.WALLevel = str("wal_level")
	s.HotStandbyFeedback = str("hot_standby_feedback")
	s.SyncReplicationSlots = str("sync_replication_slots")
	s.SynchronizedStandbySlots = str("synchronized_standby_slots")
	if c := str("primary_conninfo"); c != nil {
		v := config.Scrub(*c, node.DSN)
		s.PrimaryConninfo = &v
	}
	s.WALReceiverTimeoutMS = millis(m["wal_receiver_timeout"])
	s.WALSenderTimeoutMS = millis(m["wal_sender_timeout"])
	s.RecoveryMinApplyDelayMS = millis(m["recovery_min_apply_delay"])
	if s.SynchronousStandbyNames != nil {
		ss, err := ParseSyncStandbyNames(*s.SynchronousStandbyNames)
		if err != nil {
			s.SyncStandbysError = err.Error()
		} else {
			s.SyncStandbys = &ss
		}
	}
	return s
}

// millis reads a time setting as SHOW prints it ("1min", "500ms", "0",
// "-1"; a bare number is in the parameters' unit, milliseconds).
func millis(p *string) *int64 {
	if p == nil {
		return nil
	}
	v := strings.TrimSpace(*p)
	end := 0
	for end < len(v) && (v[end] == '-' || v[end] >= '0' && v[end] <= '9') {
		end++
	}
	n, err := strconv.ParseInt(v[:end], 10, 64)
	if err != nil {
		return nil
	}
	mult := map[string]int64{"": 1, "ms": 1, "s": 1000, "min": 60000, "h": 3600000, "d": 86400000}
	m, ok := mult[strings.TrimSpace(v[end:])]
	if !ok {
		return nil
	}
	if n > 0 {
		n *= m
	}
	return &n
}

// oneLine folds pgx's multi-line connection errors (one line per address
// tried, often twice with sslmode=prefer) so they fit a table cell and a log
// line.
func oneLine(s string) string {
	lines := strings.Split(s, "\n")
	var out []string
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l != "" && !slices.Contains(out, l) {
			out = append(out, l)
		}
	}
	return strings.Join(out, " ")
}
