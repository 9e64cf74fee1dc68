package failover

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/topology"
)

// fakeCluster is a Controller over a pretend cluster that behaves like
// PostgreSQL where the engine's safety depends on it:
//   - a stopped node refuses connections (ErrConnect); a hung one accepts
//     and never answers;
//   - ALTER SYSTEM values live in auto until a reload makes them live;
//   - a changed primary_conninfo restarts a replica's WAL receiver only
//     when its startup process next waits for WAL, which a paused or
//     apply-delayed one does not: its receiver stays on the old upstream
//     until that upstream ends the stream, and then stays down;
//   - a fenced primary refuses writes; a stopped primary's replicas lose
//     their stream;
//   - slots in use cannot be dropped.
//
// Every change is logged, and a change made while the lock (lock) is lost
// is recorded as a violation: the engine must never do that.
type fakeCluster struct {
	mu    sync.Mutex
	nodes map[string]*fakeNode
	order []string
	calls []string
	lock  *fakeRecorder
	// violations are changes made without a live lock.
	violations []string
	pidSeq     int

	// Faults.
	promoteErr  error
	failSlotsAt int // CreateSlots fails after creating this many (0: never)
	// stalled holds pg2's replay short of what it received until a
	// reload wakes it.
	stalled bool
	// partialTail holds pg2's replay short of what it received for good,
	// as PostgreSQL's does when the stream of a dead primary stopped
	// inside a record: no reload helps.
	partialTail bool
	// behind is how far pg2's replay is behind the primary; each poll of
	// its positions replays catchupStep of it.
	behind      uint64
	catchupStep uint64
	// logical is each node's logical slots and their confirmed positions.
	logical map[string]map[string]topology.LSN
	// rejoinTakes is how long the rejoin command runs.
	rejoinTakes time.Duration
	// shutdownStream makes WatchShutdown work: its stream ends cleanly,
	// at the node's position, when the node is stopped, and with an error
	// when it is killed or fenced. Without it, WatchShutdown fails, as it
	// does for a user without the REPLICATION attribute.
	shutdownStream bool
	watches        map[string]func(topology.LSN, error)
	// stopTakes is how long the stop command runs on after the node's
	// shutdown checkpoint (the stream's end): the node refuses connections
	// meanwhile, and a start then fails, as pg_ctl's does.
	stopTakes time.Duration
	// stoppingLooks is how many more looks at a node left stopping (a
	// stop fence whose process died) answer 57P03 before it is down.
	stoppingLooks int
	// unreceived is WAL pg1 writes at its shutdown that pg2 never
	// receives, as when pg2's stream was down then.
	unreceived topology.LSN
	// clients is the node the hooks send clients to ("pg1" to begin
	// with, "" while hooks.pre_fence holds them back), as a virtual IP or
	// a pooler would.
	clients string
}

type fakeNode struct {
	name       string
	port       int
	up, hung   bool
	stopping   bool // the stop command still runs (stopTakes)
	inRecovery bool
	paused     bool
	delayed    bool
	timeline   uint32
	lsn        topology.LSN // current (primary) or received (replica)
	// auto is postgresql.auto.conf; conf is postgresql.conf; live is what
	// the server runs with since its last reload.
	auto, conf, live map[string]string
	slots            map[string]bool // name -> active
	// receiver: pid 0 when none; upstream is the node it streams from.
	receiverPID int
	upstream    string
}

func (n *fakeNode) setting(name string) string {
	if v, ok := n.auto[name]; ok {
		return v
	}
	return n.conf[name]
}

// newFakeCluster makes pg1 the primary at lsn and replicas of it, ports
// 5432 and up in name order as switchoverFixture configures them.
func newFakeCluster(lsn topology.LSN, replicas ...string) *fakeCluster {
	f := &fakeCluster{nodes: map[string]*fakeNode{}, catchupStep: 1 << 30, clients: "pg1"}
	add := func(name string, port int) *fakeNode {
		n := &fakeNode{name: name, port: port, up: true, timeline: 1, lsn: lsn,
			auto: map[string]string{}, slots: map[string]bool{},
			conf: map[string]string{"default_transaction_read_only": "off", "synchronous_standby_names": "", "primary_conninfo": "", "primary_slot_name": ""}}
		f.nodes[name] = n
		f.order = append(f.order, name)
		return n
	}
	add("pg1", 5432)
	for i, r := range replicas {
		n := add(r, 5433+i)
		n.inRecovery = true
		// The replica's own setting, as an operator wrote it: an alias
		// and options replctl's configuration does not have.
		n.auto["primary_conninfo"] = "host=127.0.0.1 port=5432 user=postgres application_name=" + r + " sslmode=prefer passfile=/etc/pgpass"
		n.auto["primary_slot_name"] = r
		f.nodes["pg1"].slots[r] = true
		f.pidSeq++
		n.receiverPID, n.upstream = f.pidSeq, "pg1"
	}
	for _, n := range f.nodes {
		n.live = map[string]string{}
		for k := range n.conf {
			n.live[k] = n.setting(k)
		}
	}
	return f
}

// newFakeCtl is the 3-node fake most tests use.
func newFakeCtl(lsn topology.LSN) *fakeCluster { return newFakeCluster(lsn, "pg2", "pg3") }

func (f *fakeCluster) log(format string, a ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, a...))
}

// change logs a change and flags it when the lock is lost. Called with mu.
func (f *fakeCluster) change(format string, a ...any) {
	s := fmt.Sprintf(format, a...)
	f.calls = append(f.calls, s)
	if f.lock != nil && f.lock.isLost() {
		f.violations = append(f.violations, s)
	}
}

func (f *fakeCluster) called(prefix string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.ContainsFunc(f.calls, func(c string) bool { return strings.HasPrefix(c, prefix) })
}

// node returns a node that answers, or the error a client would see.
// Called with mu held; a hung node releases it while it waits.
func (f *fakeCluster) node(ctx context.Context, name string) (*fakeNode, error) {
	n := f.nodes[name]
	if n == nil {
		return nil, fmt.Errorf("node %q is not configured", name)
	}
	if !n.up {
		if n.stopping && f.stoppingLooks > 0 {
			// Still shutting down: the postmaster answers, and refuses.
			if f.stoppingLooks--; f.stoppingLooks == 0 {
				n.stopping = false
			}
			return nil, fmt.Errorf("%s: %w", name, &pgconn.PgError{Severity: "FATAL", Code: "57P03", Message: "the database system is shutting down"})
		}
		return nil, fmt.Errorf("%w: %s: connection refused", pgctl.ErrConnect, name)
	}
	if n.hung {
		f.mu.Unlock()
		<-ctx.Done()
		f.mu.Lock()
		return nil, fmt.Errorf("%s: %w", name, ctx.Err())
	}
	return n, nil
}

func (f *fakeCluster) byPort(port int) string {
	for _, n := range f.nodes {
		if n.port == port {
			return n.name
		}
	}
	return ""
}

func conninfoPort(ci string) int {
	for _, kv := range strings.Fields(ci) {
		if v, ok := strings.CutPrefix(kv, "port="); ok {
			p, _ := strconv.Atoi(v)
			return p
		}
	}
	return 0
}

// reload makes auto live and lets the replica's startup process act on it.
func (f *fakeCluster) reload(n *fakeNode) {
	old := n.live["primary_conninfo"] + "|" + n.live["primary_slot_name"]
	for k := range n.conf {
		n.live[k] = n.setting(k)
	}
	if f.stalled && n.name == "pg2" {
		f.stalled = false
	}
	if n.inRecovery && old != n.live["primary_conninfo"]+"|"+n.live["primary_slot_name"] && !n.paused && !n.delayed {
		f.restartReceiver(n)
	}
}

// restartReceiver connects the receiver to what its live settings name.
func (f *fakeCluster) restartReceiver(n *fakeNode) {
	f.stopReceiver(n)
	up := f.nodes[f.byPort(conninfoPort(n.live["primary_conninfo"]))]
	if up == nil || !up.up {
		return
	}
	slot := n.live["primary_slot_name"]
	if slot != "" {
		if _, ok := up.slots[slot]; !ok {
			return // "replication slot does not exist": it retries
		}
		up.slots[slot] = true
	}
	f.pidSeq++
	n.receiverPID, n.upstream = f.pidSeq, up.name
	if !up.inRecovery && up.timeline > n.timeline {
		n.timeline = up.timeline
	}
}

func (f *fakeCluster) stopReceiver(n *fakeNode) {
	if up := f.nodes[n.upstream]; up != nil {
		if s := n.live["primary_slot_name"]; s != "" {
			if _, ok := up.slots[s]; ok {
				up.slots[s] = false
			}
		}
	}
	n.receiverPID, n.upstream = 0, ""
}

func (f *fakeCluster) Checkpoint(ctx context.Context, node string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, err := f.node(ctx, node)
	f.log("checkpoint %s", node)
	return err
}

func (f *fakeCluster) CurrentLSN(ctx context.Context, node string) (topology.LSN, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.node(ctx, node)
	if err != nil {
		return 0, err
	}
	return n.lsn, nil
}

func (f *fakeCluster) FinalLSN(ctx context.Context, node string) (topology.LSN, error) {
	return f.CurrentLSN(ctx, node)
}

func (f *fakeCluster) ReceiveReplay(ctx context.Context, node string) (topology.LSN, topology.LSN, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.node(ctx, node)
	if err != nil {
		return 0, 0, err
	}
	if !n.inRecovery {
		return 0, 0, fmt.Errorf("%s: no replay position: is it in recovery?", node)
	}
	r := n.lsn
	if up := f.nodes[n.upstream]; up != nil && !up.inRecovery {
		r = up.lsn
		n.lsn = r
	}
	replay := r
	if node == "pg2" {
		if f.stalled || f.partialTail {
			replay = r - 0x100
		}
		if f.behind > 0 {
			replay = r - topology.LSN(f.behind)
			f.behind -= min(f.behind, f.catchupStep)
		}
	}
	return r, replay, nil
}

func (f *fakeCluster) Reload(ctx context.Context, node string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.node(ctx, node)
	if err != nil {
		return err
	}
	f.log("reload %s", node)
	f.reload(n)
	return nil
}

func (f *fakeCluster) ReceiverUpstream(ctx context.Context, node string) (int, string, int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.node(ctx, node)
	if err != nil || n.receiverPID == 0 {
		return 0, "", 0, err
	}
	return n.receiverPID, "127.0.0.1", f.nodes[n.upstream].port, nil
}

func (f *fakeCluster) TerminateWALSenders(ctx context.Context, node, slot, app string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.node(ctx, node); err != nil {
		return 0, err
	}
	f.change("terminate-walsenders %s %s", node, app)
	count := 0
	for _, name := range f.order {
		r := f.nodes[name]
		if r.upstream == node && (r.live["primary_slot_name"] == slot || name == app) {
			count++
			f.stopReceiver(r)
			if !r.paused && !r.delayed {
				f.restartReceiver(r)
			}
		}
	}
	return count, nil
}

func (f *fakeCluster) ReplayPaused(ctx context.Context, node string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.node(ctx, node)
	if err != nil {
		return false, err
	}
	return n.paused, nil
}

func (f *fakeCluster) CaptureSettings(ctx context.Context, node string, names ...string) (*pgctl.SettingsSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.node(ctx, node)
	if err != nil {
		return nil, err
	}
	s := &pgctl.SettingsSnapshot{Settings: map[string]*string{}}
	for _, name := range names {
		if v, ok := n.auto[name]; ok {
			s.Settings[name] = &v
		} else {
			s.Settings[name] = nil
		}
	}
	return s, nil
}

func (f *fakeCluster) RestoreSettings(ctx context.Context, node string, s *pgctl.SettingsSnapshot) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.node(ctx, node)
	if err != nil {
		return err
	}
	f.change("restore-settings %s", node)
	for name, v := range s.Settings {
		if v == nil {
			delete(n.auto, name)
		} else {
			n.auto[name] = *v
		}
	}
	f.reload(n)
	return nil
}

func (f *fakeCluster) Setting(ctx context.Context, node, name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.node(ctx, node)
	if err != nil {
		return "", err
	}
	if name == "server_version" {
		return "15.18", nil
	}
	return n.live[name], nil
}

func (f *fakeCluster) FenceSQL(ctx context.Context, node string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.node(ctx, node)
	if err != nil {
		return err
	}
	f.change("fence-sql %s", node)
	n.auto["default_transaction_read_only"] = "on"
	n.auto["synchronous_standby_names"] = topology.FenceStandbyName
	f.reload(n)
	return nil
}

func (f *fakeCluster) CreateSlots(ctx context.Context, node string, slots []string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.node(ctx, node)
	if err != nil {
		return nil, err
	}
	f.change("create-slots %s %v", node, slots)
	var made []string
	for _, s := range slots {
		if f.failSlotsAt > 0 && len(made) == f.failSlotsAt {
			return made, fmt.Errorf("create slot %s: all replication slots are in use", s)
		}
		if _, ok := n.slots[s]; !ok {
			n.slots[s] = false
			made = append(made, s)
		}
	}
	return made, nil
}

func (f *fakeCluster) DropSlots(ctx context.Context, node string, slots []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.node(ctx, node)
	if err != nil {
		return err
	}
	f.change("drop-slots %s %v", node, slots)
	for _, s := range slots {
		if active, ok := n.slots[s]; ok && !active {
			delete(n.slots, s)
		}
	}
	return nil
}

func (f *fakeCluster) Promote(ctx context.Context, node string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.node(ctx, node)
	if err != nil {
		return fmt.Errorf("%w: %w", pgctl.ErrPromoteNotSent, err)
	}
	f.change("promote %s", node)
	if f.promoteErr != nil {
		return f.promoteErr
	}
	f.stopReceiver(n)
	n.inRecovery, n.timeline = false, n.timeline+1
	// Its cascading standbys follow the timeline switch on their stream.
	for _, r := range f.nodes {
		if r.upstream == node {
			r.timeline = n.timeline
		}
	}
	return nil
}

func (f *fakeCluster) Writable(ctx context.Context, node string) (uint32, topology.LSN, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.node(ctx, node)
	if err != nil {
		return 0, 0, err
	}
	if n.inRecovery || n.live["default_transaction_read_only"] == "on" {
		return 0, 0, errors.New("transaction_read_only is on")
	}
	return n.timeline, n.lsn + 0x1000, nil
}

func (f *fakeCluster) Repoint(ctx context.Context, node, conninfo, slot string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.node(ctx, node)
	if err != nil {
		return err
	}
	f.change("repoint %s %s", node, conninfo)
	n.auto["primary_conninfo"], n.auto["primary_slot_name"] = conninfo, slot
	f.reload(n)
	return nil
}

func (f *fakeCluster) WaitStreaming(ctx context.Context, node string, timeline uint32) error {
	return pgctl.PollUntil(ctx, nil, time.Millisecond, func(ctx context.Context) (bool, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		n, err := f.node(ctx, node)
		if err != nil {
			return false, err
		}
		if n.receiverPID == 0 && !n.paused && !n.delayed {
			// The startup process retries streaming with what is live.
			f.restartReceiver(n)
		}
		return n.receiverPID != 0 && n.timeline >= timeline, nil
	}, "timed out")
}

func (f *fakeCluster) SetSyncStandbys(ctx context.Context, node, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.node(ctx, node)
	if err != nil {
		return err
	}
	f.change("set-sync %s %s", node, value)
	n.auto["synchronous_standby_names"] = value
	f.reload(n)
	return nil
}

func (f *fakeCluster) StreamingStandbys(_ context.Context, node string, names []string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, name := range slices.Sorted(maps.Keys(f.nodes)) {
		if r := f.nodes[name]; r.upstream == node && (slices.Contains(names, "*") || slices.ContainsFunc(names, func(n string) bool { return strings.EqualFold(n, name) })) {
			out = append(out, name)
		}
	}
	return out, nil
}

func (f *fakeCluster) RecordToken(ctx context.Context, node string, _ int64, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, err := f.node(ctx, node)
	f.change("record-token %s", node)
	return err
}

func (f *fakeCluster) RunCommand(ctx context.Context, node, action string, _ map[string]string) (pgctl.CommandResult, error) {
	if action == pgctl.ActionRejoin && f.rejoinTakes > 0 {
		// pg_rewind takes a while, and killed halfway it leaves the node
		// broken for good.
		f.mu.Lock()
		f.log("rejoin %s started", node)
		f.mu.Unlock()
		select {
		case <-time.After(f.rejoinTakes):
		case <-ctx.Done():
			f.mu.Lock()
			defer f.mu.Unlock()
			f.nodes[node].up = false
			f.log("rejoin %s cut off halfway", node)
			return pgctl.CommandResult{Node: node, Action: action, ExitCode: -1}, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.nodes[node]
	f.change("command %s %s", node, action)
	switch action {
	case pgctl.ActionStop, pgctl.ActionFence, pgctl.ActionKill:
		if action == pgctl.ActionStop && node == "pg1" && f.unreceived > 0 {
			f.stopReceiver(f.nodes["pg2"])
			n.lsn += f.unreceived
		}
		if end := f.watches[node]; end != nil {
			var err error
			if action != pgctl.ActionStop {
				err = errors.New("fake: connection lost")
			}
			end(n.lsn, err)
			delete(f.watches, node)
		}
		n.up = false
		for _, r := range f.nodes {
			if r.upstream == node {
				if action == pgctl.ActionStop {
					r.lsn = n.lsn // a clean shutdown waits for connected standbys
				}
				f.stopReceiver(r)
			}
		}
		if action == pgctl.ActionStop && f.stopTakes > 0 {
			n.stopping = true
			f.mu.Unlock()
			select {
			case <-time.After(f.stopTakes):
			case <-ctx.Done():
			}
			f.mu.Lock()
			n.stopping = false
			f.log("command %s stop returned", node)
		}
	case pgctl.ActionStart:
		if n.stopping {
			f.violations = append(f.violations, "start "+node+" while it is still shutting down")
			return pgctl.CommandResult{Node: node, Action: action, ExitCode: 1}, errors.New("fake: another server might be running")
		}
		n.up = true
		f.reload(n)
	case pgctl.ActionRejoin:
		n.up, n.inRecovery = true, true
		n.auto["primary_conninfo"] = "host=127.0.0.1 port=" + strconv.Itoa(f.primaryPort()) + " user=postgres"
		n.auto["primary_slot_name"] = node
		delete(n.auto, "default_transaction_read_only")
		delete(n.auto, "synchronous_standby_names")
		f.reload(n)
		f.restartReceiver(n)
	}
	return pgctl.CommandResult{Node: node, Action: action}, nil
}

func (f *fakeCluster) primaryPort() int {
	for _, n := range f.nodes {
		if n.up && !n.inRecovery {
			return n.port
		}
	}
	return 0
}

// writable lists the nodes that would accept a write now.
func (f *fakeCluster) writable() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, name := range f.order {
		n := f.nodes[name]
		if n.up && !n.inRecovery && n.live["default_transaction_read_only"] != "on" && n.live["synchronous_standby_names"] != topology.FenceStandbyName {
			out = append(out, name)
		}
	}
	return out
}

// nodeState is what a test compares before and after an operation.
type nodeState struct {
	Up, InRecovery bool
	Auto           map[string]string
	Slots          []string
	Clients        bool // the hooks send clients to it
}

func (f *fakeCluster) state() map[string]nodeState {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]nodeState{}
	for name, n := range f.nodes {
		out[name] = nodeState{Up: n.up, InRecovery: n.inRecovery, Auto: maps.Clone(n.auto), Slots: slices.Sorted(maps.Keys(n.slots)), Clients: f.clients == name}
	}
	return out
}

// dangling lists replicas whose settings name a node or slot that does
// not exist: what a half-moved replica looks like when it next connects.
func (f *fakeCluster) dangling() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, name := range f.order {
		n := f.nodes[name]
		if !n.inRecovery {
			continue
		}
		up := f.nodes[f.byPort(conninfoPort(n.setting("primary_conninfo")))]
		if up == nil {
			out = append(out, name+": primary_conninfo names no node")
			continue
		}
		if s := n.setting("primary_slot_name"); s != "" {
			if _, ok := up.slots[s]; !ok {
				out = append(out, fmt.Sprintf("%s: slot %s does not exist on %s", name, s, up.name))
			}
		}
	}
	return out
}

// fakeRecorder is the lock as plans use it: held until lose is called.
type fakeRecorder struct {
	mu     sync.Mutex
	st     etcdlock.State
	lost   bool
	ctx    context.Context
	cancel context.CancelFunc
}

func (r *fakeRecorder) init() {
	if r.ctx == nil {
		r.ctx, r.cancel = context.WithCancel(context.Background())
	}
}

// Context ends when the lock is lost or released, as a lease's does.
func (r *fakeRecorder) Context() context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.init()
	return r.ctx
}

func (r *fakeRecorder) Err() error {
	if r.isLost() {
		return &etcdlock.LockLostError{Cluster: "demo", Reason: "the lease was revoked"}
	}
	return nil
}

func (r *fakeRecorder) OperationID() string { return "42" }

func (r *fakeRecorder) Release(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.init()
	r.cancel()
	return nil
}

func (r *fakeRecorder) isLost() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lost
}

func (r *fakeRecorder) lose() {
	r.mu.Lock()
	r.lost = true
	r.init()
	r.cancel()
	r.mu.Unlock()
}

// fakeLocker hands out rec as the lock, with a history that keeps events.
type fakeLocker struct {
	rec    *fakeRecorder
	mu     sync.Mutex
	events []plan.Event
	end    plan.Outcome
}

func (l *fakeLocker) Lock(context.Context, OperationSpec) (HeldLock, History, error) {
	return l.rec, l, nil
}

func (l *fakeLocker) ID() string { return "42" }

func (l *fakeLocker) Observe(_ context.Context, events ...plan.Event) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, events...)
	return nil
}

func (l *fakeLocker) Finish(_ context.Context, o plan.Outcome, _ error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.end = o
	return nil
}

func (r *fakeRecorder) Check(context.Context, time.Duration) error {
	if r.isLost() {
		return &etcdlock.LockLostError{Reason: "the lease was revoked"}
	}
	return nil
}

func (r *fakeRecorder) Token() int64 { return 7 }

func (r *fakeRecorder) UpdateState(_ context.Context, fn func(*etcdlock.State) error) (*etcdlock.State, int64, error) {
	if r.isLost() {
		return nil, 0, &etcdlock.LockLostError{Reason: "the lease was revoked"}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	err := fn(&r.st)
	// As the etcd lock does: a new fence mark names the operation.
	for i := range r.st.Fenced {
		if f := &r.st.Fenced[i]; f.Token == 0 {
			f.Token, f.OperationID = r.Token(), r.OperationID()
		}
	}
	return &r.st, 1, err
}

// virtualClock is a pgctl.Clock on which every wait passes at once: After
// moves the clock on by d and fires. Waits then take no real time, and
// what depends on elapsed time (a stall, a grace period) happens after a
// known number of polls.
type virtualClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *virtualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *virtualClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	c.now = c.now.Add(d)
	t := c.now
	c.mu.Unlock()
	ch := make(chan time.Time, 1)
	ch <- t
	return ch
}

// LogicalSlotPositions: the fake has no logical slots but those a test
// puts in logical (name -> confirmed position).
func (f *fakeCluster) LogicalSlotPositions(ctx context.Context, node string) (map[string]topology.LSN, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.node(ctx, node); err != nil {
		return nil, err
	}
	out := map[string]topology.LSN{}
	for k, v := range f.logical[node] {
		out[k] = v
	}
	return out, nil
}

func (f *fakeCluster) CreateLogicalSlots(ctx context.Context, node string, slots []pgctl.LogicalSlot) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.node(ctx, node)
	if err != nil {
		return nil, err
	}
	var made []string
	for _, s := range slots {
		if f.logical == nil {
			f.logical = map[string]map[string]topology.LSN{}
		}
		if f.logical[node] == nil {
			f.logical[node] = map[string]topology.LSN{}
		}
		if _, ok := f.logical[node][s.Name]; !ok {
			f.logical[node][s.Name] = n.lsn
			made = append(made, s.Name)
		}
	}
	f.log("create logical slots %v on %s", made, node)
	return made, nil
}

func (f *fakeCluster) HoldWrites(ctx context.Context, node string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.node(ctx, node)
	if err != nil {
		return err
	}
	n.auto["default_transaction_read_only"] = "on"
	f.reload(n)
	f.log("hold writes on %s", node)
	return nil
}

// RunHook models the hooks of a virtual IP or a pooler: pre_fence sends
// clients nowhere (with REPLCTL_UNDO, back to the node), post_promote to
// the node.
func (f *fakeCluster) RunHook(ctx context.Context, name, command, node string, env map[string]string) (pgctl.CommandResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.change("hook %s %s undo=%s", name, node, env["REPLCTL_UNDO"])
	switch {
	case name == HookPreFence && env["REPLCTL_UNDO"] == "":
		f.clients = ""
	default:
		f.clients = node
	}
	return pgctl.CommandResult{Node: node, Action: "hook " + name, Command: command}, nil
}

func (f *fakeCluster) WatchShutdown(ctx context.Context, node string) (*pgctl.ShutdownWatch, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.node(ctx, node); err != nil {
		return nil, err
	}
	if !f.shutdownStream {
		return nil, errors.New("fake: no replication connection")
	}
	w, end := pgctl.NewShutdownWatch()
	if f.watches == nil {
		f.watches = map[string]func(topology.LSN, error){}
	}
	f.watches[node] = end
	f.log("watch shutdown %s", node)
	return w, nil
}
