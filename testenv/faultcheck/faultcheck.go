// Package faultcheck is the fault matrix's referee: it watches a replicated
// PostgreSQL cluster while a fault is injected and says afterwards whether
// the cluster stayed safe and ended up healthy.
//
// It is deliberately independent of the code it judges: it imports only the
// standard library, pgx and the etcd client, never replctl's topology,
// failover, lock, checks or config packages, and it asks every node plain
// SQL questions and reads etcd keys itself. A bug in replctl's view of the
// cluster therefore cannot hide itself from the checker.
//
// Use:
//
//	w, err := faultcheck.Watch(ctx, target, faultcheck.Options{})
//	... inject the fault, run replctl recover ...
//	r := w.Stop()
//	problems := r.Final(ctx, target) // end state; empty = healthy
//	lost, err := r.Lost(ctx, target) // acknowledged writes missing on the primary
//
// While it runs, Watch keeps two kinds of traffic going, both with plain
// session defaults (so they meet replctl's SQL fence like any client):
// a continuous writer that inserts increasing ids into faultcheck_writes on
// whichever node accepts them, and a sampler that, every Options.Interval,
// tries a tiny write on every node at once. Two nodes acknowledging a
// sampler write in the same tick is a violation: both accepted writes at
// the same time.
package faultcheck

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Node is one PostgreSQL server of the cluster, as in replctl.yaml.
type Node struct {
	Name string
	// DSN is a libpq connection string (keyword/value or URL).
	DSN string
}

// Target is the cluster to check.
type Target struct {
	Nodes []Node
	// EtcdEndpoints (host:port) of the cluster's etcd; empty skips the etcd
	// checks of Final.
	EtcdEndpoints []string
	// Prefix and Cluster are etcd.prefix and cluster of replctl.yaml: the
	// lock lives under <Prefix>/<Cluster>/lock/, the operation records under
	// <Prefix>/<Cluster>/history/. An empty Prefix is replctl's default,
	// /replctl.
	Prefix, Cluster string
}

// Options tune Watch. Zero values take the defaults.
type Options struct {
	// Interval is the sampler's tick: every node gets a probe write at
	// each tick. Default 20ms.
	Interval time.Duration
	// ProbeTimeout bounds one sampler write. A probe that has not been
	// acknowledged by then counts as "did not accept a write". Default 250ms.
	ProbeTimeout time.Duration
	// WriteInterval is the pause between two writes of the continuous
	// writer. Default 5ms: 200 writes a second show a sub-second outage
	// and lost writes without loading two cores.
	WriteInterval time.Duration
	// WriteTimeout bounds one writer commit (and a connection attempt).
	// A commit that takes longer, e.g. waiting for a fenced synchronous
	// standby, is not acknowledged. Default 500ms.
	WriteTimeout time.Duration
	// SetupTimeout bounds Watch's setup: creating the tables on the
	// primary and waiting until every reachable replica has replayed them.
	// Default 30s.
	SetupTimeout time.Duration
}

func (o Options) withDefaults() Options {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.Interval, 20*time.Millisecond)
	def(&o.ProbeTimeout, 250*time.Millisecond)
	def(&o.WriteInterval, 5*time.Millisecond)
	def(&o.WriteTimeout, 500*time.Millisecond)
	def(&o.SetupTimeout, 30*time.Second)
	return o
}

// Tables the checker writes, on the primary (and so, replicated, everywhere).
const (
	WritesTable = "faultcheck_writes"
	ProbeTable  = "faultcheck_probe"
)

// The writes go through two small functions that return false instead of
// failing when the transaction is read-only: the INSERT would fail then
// anyway (in recovery, or under default_transaction_read_only = on), so
// the answer is the same, but a failed INSERT is an ERROR with its
// statement in the server log, and the sampler's 50 a second per replica
// would bury whatever the log says about the case being checked.
const (
	createSQL = `CREATE TABLE IF NOT EXISTS ` + WritesTable + ` (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS ` + ProbeTable + ` (node text PRIMARY KEY, n bigint NOT NULL, at timestamptz NOT NULL);
CREATE OR REPLACE FUNCTION faultcheck_write(wid bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	IF current_setting('transaction_read_only')::boolean THEN
		RETURN false;
	END IF;
	INSERT INTO ` + WritesTable + ` (id) VALUES (wid);
	RETURN true;
END $$;
CREATE OR REPLACE FUNCTION faultcheck_probe_write(pnode text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	IF current_setting('transaction_read_only')::boolean THEN
		RETURN false;
	END IF;
	-- One row per node, updated in place, so that a soak of hours does
	-- not grow the table by 50 rows a second. It is still a real write:
	-- a transaction id, WAL, and a commit that waits for synchronous
	-- standbys.
	INSERT INTO ` + ProbeTable + ` (node, n, at) VALUES (pnode, 1, now())
	ON CONFLICT (node) DO UPDATE SET n = ` + ProbeTable + `.n + 1, at = now();
	RETURN true;
END $$`
	writeSQL = `SELECT faultcheck_write($1)`
	probeSQL = `SELECT faultcheck_probe_write($1)`
)

// Write is one write of the continuous writer whose commit was acknowledged.
type Write struct {
	ID   int64
	Node string
	At   time.Time // when the commit returned
}

// Probe is one sampler write that a node acknowledged.
type Probe struct {
	Node  string
	Sent  time.Time
	Acked time.Time
}

// Violation is a sampler tick in which more than one node acknowledged a
// write.
type Violation struct {
	Sample int64     // tick number, from 1
	At     time.Time // start of the tick
	Nodes  []string  // the nodes that acknowledged, sorted
	Probes []Probe   // their probes, in the order they were acknowledged
}

func (v Violation) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sample %d at %s: %s all acknowledged a write", v.Sample, v.At.Format("15:04:05.000"), strings.Join(v.Nodes, ", "))
	var ps []string
	for _, p := range v.Probes {
		ps = append(ps, fmt.Sprintf("%s sent +%s acked +%s", p.Node,
			p.Sent.Sub(v.At).Round(100*time.Microsecond), p.Acked.Sub(v.At).Round(100*time.Microsecond)))
	}
	fmt.Fprintf(&b, " (%s)", strings.Join(ps, "; "))
	return b.String()
}

// NodeStats counts what one node did with the checker's writes.
type NodeStats struct {
	Probes, ProbesAcked int64 // sampler writes sent and acknowledged
	Writes, WritesAcked int64 // writer commits sent and acknowledged
	LastError           string
}

// Report is what a Watcher saw.
type Report struct {
	Start, End time.Time
	Interval   time.Duration
	// Samples is the number of sampler ticks between Start and End.
	Samples    int64
	Violations []Violation
	// Acked are the writer's acknowledged writes, in commit order.
	Acked []Write
	// Nodes are per-node counts, by node name.
	Nodes map[string]NodeStats
}

// AckedIDs returns the acknowledged writer ids, by the node that
// acknowledged them.
func (r *Report) AckedIDs() map[string][]int64 {
	m := map[string][]int64{}
	for _, w := range r.Acked {
		m[w.Node] = append(m[w.Node], w.ID)
	}
	return m
}

// LongestOutage is the longest time without an acknowledged write of the
// continuous writer: between Start and the first ack, between two acks, and
// between the last ack and End. It is the write outage a client would have
// seen.
func (r *Report) LongestOutage() time.Duration {
	prev, longest := r.Start, time.Duration(0)
	for _, w := range r.Acked {
		longest = max(longest, w.At.Sub(prev))
		prev = w.At
	}
	return max(longest, r.End.Sub(prev))
}

// Watcher is a running check; Watch starts it, Stop ends it.
type Watcher struct {
	t       Target
	o       Options
	cfgs    []*pgx.ConnConfig
	start   time.Time
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	stop    sync.Once
	primary int // index of the primary at setup: where the writer starts
	firstID int64

	mu         sync.Mutex
	acks       map[int64][]Probe // tick -> acknowledged probes, pruned
	progress   []int64           // per node: the tick its sampler took up last
	sincePrune int               // acks since acks was last pruned
	violIdx    map[int64]int     // tick -> index in viol
	viol       []Violation
	acked      []Write
	stats      []NodeStats
	report     *Report
}

// Watch creates the checker's tables on the primary, waits until every
// reachable replica has replayed them (so that whichever node is promoted
// later can take the writer's inserts), and starts the writer and the
// sampler. It returns an error, and starts nothing, when a DSN does not
// parse, there is not exactly one primary, or the setup does not finish
// within Options.SetupTimeout.
//
// The goroutines and connections end with Stop or when ctx is cancelled;
// Stop must be called either way to get the report.
func Watch(ctx context.Context, t Target, o Options) (*Watcher, error) {
	o = o.withDefaults()
	if len(t.Nodes) == 0 {
		return nil, errors.New("faultcheck: no nodes")
	}
	w := &Watcher{t: t, o: o, acks: map[int64][]Probe{}, violIdx: map[int64]int{},
		progress: make([]int64, len(t.Nodes)), stats: make([]NodeStats, len(t.Nodes))}
	seen := map[string]bool{}
	for _, n := range t.Nodes {
		if seen[n.Name] {
			return nil, fmt.Errorf("faultcheck: node %s listed twice", n.Name)
		}
		seen[n.Name] = true
		cfg, err := connConfig(n.DSN)
		if err != nil {
			return nil, fmt.Errorf("faultcheck: %s: %w", n.Name, err)
		}
		w.cfgs = append(w.cfgs, cfg)
	}
	if err := w.setup(ctx); err != nil {
		return nil, err
	}

	wctx, cancel := context.WithCancel(ctx)
	w.cancel = cancel
	w.start = time.Now()
	w.wg.Go(func() { w.writer(wctx) })
	for i := range t.Nodes {
		w.wg.Go(func() { w.sampler(wctx, i) })
	}
	return w, nil
}

// setup finds the primary, creates the tables there and waits for every
// replica that answered to replay them.
func (w *Watcher) setup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, w.o.SetupTimeout)
	defer cancel()
	inRecovery := make([]*bool, len(w.cfgs))
	errs := make([]error, len(w.cfgs))
	var wg sync.WaitGroup
	for i, cfg := range w.cfgs {
		wg.Go(func() {
			var rec bool
			errs[i] = queryNode(ctx, cfg, queryTimeout, func(ctx context.Context, c *pgx.Conn) error {
				return c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec)
			})
			if errs[i] == nil {
				inRecovery[i] = &rec
			}
		})
	}
	wg.Wait()
	var primaries, down []string
	w.primary = -1
	for i, rec := range inRecovery {
		switch {
		case rec == nil:
			down = append(down, fmt.Sprintf("%s: %v", w.t.Nodes[i].Name, errs[i]))
		case !*rec:
			primaries = append(primaries, w.t.Nodes[i].Name)
			w.primary = i
		}
	}
	if len(primaries) != 1 {
		return fmt.Errorf("faultcheck: want exactly one node out of recovery to set up on, found %d (%s); unreachable: %s",
			len(primaries), strings.Join(primaries, ", "), strings.Join(down, "; "))
	}

	var lsn string
	err := queryNode(ctx, w.cfgs[w.primary], w.o.SetupTimeout, func(ctx context.Context, c *pgx.Conn) error {
		if _, err := c.Exec(ctx, createSQL); err != nil {
			return err
		}
		return c.QueryRow(ctx, `SELECT coalesce(max(id), 0), pg_current_wal_lsn()::text FROM `+WritesTable).Scan(&w.firstID, &lsn)
	})
	if err != nil {
		return fmt.Errorf("faultcheck: create tables on %s: %w", w.t.Nodes[w.primary].Name, err)
	}
	// Ids continue after any earlier watcher's, so that one cluster can
	// serve several cases without the checks of one seeing another's rows.
	w.firstID++

	for i, rec := range inRecovery {
		if rec == nil || !*rec {
			continue
		}
		wg.Go(func() {
			errs[i] = waitReplayed(ctx, w.cfgs[i], lsn)
		})
	}
	wg.Wait()
	for i, rec := range inRecovery {
		if rec != nil && *rec && errs[i] != nil {
			return fmt.Errorf("faultcheck: %s did not replay the tables (LSN %s) within %s: %w", w.t.Nodes[i].Name, lsn, w.o.SetupTimeout, errs[i])
		}
	}
	return nil
}

// queryTimeout bounds one read of one node.
const queryTimeout = 5 * time.Second

func waitReplayed(ctx context.Context, cfg *pgx.ConnConfig, lsn string) error {
	for {
		var ok bool
		err := queryNode(ctx, cfg, queryTimeout, func(ctx context.Context, c *pgx.Conn) error {
			return c.QueryRow(ctx, `SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)`, lsn).Scan(&ok)
		})
		if err == nil && ok {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// writer is the continuous writer: one session per node, tried in turn
// starting with the node that acknowledged last, a fresh id per attempt
// (an unacknowledged attempt may still have committed, so an id is never
// sent twice).
func (w *Watcher) writer(ctx context.Context) {
	ss := make([]*session, len(w.t.Nodes))
	for i, n := range w.t.Nodes {
		ss[i] = newSession(n, w.cfgs[i])
	}
	defer func() {
		for _, s := range ss {
			s.close()
		}
	}()
	cur, next := w.primary, w.firstID
	tick := time.NewTicker(w.o.WriteInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for j := range ss {
			if ctx.Err() != nil {
				return
			}
			i := (cur + j) % len(ss)
			s := ss[i]
			if err := s.connect(ctx, w.o.WriteTimeout); err != nil {
				w.noteError(i, err)
				continue
			}
			id := next
			next++
			err := s.write(ctx, w.o.WriteTimeout, writeSQL, id)
			w.recordWrite(i, id, time.Now(), err)
			if err == nil {
				cur = i
				break
			}
		}
	}
}

// sampler probes node i once per tick. Ticks are counted from the watch's
// start on the monotonic clock, so every node's goroutine agrees on which
// tick a probe belongs to without talking to the others.
func (w *Watcher) sampler(ctx context.Context, i int) {
	s := newSession(w.t.Nodes[i], w.cfgs[i])
	defer s.close()
	for {
		k, ok := w.waitTick(ctx)
		if !ok {
			return
		}
		w.mu.Lock()
		w.progress[i] = k
		w.mu.Unlock()
		if err := s.connect(ctx, w.o.ProbeTimeout); err != nil {
			w.noteError(i, err)
			continue
		}
		// A probe counts for tick k only if it was sent during tick k:
		// after a slow reconnect or a scheduling delay it would belong to
		// a later tick than the other nodes' probes of tick k, and two
		// legitimately consecutive primaries could then share a tick.
		sent := time.Now()
		if w.tickOf(sent) != k {
			continue
		}
		err := s.write(ctx, w.o.ProbeTimeout, probeSQL, w.t.Nodes[i].Name)
		w.recordProbe(i, k, Probe{Node: w.t.Nodes[i].Name, Sent: sent, Acked: time.Now()}, err)
	}
}

func (w *Watcher) tickOf(t time.Time) int64 { return int64(t.Sub(w.start) / w.o.Interval) }

// waitTick sleeps until the next tick starts and returns its number; ticks
// missed while the caller was busy are skipped.
func (w *Watcher) waitTick(ctx context.Context) (int64, bool) {
	k := w.tickOf(time.Now()) + 1
	t := time.NewTimer(time.Until(w.start.Add(time.Duration(k) * w.o.Interval)))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return 0, false
	case <-t.C:
		return k, true
	}
}

func (w *Watcher) noteError(i int, err error) {
	if err == nil || errors.Is(err, context.Canceled) {
		return
	}
	w.mu.Lock()
	w.stats[i].LastError = err.Error()
	w.mu.Unlock()
}

func (w *Watcher) recordWrite(i int, id int64, at time.Time, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stats[i].Writes++
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			w.stats[i].LastError = err.Error()
		}
		return
	}
	w.stats[i].WritesAcked++
	w.acked = append(w.acked, Write{ID: id, Node: w.t.Nodes[i].Name, At: at})
}

// pruneEvery is how many acknowledged probes pass between two prunings of
// acks.
const pruneEvery = 64

func (w *Watcher) recordProbe(i int, k int64, p Probe, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stats[i].Probes++
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			w.stats[i].LastError = err.Error()
		}
		return
	}
	w.stats[i].ProbesAcked++
	w.addAck(k, p)
}

// addAck records an acknowledged probe of tick k and a violation when
// another node acknowledged one in the same tick. w.mu is held.
func (w *Watcher) addAck(k int64, p Probe) {
	others := w.acks[k]
	w.acks[k] = append(others, p)
	if slices.ContainsFunc(others, func(q Probe) bool { return q.Node != p.Node }) {
		if vi, ok := w.violIdx[k]; ok {
			v := &w.viol[vi]
			v.Probes = append(v.Probes, p)
			if !slices.Contains(v.Nodes, p.Node) {
				v.Nodes = append(v.Nodes, p.Node)
				slices.Sort(v.Nodes)
			}
		} else {
			v := Violation{Sample: k, At: w.start.Add(time.Duration(k) * w.o.Interval), Probes: slices.Clone(w.acks[k])}
			for _, q := range v.Probes {
				if !slices.Contains(v.Nodes, q.Node) {
					v.Nodes = append(v.Nodes, q.Node)
				}
			}
			slices.Sort(v.Nodes)
			w.violIdx[k] = len(w.viol)
			w.viol = append(w.viol, v)
		}
	}
	// Each sampler reports its ticks in increasing order, so no result can
	// arrive any more for a tick older than every sampler's current one.
	// Counted in acks rather than by tick number, which a primary whose
	// probes take two ticks might never hit.
	if w.sincePrune++; w.sincePrune >= pruneEvery {
		w.sincePrune = 0
		oldest := slices.Min(w.progress)
		for t := range w.acks {
			if t < oldest {
				delete(w.acks, t)
				delete(w.violIdx, t)
			}
		}
	}
}

// Snapshot returns what the watcher has seen so far, without stopping it:
// for waiting until the writer got going before injecting a fault.
func (w *Watcher) Snapshot() *Report {
	return w.build(time.Now())
}

func (w *Watcher) build(end time.Time) *Report {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := &Report{
		Start: w.start, End: end, Interval: w.o.Interval, Samples: w.tickOf(end),
		Acked: slices.Clone(w.acked), Nodes: map[string]NodeStats{},
	}
	for _, v := range w.viol {
		v.Nodes, v.Probes = slices.Clone(v.Nodes), slices.Clone(v.Probes)
		r.Violations = append(r.Violations, v)
	}
	for i, n := range w.t.Nodes {
		r.Nodes[n.Name] = w.stats[i]
	}
	return r
}

// Stop stops the writer and the sampler, closes their connections, and
// returns the report. It may be called more than once (also after ctx was
// cancelled) and returns the same report each time.
func (w *Watcher) Stop() *Report {
	w.stop.Do(func() {
		end := time.Now()
		w.cancel()
		w.wg.Wait()
		w.report = w.build(end)
	})
	return w.report
}
