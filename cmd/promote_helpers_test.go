package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/failover/writeprobe"
	"github.com/replctl/replctl/testenv"
	"github.com/replctl/replctl/topology"
)

// Fence setups of the switchover tests: which node commands the
// configuration gives.
const (
	fenceStop       = "stop"       // testenv's commands: stop fence, then rejoin
	fenceSQLRejoin  = "sql-rejoin" // rejoin but no stop: SQL fence, then rejoin
	fenceSQLNoCmds  = "sql"        // no commands: SQL fence, the old primary stays fenced
	commandLogName  = "commands.log"
	probeTable      = "replctl_write_probe"
	topologyTimeout = 30 * time.Second
)

// switchoverConfig writes a replctl.yaml for c with the node commands of
// setup, each of which first appends "NODE ACTION" to the returned log, so
// that a test can tell which commands ran.
func switchoverConfig(t testing.TB, c *testenv.Cluster, setup string) (cfgPath, logPath string) {
	t.Helper()
	dir := t.TempDir()
	logPath = filepath.Join(dir, commandLogName)
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	logged := func(n *testenv.Node, action, cmd string) string {
		return q(fmt.Sprintf("echo %s %s >> '%s'; %s", n.Name, action, logPath, cmd))
	}
	var b strings.Builder
	eps := make([]string, len(c.EtcdEndpoints))
	for i, e := range c.EtcdEndpoints {
		eps[i] = q(e)
	}
	fmt.Fprintf(&b, "cluster: %s\netcd:\n  endpoints: [%s]\n  prefix: /replctl\nlock:\n  ttl: 10s\nnodes:\n", c.Name, strings.Join(eps, ", "))
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "  - name: %s\n    dsn: %s\n", n.Name, q(n.DSN))
		cmds := c.Commands(n)
		switch setup {
		case fenceStop:
			fmt.Fprintf(&b, "    commands:\n      stop: %s\n      start: %s\n      kill: %s\n      rejoin: %s\n",
				logged(n, "stop", cmds.Stop), logged(n, "start", cmds.Start), logged(n, "kill", cmds.Kill), logged(n, "rejoin", cmds.Rejoin))
		case fenceSQLRejoin:
			fmt.Fprintf(&b, "    commands:\n      rejoin: %s\n", logged(n, "rejoin", cmds.Rejoin))
		case fenceSQLNoCmds:
		default:
			t.Fatalf("unknown setup %q", setup)
		}
	}
	cfgPath = filepath.Join(dir, "replctl.yaml")
	if err := os.WriteFile(cfgPath, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfgPath, logPath
}

// loggedHooks is a hooks section whose hooks log "NODE hook NAME[ undo]"
// to the command log at logPath.
func loggedHooks(logPath string) string {
	hook := func(name string) string {
		b, _ := json.Marshal(fmt.Sprintf(`echo "$REPLCTL_NODE hook %s${REPLCTL_UNDO:+ undo}" >> '%s'`, name, logPath))
		return string(b)
	}
	return fmt.Sprintf("hooks:\n  pre_fence: %s\n  post_promote: %s\n", hook("pre_fence"), hook("post_promote"))
}

// commandsRun lists the "NODE ACTION" lines of a command log.
func commandsRun(t testing.TB, logPath string) []string {
	t.Helper()
	b, err := os.ReadFile(logPath)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(strings.ReplaceAll(string(b), " ", "_"))
}

// promoteDoc is the part of promote -o json the tests read.
type promoteDoc struct {
	DryRun    bool   `json:"dry_run"`
	Primary   string `json:"primary"`
	Candidate string `json:"candidate"`
	Checks    []struct {
		Check, Level, Code, Message, Node, Hint string
	} `json:"checks"`
	Proceed bool `json:"would_proceed"`
	Plan    *struct {
		Fence string `json:"fence"`
		Steps []struct {
			ID          string `json:"id"`
			Description string `json:"description"`
		} `json:"steps"`
	} `json:"plan"`
	Result *struct {
		Outcome string `json:"outcome"`
		Steps   []struct {
			ID          string    `json:"id"`
			Description string    `json:"description"`
			Outcome     string    `json:"outcome"`
			Error       string    `json:"error"`
			Start       time.Time `json:"start"`
			End         time.Time `json:"end"`
		} `json:"steps"`
		Remaining []string `json:"remaining"`
		Left      []string `json:"left"`
	} `json:"result"`
	Error              string   `json:"error"`
	WriteOutageSeconds *float64 `json:"write_outage_seconds"`
	Commands           []struct {
		Node     string `json:"node"`
		Action   string `json:"action"`
		ExitCode int    `json:"exit_code"`
	} `json:"commands"`
	Final *struct {
		Primary string `json:"primary"`
	} `json:"final"`
}

func (d *promoteDoc) failedChecks() []string {
	var out []string
	for _, c := range d.Checks {
		if c.Level == "critical" || c.Level == "unknown" {
			out = append(out, c.Check)
		}
	}
	return out
}

func (d *promoteDoc) planSteps() []string {
	var out []string
	if d.Plan != nil {
		for _, s := range d.Plan.Steps {
			out = append(out, s.Description)
		}
	}
	return out
}

func (d *promoteDoc) resultSteps() []string {
	var out []string
	if d.Result != nil {
		for _, s := range d.Result.Steps {
			out = append(out, s.Description)
		}
	}
	return out
}

// cliRun is one in-process run of replctl.
type cliRun struct {
	Out, Err string
	Code     int
}

func (r cliRun) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.Code, r.Out, r.Err)
}

// doc decodes the run's stdout as promote -o json.
func (r cliRun) doc(t testing.TB) *promoteDoc {
	t.Helper()
	var d promoteDoc
	if err := json.Unmarshal([]byte(r.Out), &d); err != nil {
		t.Fatalf("promote -o json: %v\n%s", err, r)
	}
	return &d
}

// replctl runs the command line in process, as the binary would, with the
// node controller wrapped by wrap when it is not nil.
func replctl(ctx context.Context, wrap func(failover.Controller) failover.Controller, args ...string) cliRun {
	var out, errOut bytes.Buffer
	io := &IOStreams{Out: &out, ErrOut: &errOut}
	f := NewFactory(io)
	if wrap != nil {
		f.Controller = func(cfg *config.Config, call time.Duration) (failover.Controller, func()) {
			ctl, closeCtl := pgController(cfg, call)
			return wrap(ctl), closeCtl
		}
	}
	root := NewRootCmd(f)
	root.SetArgs(args)
	root.SetIn(strings.NewReader(""))
	root.SetOut(&out)
	root.SetErr(&errOut)
	err := root.ExecuteContext(ctx)
	if err != nil {
		fmt.Fprintln(&errOut, "error:", err)
	}
	return cliRun{Out: out.String(), Err: errOut.String(), Code: exitCode(err)}
}

// faultController injects a fault at a point of the switchover: hook runs
// with the point's name and node before the real call (or after, for
// "after-fence"), through the same Controller the command uses.
type faultController struct {
	failover.Controller
	hook func(ctx context.Context, point, node string)
}

// Points of faultController.
const (
	pointCatchup       = "catchup"      // CurrentLSN on the primary: the first call under the lock
	pointBeforeFence   = "before-fence" // FenceSQL, or the stop command
	pointAfterFence    = "after-fence"
	pointBeforePromote = "before-promote"
	pointVerify        = "verify" // Writable on the promoted candidate
)

func (f *faultController) CurrentLSN(ctx context.Context, node string) (topology.LSN, error) {
	f.hook(ctx, pointCatchup, node)
	return f.Controller.CurrentLSN(ctx, node)
}

func (f *faultController) FenceSQL(ctx context.Context, node string) error {
	f.hook(ctx, pointBeforeFence, node)
	err := f.Controller.FenceSQL(ctx, node)
	if err == nil {
		f.hook(ctx, pointAfterFence, node)
	}
	return err
}

func (f *faultController) RunCommand(ctx context.Context, node, action string, env map[string]string) (pgctl.CommandResult, error) {
	if action != pgctl.ActionStop {
		return f.Controller.RunCommand(ctx, node, action, env)
	}
	f.hook(ctx, pointBeforeFence, node)
	r, err := f.Controller.RunCommand(ctx, node, action, env)
	if err == nil {
		f.hook(ctx, pointAfterFence, node)
	}
	return r, err
}

// WatchShutdown passes after-fence when the old primary's stream ends,
// before the stop fence sees it: with the stream, the promotion does not
// wait for the stop command to return.
func (f *faultController) WatchShutdown(ctx context.Context, node string) (*pgctl.ShutdownWatch, error) {
	w, err := f.Controller.WatchShutdown(ctx, node)
	if err != nil {
		return nil, err
	}
	return relayWatch(w, func(err error) {
		if err == nil {
			f.hook(ctx, pointAfterFence, node)
		}
	}), nil
}

// relayWatch passes w's end on through a watch of its own, once atEnd has
// run with how w ended: a test acts there before the engine sees the end.
func relayWatch(w *pgctl.ShutdownWatch, atEnd func(err error)) *pgctl.ShutdownWatch {
	relay, end := pgctl.NewShutdownWatch()
	go func() {
		lsn, err := w.End()
		atEnd(err)
		end(lsn, err)
	}()
	return relay
}

func (f *faultController) Writable(ctx context.Context, node string) (uint32, topology.LSN, error) {
	f.hook(ctx, pointVerify, node)
	return f.Controller.Writable(ctx, node)
}

func (f *faultController) Promote(ctx context.Context, node string) error {
	f.hook(ctx, pointBeforePromote, node)
	return f.Controller.Promote(ctx, node)
}

// atPoint wraps controllers so that fn runs once, at the first time point is
// reached.
func atPoint(point string, fn func(ctx context.Context, node string)) func(failover.Controller) failover.Controller {
	var once sync.Once
	return func(ctl failover.Controller) failover.Controller {
		return &faultController{Controller: ctl, hook: func(ctx context.Context, p, node string) {
			if p == point {
				once.Do(func() { fn(ctx, node) })
			}
		}}
	}
}

// ---- what the nodes say ----

// pgState is what one node says about itself.
type pgState struct {
	InRecovery bool
	ReadOnly   string // default_transaction_read_only
	Timeline   *int64 // primary only, from the WAL file being written
	Receiver   *string
	RecvTLI    *int64
	SenderPort *int32
	Err        error
}

func (s pgState) String() string {
	if s.Err != nil {
		return "error: " + s.Err.Error()
	}
	d := func(p any) string {
		switch v := p.(type) {
		case *int64:
			if v != nil {
				return fmt.Sprint(*v)
			}
		case *int32:
			if v != nil {
				return fmt.Sprint(*v)
			}
		case *string:
			if v != nil {
				return *v
			}
		}
		return "-"
	}
	return fmt.Sprintf("recovery=%v read_only=%s tl=%s receiver=%s recv_tli=%s sender_port=%s",
		s.InRecovery, s.ReadOnly, d(s.Timeline), d(s.Receiver), d(s.RecvTLI), d(s.SenderPort))
}

func readPG(ctx context.Context, c *testenv.Cluster, name string) pgState {
	var s pgState
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s.Err = c.QueryRow(ctx, name, `SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only'),
		CASE WHEN NOT pg_is_in_recovery() THEN ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END,
		(SELECT status FROM pg_stat_wal_receiver), (SELECT received_tli::bigint FROM pg_stat_wal_receiver),
		(SELECT sender_port FROM pg_stat_wal_receiver)`).Scan(&s.InRecovery, &s.ReadOnly, &s.Timeline, &s.Receiver, &s.RecvTLI, &s.SenderPort)
	return s
}

// timelineOf is a primary's current timeline.
func timelineOf(t testing.TB, c *testenv.Cluster, name string) int64 {
	t.Helper()
	s := readPG(t.Context(), c, name)
	if s.Err != nil || s.Timeline == nil {
		t.Fatalf("timeline of %s: %s", name, s)
	}
	return *s.Timeline
}

// awaitTopology waits until primary accepts writes on timeline tl and every
// replica streams from it on that timeline.
func awaitTopology(t testing.TB, c *testenv.Cluster, primary string, tl int64, replicas ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), topologyTimeout)
	defer cancel()
	port := int32(c.Node(primary).Port)
	for {
		states := map[string]pgState{}
		ok := true
		p := readPG(ctx, c, primary)
		states[primary] = p
		ok = ok && p.Err == nil && !p.InRecovery && p.ReadOnly == "off" && p.Timeline != nil && *p.Timeline == tl
		for _, r := range replicas {
			s := readPG(ctx, c, r)
			states[r] = s
			ok = ok && s.Err == nil && s.InRecovery && s.Receiver != nil && *s.Receiver == "streaming" &&
				s.RecvTLI != nil && *s.RecvTLI == tl && s.SenderPort != nil && *s.SenderPort == port
		}
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			var b strings.Builder
			for _, n := range append([]string{primary}, replicas...) {
				fmt.Fprintf(&b, "\n  %s: %s", n, states[n])
			}
			t.Fatalf("want %s primary on timeline %d with replicas %v streaming from it; last seen:%s", primary, tl, replicas, b.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// assertSoleWritable checks that name is the one node that accepts writes,
// by writing to it, and that every other listed node is in recovery.
func assertSoleWritable(t testing.TB, c *testenv.Cluster, name string, others ...string) {
	t.Helper()
	ctx := t.Context()
	if s := readPG(ctx, c, name); s.Err != nil || s.InRecovery || s.ReadOnly != "off" {
		t.Fatalf("%s is not writable: %s", name, s)
	}
	if err := c.Exec(ctx, name, "CREATE TABLE IF NOT EXISTS replctl_test_written (at timestamptz DEFAULT now()); INSERT INTO replctl_test_written DEFAULT VALUES"); err != nil {
		t.Fatalf("write to %s: %v", name, err)
	}
	for _, o := range others {
		if s := readPG(ctx, c, o); s.Err != nil || !s.InRecovery {
			t.Fatalf("%s should be a replica: %s", o, s)
		}
	}
}

// ---- etcd ----

func etcdClient(t testing.TB, c *testenv.Cluster) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.EtcdEndpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// etcdRevision is etcd's current revision: it moves with every write.
func etcdRevision(t testing.TB, cli *clientv3.Client) int64 {
	t.Helper()
	r, err := cli.Get(t.Context(), "x")
	if err != nil {
		t.Fatal(err)
	}
	return r.Header.Revision
}

func clusterRecord(t testing.TB, cli *clientv3.Client, c *testenv.Cluster) *etcdlock.State {
	t.Helper()
	st, _, err := etcdlock.ReadState(t.Context(), cli, "/replctl", c.Name)
	if err != nil {
		t.Fatal(err)
	}
	if st == nil {
		st = &etcdlock.State{}
	}
	return st
}

// revokeLock revokes the lease of the cluster lock's holder, as
// `replctl lock release --force` would: the holder loses the lock.
func revokeLock(ctx context.Context, t testing.TB, cli *clientv3.Client, cluster string) {
	// The revocation cancels the holder's context, which may be ctx.
	ctx = context.WithoutCancel(ctx)
	h, err := etcdlock.ReadLockHolder(ctx, cli, "/replctl", cluster)
	if err != nil || h == nil {
		t.Errorf("read lock holder: %v, %v", h, err)
		return
	}
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(h.LeaseID)); err != nil {
		t.Errorf("revoke lease %x: %v", h.LeaseID, err)
	}
}

// ---- the write probe and the writable watch ----

// writeDSN is the read-write multi-host DSN of the configuration at
// cfgPath, as the write probe uses it.
func writeDSN(t testing.TB, cfgPath string) string {
	t.Helper()
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	dsn, err := writeprobe.DSNFromConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return dsn
}

func startProbe(t testing.TB, cfgPath string) *writeprobe.Probe {
	t.Helper()
	p, err := writeprobe.Start(t.Context(), writeprobe.Options{DSN: writeDSN(t, cfgPath), Table: probeTable})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop() })
	// A few writes first, so that an outage is measured from a write.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for len(p.Acked()) < 5 && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	return p
}

// stopProbe stops the probe and checks that no acknowledged write is lost
// and that writes were acknowledged after the operation too.
func stopProbe(t testing.TB, p *writeprobe.Probe) writeprobe.Report {
	t.Helper()
	// Writes must have resumed: a few more acknowledgements.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for n := len(p.Acked()) + 5; len(p.Acked()) < n && ctx.Err() == nil; {
		time.Sleep(5 * time.Millisecond)
	}
	r := p.Stop()
	missing, err := p.Verify(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("write probe: %d attempts, %d acknowledged, %d failed, longest outage %s; last error: %s",
		r.Attempts, r.Acked, r.Failed, r.LongestOutage.Round(time.Millisecond), r.LastError)
	if len(missing) > 0 {
		t.Errorf("%d acknowledged writes lost: %v", len(missing), missing)
	}
	if ctx.Err() != nil {
		t.Errorf("writes did not resume: %+v", r)
	}
	return r
}

// writableSample is one look at one node: writable means not in recovery
// and default_transaction_read_only off, at the node's clock_timestamp().
type writableSample struct {
	node     string
	at       time.Time
	writable bool
	failed   bool // the node did not answer: a gap in what is known
}

// writableWatch samples every node every few milliseconds over a kept
// connection (reconnecting when it breaks).
type writableWatch struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	samples []writableSample
}

func watchWritable(t testing.TB, c *testenv.Cluster) *writableWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	w := &writableWatch{cancel: cancel}
	for _, n := range c.Nodes {
		w.wg.Go(func() { w.poll(ctx, n) })
	}
	t.Cleanup(func() { w.stop() })
	return w
}

func (w *writableWatch) add(s writableSample) {
	w.mu.Lock()
	w.samples = append(w.samples, s)
	w.mu.Unlock()
}

func (w *writableWatch) poll(ctx context.Context, n *testenv.Node) {
	cc, err := pgx.ParseConfig(n.DSN)
	if err != nil {
		panic(err)
	}
	cc.ConnectTimeout = 500 * time.Millisecond
	cc.RuntimeParams["application_name"] = "replctl_test_watch"
	cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			if conn, err = pgx.ConnectConfig(ctx, cc); err != nil {
				conn = nil
				w.add(writableSample{node: n.Name, at: time.Now(), failed: true})
				time.Sleep(2 * time.Millisecond)
				continue
			}
		}
		var rec bool
		var ro string
		var at time.Time
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		err := conn.QueryRow(qctx, "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only'), clock_timestamp()").Scan(&rec, &ro, &at)
		cancel()
		if err != nil {
			conn.Close(context.Background())
			conn = nil
			if ctx.Err() == nil {
				w.add(writableSample{node: n.Name, at: time.Now(), failed: true})
			}
			continue
		}
		w.add(writableSample{node: n.Name, at: at, writable: !rec && ro == "off"})
		time.Sleep(2 * time.Millisecond)
	}
}

func (w *writableWatch) stop() []writableSample {
	w.cancel()
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.samples)
}

// writableSpan is a run of consecutive writable samples of one node: the
// node was writable from first to last (samples are milliseconds apart).
type writableSpan struct {
	node        string
	first, last time.Time
	samples     int
}

// writableSpans cuts each node's samples into runs of writable ones; a
// sample that is not writable, or a failed one, ends a run.
func writableSpans(samples []writableSample) []writableSpan {
	byNode := map[string][]writableSample{}
	for _, s := range samples {
		byNode[s.node] = append(byNode[s.node], s)
	}
	var out []writableSpan
	for node, ss := range byNode {
		slices.SortStableFunc(ss, func(a, b writableSample) int { return a.at.Compare(b.at) })
		var cur *writableSpan
		for _, s := range ss {
			if !s.writable || s.failed {
				cur = nil
				continue
			}
			if cur == nil {
				out = append(out, writableSpan{node: node, first: s.at, last: s.at})
				cur = &out[len(out)-1]
			}
			cur.last = s.at
			cur.samples++
		}
	}
	return out
}

// assertOneWritable fails when two nodes were seen writable at the same
// time, and checks that the watch saw every node often enough to tell.
// It returns the nodes that were writable, in order.
func assertOneWritable(t testing.TB, w *writableWatch) []string {
	t.Helper()
	samples := w.stop()
	count := map[string]int{}
	for _, s := range samples {
		if !s.failed {
			count[s.node]++
		}
	}
	spans := writableSpans(samples)
	slices.SortFunc(spans, func(a, b writableSpan) int { return a.first.Compare(b.first) })
	var order []string
	for i, a := range spans {
		if len(order) == 0 || order[len(order)-1] != a.node {
			order = append(order, a.node)
		}
		for _, b := range spans[i+1:] {
			if a.node != b.node && !b.first.After(a.last) {
				t.Errorf("two writable primaries: %s writable %s..%s, %s writable %s..%s",
					a.node, a.first.Format("15:04:05.000000"), a.last.Format("15:04:05.000000"),
					b.node, b.first.Format("15:04:05.000000"), b.last.Format("15:04:05.000000"))
			}
		}
	}
	t.Logf("writable watch: %d samples %v; writable in turn: %v", len(samples), count, order)
	return order
}
