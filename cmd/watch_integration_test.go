package cmd

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/testenv"
	"github.com/replctl/replctl/testenv/faultcheck"
)

// Automatic failover on real servers: replctl watch runs as the real
// binary (so that a test can SIGKILL it), its JSON log is read back, and
// the independent checker (testenv/faultcheck) watches every node
// throughout: never two nodes acknowledging writes, and with a synchronous
// quorum no acknowledged write lost.

// wpWindow is the tests' confirmation window; wpInterval their watch
// interval (the defaults are 2s and 1s: the benchmark measures those).
const (
	wpWindow   = 500 * time.Millisecond
	wpInterval = 250 * time.Millisecond
)

// watcherProc is one replctl watch process.
type watcherProc struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

func (w *watcherProc) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.out.Write(p)
}

// events are the watcher's log lines so far.
func (w *watcherProc) events() []struct {
	Time               time.Time
	Level, Code, Node  string
	Message, Operation string
} {
	w.mu.Lock()
	text := w.out.String()
	w.mu.Unlock()
	var out []struct {
		Time               time.Time
		Level, Code, Node  string
		Message, Operation string
	}
	for _, line := range strings.Split(text, "\n") {
		var e struct {
			Time               time.Time
			Level, Code, Node  string
			Message, Operation string
		}
		if json.Unmarshal([]byte(line), &e) == nil && e.Code != "" {
			out = append(out, e)
		}
	}
	return out
}

// has reports whether the watcher logged code (about node, when given).
func (w *watcherProc) has(code, node string) bool {
	for _, e := range w.events() {
		if e.Code == code && (node == "" || e.Node == node) {
			return true
		}
	}
	return false
}

// await waits until the watcher logs code.
func (w *watcherProc) await(t testing.TB, code, node string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !w.has(code, node) {
		select {
		case <-w.done:
			t.Fatalf("watcher %s exited before logging %s:\n%s", w.name, code, w.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("watcher %s did not log %s %s within %s:\n%s", w.name, code, node, timeout, w.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (w *watcherProc) log() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.out.String()
}

// kill is SIGKILL: no resignation, the election lease has to expire.
func (w *watcherProc) kill() {
	_ = w.cmd.Process.Kill()
	<-w.done
}

// stop is SIGTERM, and waits for the graceful exit.
func (w *watcherProc) stop(t testing.TB) {
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.done:
	case <-time.After(60 * time.Second):
		w.kill()
		t.Errorf("watcher %s did not stop on SIGTERM within 60s", w.name)
	}
}

// startWatcher runs replctl watch -o json on cfgPath with env added.
func startWatcher(t testing.TB, bin, name, cfgPath string, env ...string) *watcherProc {
	return startWatcherArgs(t, bin, name, cfgPath, []string{"--interval", wpInterval.String()}, env...)
}

// startWatcherArgs runs replctl watch -o json with args and env added.
func startWatcherArgs(t testing.TB, bin, name, cfgPath string, args []string, env ...string) *watcherProc {
	t.Helper()
	w := &watcherProc{name: name, done: make(chan struct{})}
	w.cmd = exec.Command(bin, append([]string{"--config", cfgPath, "--timeout", "1s", "-o", "json", "watch"}, args...)...)
	w.cmd.Env = append(os.Environ(), env...)
	w.cmd.Stdout, w.cmd.Stderr = w, w
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = w.cmd.Wait()
		close(w.done)
	}()
	t.Cleanup(func() {
		select {
		case <-w.done:
		default:
			w.kill()
		}
		if t.Failed() {
			t.Logf("watcher %s log:\n%s", name, w.log())
		}
	})
	return w
}

// wpConfig is the cluster's configuration for the watch tests: a short
// window and election lease, and extra appended.
func wpConfig(t *testing.T, c *testenv.Cluster, extra string) string {
	t.Helper()
	s := fmt.Sprintf("watch:\n  election_ttl: 2s\n%s", extra)
	p := emConfig(t, c, nil, "")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	out := strings.Replace(string(b), "confirm_window: "+emWindow.String(), "confirm_window: "+wpWindow.String(), 1) + s
	if err := os.WriteFile(p, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// wpKillPostmaster is kill -9 of the postmaster alone, as an OOM killer
// does: its children notice and exit on their own.
func wpKillPostmaster(t testing.TB, c *testenv.Cluster, name string) time.Time {
	t.Helper()
	pm := emPostmaster(t, c.Node(name))
	at := time.Now()
	if err := syscall.Kill(pm, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	return at
}

// wpAutomatic counts the automatic failovers in the history that promoted.
func wpAutomatic(t testing.TB, c *testenv.Cluster) (n int, ids []string) {
	t.Helper()
	cli := etcdClient(t, c)
	recs, err := etcdlock.ListHistory(t.Context(), cli, "/replctl", c.Name, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Kind != kindAutomatic {
			continue
		}
		for _, s := range r.Steps {
			if s.ID == "promote" && s.Outcome == "done" {
				n++
				ids = append(ids, r.ID)
			}
		}
	}
	return n, ids
}

// wpCheck starts the independent checker; finish stops it and fails the
// test on a violation, on a lost acknowledged write (lossless) and on an
// end state that is not whole; it returns the report.
func wpCheck(t *testing.T, c *testenv.Cluster) (finish func(lossless bool) *faultcheck.Report) {
	t.Helper()
	target := faultTarget(c)
	w, err := faultcheck.Watch(t.Context(), target, faultcheck.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Stop() })
	return func(lossless bool) *faultcheck.Report {
		t.Helper()
		problems := faultSettle(t.Context(), target, w)
		rep := w.Stop()
		for _, v := range rep.Violations {
			t.Errorf("checker: %s", v)
		}
		for _, p := range problems {
			t.Errorf("end state: %s", p)
		}
		if lossless {
			if lost, err := rep.Lost(t.Context(), target); err != nil {
				t.Errorf("lost writes: %v", err)
			} else if len(lost) > 0 {
				t.Errorf("%d acknowledged writes lost (first %d)", len(lost), lost[0])
			}
		}
		return rep
	}
}

// firstAckAfter is the first write acknowledged after at by a node other
// than old, and how long after at it came.
func firstAckAfter(rep *faultcheck.Report, at time.Time, old string) (time.Duration, bool) {
	for _, w := range rep.Acked {
		if w.At.After(at) && w.Node != old {
			return w.At.Sub(at), true
		}
	}
	return 0, false
}

func wpSkip(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
}

// wpStart is every watch test's start, run in parallel: the replctl binary,
// a cluster made with opts, and its configuration (wpConfig with extra).
func wpStart(t *testing.T, opts testenv.Options, extra string) (bin string, c *testenv.Cluster, cfg string) {
	t.Helper()
	wpSkip(t)
	t.Parallel()
	bin = replctlBinary(t)
	c = testenv.Start(t, opts)
	return bin, c, wpConfig(t, c, extra)
}

// TestWatchKillPrimary: kill -9 of the primary's postmaster under writes
// on a synchronous cluster: the watcher promotes exactly one replica,
// writes resume on it, no acknowledged write is lost, the other replica
// follows; the old primary, restarted as an init system would, is fenced
// and rejoined; a second crash within watch.min_interval is not failed
// over automatically until an operator acknowledges (replctl resume).
func TestWatchKillPrimary(t *testing.T) {
	bin, c, cfg := wpStart(t, testenv.Options{Replicas: 2, Sync: true}, "")
	ctx := t.Context()
	finish := wpCheck(t, c)
	w := startWatcher(t, bin, "w1", cfg)
	w.await(t, "seen_ok", "", 30*time.Second)

	crash := wpKillPostmaster(t, c, "pg1")
	w.await(t, "failover_done", "pg1", 60*time.Second)
	if n, _ := wpAutomatic(t, c); n != 1 {
		t.Fatalf("want 1 automatic failover, got %d", n)
	}
	st := emAwaitStatus(t, cfg, "one new primary with the other replica following", func(s *emStatus) bool {
		return s.streamsOn("pg2", 2, "pg3") || s.streamsOn("pg3", 2, "pg2")
	})
	newPrimary := *st.Primary

	// The old primary comes back writable: re-fenced, then rejoined.
	if err := c.StartNode(ctx, "pg1"); err != nil {
		t.Fatal(err)
	}
	w.await(t, "fence_done", "pg1", 30*time.Second)
	w.await(t, "rejoin_done", "pg1", 90*time.Second)
	emAwaitStatus(t, cfg, "pg1 a replica of "+newPrimary, func(s *emStatus) bool {
		return s.streamsOn(newPrimary, 2, emOther(newPrimary, "pg2", "pg3"), "pg1")
	})
	rep := finish(true)
	if d, ok := firstAckAfter(rep, crash, "pg1"); ok {
		t.Logf("crash -> first acknowledged write on the new primary: %s (window %s, interval %s)", d.Round(time.Millisecond), wpWindow, wpInterval)
	} else {
		t.Errorf("no write acknowledged after the crash")
	}

	// A second crash within min_interval: not failed over automatically.
	wpKillPostmaster(t, c, newPrimary)
	w.await(t, "flapping", newPrimary, 60*time.Second)
	time.Sleep(3 * wpWindow)
	if n, _ := wpAutomatic(t, c); n != 1 {
		t.Fatalf("a second automatic failover ran within min_interval (%d in all)", n)
	}
	// The operator acknowledges: the failover runs.
	emExpect(t, 0, cfg, "resume")
	w.await(t, "failover_done", newPrimary, 60*time.Second)
	if n, _ := wpAutomatic(t, c); n != 2 {
		t.Fatalf("want 2 automatic failovers after resume, got %d", n)
	}
	w.stop(t)
	if !w.has("stop", "") {
		t.Errorf("no graceful stop logged:\n%s", w.log())
	}
}

// TestWatchThreeWatchers: three watchers, one leader; the leader is
// SIGKILLed first, and a standby takes over; then the primary dies and is
// failed over exactly once. Then the new leader is killed in the middle
// of the next failover (after pg_promote) and a standby completes it with
// recover: still exactly one promotion per failure.
func TestWatchThreeWatchers(t *testing.T) {
	bin, c, cfg := wpStart(t, testenv.Options{Replicas: 2, Sync: true}, "  min_interval: 1s\n")
	ctx := t.Context()
	finish := wpCheck(t, c)
	// w1 first, so that it is the leader; w2 dies at the promotion of any
	// failover it runs.
	w1 := startWatcher(t, bin, "w1", cfg)
	w1.await(t, "seen_ok", "", 30*time.Second)
	w2 := startWatcher(t, bin, "w2", cfg, "REPLCTL_FAILPOINT=promote:changed:kill")
	// w2 campaigns before w3 does: the campaign keys are the queue.
	wpAwaitWatchers(t, cfg, 2)
	w3 := startWatcher(t, bin, "w3", cfg)
	wpAwaitWatchers(t, cfg, 3)
	w3.await(t, "standby", "", 30*time.Second)
	st := emStatusOf(t, cfg)
	if len(st.Watchers) != 3 || !st.Watchers[0].Leader || st.Watchers[0].PID != w1.cmd.Process.Pid {
		t.Fatalf("status does not show w1 leading 3 watchers: %+v", st.Watchers)
	}

	w1.kill()
	// w2 campaigned before w3: it leads after w1's lease expires.
	w2.await(t, "leader", "", 30*time.Second)
	wpKillPostmaster(t, c, "pg1")
	// w2 dies after pg_promote; w3 is elected and recovers the operation.
	<-w2.done
	w3.await(t, "leader", "", 30*time.Second)
	w3.await(t, "recover_done", "", 60*time.Second)
	st = emAwaitStatus(t, cfg, "one new primary", func(s *emStatus) bool {
		return s.streamsOn("pg2", 2, "pg3") || s.streamsOn("pg3", 2, "pg2")
	})
	if w3.has("failover", "") {
		t.Errorf("w3 ran a second failover instead of recovering the first:\n%s", w3.log())
	}
	_ = st
	w3.stop(t)
	finish(true)
	_ = ctx
}

// TestWatchUnreachableNotDead: the watcher reaches the primary through a
// proxy that stops forwarding, while the replicas stream from it directly:
// "unreachable, not dead", for many windows, and no failover.
func TestWatchUnreachableNotDead(t *testing.T) {
	bin, c, cfg := wpStart(t, testenv.Options{Replicas: 2}, "")
	px := testenv.StartProxy(t, fmt.Sprintf("127.0.0.1:%d", c.Node("pg1").Port))
	viaProxy := strings.Replace(readFile(t, cfg), c.Node("pg1").DSN, c.Node("pg1").DSNVia(px.Addr()), 1)
	if err := os.WriteFile(cfg, []byte(viaProxy), 0o644); err != nil {
		t.Fatal(err)
	}
	finish := wpCheck(t, c)
	w := startWatcher(t, bin, "w1", cfg)
	w.await(t, "seen_ok", "", 30*time.Second)
	px.Block()
	w.await(t, "primary_unreachable", "pg1", 30*time.Second)
	time.Sleep(8 * wpWindow)
	if w.has("primary_dead", "") || w.has("failover", "") {
		t.Fatalf("the watcher failed over a primary the replicas still hear:\n%s", w.log())
	}
	px.Unblock()
	w.await(t, "primary_healthy", "pg1", 30*time.Second)
	w.stop(t)
	finish(true)
}

// TestWatchHungPrimary: the primary is SIGSTOPped (every process of it):
// the replicas' receivers time out, the watcher fails over, fencing the
// hung node with commands.fence; after SIGCONT the old primary never
// acknowledges a write (the checker polls every node throughout).
func TestWatchHungPrimary(t *testing.T) {
	bin, c, cfg := wpStart(t, testenv.Options{Replicas: 2, Sync: true, FenceCommand: true, ReceiverTimeout: 4 * time.Second}, "")
	finish := wpCheck(t, c)
	w := startWatcher(t, bin, "w1", cfg)
	w.await(t, "seen_ok", "", 30*time.Second)
	resume := emHang(t, c, "pg1")
	w.await(t, "failover_done", "pg1", 90*time.Second)
	resume()
	// commands.fence killed it: it stays down until started again.
	emAwaitStatus(t, cfg, "one new primary", func(s *emStatus) bool {
		return s.streamsOn("pg2", 2, "pg3") || s.streamsOn("pg3", 2, "pg2")
	})
	time.Sleep(4 * wpInterval)
	w.stop(t)
	finish(true)
}

// TestWatchPaused: a paused watcher reports a dead primary and does not
// act; resumed, it fails over.
func TestWatchPaused(t *testing.T) {
	bin, c, cfg := wpStart(t, testenv.Options{Replicas: 2, Sync: true}, "")
	w := startWatcherArgs(t, bin, "w1", cfg, []string{"--interval", wpInterval.String(), "--metrics-addr", "127.0.0.1:0"})
	w.await(t, "seen_ok", "", 30*time.Second)
	base := w.metricsURL(t)
	wpGet(t, base+"/healthz", 200, "ok")
	wpGet(t, base+"/metrics", 200, `replctl_watch_is_leader{cluster="`+c.Name+`"} 1`)
	emExpect(t, 0, cfg, "pause", "--reason", "kernel upgrade")
	if st := emStatusOf(t, cfg); !st.warned("watch_paused", "") {
		t.Errorf("status does not show the pause: %s", st)
	}
	emCrash(t, c, "pg1")
	w.await(t, "primary_dead", "pg1", 30*time.Second)
	w.await(t, "paused", "", 30*time.Second)
	wpGet(t, base+"/metrics", 200, `replctl_watch_paused{cluster="`+c.Name+`"} 1`)
	wpGet(t, base+"/healthz", 503, "no single writable primary")
	time.Sleep(4 * wpWindow)
	if n, _ := wpAutomatic(t, c); n != 0 || w.has("failover", "") {
		t.Fatalf("a paused watcher failed over:\n%s", w.log())
	}
	emExpect(t, 0, cfg, "resume")
	w.await(t, "failover_done", "pg1", 60*time.Second)
	w.stop(t)
}

// TestWatchLosesEtcd: with etcd down the watcher never acts (no failover
// of a dead primary); when etcd returns it is elected again and fails over.
func TestWatchLosesEtcd(t *testing.T) {
	bin, c, cfg := wpStart(t, testenv.Options{Replicas: 2, Sync: true}, "")
	w := startWatcher(t, bin, "w1", cfg)
	w.await(t, "seen_ok", "", 30*time.Second)
	if err := c.StopEtcd(); err != nil {
		t.Fatal(err)
	}
	emCrash(t, c, "pg1")
	w.await(t, "primary_dead", "pg1", 30*time.Second)
	w.await(t, "standby", "", 30*time.Second) // the election lease ran out
	time.Sleep(4 * wpWindow)
	if w.has("failover", "") {
		t.Fatalf("the watcher acted without etcd:\n%s", w.log())
	}
	if err := c.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	w.await(t, "failover_done", "pg1", 60*time.Second)
	if n, _ := wpAutomatic(t, c); n != 1 {
		t.Fatalf("want 1 automatic failover, got %d", n)
	}
	w.stop(t)
}

// wpAwaitWatchers waits until status lists n watchers.
func wpAwaitWatchers(t testing.TB, cfg string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for len(emStatusOf(t, cfg).Watchers) < n {
		if time.Now().After(deadline) {
			t.Fatalf("status does not list %d watchers: %+v", n, emStatusOf(t, cfg).Watchers)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// metricsURL is where the watcher serves /metrics, from its log.
func (w *watcherProc) metricsURL(t testing.TB) string {
	t.Helper()
	w.await(t, "metrics", "", 10*time.Second)
	for _, e := range w.events() {
		if e.Code == "metrics" {
			if i := strings.Index(e.Message, "http://"); i >= 0 {
				return e.Message[i:]
			}
		}
	}
	t.Fatalf("no metrics address in the log:\n%s", w.log())
	return ""
}

// wpGet fetches url and fails unless it answers code with want in its body.
func wpGet(t testing.TB, url string, code int, want string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != code || !strings.Contains(string(b), want) {
		t.Fatalf("GET %s: %d, want %d with %q:\n%s", url, resp.StatusCode, code, want, b)
	}
}

// TestWatchAsyncDataLoss: an asynchronous cluster is not failed over
// automatically without watch.max_data_loss (refused, with what to set);
// with a bound the measured loss is within, it is.
func TestWatchAsyncDataLoss(t *testing.T) {
	bin, c, cfg := wpStart(t, testenv.Options{Replicas: 2}, "")
	w := startWatcher(t, bin, "w1", cfg)
	w.await(t, "seen_ok", "", 30*time.Second)
	emCrash(t, c, "pg1")
	w.await(t, "failover_refused", "pg1", 30*time.Second)
	var refusal string
	for _, e := range w.events() {
		if e.Code == "failover_refused" {
			refusal = e.Message
		}
	}
	if !strings.Contains(refusal, "watch.max_data_loss") {
		t.Errorf("the refusal does not say what to configure: %s", refusal)
	}
	if n, _ := wpAutomatic(t, c); n != 0 {
		t.Fatalf("an asynchronous cluster was failed over without a bound")
	}
	w.stop(t)
	if err := os.WriteFile(cfg, []byte(readFile(t, cfg)+"  max_data_loss: 1MB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w2 := startWatcher(t, bin, "w2", cfg)
	w2.await(t, "data_loss_allowed", "", 30*time.Second)
	w2.await(t, "failover_done", "pg1", 60*time.Second)
	w2.stop(t)
}

// TestWatchTwoWatchers: two live watchers, one primary crash: exactly one
// failover, run by the leader.
func TestWatchTwoWatchers(t *testing.T) {
	bin, c, cfg := wpStart(t, testenv.Options{Replicas: 2, Sync: true}, "")
	w1 := startWatcher(t, bin, "w1", cfg)
	w1.await(t, "seen_ok", "", 30*time.Second)
	w2 := startWatcher(t, bin, "w2", cfg)
	w2.await(t, "standby", "", 30*time.Second)
	emCrash(t, c, "pg1")
	w1.await(t, "failover_done", "pg1", 60*time.Second)
	time.Sleep(4 * wpWindow)
	if n, _ := wpAutomatic(t, c); n != 1 || w2.has("failover", "") {
		t.Fatalf("want exactly one failover, by the leader: %d\n%s", n, w2.log())
	}
	w1.stop(t)
	w2.stop(t)
}

func readFile(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
