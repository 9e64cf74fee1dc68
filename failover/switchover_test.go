package failover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/topology"
	"github.com/replctl/replctl/topology/topologytest"
)

// fakeCtl is a Controller over a pretend cluster: pg1 primary at lsn, pg2
// and pg3 replicas.
type fakeCtl struct {
	mu         sync.Mutex
	calls      []string
	lsn        topology.LSN
	replay     map[string]topology.LSN
	pids       map[string]int
	promoteErr error
	// stalled holds the candidate's replay short of what it received
	// until a reload wakes it.
	stalled bool
}

func newFakeCtl(lsn topology.LSN) *fakeCtl {
	return &fakeCtl{lsn: lsn, replay: map[string]topology.LSN{"pg2": lsn, "pg3": lsn}, pids: map[string]int{"pg2": 100, "pg3": 200}}
}

func (f *fakeCtl) log(format string, a ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, a...))
}

func (f *fakeCtl) called(prefix string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.ContainsFunc(f.calls, func(c string) bool { return strings.HasPrefix(c, prefix) })
}

func (f *fakeCtl) Checkpoint(_ context.Context, n string) error {
	f.log("checkpoint %s", n)
	return nil
}
func (f *fakeCtl) CurrentLSN(context.Context, string) (topology.LSN, error) {
	return f.lsn, nil
}
func (f *fakeCtl) ReceiveReplay(_ context.Context, n string) (topology.LSN, topology.LSN, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.replay[n]
	if n == "pg2" && f.stalled {
		return r, r - 0x100, nil
	}
	return r, r, nil
}
func (f *fakeCtl) WALReceiverPID(_ context.Context, n string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pids[n], nil
}
func (f *fakeCtl) FenceSQL(_ context.Context, n string) (*SQLFenceUndo, error) {
	f.log("fence-sql %s", n)
	return &SQLFenceUndo{Settings: map[string]*string{}}, nil
}
func (f *fakeCtl) UnfenceSQL(_ context.Context, n string, _ *SQLFenceUndo) error {
	f.log("unfence-sql %s", n)
	return nil
}
func (f *fakeCtl) CreateSlots(_ context.Context, n string, s []string) ([]string, error) {
	f.log("create-slots %s %v", n, s)
	return s, nil
}
func (f *fakeCtl) DropSlots(_ context.Context, n string, s []string) error {
	f.log("drop-slots %s %v", n, s)
	return nil
}
func (f *fakeCtl) Promote(_ context.Context, n string) error {
	f.log("promote %s", n)
	return f.promoteErr
}
func (f *fakeCtl) Writable(context.Context, string) (uint32, topology.LSN, error) {
	return 2, f.lsn + 0x1000, nil
}
func (f *fakeCtl) Repoint(_ context.Context, n, conninfo, slot string) error {
	f.mu.Lock()
	f.pids[n]++ // the WAL receiver restarts
	f.mu.Unlock()
	f.log("repoint %s %s", n, conninfo)
	return nil
}
func (f *fakeCtl) Reload(_ context.Context, n string) error {
	f.mu.Lock()
	f.stalled = false
	f.mu.Unlock()
	f.log("reload %s", n)
	return nil
}
func (f *fakeCtl) WaitStreaming(context.Context, string, uint32) error      { return nil }
func (f *fakeCtl) SetSyncStandbys(context.Context, string, string) error    { return nil }
func (f *fakeCtl) RecordToken(context.Context, string, int64, string) error { return nil }
func (f *fakeCtl) StreamingStandbys(_ context.Context, _ string, names []string) (int, error) {
	return len(names), nil
}
func (f *fakeCtl) RunCommand(_ context.Context, n, action string, _ map[string]string) (CommandResult, error) {
	f.log("command %s %s", n, action)
	return CommandResult{}, nil
}

// fakeRecorder is the lock as plans use it, always held.
type fakeRecorder struct{ st State }

func (r *fakeRecorder) Check(context.Context, time.Duration) error { return nil }
func (r *fakeRecorder) Token() int64                               { return 7 }
func (r *fakeRecorder) UpdateState(_ context.Context, fn func(*State) error) (*State, int64, error) {
	err := fn(&r.st)
	return &r.st, 1, err
}

// switchoverFixture is a 3-node cluster, pg1 primary; stop gives pg1 a stop
// command (the stop fence).
func switchoverFixture(t *testing.T, stop bool) (*config.Config, *topology.Snapshot) {
	t.Helper()
	cfg := &config.Config{Cluster: "demo", Etcd: config.Etcd{Prefix: "/replctl"}, Lock: config.Lock{TTL: 10 * time.Second}}
	for i, n := range []string{"pg1", "pg2", "pg3"} {
		cfg.Nodes = append(cfg.Nodes, config.Node{Name: n, DSN: fmt.Sprintf("host=127.0.0.1 port=%d user=postgres", 5432+i)})
	}
	if stop {
		cfg.Nodes[0].Commands = config.NodeCommands{Stop: "stop pg1", Start: "start pg1"}
	}
	lsn := topology.LSN(0x3000060)
	st := []topology.NodeStatus{
		topologytest.Primary("pg1", lsn, "pg2", "pg3"),
		topologytest.Replica("pg2", 5432, lsn),
		topologytest.Replica("pg3", 5432, lsn),
	}
	return cfg, topology.Classify(cfg, st, nil)
}

func runSwitchover(t *testing.T, cfg *config.Config, snap *topology.Snapshot, ctl *fakeCtl) (*Plan, *Result) {
	t.Helper()
	env := &Env{Ctl: ctl}
	rec := &fakeRecorder{}
	env.Acquire = func(context.Context) error { env.Lock = rec; return nil }
	p, err := BuildSwitchoverPlan(cfg, snap, SwitchoverOptions{Candidate: "pg2", CatchupTimeout: 2 * time.Second}, env)
	if err != nil {
		t.Fatal(err)
	}
	return p, Execute(t.Context(), p, env, nil, nil)
}

func stepIDs(p *Plan) []string {
	var ids []string
	for _, s := range p.Steps {
		ids = append(ids, s.ID)
	}
	return ids
}

// The SQL-fenced primary stays up and may write WAL of its own: the other
// replicas stop following it, before the fence, and cascade from the
// candidate, so that they never have WAL the candidate lacks.
func TestSwitchoverSQLFenceDetachesOtherReplicas(t *testing.T) {
	t.Parallel()
	cfg, snap := switchoverFixture(t, false)
	ctl := newFakeCtl(0x3000060)
	p, res := runSwitchover(t, cfg, snap, ctl)
	if res.Outcome != OutcomeSucceeded {
		t.Fatalf("outcome %s: %v", res.Outcome, res.Err)
	}
	ids := stepIDs(p)
	if i, j := slices.Index(ids, StepDetach+"-pg3"), slices.Index(ids, StepFence); !(i >= 0 && i < j) {
		t.Errorf("steps %v: want detach-pg3 before the fence", ids)
	}
	detach := slices.Index(ctl.calls, "repoint pg3 host=127.0.0.1 port=5433 user=postgres application_name=pg3")
	if fence := slices.Index(ctl.calls, "fence-sql pg1"); detach < 0 || detach > fence {
		t.Errorf("pg3 not pointed at the candidate before the fence: %v", ctl.calls)
	}

	cfg, snap = switchoverFixture(t, true)
	p, _ = runSwitchover(t, cfg, snap, newFakeCtl(0x3000060))
	if slices.Contains(stepIDs(p), StepDetach+"-pg3") {
		t.Errorf("stop fence plan detaches: %v", stepIDs(p))
	}
}

// A candidate that dies before pg_promote() reached it was not promoted:
// the fence is lifted and the other replicas follow the old primary again.
func TestSwitchoverPromoteNotSentUndoesFence(t *testing.T) {
	t.Parallel()
	for _, stop := range []bool{false, true} {
		cfg, snap := switchoverFixture(t, stop)
		ctl := newFakeCtl(0x3000060)
		ctl.promoteErr = fmt.Errorf("%w: connect pg2: connection refused", ErrPromoteNotSent)
		_, res := runSwitchover(t, cfg, snap, ctl)
		if res.Outcome != OutcomeFailed {
			t.Fatalf("stop %v: outcome %s", stop, res.Outcome)
		}
		unfenced := ctl.called("unfence-sql pg1")
		if stop {
			unfenced = ctl.called("command pg1 start")
		}
		if !unfenced {
			t.Errorf("stop %v: fence not undone: %v", stop, ctl.calls)
		}
		if !stop && !ctl.called("repoint pg3 host=127.0.0.1 port=5432") {
			t.Errorf("pg3 not pointed back at pg1: %v", ctl.calls)
		}
	}
}

// After a failure once pg_promote() may have been sent, the candidate may
// still be promoted: the old primary stays fenced, and the report says so.
func TestSwitchoverPromoteMaybeSentKeepsFence(t *testing.T) {
	t.Parallel()
	cfg, snap := switchoverFixture(t, false)
	ctl := newFakeCtl(0x3000060)
	ctl.promoteErr = errors.New("pg2: pg_promote(): unexpected EOF")
	_, res := runSwitchover(t, cfg, snap, ctl)
	if res.Outcome != OutcomeFailed || ctl.called("unfence-sql") {
		t.Fatalf("outcome %s, calls %v", res.Outcome, ctl.calls)
	}
	if !strings.Contains(res.Err.Error(), "may have been promoted") {
		t.Errorf("error %v", res.Err)
	}
}

// A candidate whose replay stalls with the final WAL received (its startup
// process sleeping after the lost stream) is woken by a reload rather than
// waited for.
func TestSwitchoverWakesStalledReplay(t *testing.T) {
	t.Parallel()
	cfg, snap := switchoverFixture(t, true)
	ctl := newFakeCtl(0x3000060)
	ctl.stalled = true
	_, res := runSwitchover(t, cfg, snap, ctl)
	if res.Outcome != OutcomeSucceeded || !ctl.called("reload pg2") {
		t.Fatalf("outcome %s (%v), calls %v", res.Outcome, res.Err, ctl.calls)
	}
}

// With the stop fence, a candidate whose receiver missed the end of the old
// primary's WAL (another replica received more) is not promoted: the fence
// is undone and the old primary serves again.
func TestSwitchoverStopFenceRefusesCandidateBehindAnotherReplica(t *testing.T) {
	t.Parallel()
	cfg, snap := switchoverFixture(t, true)
	ctl := newFakeCtl(0x3000060)
	ctl.replay["pg3"] = 0x3000100
	_, res := runSwitchover(t, cfg, snap, ctl)
	if res.Outcome != OutcomeFailed || !strings.Contains(res.Err.Error(), "pg3 received up to 0/3000100") {
		t.Fatalf("outcome %s: %v", res.Outcome, res.Err)
	}
	if ctl.called("promote") || !ctl.called("command pg1 start") {
		t.Errorf("calls %v: want no promotion and pg1 started again", ctl.calls)
	}
}
