package cmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/testenv"
)

// Shape of the load of BenchmarkSwitchoverUnderLoad.
const (
	loadWriters        = 8
	loadTable          = "replctl_bench_load"
	loadMinSwitchovers = 10
	// loadWriteTimeout bounds one INSERT and one connection attempt.
	loadWriteTimeout = time.Second
	// loadRetryPause is a writer's pause after a failed connection attempt,
	// so that 8 writers looping on refused connections do not starve the
	// nodes being promoted of the sandbox's CPUs. It bounds the resolution
	// of the outage measured.
	loadRetryPause = 2 * time.Millisecond
	// loadResumeTimeout bounds the wait for every writer to commit again
	// after a switchover.
	loadResumeTimeout = 30 * time.Second
	// loadSlowPromote is a promote step long enough for the benchmark to
	// log what the candidate's server log said during the switchover.
	loadSlowPromote = time.Second
)

// BenchmarkSwitchoverUnderLoad measures planned switchovers (stop fence,
// the old primary rejoining) back and forth between pg1 and pg2 of a 3-node
// cluster while 8 writers commit as fast as they can: each writer has its
// own connection and runs single-row autocommit INSERTs with a unique id
// (pgbench-style), and on any error reconnects, 2 ms after each failed
// attempt, to whichever node now takes writes. Three sub-benchmarks differ in
// how the writers find that node:
//
//   - clients=multihost: through the read-write multi-host DSN, trying each
//     node in turn (every hot standby forks a backend to answer that it is
//     read-only: a reconnection storm on the nodes the switchover needs);
//   - clients=hook: at the node named in a file that hooks.post_promote
//     rewrites, as behind a virtual IP, a DNS name or a pooler the hook
//     moves (until then the writers knock on the old primary only);
//   - clients=vip: as clients=hook, and hooks.pre_fence empties that file
//     right before the fence, as a virtual IP withdrawn from the old
//     primary before it stops: writers that lost their session knock on
//     no node until the promotion.
//
// It runs at least 10 switchovers: b.Loop's iterations, topped up to 10
// when the benchtime gives fewer (-benchtime 10x gives exactly 10). Before
// each switchover the cluster is healthy (the new primary on the next
// timeline, both other nodes streaming from it) and every writer has
// committed since the previous one.
//
// The write outage of one switchover is the longest time, over the 8
// writers, between two consecutive acknowledged commits of one writer
// around that switchover (the later one after the command started, the
// earlier one before the cluster was healthy again): what the unluckiest
// client saw, reconnection included. Under a saturating load the normal
// gap is about a millisecond, so this is the outage.
//
// Metrics: outage_p50_ms and outage_p99_ms (nearest rank: with fewer than
// 100 switchovers, p99 is the longest), lost_writes (acknowledged ids
// missing from the final primary), failed_switchovers, writes_per_s
// (acknowledged commits per second over the whole run, switchovers
// included). Target: p99 under 150 ms. Lost writes or a failed switchover
// fail the benchmark; the outage time never does.
func BenchmarkSwitchoverUnderLoad(b *testing.B) {
	if testing.Short() {
		b.Skip("benchmark runs PostgreSQL and etcd")
	}
	b.Run("clients=multihost", func(b *testing.B) { benchLoad(b, routeMultiHost) })
	b.Run("clients=hook", func(b *testing.B) { benchLoad(b, routeHook) })
	b.Run("clients=vip", func(b *testing.B) { benchLoad(b, routeVIP) })
}

// How the load's writers find the primary.
const (
	// routeMultiHost: each writer connects through the read-write
	// multi-host DSN (target_session_attrs=read-write), trying every node
	// in turn, as libpq and pgx clients do.
	routeMultiHost = "multihost"
	// routeHook: each writer connects to the node named in a file that
	// hooks.post_promote rewrites, as clients behind a virtual IP, a DNS
	// name or a pooler that the hook moves do.
	routeHook = "hook"
	// routeVIP: as routeHook, and hooks.pre_fence empties the file just
	// before the fence (undone: names the old primary again), as a virtual
	// IP withdrawn from the old primary before it stops: until the
	// promotion, writers that lost their session find no node to knock on.
	routeVIP = "vip"
)

func benchLoad(b *testing.B, route string) {
	ctx := b.Context()
	c := testenv.Start(b, testenv.Options{Replicas: 2})
	cfgPath, _ := switchoverConfig(b, c, fenceStop)
	var dial func() (*pgx.ConnConfig, error)
	switch route {
	case routeMultiHost:
		cc, err := loadConnConfig(writeDSN(b, cfgPath))
		if err != nil {
			b.Fatal(err)
		}
		dial = func() (*pgx.ConnConfig, error) { return cc, nil }
	case routeHook, routeVIP:
		var err error
		if dial, err = hookRoute(b, c, cfgPath, route == routeVIP); err != nil {
			b.Fatal(err)
		}
	}
	load, err := startLoad(ctx, dial, loadWriters)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { load.stop() })
	if err := load.awaitResumed(ctx, time.Now()); err != nil {
		b.Fatal(err)
	}

	all := []string{"pg1", "pg2", "pg3"}
	pair := []string{"pg1", "pg2"}
	tl := timelineOf(b, c, "pg1")
	var runs []loadSwitchover
	failed := 0
	one := func() bool {
		from, to := pair[len(runs)%2], pair[(len(runs)+1)%2]
		s := loadSwitchover{from: from, to: to, start: time.Now()}
		logFrom, logTo := logSize(c.Node(from).LogPath), logSize(c.Node(to).LogPath)
		run := replctl(ctx, nil, "--config", cfgPath, "-o", "json", "promote", to, "--yes")
		s.cmdEnd = time.Now()
		s.doc = decodeLoadDoc(run)
		if run.Code != 0 || s.doc == nil || s.doc.Primary != from || s.doc.Result == nil || s.doc.Result.Outcome != plan.OutcomeSucceeded {
			failed++
			b.Errorf("switchover %d, %s to %s, failed: %s", len(runs)+1, from, to, run)
			return false
		}
		for _, st := range s.doc.Result.Steps {
			if st.ID == failover.StepPromote && st.Duration > loadSlowPromote {
				var steps strings.Builder
				for _, st := range s.doc.Result.Steps {
					fmt.Fprintf(&steps, "  %s %s..%s\n", st.ID, st.Start.UTC().Format("15:04:05.000"), st.End.UTC().Format("15:04:05.000"))
				}
				b.Logf("switchover %d: promote took %s; steps:\n%s%s's server log meanwhile:\n%s%s's server log meanwhile:\n%s", len(runs)+1, st.Duration.Round(time.Millisecond),
					steps.String(), from, logSince(c.Node(from).LogPath, logFrom), to, logSince(c.Node(to).LogPath, logTo))
			}
		}
		tl++
		awaitTopology(b, c, to, tl, slices.DeleteFunc(slices.Clone(all), func(n string) bool { return n == to })...)
		if err := load.awaitResumed(ctx, s.cmdEnd); err != nil {
			failed++
			b.Errorf("switchover %d, %s to %s: %v", len(runs)+1, from, to, err)
			return false
		}
		s.end = time.Now()
		runs = append(runs, s)
		return true
	}
	// A failed switchover has failed the benchmark already (b.Errorf),
	// which lets the loop end before b.Loop says so.
	ok := true
	for b.Loop() {
		if ok = one(); !ok {
			break
		}
	}
	for ok && len(runs) < loadMinSwitchovers {
		ok = one()
	}
	load.stop()

	final := pair[len(runs)%2]
	lost, err := load.missing(ctx, c, final)
	if err != nil {
		b.Fatal(err)
	}
	rep := analyseLoad(load, runs)
	b.ReportMetric(rep.p50, "outage_p50_ms")
	b.ReportMetric(rep.p99, "outage_p99_ms")
	b.ReportMetric(float64(len(lost)), "lost_writes")
	b.ReportMetric(float64(failed), "failed_switchovers")
	b.ReportMetric(load.rate(), "writes_per_s")
	b.Log(rep.text)
	if len(lost) > 0 {
		b.Fatalf("%d acknowledged writes missing on %s: %v", len(lost), final, lost[:min(len(lost), 20)])
	}
	if failed > 0 {
		b.Fatalf("%d switchovers failed", failed)
	}
}

// loadSwitchover is one switchover of the benchmark.
type loadSwitchover struct {
	from, to string
	start    time.Time // the command started
	cmdEnd   time.Time // the command returned
	end      time.Time // the cluster was healthy and every writer had committed again
	doc      *loadDoc
}

// loadDoc is the part of promote -o json the benchmark reads.
type loadDoc struct {
	Primary string `json:"primary"`
	Result  *struct {
		Outcome plan.Outcome `json:"outcome"`
		Steps   []struct {
			ID       string        `json:"id"`
			Start    time.Time     `json:"start"`
			End      time.Time     `json:"end"`
			Duration time.Duration `json:"duration_ns"`
			Outcome  string        `json:"outcome"`
		} `json:"steps"`
	} `json:"result"`
	WriteOutageSeconds *float64 `json:"write_outage_seconds"`
	Commands           []struct {
		Node     string        `json:"node"`
		Action   string        `json:"action"`
		Duration time.Duration `json:"duration_ns"`
	} `json:"commands"`
}

func decodeLoadDoc(r cliRun) *loadDoc {
	var d loadDoc
	if json.Unmarshal([]byte(r.Out), &d) != nil {
		return nil
	}
	return &d
}

// logSize is the size of a server log, zero when it cannot be read.
func logSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logSince is what a server log got past offset.
func logSince(path string, offset int64) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if offset > int64(len(b)) {
		offset = 0
	}
	return string(b[offset:])
}

// ---- the load ----

// load is loadWriters writers committing single-row INSERTs as fast as
// they can, each over its own connection.
type load struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once
	began   time.Time
	ended   time.Time
	writers []*loadWriter
}

// loadWriter is one writer. Only its goroutine touches acks and fails until
// the load stops; last is read by awaitResumed.
type loadWriter struct {
	dial  func() (*pgx.ConnConfig, error)
	next  func() int64
	acks  []loadAck
	fails []loadFail // failed INSERTs and connection attempts
	last  atomic.Int64
}

// loadFail is one failed INSERT or connection attempt. The error is kept
// as it came and formatted only for the report: the writers must not spend
// the CPU that the nodes being switched over need.
type loadFail struct {
	at  time.Time
	err error
}

// loadAck is one acknowledged commit: its id and when the INSERT returned.
type loadAck struct {
	id int64
	at time.Time
}

// loadConnConfig is a writer's connection configuration for dsn.
func loadConnConfig(dsn string) (*pgx.ConnConfig, error) {
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("load: dsn: %s", config.Scrub(err.Error(), dsn))
	}
	cc.ConnectTimeout = loadWriteTimeout
	cc.RuntimeParams["application_name"] = "replctl_bench_load"
	// One round trip per INSERT, also the first after a reconnection.
	cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	return cc, nil
}

// hookRoute configures hooks.post_promote to write the new primary's name
// to a file, and returns a dial that connects to the node the file names
// (pg1 to begin with). The hook rewrites the file in place: a writer that
// reads it half-written finds no node and tries again, as a client does
// while a name or address is being moved. With preFence, hooks.pre_fence
// empties the file before the fence (and names the old primary in it
// again when undone).
func hookRoute(b *testing.B, c *testenv.Cluster, cfgPath string, preFence bool) (func() (*pgx.ConnConfig, error), error) {
	target := filepath.Join(b.TempDir(), "primary")
	if err := os.WriteFile(target, []byte("pg1"), 0o666); err != nil {
		return nil, err
	}
	hooks := fmt.Sprintf("hooks:\n  post_promote: %q\n", fmt.Sprintf(`printf '%%s' "$REPLCTL_NODE" > '%s'`, target))
	if preFence {
		hooks += fmt.Sprintf("  pre_fence: %q\n", fmt.Sprintf(`if [ -n "$REPLCTL_UNDO" ]; then printf '%%s' "$REPLCTL_NODE" > '%[1]s'; else : > '%[1]s'; fi`, target))
	}
	appendConfig(b, cfgPath, hooks)
	nodes := map[string]*pgx.ConnConfig{}
	for _, n := range c.Nodes {
		cc, err := loadConnConfig(n.DSN)
		if err != nil {
			return nil, err
		}
		nodes[n.Name] = cc
	}
	return func() (*pgx.ConnConfig, error) {
		name, err := os.ReadFile(target)
		if err != nil {
			return nil, err
		}
		cc := nodes[string(name)]
		if cc == nil {
			return nil, fmt.Errorf("%s names no node: %q", target, name)
		}
		return cc, nil
	}, nil
}

func startLoad(ctx context.Context, dial func() (*pgx.ConnConfig, error), writers int) (*load, error) {
	cc, err := dial()
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	conn, err := pgx.ConnectConfig(sctx, cc)
	if err != nil {
		return nil, fmt.Errorf("load: connect: %s", config.Scrub(err.Error(), cc.ConnString()))
	}
	var top int64
	_, err = conn.Exec(sctx, "CREATE TABLE IF NOT EXISTS "+loadTable+" (id bigint PRIMARY KEY, writer int NOT NULL, at timestamptz NOT NULL DEFAULT now())")
	if err == nil {
		err = conn.QueryRow(sctx, "SELECT coalesce(max(id), 0) FROM "+loadTable).Scan(&top)
	}
	conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return nil, fmt.Errorf("load: table %s: %w", loadTable, err)
	}
	var ids atomic.Int64
	ids.Store(top)
	next := func() int64 { return ids.Add(1) }

	rctx, cancel := context.WithCancel(ctx)
	l := &load{cancel: cancel, began: time.Now()}
	for i := range writers {
		w := &loadWriter{dial: dial, next: next}
		l.writers = append(l.writers, w)
		l.wg.Go(func() { w.run(rctx, i) })
	}
	return l, nil
}

func (w *loadWriter) run(ctx context.Context, n int) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	insert := "INSERT INTO " + loadTable + " (id, writer) VALUES ($1, $2)"
	for ctx.Err() == nil {
		if conn == nil {
			cc, err := w.dial()
			var c *pgx.Conn
			if err == nil {
				cctx, cancel := context.WithTimeout(ctx, loadWriteTimeout)
				c, err = pgx.ConnectConfig(cctx, cc.Copy())
				cancel()
			}
			if err != nil {
				w.fail(ctx, err)
				time.Sleep(loadRetryPause)
				continue
			}
			conn = c
		}
		// A new id for every attempt: a write whose outcome is unknown may
		// have committed.
		id := w.next()
		wctx, cancel := context.WithTimeout(ctx, loadWriteTimeout)
		_, err := conn.Exec(wctx, insert, id, n)
		cancel()
		if err != nil {
			// Read-only now, terminated, timed out: this session may be
			// tied to a node that no longer takes writes.
			conn.Close(context.Background())
			conn = nil
			w.fail(ctx, err)
			continue
		}
		now := time.Now()
		w.acks = append(w.acks, loadAck{id: id, at: now})
		w.last.Store(now.UnixNano())
	}
}

func (w *loadWriter) fail(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return // cut short by stop
	}
	w.fails = append(w.fails, loadFail{at: time.Now(), err: err})
}

// oneLine is err's message on one line, "" for none.
func oneLine(err error) string {
	if err == nil {
		return ""
	}
	return strings.Join(strings.Fields(err.Error()), " ")
}

// awaitResumed waits until every writer has committed after since.
func (l *load) awaitResumed(ctx context.Context, since time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, loadResumeTimeout)
	defer cancel()
	for {
		waiting := 0
		for _, w := range l.writers {
			if w.last.Load() <= since.UnixNano() {
				waiting++
			}
		}
		if waiting == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d writers did not commit again within %s", waiting, len(l.writers), loadResumeTimeout)
		case <-time.After(time.Millisecond):
		}
	}
}

// stop ends the writes; the writers' records may be read afterwards.
func (l *load) stop() {
	l.once.Do(func() {
		l.cancel()
		l.wg.Wait()
		l.ended = time.Now()
	})
}

// rate is acknowledged commits per second from start to stop.
func (l *load) rate() float64 {
	n := 0
	for _, w := range l.writers {
		n += len(w.acks)
	}
	return float64(n) / l.ended.Sub(l.began).Seconds()
}

// missing returns the acknowledged ids absent from node's table.
func (l *load) missing(ctx context.Context, c *testenv.Cluster, node string) ([]int64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := c.Conn(ctx, node)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return nil, err
	}
	if inRecovery {
		return nil, fmt.Errorf("%s is not the primary", node)
	}
	rows, err := conn.Query(ctx, "SELECT id FROM "+loadTable)
	if err != nil {
		return nil, err
	}
	present := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		present[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var out []int64
	for _, w := range l.writers {
		for _, a := range w.acks {
			if !present[a.id] {
				out = append(out, a.id)
			}
		}
	}
	if len(present) == 0 && len(out) == 0 {
		return nil, errors.New("no row written")
	}
	return out, nil
}

// ---- analysis ----

type loadReport struct {
	p50, p99 float64 // ms
	text     string
}

// analyseLoad computes each switchover's outage (see the benchmark) and
// lays out where the time went, from the steps' timestamps in the
// command's JSON result and the writers' own records. The first lines are
// a summary (go test keeps only 10 lines of a benchmark's log without -v);
// the rows per switchover, step durations and writers follow.
func analyseLoad(l *load, runs []loadSwitchover) loadReport {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/1000) }
	// The columns: outage and blocked, then the switchover's timeline.
	cols := []struct{ name, help string }{
		{"outage", "longest gap between two commits of one writer"},
		{"blocked", "longest time no writer committed"},
		{"fence>fail", "fence step start to the first failed write (writes still commit)"},
		{"fail>fenced", "to the fence step's end (the old primary's shutdown, the stop command's end)"},
		{"fenced>promote", "to the promote step's start (final-lsn, wait-replay)"},
		{"between", "of fenced>promote, the time between steps (journal, lock check)"},
		{"promote", "the promote step (pg_promote until it has left recovery)"},
		{">hook", "promote step's end to the post-promote hook's end (- without a hook)"},
		{"hook-between", "of >hook, the time between steps"},
		{">1st-ack", "promote step's end to the first commit after it"},
		{">all-ack", "promote step's end to the last writer's first commit after it"},
	}
	vals := make([][]time.Duration, len(cols)) // [column][switchover], -1 when unknown
	stepDur := map[string][]time.Duration{}
	var stepOrder []string
	var rows strings.Builder
	for i, s := range runs {
		var worst time.Duration
		var merged []time.Time
		var firstFail time.Time
		for _, w := range l.writers {
			gap, _ := w.longestGap(s)
			worst = max(worst, gap)
			for _, a := range w.acks {
				if !a.at.Before(s.start) && !a.at.After(s.end) {
					merged = append(merged, a.at)
				}
			}
			for _, f := range w.fails {
				if f.at.After(s.start) && f.at.Before(s.end) {
					if firstFail.IsZero() || f.at.Before(firstFail) {
						firstFail = f.at
					}
					break
				}
			}
		}
		slices.SortFunc(merged, func(a, b time.Time) int { return a.Compare(b) })
		var blocked time.Duration
		for j := 1; j < len(merged); j++ {
			blocked = max(blocked, merged[j].Sub(merged[j-1]))
		}

		var fenceStart, fenced, promoteStart, promoted, hooked time.Time
		var steps []string
		between, hookBetween := time.Duration(0), time.Duration(-1)
		var prevEnd time.Time
		for _, st := range s.doc.Result.Steps {
			if !fenced.IsZero() && promoteStart.IsZero() {
				between += st.Start.Sub(prevEnd)
			}
			if !promoted.IsZero() && hooked.IsZero() {
				hookBetween += st.Start.Sub(prevEnd)
			}
			if st.ID == failover.StepPromote {
				hookBetween = 0
			}
			prevEnd = st.End
			if !slices.Contains(stepOrder, st.ID) {
				stepOrder = append(stepOrder, st.ID)
			}
			stepDur[st.ID] = append(stepDur[st.ID], st.Duration)
			switch st.ID {
			case failover.StepFence:
				fenceStart, fenced = st.Start, st.End
			case failover.StepPromote:
				promoteStart, promoted = st.Start, st.End
			case failover.StepHook:
				hooked = st.End
			}
			steps = append(steps, st.ID+"="+ms(st.Duration))
		}
		if hooked.IsZero() {
			hookBetween = -1
		}
		var first, last time.Time // first commit after promoted, per writer
		for _, w := range l.writers {
			k, _ := slices.BinarySearchFunc(w.acks, promoted, func(a loadAck, t time.Time) int { return a.at.Compare(t) })
			if k < len(w.acks) {
				at := w.acks[k].at
				if first.IsZero() || at.Before(first) {
					first = at
				}
				if at.After(last) {
					last = at
				}
			}
		}
		diff := func(a, z time.Time) time.Duration {
			if a.IsZero() || z.IsZero() {
				return -1
			}
			return z.Sub(a)
		}
		row := []time.Duration{worst, blocked, diff(fenceStart, firstFail), diff(firstFail, fenced), diff(fenced, promoteStart),
			between, diff(promoteStart, promoted), diff(promoted, hooked), hookBetween, diff(promoted, first), diff(promoted, last)}
		fmt.Fprintf(&rows, "  %-3d %-8s", i+1, s.from+">"+s.to)
		for c, v := range row {
			cell := "-"
			if v >= 0 {
				vals[c] = append(vals[c], v)
				cell = ms(v)
			}
			fmt.Fprintf(&rows, " %*s", len(cols[c].name), cell)
		}
		fmt.Fprintf(&rows, " %8s  %s\n", ms(s.cmdEnd.Sub(s.start)), strings.Join(steps, " "))
		for _, cr := range s.doc.Commands {
			fmt.Fprintf(&rows, "        command %s %s: %s ms\n", cr.Node, cr.Action, ms(cr.Duration))
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "%d writers, %d switchovers; ms, median / max over the switchovers:\n", len(l.writers), len(runs))
	for c, col := range cols {
		med, top := "-", "-"
		if len(vals[c]) > 0 {
			med, top = ms(quantile(vals[c], 0.5)), ms(quantile(vals[c], 1))
		}
		fmt.Fprintf(&b, "  %-14s %7s / %7s  %s\n", col.name, med, top, col.help)
	}
	fmt.Fprintf(&b, "per switchover (ms):\n  %-3s %-8s", "#", "move")
	for _, col := range cols {
		fmt.Fprintf(&b, " %s", col.name)
	}
	fmt.Fprintf(&b, " %8s  steps\n%s", "command", rows.String())
	fmt.Fprintf(&b, "step durations (ms): median / max\n")
	for _, id := range stepOrder {
		d := stepDur[id]
		fmt.Fprintf(&b, "  %-16s %8s / %8s\n", id, ms(quantile(d, 0.5)), ms(quantile(d, 1)))
	}
	for i, w := range l.writers {
		var last error
		if len(w.fails) > 0 {
			last = w.fails[len(w.fails)-1].err
		}
		fmt.Fprintf(&b, "writer %d: %d commits, %d failures; last error: %s\n", i, len(w.acks), len(w.fails), oneLine(last))
	}
	b.WriteString(unluckiest(l, runs))
	return loadReport{
		p50:  float64(quantile(vals[0], 0.5).Microseconds()) / 1000,
		p99:  float64(quantile(vals[0], 0.99).Microseconds()) / 1000,
		text: b.String(),
	}
}

// quantile is the nearest-rank q-quantile of d, zero for none.
func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	k := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(k, len(s)-1))]
}

// unluckiest lays out, for the switchover with the longest outage, what
// its unluckiest writer did from its last commit before the gap to its
// first after it, in ms since the fence step started, with runs of failures
// of the same kind folded into one line: where the tail comes from.
func unluckiest(l *load, runs []loadSwitchover) string {
	var worst time.Duration
	var run *loadSwitchover
	var who, from int // writer, index of the ack before the gap
	for i := range runs {
		s := &runs[i]
		for wi, w := range l.writers {
			if gap, j := w.longestGap(*s); gap > worst {
				worst, run, who, from = gap, s, wi, j
			}
		}
	}
	if run == nil {
		return ""
	}
	var fence time.Time
	for _, st := range run.doc.Result.Steps {
		if st.ID == failover.StepFence {
			fence = st.Start
		}
	}
	if fence.IsZero() {
		fence = run.start
	}
	rel := func(t time.Time) string { return fmt.Sprintf("%+8.1f", float64(t.Sub(fence).Microseconds())/1000) }
	w := l.writers[who]
	a, z := w.acks[from].at, w.acks[from+1].at
	var b strings.Builder
	fmt.Fprintf(&b, "unluckiest writer: %d in switchover %s>%s, %.1f ms without a commit; ms since the fence step started:\n", who, run.from, run.to, float64(worst.Microseconds())/1000)
	for _, st := range run.doc.Result.Steps {
		if !st.End.Before(a) && !st.Start.After(z) {
			fmt.Fprintf(&b, "  %s..%s step %s\n", rel(st.Start), rel(st.End), st.ID)
		}
	}
	fmt.Fprintf(&b, "  %s          commit\n", rel(a))
	var first, prev time.Time
	var kind string
	n := 0
	flush := func() {
		if n > 0 {
			fmt.Fprintf(&b, "  %s..%s %d failed: %s\n", rel(first), rel(prev), n, kind)
		}
	}
	for _, f := range w.fails {
		if f.at.Before(a) || f.at.After(z) {
			continue
		}
		k := failKind(f.err)
		if k != kind || n == 0 {
			flush()
			first, kind, n = f.at, k, 0
		}
		prev = f.at
		n++
	}
	flush()
	fmt.Fprintf(&b, "  %s          commit\n", rel(z))
	return b.String()
}

// longestGap is w's longest time between two commits around switchover s
// (the later commit after s started, the earlier before s ended), and the
// index in w.acks of the earlier one.
func (w *loadWriter) longestGap(s loadSwitchover) (time.Duration, int) {
	var gap time.Duration
	at := -1
	for j := 1; j < len(w.acks); j++ {
		a, z := w.acks[j-1].at, w.acks[j].at
		if z.After(s.start) && a.Before(s.end) && z.Sub(a) > gap {
			gap, at = z.Sub(a), j-1
		}
	}
	return gap, at
}

// failKind is an error's message on one line, cut at 160 characters, so
// that runs of the same failure fold together (messages that differ in a
// client port, say, do not).
func failKind(err error) string {
	m := oneLine(err)
	if len(m) > 160 {
		m = m[:160] + "..."
	}
	return m
}
