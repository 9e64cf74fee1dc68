package pgctl

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/topology"
)

// ShutdownWatch follows a primary's WAL over a physical replication
// connection while it shuts down, to learn where its WAL ends without
// waiting for the server to exit.
//
// A walsender ends its stream cleanly (CommandComplete) only after the
// postmaster told it the shutdown checkpoint is written, and only once
// everything up to the server's flush position is sent and confirmed by
// its client: the end of a clean stream is the end of the server's WAL,
// and the server writes no more. Any other end (an error, the connection
// cut, a timeline's end) proves nothing.
type ShutdownWatch struct {
	done   chan struct{}
	once   sync.Once
	end    topology.LSN
	err    error
	cancel context.CancelFunc
}

// NewShutdownWatch returns a watch and the function that ends it, for
// controllers other than PG (fakes).
func NewShutdownWatch() (*ShutdownWatch, func(end topology.LSN, err error)) {
	w := &ShutdownWatch{done: make(chan struct{}), cancel: func() {}}
	return w, w.finish
}

func (w *ShutdownWatch) finish(end topology.LSN, err error) {
	w.once.Do(func() {
		w.end, w.err = end, err
		close(w.done)
	})
}

// Done is closed when the stream has ended.
func (w *ShutdownWatch) Done() <-chan struct{} { return w.done }

// End is the end of the WAL received; the error is nil only when the
// stream ended cleanly, and then that end is final. Call it after Done.
func (w *ShutdownWatch) End() (topology.LSN, error) {
	<-w.done
	return w.end, w.err
}

// Close ends the watch (and its connection) if it is still running.
func (w *ShutdownWatch) Close() {
	w.cancel()
	w.finish(0, errors.New("watch closed"))
}

// watchApplicationName names the watch's walsender in pg_stat_replication.
const watchApplicationName = "replctl_shutdown_watch"

// WatchShutdown opens a physical replication connection to node (its DSN's
// user needs the REPLICATION attribute and a pg_hba.conf replication
// entry) and streams its WAL from its current flush position until the
// stream ends or ctx is done.
//
// It confirms what it receives as written only, never as flushed: a
// standby that reports no flush position is never counted as synchronous
// (even by synchronous_standby_names = '*'), so the watch cannot
// acknowledge a commit that no real standby has.
func (p *PG) WatchShutdown(ctx context.Context, node string) (*ShutdownWatch, error) {
	n, err := p.node(node)
	if err != nil {
		return nil, err
	}
	pc, err := pgconn.ParseConfig(n.DSN)
	if err != nil {
		return nil, config.ScrubError(err, node+": dsn", n.DSN)
	}
	pc.ConnectTimeout = p.Call
	pc.RuntimeParams["replication"] = "true"
	pc.RuntimeParams["application_name"] = watchApplicationName
	cctx, cancel := context.WithTimeout(ctx, p.Call)
	defer cancel()
	conn, err := pgconn.ConnectConfig(cctx, pc)
	if err != nil {
		return nil, fmt.Errorf("%s: replication connection: %w", node, config.ScrubError(err, node, n.DSN))
	}
	start, err := startStream(cctx, conn)
	if err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("%s: replication connection: %w", node, config.ScrubError(err, node, n.DSN))
	}
	rctx, rcancel := context.WithCancel(context.WithoutCancel(ctx))
	w := &ShutdownWatch{done: make(chan struct{}), cancel: rcancel}
	go func() {
		defer rcancel()
		end, err := followStream(rctx, conn, start)
		_ = conn.Close(context.Background())
		if err != nil {
			err = fmt.Errorf("%s: replication stream: %w", node, config.ScrubError(err, node, n.DSN))
		}
		w.finish(end, err)
	}()
	return w, nil
}

// startStream starts streaming at the server's current flush position
// (IDENTIFY_SYSTEM's xlogpos) on its current timeline.
func startStream(ctx context.Context, conn *pgconn.PgConn) (topology.LSN, error) {
	res, err := conn.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
	if err != nil {
		return 0, err
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) < 3 {
		return 0, errors.New("IDENTIFY_SYSTEM: unexpected reply")
	}
	start, err := topology.ParseLSN(string(res[0].Rows[0][2]))
	if err != nil {
		return 0, fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	conn.Frontend().SendQuery(&pgproto3.Query{String: "START_REPLICATION PHYSICAL " + start.String()})
	if err := conn.Frontend().Flush(); err != nil {
		return 0, err
	}
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return 0, err
		}
		switch m := msg.(type) {
		case *pgproto3.CopyBothResponse:
			return start, nil
		case *pgproto3.ErrorResponse:
			return 0, pgconn.ErrorResponseToPgError(m)
		}
	}
}

// watchReplyEvery is how often the watch confirms what it received
// unasked: the walsender's own keepalive requests are answered at once.
const watchReplyEvery = 10 * time.Millisecond

// followStream reads the stream until it ends, confirming what it gets.
func followStream(ctx context.Context, conn *pgconn.PgConn, start topology.LSN) (topology.LSN, error) {
	end := start
	var replied time.Time
	reply := func() error {
		replied = time.Now()
		// 'r', write, flush (invalid), apply (invalid), client time, no
		// reply requested.
		buf := make([]byte, 0, 34)
		buf = append(buf, 'r')
		buf = binary.BigEndian.AppendUint64(buf, uint64(end))
		buf = binary.BigEndian.AppendUint64(buf, 0)
		buf = binary.BigEndian.AppendUint64(buf, 0)
		buf = binary.BigEndian.AppendUint64(buf, uint64(time.Since(pgEpoch).Microseconds()))
		buf = append(buf, 0)
		msg, err := (&pgproto3.CopyData{Data: buf}).Encode(nil)
		if err != nil {
			return err
		}
		return conn.Frontend().SendUnbufferedEncodedCopyData(msg)
	}
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return end, err
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			switch m.Data[0] {
			case 'w': // XLogData: start, server's WAL end, time, data
				if len(m.Data) < 25 {
					return end, errors.New("short XLogData message")
				}
				at := topology.LSN(binary.BigEndian.Uint64(m.Data[1:9]))
				end = max(end, at+topology.LSN(len(m.Data)-25))
				if time.Since(replied) > watchReplyEvery {
					if err := reply(); err != nil {
						return end, err
					}
				}
			case 'k': // keepalive: sent position, time, reply requested
				if len(m.Data) < 18 {
					return end, errors.New("short keepalive message")
				}
				if m.Data[17] != 0 {
					if err := reply(); err != nil {
						return end, err
					}
				}
			}
		case *pgproto3.CommandComplete:
			return end, nil
		case *pgproto3.CopyDone:
			return end, errors.New("the stream reached the end of its timeline")
		case *pgproto3.ErrorResponse:
			return end, pgconn.ErrorResponseToPgError(m)
		}
	}
}

// pgEpoch is PostgreSQL's epoch, which replication messages count from.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// ShuttingDown reports whether err is a node's refusal of a connection
// because its postmaster is busy shutting down or starting up (SQLSTATE
// 57P03, cannot_connect_now): a server runs there, and starting another
// one would fail.
func ShuttingDown(err error) bool { return isSQLState(err, "57P03") }

// isSQLState reports whether err is a server's error with that SQLSTATE.
func isSQLState(err error, code string) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == code
}
