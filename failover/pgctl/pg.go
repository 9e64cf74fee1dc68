package pgctl

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/topology"
)

// PG is failover.Controller over pgx connections and node commands. It keeps one
// open connection per node, since reconnecting during the write outage is
// time the clients wait for.
type PG struct {
	cfg *config.Config
	// Call bounds each statement; waits have their own budgets.
	Call time.Duration
	// Poll is how often waits look again. Short, since the write outage
	// lasts as long as the slowest wait.
	Poll time.Duration
	// Clock is what the waits poll on; nil is the wall clock.
	Clock Clock

	mu    sync.Mutex
	conns map[string]*pgx.Conn
}

// NewPG returns a controller for the configured nodes.
func NewPG(cfg *config.Config, call time.Duration) *PG {
	return &PG{cfg: cfg, Call: call, Poll: 10 * time.Millisecond, conns: map[string]*pgx.Conn{}}
}

// Close closes every connection.
func (p *PG) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for n, c := range p.conns {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = c.Close(ctx)
		cancel()
		delete(p.conns, n)
	}
}

func (p *PG) node(name string) (config.Node, error) {
	n, ok := p.cfg.Node(name)
	if !ok {
		return n, fmt.Errorf("node %q is not configured", name)
	}
	return n, nil
}

// conn returns an open connection to node, reconnecting when the cached one
// was closed (the node restarted, or we terminated it).
func (p *PG) conn(ctx context.Context, name string) (*pgx.Conn, error) {
	p.mu.Lock()
	c := p.conns[name]
	p.mu.Unlock()
	if c != nil && !c.IsClosed() {
		return c, nil
	}
	n, err := p.node(name)
	if err != nil {
		return nil, err
	}
	cc, err := pgx.ParseConfig(n.DSN)
	if err != nil {
		return nil, config.ScrubError(err, name+": dsn", n.DSN)
	}
	cc.ConnectTimeout = p.Call
	cc.RuntimeParams["application_name"] = "replctl"
	// Fencing sets default_transaction_read_only; our own session must still
	// be able to run ALTER SYSTEM and the like.
	cc.RuntimeParams["default_transaction_read_only"] = "off"
	cctx, cancel := context.WithTimeout(ctx, p.Call)
	defer cancel()
	c, err = pgx.ConnectConfig(cctx, cc)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConnect, config.ScrubError(err, name, n.DSN))
	}
	p.mu.Lock()
	if old := p.conns[name]; old != nil {
		_ = old.Close(ctx)
	}
	p.conns[name] = c
	p.mu.Unlock()
	return c, nil
}

// ErrConnect is wrapped by every failure to open a connection to a node:
// the one failure that says nothing was sent to it. Any other error may
// come from a node that is up and did something.
var ErrConnect = errors.New("cannot connect")

// do runs fn on node's connection within the call budget, retrying once on
// a fresh connection when the cached one turned out dead.
func (p *PG) do(ctx context.Context, name string, fn func(ctx context.Context, c *pgx.Conn) error) error {
	for attempt := 0; ; attempt++ {
		c, err := p.conn(ctx, name)
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, p.Call)
		err = fn(cctx, c)
		cancel()
		if err == nil {
			return nil
		}
		if c.IsClosed() && attempt == 0 && ctx.Err() == nil {
			continue
		}
		n, _ := p.node(name)
		return config.ScrubError(err, name, n.DSN)
	}
}

func (p *PG) exec(ctx context.Context, name string, sqls ...string) error {
	return p.do(ctx, name, func(ctx context.Context, c *pgx.Conn) error {
		for _, s := range sqls {
			if _, err := c.Exec(ctx, s); err != nil {
				return fmt.Errorf("%s: %w", firstWords(s), err)
			}
		}
		return nil
	})
}

func firstWords(s string) string {
	if len(s) > 60 {
		return s[:60] + "…"
	}
	return s
}

// Checkpoint runs CHECKPOINT.
func (p *PG) Checkpoint(ctx context.Context, node string) error {
	return p.exec(ctx, node, "CHECKPOINT")
}

// CurrentLSN is the primary's current write position.
func (p *PG) CurrentLSN(ctx context.Context, node string) (topology.LSN, error) {
	var s string
	err := p.do(ctx, node, func(ctx context.Context, c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&s)
	})
	if err != nil {
		return 0, err
	}
	return topology.ParseLSN(s)
}

// ReceiveReplay reads a replica's receive and replay positions.
func (p *PG) ReceiveReplay(ctx context.Context, node string) (recv, replay topology.LSN, err error) {
	var r, y *string
	err = p.do(ctx, node, func(ctx context.Context, c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text").Scan(&r, &y)
	})
	if err != nil {
		return 0, 0, err
	}
	if y == nil {
		return 0, 0, fmt.Errorf("%s: no replay position: is it in recovery?", node)
	}
	if replay, err = topology.ParseLSN(*y); err != nil {
		return 0, 0, err
	}
	recv = replay
	if r != nil {
		if recv, err = topology.ParseLSN(*r); err != nil {
			return 0, 0, err
		}
	}
	return recv, replay, nil
}

// Reload runs pg_reload_conf(). Besides reloading, it wakes a standby's
// startup process from whatever it waits for.
func (p *PG) Reload(ctx context.Context, node string) error {
	return p.exec(ctx, node, "SELECT pg_reload_conf()")
}

// fenceStandbyName is a synchronous standby name no standby has: a commit
// that slips past the read-only fence waits for it, unacknowledged.
const fenceStandbyName = topology.FenceStandbyName

// The SQL fence's statements.
const (
	fenceReadOnlySQL  = "ALTER SYSTEM SET default_transaction_read_only = on"
	fenceSyncSQL      = "ALTER SYSTEM SET synchronous_standby_names = '" + fenceStandbyName + "'"
	fenceReloadSQL    = "SELECT pg_reload_conf()"
	fenceTerminateSQL = "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
)

// SQLFenceSQL is the SQL fence as plans show it: its statements in order,
// with the waits FenceSQL makes between them.
var SQLFenceSQL = []string{
	fenceReadOnlySQL,
	fenceSyncSQL,
	fenceReloadSQL + ", then wait until the reload has taken effect",
	fenceTerminateSQL + ", then wait until those sessions have exited",
}

// SettingsSnapshot is the exact state of some settings as a node had them
// before an operation changed them: for each, its ALTER SYSTEM value (in
// postgresql.auto.conf), or nil when it was not set there, which
// RestoreSettings puts back with ALTER SYSTEM RESET. It may hold a
// primary_conninfo with a password: never print it.
type SettingsSnapshot struct {
	Settings map[string]*string `json:"-"`
}

// CaptureSettings reads where each setting comes from. A value from a
// configuration file the role may not see (sourcefile is null) cannot be
// told from an ALTER SYSTEM one: that is an error rather than a guess.
func (p *PG) CaptureSettings(ctx context.Context, node string, names ...string) (*SettingsSnapshot, error) {
	snap := &SettingsSnapshot{Settings: map[string]*string{}}
	err := p.do(ctx, node, func(ctx context.Context, c *pgx.Conn) error {
		rows, err := c.Query(ctx, `SELECT name, setting, source, sourcefile FROM pg_settings WHERE name = ANY($1)`, names)
		if err != nil {
			return err
		}
		seen := 0
		for rows.Next() {
			var name, val, source string
			var file *string
			if err := rows.Scan(&name, &val, &source, &file); err != nil {
				return err
			}
			seen++
			switch {
			case source == "configuration file" && file == nil:
				return fmt.Errorf("cannot tell where %s is set (pg_settings.sourcefile is hidden): grant pg_read_all_settings to replctl's role", name)
			case source == "configuration file" && strings.HasSuffix(*file, "postgresql.auto.conf"):
				snap.Settings[name] = &val
			default:
				snap.Settings[name] = nil
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if seen != len(names) {
			return fmt.Errorf("pg_settings lacks some of %s", strings.Join(names, ", "))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capture %s: %w", strings.Join(names, ", "), err)
	}
	return snap, nil
}

// RestoreSettings puts captured settings back and reloads.
func (p *PG) RestoreSettings(ctx context.Context, node string, snap *SettingsSnapshot) error {
	if snap == nil || len(snap.Settings) == 0 {
		return nil
	}
	names := make([]string, 0, len(snap.Settings))
	for name := range snap.Settings {
		names = append(names, name)
	}
	slices.Sort(names)
	var sqls []string
	for _, name := range names {
		if v := snap.Settings[name]; v != nil {
			sqls = append(sqls, fmt.Sprintf("ALTER SYSTEM SET %s = %s", name, QuoteLiteral(*v)))
		} else {
			sqls = append(sqls, "ALTER SYSTEM RESET "+name)
		}
	}
	sqls = append(sqls, "SELECT pg_reload_conf()")
	return p.exec(ctx, node, sqls...)
}

// Setting reads current_setting(name).
func (p *PG) Setting(ctx context.Context, node, name string) (string, error) {
	var v string
	err := p.do(ctx, node, func(ctx context.Context, c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v)
	})
	return v, err
}

// FenceSQL makes the primary refuse ordinary writes: read-only by default,
// commits waiting for a standby that does not exist, and every client
// session terminated so none keeps a writable transaction open. The
// settings it replaces are the caller's to capture first: a retry on a
// fresh connection must not mistake the fenced values for the old ones.
func (p *PG) FenceSQL(ctx context.Context, node string) error {
	return p.do(ctx, node, func(ctx context.Context, c *pgx.Conn) error {
		for _, s := range []string{fenceReadOnlySQL, fenceSyncSQL, fenceReloadSQL} {
			if _, err := c.Exec(ctx, s); err != nil {
				return fmt.Errorf("%s: %w", firstWords(s), err)
			}
		}
		// pg_reload_conf() only signals the postmaster. Until it has
		// reloaded, a new session still starts read-write, and would not
		// be among those terminated below. Once it has, it signals every
		// backend, this one included: seeing the new value here proves
		// that every later session starts read-only.
		err := PollUntil(ctx, p.Clock, time.Millisecond, func(ctx context.Context) (bool, error) {
			var v string
			err := c.QueryRow(ctx, "SELECT current_setting('synchronous_standby_names')").Scan(&v)
			return v == fenceStandbyName, err
		}, "the configuration reload did not take effect (is postgresql.conf valid?)")
		if err != nil {
			return err
		}
		pids, err := terminate(ctx, c)
		if err != nil {
			return err
		}
		// pg_terminate_backend() only signals too, and a session busy
		// committing can still acknowledge that commit: the final WAL
		// position may be read only once every one of them is gone.
		return PollUntil(ctx, p.Clock, time.Millisecond, func(ctx context.Context) (bool, error) {
			var left int
			err := c.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", pids).Scan(&left)
			return left == 0, err
		}, fmt.Sprintf("%d terminated sessions did not exit", len(pids)))
	})
}

// FinalLSN reads the insert position and waits until it is flushed.
func (p *PG) FinalLSN(ctx context.Context, node string) (topology.LSN, error) {
	var ins string
	var block, segment int64
	err := p.do(ctx, node, func(ctx context.Context, c *pgx.Conn) error {
		if err := c.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text, current_setting('wal_block_size')::bigint,
			(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')`).Scan(&ins, &block, &segment); err != nil {
			return err
		}
		l, err := topology.ParseLSN(ins)
		if err != nil {
			return err
		}
		ins = recordEnd(l, block, segment).String()
		return PollUntil(ctx, p.Clock, time.Millisecond, func(ctx context.Context) (bool, error) {
			var flushed bool
			err := c.QueryRow(ctx, "SELECT pg_current_wal_flush_lsn() >= $1::pg_lsn", ins).Scan(&flushed)
			return flushed, err
		}, "the insert position "+ins+" was not flushed")
	})
	if err != nil {
		return 0, err
	}
	return topology.ParseLSN(ins)
}

// WAL page header sizes (SizeOfXLogShortPHD, SizeOfXLogLongPHD on 64-bit
// builds): the long one starts each segment.
const (
	walShortHeader = 24
	walLongHeader  = 40
)

// recordEnd turns an insert position into the end of the last record.
// When the last record ended exactly at a page boundary, the insert
// position points past the next page's header, which no record fills yet:
// it is never flushed, and no standby ever replays up to it.
func recordEnd(ins topology.LSN, block, segment int64) topology.LSN {
	switch {
	case segment > 0 && uint64(ins)%uint64(segment) == walLongHeader:
		return ins - walLongHeader
	case block > 0 && uint64(ins)%uint64(block) == walShortHeader:
		return ins - walShortHeader
	}
	return ins
}

// ReceiverUpstream reads where the WAL receiver is connected.
func (p *PG) ReceiverUpstream(ctx context.Context, node string) (int, string, int, error) {
	var pid, port *int32
	var host *string
	err := p.do(ctx, node, func(ctx context.Context, c *pgx.Conn) error {
		err := c.QueryRow(ctx, "SELECT pid, sender_host, sender_port FROM pg_stat_wal_receiver").Scan(&pid, &host, &port)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		return err
	})
	if err != nil || pid == nil {
		return 0, "", 0, err
	}
	h, pt := "", 0
	if host != nil {
		h = *host
	}
	if port != nil {
		pt = int(*port)
	}
	return int(*pid), h, pt, nil
}

// TerminateWALSenders ends the walsenders of a slot or application name.
func (p *PG) TerminateWALSenders(ctx context.Context, node, slot, appName string) (int, error) {
	var n int
	err := p.do(ctx, node, func(ctx context.Context, c *pgx.Conn) error {
		return c.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication
			WHERE pid IN (SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active)
			   OR ($2 <> '' AND lower(application_name) = lower($2))`, slot, appName).Scan(&n)
	})
	return n, err
}

// ReplayPaused reads pg_is_wal_replay_paused().
func (p *PG) ReplayPaused(ctx context.Context, node string) (bool, error) {
	var v bool
	err := p.do(ctx, node, func(ctx context.Context, c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT pg_is_wal_replay_paused()").Scan(&v)
	})
	return v, err
}

// terminate terminates every other client session and returns their pids.
func terminate(ctx context.Context, c *pgx.Conn) ([]int32, error) {
	rows, err := c.Query(ctx, fenceTerminateSQL)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", firstWords(fenceTerminateSQL), err)
	}
	pids := []int32{}
	for rows.Next() {
		var pid int32
		var ok bool
		if err := rows.Scan(&pid, &ok); err != nil {
			return nil, err
		}
		pids = append(pids, pid)
	}
	return pids, rows.Err()
}

// CreateSlots creates missing physical slots (a standby can hold them), so
// the replicas can attach the moment the node is promoted.
func (p *PG) CreateSlots(ctx context.Context, node string, slots []string) ([]string, error) {
	var created []string
	err := p.do(ctx, node, func(ctx context.Context, c *pgx.Conn) error {
		for _, s := range slots {
			var made bool
			err := c.QueryRow(ctx, `SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1) THEN false
				ELSE (SELECT true FROM pg_create_physical_replication_slot($1, true)) END`, s).Scan(&made)
			if err != nil {
				return fmt.Errorf("create slot %s: %w", s, err)
			}
			if made {
				created = append(created, s)
			}
		}
		return nil
	})
	return created, err
}

// DropSlots drops inactive slots by name; missing ones are fine.
func (p *PG) DropSlots(ctx context.Context, node string, slots []string) error {
	return p.do(ctx, node, func(ctx context.Context, c *pgx.Conn) error {
		for _, s := range slots {
			if _, err := c.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active`, s); err != nil {
				return fmt.Errorf("drop slot %s: %w", s, err)
			}
		}
		return nil
	})
}

// ErrPromoteNotSent is wrapped by a Promote failure that happened before
// pg_promote() could reach the node: the node was not promoted and will not
// be, so the old primary's fence may be lifted. After any other failure
// the promotion may still happen.
var ErrPromoteNotSent = errors.New("pg_promote() was not sent")

// Promote asks the standby to promote and polls until it leaves recovery,
// sending the request again when its startup process dozes instead of
// promoting (see promoteNudge). pg_promote(wait => true) polls only every
// 100 ms; we poll faster because every millisecond here is write outage. A
// failure before the request was sent wraps ErrPromoteNotSent.
func (p *PG) Promote(ctx context.Context, node string) error {
	c, err := p.live(ctx, node)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPromoteNotSent, err)
	}
	cctx, cancel := context.WithTimeout(ctx, p.Call)
	var ok bool
	err = c.QueryRow(cctx, "SELECT pg_promote(wait => false)").Scan(&ok)
	cancel()
	if err == nil && !ok {
		err = errors.New("returned false")
	}
	if err != nil {
		n, _ := p.node(node)
		return config.ScrubError(err, node+": pg_promote()", n.DSN)
	}
	// Promotion takes a few milliseconds, all of them write outage: poll
	// faster than Poll, which waits of seconds use.
	clock := ClockOr(p.Clock)
	sent, nudged := clock.Now(), time.Time{}
	return PollUntil(ctx, p.Clock, min(p.Poll, promotePoll), func(ctx context.Context) (bool, error) {
		// Whether to nudge is decided before the poll, for either answer
		// the poll may give, so that one round trip both looks and nudges.
		now := clock.Now()
		ifDozing := promoteNudge(true, now.Sub(sent), now.Sub(nudged))
		otherwise := promoteNudge(false, now.Sub(sent), now.Sub(nudged))
		var rec, dozing, again bool
		err := p.do(ctx, node, func(ctx context.Context, c *pgx.Conn) error {
			return c.QueryRow(ctx, promotePollSQL, ifDozing, otherwise).Scan(&rec, &dozing, &again)
		})
		if isSQLState(err, recoveryNotInProgress) {
			// The nudge came just after the promotion ended recovery.
			return true, nil
		}
		if again {
			nudged = now
		}
		return err == nil && !rec, err
	}, "timed out")
}

// recoveryNotInProgress is the SQLSTATE of pg_promote() on a node that is
// not in recovery (object_not_in_prerequisite_state).
const recoveryNotInProgress = "55000"

// promotePollSQL is Promote's poll: whether the node is still in recovery,
// whether its startup process sleeps out wal_retrieve_retry_interval (its
// wait event; NULL, so false, to a role without pg_read_all_stats), and
// whether the poll sent the promote request again: when the node is still
// in recovery and $1 (when it dozes) or $2 (when it does not) says so.
const promotePollSQL = `SELECT rec, dozing,
	CASE WHEN rec AND CASE WHEN dozing THEN $1::bool ELSE $2::bool END THEN pg_promote(wait => false) ELSE false END
FROM (SELECT pg_is_in_recovery() AS rec,
	coalesce((SELECT wait_event = 'RecoveryRetrieveRetryInterval' FROM pg_stat_activity WHERE backend_type = 'startup'), false) AS dozing) s`

// promoteNudge says whether Promote should send the promote request again
// now, given whether the node's startup process dozes, how long ago the
// first request was sent and how long ago the last repeat was (longer than
// any when there was none).
//
// When the old primary has just gone away, the startup process has
// restarted its WAL receiver and waits for it. A promote request that
// wakes it there, before that receiver has failed to connect, counts as a
// failed stream; the previous one (the old primary's stream ending) being
// less than wal_retrieve_retry_interval ago, it then sleeps out the rest of
// that interval, 5 s by default, before it ends recovery: the promote
// signal's wakeup is spent by then. A second request wakes it (the
// postmaster signals the startup process again; the promotion is decided
// already, so nothing else changes), which a reload's SIGHUP would too, at
// the cost of every process of the node reading its configuration files
// again, on the CPUs the promotion needs, and of applying whatever an
// operator had left unreloaded there. pg_promote() leaves its signal file
// behind when the startup process has already seen one; the postmaster
// removes such files when it starts.
//
// Repeat the request when the wait event shows the doze, at most every
// promoteStall, and otherwise only every promoteBlind (a role that cannot
// see the startup process's wait event).
func promoteNudge(dozing bool, sinceSent, sinceNudge time.Duration) bool {
	if dozing {
		return sinceNudge >= promoteStall
	}
	return sinceSent >= promoteBlind && sinceNudge >= promoteBlind
}

// promoteStall is how often Promote repeats the promote request to a node
// whose startup process dozes.
const promoteStall = 20 * time.Millisecond

// promoteBlind is how often Promote repeats the promote request to a node
// that is still in recovery without a sign of the doze.
const promoteBlind = 100 * time.Millisecond

// promotePoll is how often Promote looks whether the node left recovery.
const promotePoll = time.Millisecond

// live returns a connection to node that has just answered a ping. Sent on
// a cached connection whose server has died since, a request fails in a
// way that cannot tell "never arrived" from "arrived, then the server
// died"; a failed ping means nothing else was sent.
func (p *PG) live(ctx context.Context, name string) (*pgx.Conn, error) {
	for attempt := 0; ; attempt++ {
		c, err := p.conn(ctx, name)
		if err != nil {
			return nil, err
		}
		pctx, cancel := context.WithTimeout(ctx, p.Call)
		err = c.Ping(pctx)
		cancel()
		if err == nil {
			return c, nil
		}
		if c.IsClosed() && attempt == 0 && ctx.Err() == nil {
			continue
		}
		n, _ := p.node(name)
		return nil, config.ScrubError(err, name, n.DSN)
	}
}

// Writable verifies the node accepts writes and returns its timeline, read
// from the current WAL file name: pg_control_checkpoint() lags until the next
// checkpoint.
func (p *PG) Writable(ctx context.Context, node string) (uint32, topology.LSN, error) {
	var tl int64
	var lsn, ro string
	err := p.do(ctx, node, func(ctx context.Context, c *pgx.Conn) error {
		if err := c.QueryRow(ctx, timelineSQL+", pg_current_wal_lsn()::text, current_setting('transaction_read_only')").Scan(&tl, &lsn, &ro); err != nil {
			return err
		}
		if ro == "on" {
			return errors.New("transaction_read_only is on")
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	l, err := topology.ParseLSN(lsn)
	return uint32(tl), l, err
}

// timelineSQL reads the timeline from the current WAL file's name (its first
// eight hex digits).
const timelineSQL = "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint"

// Repoint points a replica at a new upstream: primary_conninfo and
// primary_slot_name are reloadable since PostgreSQL 13, so no restart.
func (p *PG) Repoint(ctx context.Context, node, conninfo, slot string) error {
	return p.exec(ctx, node,
		"ALTER SYSTEM SET primary_conninfo = "+QuoteLiteral(conninfo),
		"ALTER SYSTEM SET primary_slot_name = "+QuoteLiteral(slot),
		"SELECT pg_reload_conf()")
}

// WaitStreaming waits until the node's WAL receiver streams on timeline.
func (p *PG) WaitStreaming(ctx context.Context, node string, timeline uint32) error {
	return p.poll(ctx, func(ctx context.Context) (bool, error) {
		var status *string
		var tli *int64
		err := p.do(ctx, node, func(ctx context.Context, c *pgx.Conn) error {
			err := c.QueryRow(ctx, "SELECT status, received_tli FROM pg_stat_wal_receiver").Scan(&status, &tli)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil
			}
			return err
		})
		if err != nil {
			return false, err
		}
		return status != nil && *status == "streaming" && tli != nil && uint32(*tli) >= timeline, nil
	})
}

// SetSyncStandbys sets synchronous_standby_names and reloads.
func (p *PG) SetSyncStandbys(ctx context.Context, node, value string) error {
	return p.exec(ctx, node, "ALTER SYSTEM SET synchronous_standby_names = "+QuoteLiteral(value), "SELECT pg_reload_conf()")
}

// RecordToken stamps the fencing token on the new primary as a custom
// setting, so a stale operator can be detected after the fact with
// SHOW replctl.fencing_token.
func (p *PG) RecordToken(ctx context.Context, node string, token int64, op string) error {
	// ALTER SYSTEM accepts a custom setting only once the session knows
	// its placeholder, hence set_config first.
	return p.exec(ctx, node,
		fmt.Sprintf("SELECT set_config('replctl.fencing_token', '%d', false), set_config('replctl.operation', %s, false)", token, QuoteLiteral(op)),
		fmt.Sprintf("ALTER SYSTEM SET replctl.fencing_token = '%d'", token),
		"ALTER SYSTEM SET replctl.operation = "+QuoteLiteral(op),
		"SELECT pg_reload_conf()")
}

// RunCommand runs a node's configured shell command.
func (p *PG) RunCommand(ctx context.Context, node, action string, env map[string]string) (CommandResult, error) {
	n, err := p.node(node)
	if err != nil {
		return CommandResult{}, err
	}
	// A restarted or stopped server invalidates the cached connection.
	p.mu.Lock()
	if c := p.conns[node]; c != nil && (action == ActionStop || action == ActionKill || action == ActionRejoin || action == ActionFence) {
		_ = c.Close(ctx)
		delete(p.conns, node)
	}
	p.mu.Unlock()
	return RunNodeCommand(ctx, n, action, p.cfg.CommandTimeout, env)
}

// RunHook runs hooks.NAME (command) for node, bounded by command_timeout.
func (p *PG) RunHook(ctx context.Context, name, command, node string, env map[string]string) (CommandResult, error) {
	n, err := p.node(node)
	if err != nil {
		return CommandResult{}, err
	}
	return RunHook(ctx, name, command, n, p.cfg.CommandTimeout, env)
}

// poll calls cond every Poll until it reports true or ctx ends.
func (p *PG) poll(ctx context.Context, cond func(context.Context) (bool, error)) error {
	return PollUntil(ctx, p.Clock, p.Poll, cond, "timed out")
}

// StreamingStandbys returns the application_names of the standbys that a
// walsender on node streams to and that names match, as
// synchronous_standby_names matches them: without case, "*" matching any.
func (p *PG) StreamingStandbys(ctx context.Context, node string, names []string) ([]string, error) {
	var out []string
	err := p.do(ctx, node, func(ctx context.Context, c *pgx.Conn) error {
		rows, err := c.Query(ctx, `SELECT DISTINCT application_name FROM pg_stat_replication
			WHERE state = 'streaming' AND (lower(application_name) = ANY ($1) OR '*' = ANY ($1))
			ORDER BY application_name`, lowerAll(names))
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	return out, err
}

func lowerAll(in []string) []string {
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = strings.ToLower(s)
	}
	return out
}

// QuoteLiteral quotes a SQL string literal.
func QuoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// ReplicaConninfo is how a replica reaches a primary: the primary's host,
// port and user from its DSN, the TLS settings written in that DSN
// (config.TLSSettings: sslmode, sslrootcert, sslcert, sslkey, ...), plus the
// replica's application_name. It carries no secret, neither password nor
// sslpassword: replicas authenticate with their own .pgpass or certificate,
// and the result ends up in primary_conninfo, in plans and in node
// commands' environment. The TLS settings are carried so that a cluster
// whose DSNs demand verify-full does not get replicas that stream in plain
// text, or trust any certificate; their file paths must therefore be valid
// on the replicas' hosts too.
func ReplicaConninfo(primary config.Node, appName string) (string, error) {
	pc, err := pgconn.ParseConfig(primary.DSN)
	if err != nil {
		return "", fmt.Errorf("%s: dsn: %s", primary.Name, config.Scrub(err.Error(), primary.DSN))
	}
	parts := []string{"host=" + kvQuote(pc.Host), fmt.Sprintf("port=%d", pc.Port)}
	if pc.User != "" {
		parts = append(parts, "user="+kvQuote(pc.User))
	}
	for _, kv := range config.TLSSettings(primary.DSN) {
		parts = append(parts, kv[0]+"="+kvQuote(kv[1]))
	}
	if appName != "" {
		parts = append(parts, "application_name="+kvQuote(appName))
	}
	return strings.Join(parts, " "), nil
}

func kvQuote(v string) string {
	if v != "" && !strings.ContainsAny(v, ` '\`) {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// LogicalSlot is a logical replication slot to hand over: its name, output
// plugin and database (logical slots belong to one database).
type LogicalSlot struct {
	Name, Plugin, Database string
}

// LogicalSlotPositions reads the confirmed_flush_lsn of node's logical
// slots: how far each consumer has confirmed.
func (p *PG) LogicalSlotPositions(ctx context.Context, node string) (map[string]topology.LSN, error) {
	out := map[string]topology.LSN{}
	err := p.do(ctx, node, func(ctx context.Context, c *pgx.Conn) error {
		rows, err := c.Query(ctx, `SELECT slot_name::text, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_type = 'logical' AND confirmed_flush_lsn IS NOT NULL`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var name, lsn string
			if err := rows.Scan(&name, &lsn); err != nil {
				return err
			}
			l, err := topology.ParseLSN(lsn)
			if err != nil {
				return fmt.Errorf("slot %s: %w", name, err)
			}
			out[name] = l
		}
		return rows.Err()
	})
	return out, err
}

// CreateLogicalSlots creates each missing logical slot on node, connected
// to the slot's own database, at the node's current position; it returns
// those it created. A slot that already exists is left as it is.
func (p *PG) CreateLogicalSlots(ctx context.Context, node string, slots []LogicalSlot) ([]string, error) {
	n, err := p.node(node)
	if err != nil {
		return nil, err
	}
	var created []string
	for _, s := range slots {
		cc, err := pgx.ParseConfig(n.DSN)
		if err != nil {
			return created, config.ScrubError(err, node+": dsn", n.DSN)
		}
		cc.Database, cc.ConnectTimeout = s.Database, p.Call
		cc.RuntimeParams["application_name"] = "replctl"
		cc.RuntimeParams["default_transaction_read_only"] = "off"
		cctx, cancel := context.WithTimeout(ctx, p.Call)
		c, err := pgx.ConnectConfig(cctx, cc)
		if err != nil {
			cancel()
			return created, fmt.Errorf("%w: %w", ErrConnect, config.ScrubError(err, node, n.DSN))
		}
		var made bool
		err = c.QueryRow(cctx, `SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1) THEN false
			ELSE (SELECT true FROM pg_create_logical_replication_slot($1, $2)) END`, s.Name, s.Plugin).Scan(&made)
		_ = c.Close(context.WithoutCancel(ctx))
		cancel()
		if err != nil {
			return created, fmt.Errorf("create logical slot %s (%s, database %s) on %s: %w", s.Name, s.Plugin, s.Database, node, config.ScrubError(err, node, n.DSN))
		}
		if made {
			created = append(created, s.Name)
		}
	}
	return created, nil
}

// HoldWrites makes every session that starts on node read-only by default
// (ALTER SYSTEM SET default_transaction_read_only = on, and a reload), and
// returns once the reload has taken effect: libpq's read-write check
// (target_session_attrs) then passes the node by. Sessions that were open
// get the new default too. The setting it replaces is the caller's to
// capture first.
func (p *PG) HoldWrites(ctx context.Context, node string) error {
	return p.do(ctx, node, func(ctx context.Context, c *pgx.Conn) error {
		var before time.Time
		if err := c.QueryRow(ctx, "SELECT pg_conf_load_time()").Scan(&before); err != nil {
			return err
		}
		for _, s := range []string{fenceReadOnlySQL, fenceReloadSQL} {
			if _, err := c.Exec(ctx, s); err != nil {
				return fmt.Errorf("%s: %w", firstWords(s), err)
			}
		}
		// This session reloads when the postmaster has: from then on every
		// new session starts read-only.
		return PollUntil(ctx, p.Clock, time.Millisecond, func(ctx context.Context) (bool, error) {
			var at time.Time
			err := c.QueryRow(ctx, "SELECT pg_conf_load_time()").Scan(&at)
			return at.After(before), err
		}, "the configuration reload did not take effect (is postgresql.conf valid?)")
	})
}
