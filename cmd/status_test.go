package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/topology"
	tt "github.com/replctl/replctl/topology/topologytest"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (run go test ./cmd -update if the change is intended):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

const fixtureSecret = "hunter2-secret"

// fixtureConfig has pg1..pg4 on 127.0.0.1:5432..5435 and other on 5436.
func fixtureConfig(t *testing.T, zones bool) *config.Config {
	t.Helper()
	var b strings.Builder
	b.WriteString("cluster: demo\nnodes:\n")
	for i, n := range []string{"pg1", "pg2", "pg3", "pg4", "other"} {
		b.WriteString("  - name: " + n + "\n    dsn: host=127.0.0.1 port=" + strconv.Itoa(5432+i) + " user=replctl password=" + fixtureSecret + " dbname=postgres\n")
		if zones {
			b.WriteString("    zone: " + []string{"a", "b", "b", "a", "c"}[i] + "\n")
		}
	}
	cfg, err := config.Parse("replctl.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func mustFind(t *testing.T, root *cobra.Command, name string) *cobra.Command {
	t.Helper()
	c, _, err := root.Find([]string{name})
	if err != nil || c.Name() != name {
		t.Fatalf("no %s command: %v", name, err)
	}
	return c
}

const fixtureMB = 1 << 20

// scenarios are the hand-built clusters the status and check tests share.
func scenario(name string) (tt.Prober, func(context.Context) (*recordInfo, error)) {
	notConfigured := func(context.Context) (*recordInfo, error) { return nil, errEtcdNotConfigured }
	p := tt.Prober{}
	switch name {
	case "healthy":
		// pg4 cascades from pg2; pg2 is the synchronous standby.
		p["pg1"] = tt.Primary("pg1", 0x3000060, "pg2", "pg3")
		p["pg1"].Replication[0].SyncState = tt.Ptr("sync")
		r2 := tt.Replica("pg2", 5432, 0x3000060)
		r2.Replication = append(r2.Replication, tt.Walsender("pg4", 0x3000000))
		p["pg2"] = r2
		p["pg3"] = tt.Replica("pg3", 5432, 0x3000060)
		p["pg4"] = tt.Replica("pg4", 5433, 0x3000000)
		delete(p, "other")
	case "degraded":
		// pg2 paused far behind, pg3 stopped with its slot retaining WAL,
		// other is a foreign cluster, and a stray replica streams from pg1.
		pr := tt.Primary("pg1", 0x5000000+20*fixtureMB, "pg2", "reporting")
		pr.Slots = []topology.Slot{
			{Name: "pg2", Type: "physical", Active: true, RetainedBytes: tt.Ptr(uint64(20 * fixtureMB))},
			{Name: "pg3", Type: "physical", Active: false, RetainedBytes: tt.Ptr(uint64(2 << 30))},
		}
		p["pg1"] = pr
		r := tt.Replica("pg2", 5432, 0x5000000)
		r.ReplayPauseState = "paused"
		r.LastReplayTime = tt.Ptr(tt.T0().Add(-45 * time.Second))
		p["pg2"] = r
		r4 := tt.Replica("pg4", 5432, 0x5000000+fixtureMB)
		r4.WALReceiver = nil
		p["pg4"] = r4
		o := tt.Primary("other", 0x1000000)
		o.SystemID = "7499999999999999999"
		p["other"] = o
	case "split":
		p["pg1"] = tt.Primary("pg1", 0x3000060, "pg2", "pg4")
		p["pg2"] = tt.Replica("pg2", 5432, 0x3000060)
		pr := tt.Primary("pg3", 0x3001000)
		pr.Timeline = tt.Ptr(uint32(2))
		p["pg3"] = pr
		p["pg4"] = tt.Replica("pg4", 5432, 0x3000060)
		delete(p, "other")
	case "fenced":
		// A switchover made pg3 primary and fenced pg1, which came back writable.
		p["pg1"] = tt.Primary("pg1", 0x3000060)
		p3 := tt.Primary("pg3", 0x4000000, "pg2", "pg4")
		p3.Timeline = tt.Ptr(uint32(2))
		p["pg3"] = p3
		for _, n := range []string{"pg2", "pg4"} {
			r := tt.Replica(n, 5434, 0x4000000)
			r.Timeline = tt.Ptr(uint32(2))
			p[n] = r
		}
		return p, func(context.Context) (*recordInfo, error) {
			return &recordInfo{Lock: &lockInfo{Held: true, Holder: "alice@ops1 switchover", Token: 42}, RecordedPrimary: "pg3", Fenced: []string{"pg1"}}, nil
		}
	case "sql-fenced":
		// A switchover fenced pg1 with the SQL fence and promoted pg3, then
		// lost the lock before recording it: the record still names pg1.
		p["pg1"] = sqlFence(tt.Primary("pg1", 0x3000060))
		p3 := tt.Primary("pg3", 0x4000000, "pg2", "pg4")
		p3.Timeline = tt.Ptr(uint32(2))
		p["pg3"] = p3
		for _, n := range []string{"pg2", "pg4"} {
			r := tt.Replica(n, 5434, 0x4000000)
			r.Timeline = tt.Ptr(uint32(2))
			p[n] = r
		}
		return p, func(context.Context) (*recordInfo, error) {
			return &recordInfo{Lock: &lockInfo{}, RecordedPrimary: "pg1"}, nil
		}
	case "sql-fenced-alone":
		// A switchover fenced pg1 and stopped before promoting anyone,
		// leaving the fence in place: nothing accepts writes.
		p["pg1"] = sqlFence(tt.Primary("pg1", 0x3000060, "pg2", "pg3", "pg4"))
		for _, n := range []string{"pg2", "pg3", "pg4"} {
			p[n] = tt.Replica(n, 5432, 0x3000060)
		}
		return p, func(context.Context) (*recordInfo, error) {
			return &recordInfo{Lock: &lockInfo{}, RecordedPrimary: "pg1"}, nil
		}
	case "logical":
		// pg1 publishes to a subscriber (its walsender holds sub_ok), has
		// an idle CDC slot, and a database of its own subscribes back
		// (bidirectional) and from a cluster outside the configuration.
		p, _ = scenario("healthy")
		pr := p["pg1"]
		pr.Slots = []topology.Slot{
			{Name: "cdc", Type: "logical", Plugin: tt.Ptr("test_decoding"), Database: tt.Ptr("postgres"), WALStatus: tt.Ptr("reserved"),
				ConfirmedFlushLSN: tt.Ptr(topology.LSN(0x3000000)), RetainedBytes: tt.Ptr(uint64(0x60))},
			{Name: "pg2", Type: "physical", Active: true, ActivePID: tt.Ptr(100), WALStatus: tt.Ptr("reserved"), RetainedBytes: tt.Ptr(uint64(0))},
			{Name: "sub_ok", Type: "logical", Active: true, ActivePID: tt.Ptr(200), Plugin: tt.Ptr("pgoutput"), Database: tt.Ptr("postgres"),
				WALStatus: tt.Ptr("reserved"), ConfirmedFlushLSN: tt.Ptr(topology.LSN(0x3000060)), RetainedBytes: tt.Ptr(uint64(0))},
		}
		ws := tt.Walsender("sub_ok", 0x3000060)
		ws.PID, ws.LogicalSlot = tt.Ptr(200), tt.Ptr("sub_ok")
		pr.Replication = append(slices.Clone(pr.Replication), ws)
		pr.Database = "postgres"
		pr.Publications = []topology.Publication{{Name: "pub_all", Database: "postgres", AllTables: true, Tables: 5},
			{Name: "pub_ok", Database: "postgres", Tables: 2}}
		sub := func(name, db, host, port, pubdb, state string) topology.Subscription {
			return topology.Subscription{Name: name, Database: db, Enabled: state != topology.WorkerDisabled, WorkerState: state,
				SlotName: tt.Ptr(name), Publications: []string{"p"}, PublisherHost: tt.Ptr(host), PublisherPort: tt.Ptr(port), PublisherDB: tt.Ptr(pubdb),
				ApplyErrorCount: tt.Ptr(int64(0)), SyncErrorCount: tt.Ptr(int64(0))}
		}
		ok := sub("sub_ok", "subok", "127.0.0.1", "5432", "postgres", topology.WorkerRunning)
		ok.ReceivedLSN, ok.LatestEndLSN = tt.Ptr(topology.LSN(0x3000060)), tt.Ptr(topology.LSN(0x3000060))
		back := sub("sub_back", "postgres", "localhost", "5432", "subok", topology.WorkerRunning)
		back.ReceivedLSN = tt.Ptr(topology.LSN(0x3000060))
		ext := sub("sub_ext", "postgres", "db9.example.com", "", "crm", topology.WorkerNotRunning)
		ext.ApplyErrorCount = tt.Ptr(int64(4))
		pr.Subscriptions = []topology.Subscription{back, ext, ok}
		p["pg1"] = pr
		r := p["pg2"]
		r.Subscriptions = []topology.Subscription{sub("sub_ok", "subok", "127.0.0.1", "5432", "postgres", topology.WorkerStandby)}
		p["pg2"] = r
	case "etcd-down":
		p, _ = scenario("healthy")
		return p, func(context.Context) (*recordInfo, error) {
			return nil, errors.New("etcd 127.0.0.1:2379: context deadline exceeded")
		}
	case "down":
		return tt.Prober{}, notConfigured
	}
	return p, notConfigured
}

func runStatusScenario(t *testing.T, name, output string, tty bool) (string, error) {
	t.Helper()
	cfg := fixtureConfig(t, name == "healthy" || name == "degraded")
	if name == "healthy" || name == "logical" || name == "etcd-down" || name == "split" || name == "fenced" || strings.HasPrefix(name, "sql-fenced") {
		cfg.Nodes = cfg.Nodes[:4]
	}
	p, rec := scenario(name)
	var out bytes.Buffer
	o := &StatusOptions{IO: &IOStreams{Out: &out, ErrOut: &out, StdoutTTY: tty}, Output: output, Timeout: time.Second,
		Config: func() (*config.Config, error) { return cfg, nil }, Prober: p, Record: rec, Now: tt.T0}
	err := runStatus(t.Context(), o)
	if strings.Contains(out.String(), fixtureSecret) {
		t.Fatalf("password in output:\n%s", out.String())
	}
	return out.String(), err
}

func TestStatusGolden(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"healthy", "degraded", "split", "fenced", "etcd-down", "sql-fenced", "sql-fenced-alone", "logical"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			out, err := runStatusScenario(t, name, "table", false)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, "status_"+name+".txt", []byte(out))
		})
	}
	t.Run("tty", func(t *testing.T) {
		t.Parallel()
		out, err := runStatusScenario(t, "healthy", "table", true)
		if err != nil {
			t.Fatal(err)
		}
		golden(t, "status_healthy_tty.txt", []byte(out))
	})
}

// sqlFence puts st under replctl's SQL fence (failover.FenceSQL): read-only,
// and commits waiting for a standby that does not exist.
func sqlFence(st topology.NodeStatus) topology.NodeStatus {
	st.Settings.DefaultTransactionReadOnly = tt.Ptr("on")
	st.Settings.SynchronousStandbyNames = tt.Ptr(topology.FenceStandbyName)
	st.Settings.SyncStandbys = &topology.SyncStandbys{Method: topology.SyncFirst, Num: 1, Names: []string{topology.FenceStandbyName}}
	return st
}

// TestStatusFences: a node out of recovery under the SQL fence is shown
// fenced, is neither the primary nor a split-brain writer, and a cluster
// with no writable node is critical.
func TestStatusFences(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		scenario string
		summary  string
		warnings []string // code:node, in order
		check    int      // exit code of check single_primary
	}{
		{scenario: "sql-fenced", summary: "cluster demo: primary pg3 on timeline 2, 2/2 replicas streaming",
			warnings: []string{"recorded_primary_differs:pg3"}, check: 0},
		{scenario: "sql-fenced-alone", summary: "cluster demo: no primary (pg1 read-only, fenced), 3/3 replicas streaming",
			warnings: []string{"no_primary:", "sync_quorum:"}, check: 2},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			t.Parallel()
			out, err := runStatusScenario(t, tc.scenario, "json", false)
			if err != nil {
				t.Fatal(err)
			}
			var doc struct {
				Primary    *string  `json:"primary"`
				SplitBrain []string `json:"split_brain"`
				Summary    string   `json:"summary"`
				Nodes      []struct {
					Name, State, Role string
				} `json:"nodes"`
				Warnings []struct{ Code, Node, Message string } `json:"warnings"`
			}
			if err := json.Unmarshal([]byte(out), &doc); err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(doc.Summary, tc.summary) {
				t.Errorf("summary %q, want %q...", doc.Summary, tc.summary)
			}
			if doc.Primary != nil && *doc.Primary == "pg1" || len(doc.SplitBrain) != 0 {
				t.Errorf("primary pg1 or split brain %v: the fenced pg1 counted as writable", doc.SplitBrain)
			}
			var got []string
			for _, w := range doc.Warnings {
				got = append(got, w.Code+":"+w.Node)
				if w.Code == "no_primary" && !strings.Contains(w.Message, "pg1 (read-only, fenced)") {
					t.Errorf("no_primary does not name the fenced pg1: %q", w.Message)
				}
			}
			if strings.Join(got, " ") != strings.Join(tc.warnings, " ") {
				t.Errorf("warnings %q, want %q", got, tc.warnings)
			}
			for _, n := range doc.Nodes {
				if n.Name == "pg1" && n.State != "read-only, fenced" {
					t.Errorf("pg1 state %q", n.State)
				}
			}
			if out, code := runCheckScenario(t, tc.scenario, "table", "single_primary"); code != tc.check {
				t.Errorf("check single_primary: exit %d, want %d\n%s", code, tc.check, out)
			}
		})
	}
}

func TestStatusNoNodeReachable(t *testing.T) {
	t.Parallel()
	out, err := runStatusScenario(t, "down", "table", false)
	if exitCode(err) != ExitFailed || !strings.Contains(err.Error(), "no node reachable") {
		t.Fatalf("err = %v (code %d)", err, exitCode(err))
	}
	if !strings.Contains(out, "unreachable") {
		t.Fatalf("the report is still printed:\n%s", out)
	}
	cfgErr := &config.Error{File: "x.yaml", Msg: "bad"}
	o := &StatusOptions{IO: &IOStreams{Out: &bytes.Buffer{}}, Config: func() (*config.Config, error) { return nil, cfgErr }}
	if err := runStatus(t.Context(), o); exitCode(err) != ExitUsage {
		t.Fatalf("config error exits %d", exitCode(err))
	}
}

// TestStatusJSONSchema pins the documented contract of status -o json.
func TestStatusJSONSchema(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"healthy", "degraded", "fenced", "split", "logical"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			out, err := runStatusScenario(t, name, "json", false)
			if err != nil {
				t.Fatal(err)
			}
			var doc map[string]any
			if err := json.Unmarshal([]byte(out), &doc); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"cluster", "primary", "system_identifier", "nodes", "warnings", "lock", "recorded_primary", "etcd", "summary", "unmanaged_replicas", "split_brain"} {
				if _, ok := doc[k]; !ok {
					t.Errorf("missing top-level %q", k)
				}
			}
			for _, x := range doc["nodes"].([]any) {
				n := x.(map[string]any)
				for _, k := range []string{"name", "role", "reachable", "error", "upstream", "timeline", "lsn", "lag_bytes",
					"replay_delay_seconds", "sync_state", "replay_paused", "system_identifier", "zone", "fenced",
					"in_recovery", "server_version_num", "current_lsn", "receive_lsn", "replay_lsn", "wal_receiver",
					"replication", "slots", "settings", "state", "foreign", "database", "publications", "subscriptions"} {
					if _, ok := n[k]; !ok {
						t.Errorf("node %v: missing %q", n["name"], k)
					}
				}
				if r := n["role"]; r != "primary" && r != "replica" && r != "unknown" {
					t.Errorf("role %v", r)
				}
				if _, ok := n["system_identifier"].(string); !ok {
					t.Errorf("system_identifier must be a string: %v", n["system_identifier"])
				}
				if n["reachable"] == true && n["role"] == "replica" {
					if _, ok := n["lag_bytes"].(float64); !ok && name != "degraded" {
						t.Errorf("%v: lag_bytes %v", n["name"], n["lag_bytes"])
					}
				}
			}
			for _, x := range doc["warnings"].([]any) {
				w := x.(map[string]any)
				for _, k := range []string{"code", "message", "node", "level", "check"} {
					if _, ok := w[k]; !ok {
						t.Errorf("warning missing %q: %v", k, w)
					}
				}
			}
		})
	}
	out, _ := runStatusScenario(t, "fenced", "json", false)
	var doc struct {
		Primary         *string `json:"primary"`
		RecordedPrimary *string `json:"recorded_primary"`
		Lock            *struct {
			Holder string `json:"holder"`
		} `json:"lock"`
		Nodes []struct {
			Name     string  `json:"name"`
			Fenced   bool    `json:"fenced"`
			Upstream *string `json:"upstream"`
		} `json:"nodes"`
		Warnings []struct{ Code, Node string } `json:"warnings"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	if *doc.Primary != "pg3" || *doc.RecordedPrimary != "pg3" || doc.Lock.Holder == "" || doc.Nodes[0].Name != "pg3" || doc.Nodes[0].Upstream != nil {
		t.Fatalf("fenced: %s", out)
	}
	found := false
	for _, w := range doc.Warnings {
		found = found || w.Code == "fenced_writable" && w.Node == "pg1"
	}
	if !found {
		t.Fatalf("no fenced_writable warning: %+v", doc.Warnings)
	}
}

func TestStatusYAMLMatchesJSON(t *testing.T) {
	t.Parallel()
	out, err := runStatusScenario(t, "healthy", "yaml", false)
	if err != nil || !strings.Contains(out, "system_identifier: \"7412345678901234567\"") || !strings.Contains(out, "primary: pg1") {
		t.Fatalf("%v\n%s", err, out)
	}
}

func TestStatusWatch(t *testing.T) {
	t.Parallel()
	cfg := fixtureConfig(t, false)
	p, rec := scenario("healthy")
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	o := &StatusOptions{IO: &IOStreams{Out: &out, ErrOut: &out}, Output: "table", Timeout: time.Second, Watch: 20 * time.Millisecond,
		Config: func() (*config.Config, error) { return cfg, nil }, Prober: p, Record: rec, Now: tt.T0}
	if err := runStatus(ctx, o); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), "NODE "); n < 2 {
		t.Fatalf("redrew %d times:\n%s", n, out.String())
	}
}

func TestStatusFlags(t *testing.T) {
	t.Parallel()
	f := NewFactory(&IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}})
	var got *StatusOptions
	root := NewRootCmd(f)
	root.RemoveCommand(mustFind(t, root, "status"))
	root.AddCommand(newCmdStatus(f, func(_ context.Context, o *StatusOptions) error { got = o; return nil }))
	root.SetArgs([]string{"status", "--watch", "2s", "-o", "json", "--timeout", "500ms"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if got.Watch != 2*time.Second || got.Output != "json" || got.Timeout != 500*time.Millisecond || got.Record == nil {
		t.Fatalf("%+v", got)
	}
	root.SetArgs([]string{"status", "-o", "nagios"})
	if err := root.Execute(); exitCode(err) != ExitUsage {
		t.Fatalf("-o nagios: %v", err)
	}
}

// TestStatusLogicalJSON pins the logical additions to status -o json.
func TestStatusLogicalJSON(t *testing.T) {
	t.Parallel()
	out, err := runStatusScenario(t, "logical", "json", false)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Unmanaged []any `json:"unmanaged_replicas"`
		Nodes     []struct {
			Name         string           `json:"name"`
			Database     string           `json:"database"`
			Slots        []map[string]any `json:"slots"`
			Publications []map[string]any `json:"publications"`
			Subs         []map[string]any `json:"subscriptions"`
			Replication  []map[string]any `json:"replication"`
		} `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Unmanaged) != 0 {
		t.Errorf("the subscriber's walsender counted as an unmanaged replica: %v", doc.Unmanaged)
	}
	pg1 := doc.Nodes[0]
	if pg1.Name != "pg1" || pg1.Database != "postgres" || len(pg1.Slots) != 3 || len(pg1.Publications) != 2 || len(pg1.Subs) != 3 {
		t.Fatalf("pg1: %+v", pg1)
	}
	for _, k := range []string{"slot_name", "slot_type", "active", "plugin", "database", "confirmed_flush_lsn", "retained_bytes", "wal_status", "failover", "synced"} {
		if _, ok := pg1.Slots[0][k]; !ok {
			t.Errorf("slot lacks %q", k)
		}
	}
	for _, k := range []string{"name", "database", "all_tables", "tables"} {
		if _, ok := pg1.Publications[0][k]; !ok {
			t.Errorf("publication lacks %q", k)
		}
	}
	for _, k := range []string{"name", "database", "enabled", "slot_name", "publications", "publisher_host", "publisher_port", "publisher_dbname",
		"worker_state", "worker_pid", "sync_workers", "received_lsn", "latest_end_lsn", "apply_error_count", "sync_error_count", "origin",
		"publisher_node", "kind", "bidirectional_with"} {
		if _, ok := pg1.Subs[0][k]; !ok {
			t.Errorf("subscription lacks %q", k)
		}
	}
	back, ext := pg1.Subs[0], pg1.Subs[1]
	if back["kind"] != "internal" || back["publisher_node"] != "pg1" || back["bidirectional_with"] != "pg1/subok/sub_ok" {
		t.Errorf("sub_back: %v", back)
	}
	if ext["kind"] != "external" || ext["publisher_node"] != nil || ext["bidirectional_with"] != nil || ext["worker_state"] != "not running" {
		t.Errorf("sub_ext: %v", ext)
	}
	if pg1.Replication[len(pg1.Replication)-1]["logical_slot"] != "sub_ok" {
		t.Errorf("walsender rows: %v", pg1.Replication)
	}
	if s := doc.Nodes[1].Subs; doc.Nodes[1].Name != "pg2" || len(s) != 1 || s[0]["worker_state"] != "standby" || s[0]["bidirectional_with"] != nil {
		t.Errorf("pg2's catalog copy: %+v", doc.Nodes[1])
	}
}

// growingProber is the "logical" scenario with sub_ext's apply error count
// one higher at each probe of pg1.
type growingProber struct {
	tt.Prober
	n atomic.Int64
}

func (p *growingProber) Probe(ctx context.Context, n config.Node) topology.NodeStatus {
	st := p.Prober.Probe(ctx, n)
	if n.Name == "pg1" {
		subs := slices.Clone(st.Subscriptions)
		for i := range subs {
			if subs[i].Name == "sub_ext" {
				subs[i].ApplyErrorCount = tt.Ptr(p.n.Add(1))
			}
		}
		st.Subscriptions = subs
	}
	return st
}

// TestStatusWatchErrorTrend: status --watch compares each look with the
// one before it, and so says when subscription errors grow.
func TestStatusWatchErrorTrend(t *testing.T) {
	t.Parallel()
	cfg := fixtureConfig(t, false)
	cfg.Nodes = cfg.Nodes[:4]
	sp, rec := scenario("logical")
	p := &growingProber{Prober: sp}
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	o := &StatusOptions{IO: &IOStreams{Out: &out, ErrOut: &out}, Output: "table", Timeout: time.Second, Watch: 20 * time.Millisecond,
		Config: func() (*config.Config, error) { return cfg, nil }, Prober: p, Record: rec, Now: tt.T0}
	if err := runStatus(ctx, o); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.Contains(l, "subscription_errors:") {
			lines = append(lines, l)
		}
	}
	if len(lines) < 2 || !strings.HasSuffix(lines[0], "(one look: whether they still grow shows at the next one)") ||
		!strings.HasSuffix(lines[1], "(growing: 1 apply and 0 sync errors more than at the previous look)") {
		t.Fatalf("%q", lines)
	}
}
