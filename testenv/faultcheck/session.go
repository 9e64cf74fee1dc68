package faultcheck

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
)

// applicationName marks the checker's sessions in pg_stat_activity, so that
// an operator (or a test) can tell them from replctl's and count them.
const applicationName = "replctl-faultcheck"

// cancelGrace is how long a timed-out statement gets to come back after its
// cancel request before the connection is dropped. Dropping at once would
// be simpler, but a backend blocked waiting for a fenced synchronous
// standby does not notice that its client went away: every dropped probe
// would leave one such backend behind, and at 50 probes a second the node's
// max_connections would be gone within a second, locking replctl itself
// out of the node it must repair. The cancel request releases the wait.
const cancelGrace = time.Second

// closeTimeout bounds the polite Terminate message on close; a hung server
// must not hold up Stop.
const closeTimeout = time.Second

// errSyncWaitCancelled reports a commit that returned OK only after the
// server gave up waiting for synchronous replication: committed locally,
// never acknowledged in the sense that matters (it may be rewound away).
var errSyncWaitCancelled = errors.New("commit returned only after its wait for synchronous replication was cancelled")

// connConfig parses a node's DSN once. Nothing here changes
// synchronous_commit or default_transaction_read_only: replctl's SQL fence
// works through exactly those session defaults, and a checker that
// overrode them would write through the fence and report a split brain
// that no ordinary client could cause.
func connConfig(dsn string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = applicationName
	}
	cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: cancelGrace}
	}
	return cfg, nil
}

// session is one connection to one node, (re)opened on demand. It is used
// by one goroutine at a time.
type session struct {
	node Node
	cfg  *pgx.ConnConfig
	conn *pgx.Conn
	// syncCancelled is set by the notice handler when the server says it
	// stopped waiting for synchronous replication (after a cancel request,
	// ours or anyone's): the commit then returns OK without being safe.
	syncCancelled atomic.Bool
}

func newSession(n Node, base *pgx.ConnConfig) *session {
	s := &session{node: n, cfg: base.Copy()}
	s.cfg.OnNotice = func(_ *pgconn.PgConn, no *pgconn.Notice) {
		if strings.Contains(no.Message, "synchronous replication") {
			s.syncCancelled.Store(true)
		}
	}
	return s
}

func (s *session) connected() bool { return s.conn != nil && !s.conn.IsClosed() }

// connect opens the connection if it is not open, within timeout.
func (s *session) connect(ctx context.Context, timeout time.Duration) error {
	if s.connected() {
		return nil
	}
	s.close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, s.cfg)
	if err != nil {
		return err
	}
	s.conn = c
	return nil
}

// errReadOnly is a write refused because the transaction was read-only
// (in recovery, or default_transaction_read_only = on).
var errReadOnly = errors.New("read-only transaction")

// write runs one autocommit call of a write function (writeSQL or
// probeSQL, which return whether they wrote) and reports whether it was
// acknowledged: it wrote, returned OK before the deadline (pgx returns from
// Scan only after ReadyForQuery, so after the commit), and the server did
// not say it had cancelled its wait for synchronous replication. A commit
// that comes back after the deadline is not acknowledged even when it says
// OK, because only the cancel request made it come back.
func (s *session) write(ctx context.Context, timeout time.Duration, sql string, args ...any) error {
	if !s.connected() {
		return errors.New("not connected")
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	s.syncCancelled.Store(false)
	var wrote bool
	err := s.conn.QueryRow(ctx, sql, args...).Scan(&wrote)
	switch {
	case err != nil:
		return err
	case !wrote:
		return errReadOnly
	case ctx.Err() != nil:
		return fmt.Errorf("commit returned after the %s timeout: %w", timeout, ctx.Err())
	case s.syncCancelled.Load():
		return errSyncWaitCancelled
	}
	return nil
}

func (s *session) close() {
	if s.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	_ = s.conn.Close(ctx)
	s.conn = nil
}

// queryNode opens a connection of its own, runs f, and closes it: for the
// one-off reads of Watch's setup and of Final.
func queryNode(ctx context.Context, cfg *pgx.ConnConfig, timeout time.Duration, f func(context.Context, *pgx.Conn) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, ccancel := context.WithTimeout(context.Background(), closeTimeout)
		defer ccancel()
		_ = c.Close(cctx)
	}()
	return f(ctx, c)
}
