package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/replctl/replctl/testenv"
)

// statusDoc is the part of status -o json the integration tests read.
type statusDoc struct {
	Primary    *string  `json:"primary"`
	SplitBrain []string `json:"split_brain"`
	Nodes      []struct {
		Name         string   `json:"name"`
		Role         string   `json:"role"`
		Reachable    bool     `json:"reachable"`
		Upstream     *string  `json:"upstream"`
		Depth        int      `json:"depth"`
		Timeline     *int     `json:"timeline"`
		LSN          *string  `json:"lsn"`
		LagBytes     *float64 `json:"lag_bytes"`
		ReplayDelay  *float64 `json:"replay_delay_seconds"`
		ReplayPaused bool     `json:"replay_paused"`
		Foreign      bool     `json:"foreign"`
		SystemID     string   `json:"system_identifier"`
		State        string   `json:"state"`
	} `json:"nodes"`
	Unmanaged []struct {
		Upstream        string `json:"upstream"`
		ApplicationName string `json:"application_name"`
	} `json:"unmanaged_replicas"`
	Warnings []struct{ Code, Node, Message string } `json:"warnings"`
	Etcd     string                                 `json:"etcd"`
}

func (d *statusDoc) node(t *testing.T, name string) int {
	t.Helper()
	for i, n := range d.Nodes {
		if n.Name == name {
			return i
		}
	}
	t.Fatalf("no node %s in %+v", name, d.Nodes)
	return -1
}

func (d *statusDoc) warned(code, node string) bool {
	for _, w := range d.Warnings {
		if w.Code == code && (node == "" || w.Node == node) {
			return true
		}
	}
	return false
}

// runCLI runs the command line in process, as the binary would.
func runCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := MainIO(t.Context(), args, &IOStreams{Out: &out, ErrOut: &errOut})
	if errOut.Len() > 0 {
		t.Logf("replctl %v: stderr: %s", args, errOut.String())
	}
	return out.String(), code
}

func statusJSON(t *testing.T, cfgPath string) *statusDoc {
	t.Helper()
	out, code := runCLI(t, "--config", cfgPath, "status", "-o", "json")
	if code != 0 {
		t.Fatalf("status exit %d:\n%s", code, out)
	}
	var d statusDoc
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	return &d
}

// awaitStatus polls status until ok holds, and fails with the last report.
func awaitStatus(t *testing.T, cfgPath string, what string, ok func(*statusDoc) bool) *statusDoc {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for {
		d := statusJSON(t, cfgPath)
		if ok(d) {
			return d
		}
		select {
		case <-ctx.Done():
			b, _ := json.MarshalIndent(d, "", "  ")
			t.Fatalf("timed out waiting for %s; last status:\n%s", what, b)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// withThresholds copies the testenv configuration with thresholds added.
func withThresholds(t *testing.T, c *testenv.Cluster, th string) string {
	t.Helper()
	b, err := os.ReadFile(c.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "replctl.yaml")
	if err := os.WriteFile(p, append(b, []byte("thresholds:\n"+th)...), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func checkCode(t *testing.T, cfgPath string, names ...string) int {
	t.Helper()
	out, code := runCLI(t, append([]string{"--config", cfgPath, "check", "-o", "nagios"}, names...)...)
	t.Logf("check %v: exit %d: %s", names, code, out)
	return code
}

// TestIntegrationTopology grows one cluster through the healthy, idle,
// cascading, unmanaged and foreign cases.
func TestIntegrationTopology(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL")
	}
	t.Parallel()
	ctx := t.Context()
	c := testenv.Start(t, testenv.Options{Replicas: 2, NoEtcd: true})
	cfg := c.ConfigPath
	if err := c.Write(ctx, 100); err != nil {
		t.Fatal(err)
	}

	// Healthy, and then idle: the last transaction ages, the delay stays 0.
	d := awaitStatus(t, cfg, "replicas caught up", func(d *statusDoc) bool {
		for _, n := range d.Nodes[1:] {
			if n.LagBytes == nil || *n.LagBytes != 0 {
				return false
			}
		}
		return true
	})
	if d.Primary == nil || *d.Primary != "pg1" || len(d.Nodes) != 3 || len(d.Warnings) != 0 {
		t.Fatalf("healthy: %+v", d)
	}
	for _, n := range d.Nodes[1:] {
		if n.Role != "replica" || n.Upstream == nil || *n.Upstream != "pg1" || n.State != "streaming" || n.SystemID != d.Nodes[0].SystemID || n.SystemID == "" {
			t.Fatalf("replica %+v", n)
		}
	}
	if code := checkCode(t, cfg); code != 0 {
		t.Fatalf("check on a healthy cluster: exit %d", code)
	}
	time.Sleep(2 * time.Second)
	d = statusJSON(t, cfg)
	for _, n := range d.Nodes[1:] {
		if n.ReplayDelay == nil || *n.ReplayDelay != 0 {
			t.Fatalf("idle primary: %s replay delay %v, want 0", n.Name, n.ReplayDelay)
		}
	}

	// A cascading replica hangs under its upstream.
	if _, err := c.AddReplica(ctx, "pg4", "pg2"); err != nil {
		t.Fatal(err)
	}
	d = statusJSON(t, cfg)
	i := d.node(t, "pg4")
	if n := d.Nodes[i]; n.Upstream == nil || *n.Upstream != "pg2" || n.Depth != 2 || d.Nodes[i-1].Name != "pg2" {
		t.Fatalf("cascade: %+v", d.Nodes)
	}

	// A replica not in the configuration is reported, not adopted.
	if _, err := c.AddReplica(ctx, "stray", "pg1", testenv.Unmanaged()); err != nil {
		t.Fatal(err)
	}
	d = statusJSON(t, cfg)
	if len(d.Unmanaged) != 1 || d.Unmanaged[0].ApplicationName != "stray" || !d.warned("unmanaged_replica", "pg1") {
		t.Fatalf("unmanaged: %+v %+v", d.Unmanaged, d.Warnings)
	}
	if code := checkCode(t, cfg); code != 1 {
		t.Fatalf("check with an unmanaged replica: exit %d, want 1", code)
	}

	// A separately initdb'd server in the configuration is foreign.
	if _, err := c.AddStandalone(ctx, "alien"); err != nil {
		t.Fatal(err)
	}
	d = statusJSON(t, cfg)
	a := d.Nodes[d.node(t, "alien")]
	if !a.Foreign || a.Role != "unknown" || d.Primary == nil || *d.Primary != "pg1" || !d.warned("foreign_node", "alien") {
		t.Fatalf("foreign: %+v primary %v warnings %+v", a, d.Primary, d.Warnings)
	}
	if code := checkCode(t, cfg, "same_system_identifier"); code != 2 {
		t.Fatalf("check with a foreign node: exit %d, want 2", code)
	}
}

// TestIntegrationPausedAndStopped covers paused replay with lag, then a
// stopped replica.
func TestIntegrationPausedAndStopped(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL")
	}
	t.Parallel()
	ctx := t.Context()
	c := testenv.Start(t, testenv.Options{Replicas: 2, NoEtcd: true})
	cfg := withThresholds(t, c, "  lag_warning: 8kB\n  delay_warning: 1s\n")
	if err := c.PauseReplay(ctx, "pg2"); err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, 2000); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	if err := c.Write(ctx, 10); err != nil {
		t.Fatal(err)
	}
	d := awaitStatus(t, cfg, "pg2 paused and behind", func(d *statusDoc) bool {
		n := d.Nodes[d.node(t, "pg2")]
		return n.ReplayPaused && n.LagBytes != nil && *n.LagBytes > 8<<10 && n.ReplayDelay != nil && *n.ReplayDelay >= 1
	})
	if !d.warned("replay_paused", "pg2") || !d.warned("lag", "pg2") || d.warned("lag", "pg3") {
		t.Fatalf("warnings %+v", d.Warnings)
	}
	if code := checkCode(t, cfg, "replay_paused", "lag"); code != 1 {
		t.Fatalf("check paused: exit %d, want 1", code)
	}
	if err := c.ResumeReplay(ctx, "pg2"); err != nil {
		t.Fatal(err)
	}
	awaitStatus(t, cfg, "pg2 caught up", func(d *statusDoc) bool {
		n := d.Nodes[d.node(t, "pg2")]
		return !n.ReplayPaused && n.LagBytes != nil && *n.LagBytes == 0 && n.ReplayDelay != nil && *n.ReplayDelay == 0
	})

	if err := c.StopNode(ctx, "pg3"); err != nil {
		t.Fatal(err)
	}
	// pg3's slot on pg1 turns inactive once pg1's walsender for it has
	// noticed the closed connection, a moment after pg3 is down.
	d = awaitStatus(t, cfg, "pg3's slot inactive", func(d *statusDoc) bool { return d.warned("slot", "pg1") })
	n := d.Nodes[d.node(t, "pg3")]
	if n.Reachable || n.Role != "unknown" || n.LagBytes != nil || !d.warned("unreachable", "pg3") || !d.warned("min_replicas", "") {
		t.Fatalf("stopped: %+v %+v", n, d.Warnings)
	}
	out, code := runCLI(t, "--config", cfg, "status")
	if code != 0 {
		t.Fatalf("status exit %d with a node down:\n%s", code, out)
	}
	t.Logf("\n%s", out)
}

// TestIntegrationSplitBrain promotes a replica behind replctl's back.
func TestIntegrationSplitBrain(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL")
	}
	t.Parallel()
	ctx := t.Context()
	c := testenv.Start(t, testenv.Options{Replicas: 2})
	if err := c.Exec(ctx, "pg3", "SELECT pg_promote(true, 30)"); err != nil {
		t.Fatal(err)
	}
	d := awaitStatus(t, c.ConfigPath, "split brain", func(d *statusDoc) bool { return d.warned("split_brain", "") })
	if d.Primary != nil || len(d.SplitBrain) != 2 {
		t.Fatalf("primary %v split %v", d.Primary, d.SplitBrain)
	}
	p3 := d.Nodes[d.node(t, "pg3")]
	if p3.Role != "primary" || p3.Timeline == nil || *p3.Timeline != 2 {
		t.Fatalf("pg3 %+v", p3)
	}
	if p1 := d.Nodes[d.node(t, "pg1")]; p1.Timeline == nil || *p1.Timeline != 1 {
		t.Fatalf("pg1 %+v", p1)
	}
	// pg2 still follows pg1 and is measured against it.
	if p2 := d.Nodes[d.node(t, "pg2")]; p2.Upstream == nil || *p2.Upstream != "pg1" || p2.LagBytes == nil {
		t.Fatalf("pg2 %+v", p2)
	}
	// etcd is configured but not yet read by this build: status still works.
	if d.Etcd == "" || d.Etcd == "ok" {
		t.Logf("etcd: %q", d.Etcd)
	}
	if code := checkCode(t, c.ConfigPath); code != 2 {
		t.Fatalf("check on a split brain: exit %d, want 2", code)
	}
	out, _ := runCLI(t, "--config", c.ConfigPath, "endpoints", "--role", "primary")
	if out != "" {
		t.Fatalf("endpoints handed out a primary during a split brain: %s", out)
	}
}

// TestIntegrationEndpoints checks the multi-host string against libpq's
// own parser by connecting with it.
func TestIntegrationEndpoints(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL")
	}
	t.Parallel()
	c := testenv.Start(t, testenv.Options{Replicas: 2, NoEtcd: true})
	out, code := runCLI(t, "--config", c.ConfigPath, "endpoints", "-o", "libpq")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	var inRecovery bool
	if err := pgxQuery(t, out, "SELECT pg_is_in_recovery()", &inRecovery); err != nil || !inRecovery {
		t.Fatalf("%q: in recovery %v, %v", out, inRecovery, err)
	}
	out, _ = runCLI(t, "--config", c.ConfigPath, "endpoints", "-o", "libpq", "--role", "primary")
	if err := pgxQuery(t, out, "SELECT pg_is_in_recovery()", &inRecovery); err != nil || inRecovery {
		t.Fatalf("%q: in recovery %v, %v", out, inRecovery, err)
	}
}

// TestIntegrationEtcdDown: status reads the lock and the cluster record when
// etcd answers, and still reports the cluster, naming the problem, when it
// does not, within the dial timeout.
func TestIntegrationEtcdDown(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	c := testenv.Start(t, testenv.Options{Replicas: 1})
	cfg := withEtcdDialTimeout(t, c, "1s")

	d := statusJSON(t, cfg)
	if d.Etcd != "ok" {
		t.Fatalf("etcd up: etcd = %q", d.Etcd)
	}

	if err := c.StopEtcd(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	d = statusJSON(t, cfg)
	took := time.Since(start)
	if d.Primary == nil || *d.Primary != "pg1" || len(d.Nodes) != 2 {
		t.Fatalf("status without etcd lost the topology: %+v", d)
	}
	if d.Etcd == "ok" || d.Etcd == "" {
		t.Errorf("etcd down: etcd = %q, want the reason", d.Etcd)
	}
	// Generous: the point is "bounded by the dial timeout", not a speed test.
	if took > 20*time.Second {
		t.Errorf("status took %s with etcd down; the dial timeout is 1s", took)
	}
	out, code := runCLI(t, "--config", cfg, "status")
	if code != 0 || !bytes.Contains([]byte(out), []byte("etcd")) {
		t.Errorf("table status with etcd down: exit %d\n%s", code, out)
	}
	if err := c.StartEtcd(); err != nil {
		t.Fatal(err)
	}
}

// withEtcdDialTimeout copies the testenv configuration with etcd.dial_timeout set.
func withEtcdDialTimeout(t *testing.T, c *testenv.Cluster, d string) string {
	t.Helper()
	b, err := os.ReadFile(c.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), "  prefix: /replctl\n", "  prefix: /replctl\n  dial_timeout: "+d+"\n", 1)
	p := filepath.Join(t.TempDir(), "replctl.yaml")
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
