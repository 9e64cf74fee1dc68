// Package writeprobe writes numbered rows to a cluster, through a read-write
// (usually multi-host) connection string, while an operation such as a
// switchover runs, and then says what a client saw: how long writes were
// refused, and whether any acknowledged write is missing afterwards.
//
// A write is acknowledged when its INSERT returned success to the client;
// only those count for Verify. A write whose outcome the client never
// learned (the connection broke, the timeout expired) may or may not be in
// the table, and either is correct.
package writeprobe

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replctl/replctl/config"
)

// Defaults of Options.
const (
	DefaultTable        = "replctl_write_probe"
	DefaultInterval     = 10 * time.Millisecond
	DefaultWriteTimeout = time.Second
)

// setupTimeout bounds Start's first connection and table creation, and
// Verify: neither is part of what the probe measures.
const setupTimeout = 10 * time.Second

// Options configure a probe.
type Options struct {
	// DSN is a libpq connection string, usually multi-host with
	// target_session_attrs=read-write, so that every reconnection finds the
	// node that accepts writes now (DSNFromConfig builds one). It may hold
	// a password; the probe never prints it.
	DSN string
	// Table receives the rows; created when missing. It may be
	// schema-qualified ("s.t"). Default DefaultTable.
	Table string
	// Interval is the time between writes. Default DefaultInterval.
	Interval time.Duration
	// WriteTimeout bounds each write, and each reconnection. Default
	// DefaultWriteTimeout.
	WriteTimeout time.Duration
	// Now is the clock that stamps acknowledgements; time.Now by default.
	Now func() time.Time
}

// Report is what the probe saw. Its JSON field names are a stable contract.
type Report struct {
	// Attempts counts writes tried: sent, or not sent because no writable
	// node could be reached.
	Attempts int `json:"attempts"`
	Acked    int `json:"acked"`
	Failed   int `json:"failed"`
	// LongestOutage is the longest time between two consecutive
	// acknowledged writes, reconnection included; OutageFrom and OutageTo
	// are those two acknowledgements. Zero with fewer than two.
	LongestOutage time.Duration `json:"longest_outage_ns"`
	OutageFrom    time.Time     `json:"outage_from"`
	OutageTo      time.Time     `json:"outage_to"`
	// LastError is the last write or connection error, password scrubbed.
	LastError string `json:"last_error,omitempty"`
}

// ack is one acknowledged write.
type ack struct {
	id int64
	at time.Time
}

// Probe writes in the background from Start until Stop.
type Probe struct {
	o      Options
	cc     *pgx.ConnConfig
	table  string // quoted identifier
	insert string

	cancel context.CancelFunc
	done   chan struct{}
	stop   sync.Once
	report Report

	// Only the writing goroutine touches conn and next.
	conn *pgx.Conn
	next int64

	mu       sync.Mutex
	acks     []ack
	attempts int
	failed   int
	lastErr  string
}

// Start connects through o.DSN, creates the table if missing, and starts
// writing every o.Interval until Stop or until ctx ends. Row numbers
// continue after the highest already in the table, so that probes can share
// one table across runs.
func Start(ctx context.Context, o Options) (*Probe, error) {
	if o.Table == "" {
		o.Table = DefaultTable
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	cc, err := pgx.ParseConfig(o.DSN)
	if err != nil {
		return nil, fmt.Errorf("write probe: dsn: %s", config.Scrub(err.Error(), o.DSN))
	}
	cc.ConnectTimeout = o.WriteTimeout
	cc.RuntimeParams["application_name"] = "replctl_write_probe"
	// One round trip per write, also on the first write after a
	// reconnection (no statement to prepare).
	cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	p := &Probe{o: o, cc: cc, table: quoteTable(o.Table), done: make(chan struct{})}
	p.insert = "INSERT INTO " + p.table + " (id) VALUES ($1)"

	sctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	conn, err := p.connect(sctx)
	if err != nil {
		return nil, fmt.Errorf("write probe: %w", err)
	}
	var top int64
	_, err = conn.Exec(sctx, "CREATE TABLE IF NOT EXISTS "+p.table+" (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
	if err == nil {
		err = conn.QueryRow(sctx, "SELECT coalesce(max(id), 0) FROM "+p.table).Scan(&top)
	}
	if err != nil {
		closeConn(conn)
		return nil, fmt.Errorf("write probe: table %s: %s", o.Table, p.scrub(err))
	}
	p.conn, p.next = conn, top+1

	rctx, rcancel := context.WithCancel(ctx)
	p.cancel = rcancel
	go p.run(rctx)
	return p, nil
}

func (p *Probe) scrub(err error) string { return config.Scrub(err.Error(), p.o.DSN) }

func (p *Probe) connect(ctx context.Context) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.o.WriteTimeout)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, p.cc)
	if err != nil {
		return nil, errors.New("connect: " + p.scrub(err))
	}
	return c, nil
}

func closeConn(c *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

func (p *Probe) run(ctx context.Context) {
	defer close(p.done)
	t := time.NewTicker(p.o.Interval)
	defer t.Stop()
	for {
		// A write that failed on a connection that then broke is retried
		// at once on a new one: the DSN now leads to the writable node,
		// and waiting for the next tick would only lengthen the outage.
		if p.write(ctx) {
			p.write(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// write makes one attempt and reports whether an immediate retry is worth
// it: the write failed on an established connection.
func (p *Probe) write(ctx context.Context) (retry bool) {
	if ctx.Err() != nil {
		return false
	}
	if p.conn == nil {
		c, err := p.connect(ctx)
		if err != nil {
			p.record(ctx, 0, err)
			return false
		}
		p.conn = c
	}
	id := p.next
	p.next++
	wctx, cancel := context.WithTimeout(ctx, p.o.WriteTimeout)
	_, err := p.conn.Exec(wctx, p.insert, id)
	cancel()
	if err != nil {
		// Whatever the error (read-only now, terminated, timed out), this
		// session may be tied to a node that no longer takes writes.
		closeConn(p.conn)
		p.conn = nil
		p.record(ctx, 0, errors.New(p.scrub(err)))
		return true
	}
	p.record(ctx, id, nil)
	return false
}

func (p *Probe) record(ctx context.Context, id int64, err error) {
	at := p.o.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		if ctx.Err() != nil {
			// Cut short by Stop: not an outage the cluster caused.
			return
		}
		p.attempts++
		p.failed++
		p.lastErr = oneLine(err.Error())
		return
	}
	p.attempts++
	p.acks = append(p.acks, ack{id: id, at: at})
}

// Stop ends the writes and returns the report. It may be called more than
// once; later calls return the same report.
func (p *Probe) Stop() Report {
	p.stop.Do(func() {
		p.cancel()
		<-p.done
		if p.conn != nil {
			closeConn(p.conn)
			p.conn = nil
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		p.report = summarize(p.acks, p.attempts, p.failed, p.lastErr)
	})
	return p.report
}

// summarize builds the report from the acknowledgements in order.
func summarize(acks []ack, attempts, failed int, lastErr string) Report {
	r := Report{Attempts: attempts, Acked: len(acks), Failed: failed, LastError: lastErr}
	for i := 1; i < len(acks); i++ {
		if gap := acks[i].at.Sub(acks[i-1].at); gap > r.LongestOutage {
			r.LongestOutage, r.OutageFrom, r.OutageTo = gap, acks[i-1].at, acks[i].at
		}
	}
	return r
}

// Acked returns the numbers of the writes acknowledged so far, in order.
func (p *Probe) Acked() []int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]int64, len(p.acks))
	for i, a := range p.acks {
		out[i] = a.id
	}
	return out
}

// Verify connects through the DSN (so to the node that takes writes now)
// and returns the acknowledged numbers absent from the table: acknowledged
// writes the cluster lost. Call it after Stop, or it checks only what was
// acknowledged so far.
func (p *Probe) Verify(ctx context.Context) (missing []int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, p.cc)
	if err != nil {
		return nil, fmt.Errorf("write probe: verify: connect: %s", p.scrub(err))
	}
	defer closeConn(conn)
	acked := p.Acked()
	present := make(map[int64]bool, len(acked))
	rows, err := conn.Query(ctx, "SELECT id FROM "+p.table+" WHERE id = ANY($1::bigint[])", acked)
	if err != nil {
		return nil, fmt.Errorf("write probe: verify: %s", p.scrub(err))
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("write probe: verify: %s", p.scrub(err))
		}
		present[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("write probe: verify: %s", p.scrub(err))
	}
	for _, id := range acked {
		if !present[id] {
			missing = append(missing, id)
		}
	}
	return missing, nil
}

// quoteTable quotes a table name, schema-qualified or not.
func quoteTable(name string) string {
	return pgx.Identifier(strings.Split(name, ".")).Sanitize()
}

// oneLine folds the driver's multi-line errors (one line per host tried)
// so that a report's error fits a line.
func oneLine(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "; ")
}
