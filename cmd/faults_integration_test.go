package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/testenv"
	"github.com/replctl/replctl/testenv/faultcheck"
)

// The fault matrix: an operation run by the real replctl binary is stopped
// at an exact step (REPLCTL_FAILPOINT) and a fault is injected there; then
// `replctl recover` (when the operation was interrupted) must leave the
// cluster whole. An independent checker (testenv/faultcheck: plain SQL and
// plain etcd reads) watches throughout: never two nodes acknowledging
// writes, no acknowledged write lost by a planned operation, and at the end
// one writable primary, every replica streaming from it, no orphaned slot,
// the lock free and the history closed.
//
// `make test` runs a representative slice (each fault kind and each plan
// kind at least once); `make faults` (REPLCTL_FAULTS=full) runs every
// mutating step of both switchovers, the rejoin and the drill, with each
// fault.

// Faults.
const (
	faultKill   = "kill-replctl" // SIGKILL of replctl at the failpoint
	faultNode   = "kill-node"    // immediate stop of the step's node
	faultHang   = "hang-node"    // SIGSTOP of the step's node, resumed after the operation
	faultRevoke = "revoke-lease" // the lock's lease revoked
	faultEtcd   = "etcd-down"    // etcd stopped, started again after the operation
	faultLeader = "etcd-leader"  // the etcd leader of 3 members killed, restarted after the operation
)

// matrixCase is one cell of the matrix.
type matrixCase struct {
	setup string // fenceStop, fenceSQLRejoin, or "drill"
	kind  string // switchover, rejoin, drill
	step  string // the plan step the failpoint names
	phase string // plan.PhaseBefore, PhaseChanged, ...
	fault string
	node  string // the node a node fault acts on
}

func (fc matrixCase) name() string {
	n := fmt.Sprintf("%s/%s/%s:%s/%s", fc.kind, fc.setup, fc.step, fc.phase, fc.fault)
	if fc.node != "" {
		n += "-" + fc.node
	}
	return n
}

// faultSlice is what `make test` runs.
var faultSlice = []matrixCase{
	{setup: fenceStop, kind: "switchover", step: "fence", phase: plan.PhaseChanged, fault: faultKill},
	{setup: fenceStop, kind: "switchover", step: "promote", phase: plan.PhaseChanged, fault: faultKill},
	{setup: fenceSQLRejoin, kind: "switchover", step: "fence", phase: plan.PhaseChanged, fault: faultKill},
	{setup: fenceSQLRejoin, kind: "switchover", step: "promote", phase: plan.PhaseBefore, fault: faultKill},
	{setup: fenceSQLRejoin, kind: "switchover", step: "detach-pg3", phase: plan.PhaseChanged, fault: faultKill},
	{setup: fenceSQLRejoin, kind: "switchover", step: "wait-replay", phase: plan.PhaseBefore, fault: faultRevoke},
	{setup: fenceStop, kind: "switchover", step: "wait-replay", phase: plan.PhaseBefore, fault: faultNode, node: "pg2"},
	{setup: fenceSQLRejoin, kind: "switchover", step: "detach-pg3", phase: plan.PhaseBefore, fault: faultHang, node: "pg3"},
	{setup: fenceStop, kind: "switchover", step: "final-lsn", phase: plan.PhaseBefore, fault: faultEtcd},
	{setup: fenceSQLRejoin, kind: "switchover", step: "fence", phase: plan.PhaseBefore, fault: faultLeader},
	{setup: fenceStop, kind: "rejoin", step: "rejoin", phase: plan.PhaseChanged, fault: faultKill},
	{setup: "drill", kind: "drill", step: "promote", phase: plan.PhaseChanged, fault: faultKill},
	{setup: "emergency", kind: "emergency", step: "promote", phase: plan.PhaseChanged, fault: faultKill},
}

// faultFull is what `make faults` runs: every mutating step of each plan
// with a kill before it and after its change, and the node, lease and etcd
// faults at the steps where they matter most.
func faultFull() []matrixCase {
	var out []matrixCase
	steps := map[string][]string{
		fenceStop:      {"save-settings", "create-slots", "checkpoint", "mark-fenced", "fence", "promote", "record", "repoint-pg3", "rejoin"},
		fenceSQLRejoin: {"save-settings", "create-slots", "detach-pg3", "mark-fenced", "fence", "promote", "record", "repoint-pg3", "rejoin"},
	}
	for _, setup := range []string{fenceStop, fenceSQLRejoin} {
		for _, s := range steps[setup] {
			if setup == fenceSQLRejoin && s == "repoint-pg3" {
				continue // pg3 cascades from the candidate: no repoint
			}
			for _, ph := range []string{plan.PhaseBefore, plan.PhaseChanged} {
				out = append(out, matrixCase{setup: setup, kind: "switchover", step: s, phase: ph, fault: faultKill})
			}
		}
		for _, s := range []string{"fence", "wait-replay", "promote"} {
			out = append(out,
				matrixCase{setup: setup, kind: "switchover", step: s, phase: plan.PhaseBefore, fault: faultRevoke},
				matrixCase{setup: setup, kind: "switchover", step: s, phase: plan.PhaseBefore, fault: faultEtcd},
				matrixCase{setup: setup, kind: "switchover", step: s, phase: plan.PhaseBefore, fault: faultLeader},
				matrixCase{setup: setup, kind: "switchover", step: s, phase: plan.PhaseBefore, fault: faultNode, node: "pg2"},
				matrixCase{setup: setup, kind: "switchover", step: s, phase: plan.PhaseBefore, fault: faultHang, node: "pg2"},
			)
			if setup == fenceSQLRejoin || s == "fence" {
				// After the stop fence pg1 is already down.
				out = append(out, matrixCase{setup: setup, kind: "switchover", step: s, phase: plan.PhaseBefore, fault: faultNode, node: "pg1"})
			}
		}
	}
	for _, s := range []string{"create-slots", "rejoin", "unfence"} {
		for _, ph := range []string{plan.PhaseBefore, plan.PhaseChanged} {
			out = append(out, matrixCase{setup: fenceStop, kind: "rejoin", step: s, phase: ph, fault: faultKill})
		}
	}
	for _, s := range []string{"fence", "promote", "repoint-pg3", "rejoin"} {
		out = append(out, matrixCase{setup: "drill", kind: "drill", step: s, phase: plan.PhaseChanged, fault: faultKill})
	}
	for _, s := range []string{"fence-sql", "mark-fenced", "create-slots", "promote", "record", "repoint-pg3"} {
		for _, ph := range []string{plan.PhaseBefore, plan.PhaseChanged} {
			out = append(out, matrixCase{setup: "emergency", kind: "emergency", step: s, phase: ph, fault: faultKill})
		}
	}
	return out
}

var (
	faultBinOnce sync.Once
	faultBin     string
	faultBinErr  error
	faultRows    []faultcheck.Outcome
	faultRowsMu  sync.Mutex
)

// replctlBinary builds the replctl binary once for the package's tests.
func replctlBinary(t testing.TB) string {
	t.Helper()
	faultBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "replctl-faults-")
		if err != nil {
			faultBinErr = err
			return
		}
		faultBin = filepath.Join(dir, "replctl")
		build := exec.Command("go", "build", "-o", faultBin, "github.com/replctl/replctl")
		build.Dir = ".."
		if out, err := build.CombinedOutput(); err != nil {
			faultBinErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if faultBinErr != nil {
		t.Fatal(faultBinErr)
	}
	return faultBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if faultBin != "" {
		_ = os.RemoveAll(filepath.Dir(faultBin))
	}
	faultRowsMu.Lock()
	rows := faultRows
	faultRowsMu.Unlock()
	if len(rows) > 0 {
		slices.SortFunc(rows, func(a, b faultcheck.Outcome) int { return strings.Compare(a.Case, b.Case) })
		fmt.Println("fault matrix:")
		_ = faultcheck.Table(os.Stdout, rows)
	}
	os.Exit(code)
}

func TestIntegrationFaultMatrix(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	cases := faultSlice
	if os.Getenv("REPLCTL_FAULTS") == "full" {
		cases = faultFull()
	}
	bin := replctlBinary(t)
	for _, fc := range cases {
		t.Run(fc.name(), func(t *testing.T) {
			t.Parallel()
			runFaultCase(t, bin, fc)
		})
	}
}

// runFaultCase runs one cell: the operation, stopped at the failpoint with
// the fault injected, then recover when it was interrupted, then the
// independent checks.
func runFaultCase(t *testing.T, bin string, fc matrixCase) {
	ctx := t.Context()
	opts := testenv.Options{Replicas: 2}
	if fc.fault == faultLeader {
		opts.EtcdMembers = 3
	}
	c := testenv.Start(t, opts)
	var cfg string
	switch fc.setup {
	case "drill":
		cfg = c.ConfigPath
	case "emergency":
		cfg = emConfig(t, c, nil, "")
		emSeedAsync(t, cfg)
	default:
		cfg, _ = switchoverConfig(t, c, fc.setup)
	}
	if fc.setup != "emergency" {
		appendConfig(t, cfg, "failover:\n  stream_timeout: 5s\n")
	}
	target := faultTarget(c)
	w, err := faultcheck.Watch(ctx, target, faultcheck.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	args := []string{"--config", cfg, "promote", "pg2", "--yes"}
	switch fc.kind {
	case "rejoin":
		// A switchover that leaves pg1 fenced, for the rejoin to bring back.
		if r := replctl(ctx, nil, "--config", cfg, "promote", "pg2", "--yes", "--no-rejoin"); r.Code != 0 {
			t.Fatalf("switchover before the rejoin: %s", r)
		}
		args = []string{"--config", cfg, "rejoin", "pg1", "--yes"}
	case "emergency":
		// pg1 dies for good: the failover promotes pg2 in its place.
		emCrash(t, c, "pg1")
		args = []string{"--config", cfg, "promote", "--emergency", "pg2", "--yes"}
	case "drill":
		args = []string{"--config", cfg, "runbook", "run", filepath.Join("..", "runbooks", "examples", "switchover-and-back.yaml"), "--yes", "--quiet"}
	}
	action := "pause"
	if fc.fault == faultKill {
		action = "kill"
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s:%s:%s", plan.FailpointEnv, fc.step, fc.phase, action))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var resume func()
	if action == "pause" {
		if faultWaitStopped(cmd.Process.Pid, done) {
			resume = injectFault(t, c, fc)
			_ = syscall.Kill(cmd.Process.Pid, syscall.SIGCONT)
		}
	}
	select {
	case <-done:
	case <-time.After(3 * time.Minute):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("replctl did not finish:\n%s", out.String())
	}
	if resume != nil {
		resume()
	}
	t.Logf("replctl %s (exit %d):\n%s", strings.Join(args[2:], " "), cmd.ProcessState.ExitCode(), out.String())

	recovered := faultRecover(t, cfg)
	var problems []string
	if recovered == "recover failed" {
		problems = append(problems, "recover failed")
	}
	if fc.kind == "emergency" && recovered == failover.RollBack {
		// Rolled back, the dead primary stays fenced and there is no
		// primary: the documented recovery is to run the failover again.
		if r := replctl(ctx, nil, "--config", cfg, "promote", "--emergency", "--yes"); r.Code != 0 {
			problems = append(problems, "the emergency failover run again failed: "+r.String())
		} else {
			recovered += ", failover run again"
		}
	}
	final := faultSettle(ctx, target, w)
	rep := w.Stop()
	for _, v := range rep.Violations {
		problems = append(problems, v.String())
	}
	problems = append(problems, final...)
	if lost, err := rep.Lost(ctx, target); err != nil {
		problems = append(problems, "lost writes: "+err.Error())
	} else if len(lost) > 0 && fc.kind != "emergency" {
		problems = append(problems, fmt.Sprintf("%d acknowledged writes lost (first %d)", len(lost), lost[0]))
	}
	result := "ok"
	switch {
	case strings.HasPrefix(recovered, ","):
		result = strings.TrimPrefix(recovered, ", ")
	case recovered != "":
		result = "recovered: " + recovered
	}
	faultRowsMu.Lock()
	faultRows = append(faultRows, faultcheck.Outcome{Case: fc.name(), Result: result, Violations: problems})
	faultRowsMu.Unlock()
	for _, p := range problems {
		t.Error(p)
	}
}

// faultTarget is the cluster as the independent checker sees it.
func faultTarget(c *testenv.Cluster) faultcheck.Target {
	t := faultcheck.Target{EtcdEndpoints: c.EtcdEndpoints, Prefix: "/replctl", Cluster: c.Name}
	for _, n := range c.Nodes {
		t.Nodes = append(t.Nodes, faultcheck.Node{Name: n.Name, DSN: n.DSN})
	}
	return t
}

// faultWaitStopped waits until the process stops itself at the failpoint
// (state T), or exits without reaching it; it reports whether it stopped.
func faultWaitStopped(pid int, done chan error) bool {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err == nil {
			s := string(b)
			if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
				switch s[i+2] {
				case 'T', 't':
					return true
				case 'Z':
					return false
				}
			}
		}
		select {
		case err := <-done:
			done <- err
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
	return false
}

// injectFault makes the case's fault while replctl is stopped at the
// failpoint, and returns what undoes it once the operation has finished.
func injectFault(t *testing.T, c *testenv.Cluster, fc matrixCase) func() {
	ctx := t.Context()
	switch fc.fault {
	case faultNode:
		emCrash(t, c, fc.node)
		return func() {
			if err := c.StartNode(ctx, fc.node); err != nil {
				t.Logf("start %s again: %v", fc.node, err)
			}
		}
	case faultHang:
		return emHang(t, c, fc.node)
	case faultRevoke:
		revokeLock(ctx, t, etcdClient(t, c), c.Name)
	case faultLeader:
		leader, err := c.EtcdLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.KillEtcdMember(leader); err != nil {
			t.Fatal(err)
		}
		return func() {
			if err := c.StartEtcdMember(leader); err != nil {
				t.Fatal(err)
			}
		}
	case faultEtcd:
		if err := c.StopEtcd(); err != nil {
			t.Fatal(err)
		}
		return func() {
			if err := c.StartEtcd(); err != nil {
				t.Fatal(err)
			}
		}
	}
	return nil
}

// faultRecover runs `replctl recover` when status reports an interrupted
// operation, waiting out the lease of a holder on another host (none here:
// a dead holder of this host is broken at once). It returns what recover
// did ("" when nothing was interrupted).
func faultRecover(t *testing.T, cfg string) string {
	ctx := t.Context()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := replctl(ctx, nil, "--config", cfg, "status", "-o", "json")
		var doc struct {
			Warnings []struct{ Code, Message string } `json:"warnings"`
		}
		_ = json.Unmarshal([]byte(st.Out), &doc)
		interrupted := slices.ContainsFunc(doc.Warnings, func(w struct{ Code, Message string }) bool { return w.Code == "interrupted_operation" })
		r := replctl(ctx, nil, "--config", cfg, "-o", "json", "recover", "--yes")
		var rd struct {
			NothingToDo bool `json:"nothing_to_do"`
			Plan        *struct {
				Notes []string `json:"notes"`
			} `json:"plan"`
		}
		_ = json.Unmarshal([]byte(r.Out), &rd)
		switch {
		case r.Code == ExitLocked && time.Now().Before(deadline):
			time.Sleep(500 * time.Millisecond)
			continue
		case r.Code != 0:
			t.Errorf("recover: %s", r)
			return "recover failed"
		case rd.NothingToDo:
			if interrupted {
				t.Errorf("status reported an interrupted operation that recover did not find")
			}
			return ""
		}
		if !interrupted {
			t.Errorf("recover found an interrupted operation that status did not report")
		}
		if rd.Plan != nil && len(rd.Plan.Notes) > 0 {
			return strings.SplitN(rd.Plan.Notes[0], " operation", 2)[0]
		}
		return "recovered"
	}
}

// faultSettle waits (bounded) until the independent end-state checks pass
// and returns what still fails.
func faultSettle(ctx context.Context, target faultcheck.Target, w *faultcheck.Watcher) []string {
	deadline := time.Now().Add(45 * time.Second)
	for {
		problems := w.Snapshot().Final(ctx, target)
		if len(problems) == 0 || time.Now().After(deadline) {
			return problems
		}
		time.Sleep(250 * time.Millisecond)
	}
}
