package watch_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/replctl/replctl/failover/watch"
)

func ptr(v float64) *float64 { return &v }

// fullInput sets every metric: a watcher's view of a healthy cluster after
// two switchovers and one failover. Nodes are deliberately not in name
// order: the output must not depend on the order given.
func fullInput() watch.Input {
	return watch.Input{
		Cluster: "demo",
		Nodes: []watch.NodeInput{
			{Name: "pg3", Up: true, LagBytes: ptr(4096), ReplayDelaySeconds: ptr(0.25), Timeline: ptr(3)},
			{Name: "pg1", Up: true, IsPrimary: true, Timeline: ptr(3)},
			{Name: "pg2", Up: false},
		},
		PrimaryKnown:   true,
		FailoversTotal: map[string]float64{"switchover": 2, "failover": 1, "automatic": 0},
		LastFailover:   time.Date(2026, 12, 1, 12, 0, 0, 500_000_000, time.UTC),
		Watch:          &watch.WatchInput{IsLeader: true},
		Paused:         true,
		LockHeld:       true,
	}
}

// goldenFull is fullInput in the text format. It is inline rather than in
// testdata/ so that this package's tests need no -update flag of their own.
const goldenFull = `# HELP replctl_failovers_total Operations that promoted a node, by kind (switchover, failover, automatic), as the etcd history records them; the history keeps the newest history.keep operations.
# TYPE replctl_failovers_total counter
replctl_failovers_total{cluster="demo",kind="automatic"} 0
replctl_failovers_total{cluster="demo",kind="failover"} 1
replctl_failovers_total{cluster="demo",kind="switchover"} 2
# HELP replctl_last_failover_timestamp_seconds Unix time at which the newest switchover or failover in the history ended. Absent when there is none.
# TYPE replctl_last_failover_timestamp_seconds gauge
replctl_last_failover_timestamp_seconds{cluster="demo"} 1.7961264005e+09
# HELP replctl_lock_held 1 while an operation holds the cluster's fencing lock in etcd, else 0.
# TYPE replctl_lock_held gauge
replctl_lock_held{cluster="demo"} 1
# HELP replctl_node_is_primary 1 for the node replctl takes as the primary (the one writable member not marked fenced; in a split brain the one the cluster record names), else 0.
# TYPE replctl_node_is_primary gauge
replctl_node_is_primary{cluster="demo",node="pg1"} 1
replctl_node_is_primary{cluster="demo",node="pg2"} 0
replctl_node_is_primary{cluster="demo",node="pg3"} 0
# HELP replctl_node_up 1 when the node answered replctl's SQL probe, 0 when it could not be reached.
# TYPE replctl_node_up gauge
replctl_node_up{cluster="demo",node="pg1"} 1
replctl_node_up{cluster="demo",node="pg2"} 0
replctl_node_up{cluster="demo",node="pg3"} 1
# HELP replctl_primary_known 1 when the cluster has exactly one reachable, writable primary (the single_primary check passes), else 0: no primary, split brain, or a fenced node writable again.
# TYPE replctl_primary_known gauge
replctl_primary_known{cluster="demo"} 1
# HELP replctl_primary_unreachable 1 when replctl cannot reach the primary but replicas still stream WAL from it: unreachable, not dead, so no failover. Else 0.
# TYPE replctl_primary_unreachable gauge
replctl_primary_unreachable{cluster="demo"} 0
# HELP replctl_replay_delay_seconds How far the replica's replay is behind in time: 0 once it has replayed everything its primary wrote (so an idle primary shows 0), else the age of its last replayed transaction on the primary's clock. Absent when unknown or not a replica.
# TYPE replctl_replay_delay_seconds gauge
replctl_replay_delay_seconds{cluster="demo",node="pg3"} 0.25
# HELP replctl_replication_lag_bytes Bytes of WAL the replica has yet to replay: its primary's current LSN minus its replay LSN. Absent when unknown or not a replica.
# TYPE replctl_replication_lag_bytes gauge
replctl_replication_lag_bytes{cluster="demo",node="pg3"} 4096
# HELP replctl_timeline The node's PostgreSQL timeline ID; every promotion starts a new one. Absent when the node is down.
# TYPE replctl_timeline gauge
replctl_timeline{cluster="demo",node="pg1"} 3
replctl_timeline{cluster="demo",node="pg3"} 3
# HELP replctl_watch_is_leader 1 when this watcher holds the election and may act, 0 when it only observes.
# TYPE replctl_watch_is_leader gauge
replctl_watch_is_leader{cluster="demo"} 1
# HELP replctl_watch_paused 1 while maintenance mode is on (replctl pause): watchers observe and report but never act.
# TYPE replctl_watch_paused gauge
replctl_watch_paused{cluster="demo"} 1
`

func writeText(t *testing.T, in watch.Input) string {
	t.Helper()
	var b bytes.Buffer
	if err := watch.WriteText(&b, in); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// parse reads the text format as Prometheus would, failing on any error.
func parse(t *testing.T, text string) map[string]bool {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("%v:\n%s", err, text)
	}
	names := map[string]bool{}
	for name := range mfs {
		names[name] = true
	}
	return names
}

func TestWriteTextGolden(t *testing.T) {
	t.Parallel()
	got := writeText(t, fullInput())
	if got != goldenFull {
		t.Errorf("text differs:\n--- got\n%s\n--- want\n%s", got, goldenFull)
	}
	parse(t, got)
	// Stable: the same Input (its map iterated in another order) gives the
	// same bytes.
	for range 20 {
		if again := writeText(t, fullInput()); again != got {
			t.Fatalf("unstable output:\n%s", again)
		}
	}
}

// TestWriteTextLint holds the names, types and HELP texts to Prometheus's
// own conventions (units as suffixes, counters ending in _total).
func TestWriteTextLint(t *testing.T) {
	t.Parallel()
	problems, err := promlint.New(strings.NewReader(writeText(t, fullInput()))).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

func TestWriteTextOmitted(t *testing.T) {
	t.Parallel()
	all := []string{"replctl_node_up", "replctl_node_is_primary", "replctl_replication_lag_bytes", "replctl_replay_delay_seconds",
		"replctl_timeline", "replctl_primary_known", "replctl_primary_unreachable", "replctl_failovers_total",
		"replctl_last_failover_timestamp_seconds", "replctl_watch_is_leader", "replctl_watch_paused", "replctl_lock_held"}
	for _, tc := range []struct {
		name   string
		change func(*watch.Input)
		absent []string
	}{
		{name: "everything", change: func(*watch.Input) {}},
		{name: "outside a watcher", change: func(in *watch.Input) { in.Watch = nil },
			absent: []string{"replctl_watch_is_leader"}},
		{name: "no failover yet", change: func(in *watch.Input) { in.LastFailover = time.Time{} },
			absent: []string{"replctl_last_failover_timestamp_seconds"}},
		{name: "no replica measured", change: func(in *watch.Input) {
			for i := range in.Nodes {
				in.Nodes[i].LagBytes, in.Nodes[i].ReplayDelaySeconds = nil, nil
			}
		}, absent: []string{"replctl_replication_lag_bytes", "replctl_replay_delay_seconds"}},
		// A watcher knows whether it leads even when etcd does not answer.
		{name: "etcd unread", change: func(in *watch.Input) { in.EtcdUnread = true },
			absent: []string{"replctl_failovers_total", "replctl_last_failover_timestamp_seconds",
				"replctl_watch_paused", "replctl_lock_held"}},
		{name: "no node", change: func(in *watch.Input) { in.Nodes = nil },
			absent: []string{"replctl_node_up", "replctl_node_is_primary", "replctl_replication_lag_bytes",
				"replctl_replay_delay_seconds", "replctl_timeline"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			in := fullInput()
			tc.change(&in)
			text := writeText(t, in)
			got := parse(t, text)
			for _, name := range all {
				want := !strings.Contains(" "+strings.Join(tc.absent, " ")+" ", " "+name+" ")
				if got[name] != want {
					t.Errorf("%s present %v, want %v:\n%s", name, got[name], want, text)
				}
			}
		})
	}
	// Per node: pg2 is down, so it has no timeline, while pg1 and pg3 do.
	text := writeText(t, fullInput())
	if strings.Contains(text, `replctl_timeline{cluster="demo",node="pg2"}`) {
		t.Errorf("timeline of a node that is down:\n%s", text)
	}
}

func TestExporterReportsLatestSet(t *testing.T) {
	t.Parallel()
	e := watch.NewExporter()
	srv := httptest.NewServer(watch.Handler(e, nil))
	defer srv.Close()
	if body := get(t, srv.URL+"/metrics", http.StatusOK); strings.Contains(body, "replctl_") {
		t.Fatalf("metrics before the first Set:\n%s", body)
	}
	in := fullInput()
	e.Set(in)
	// The exporter kept a copy: changing what was passed changes nothing.
	in.Nodes[0].Name, *in.Nodes[0].LagBytes, in.FailoversTotal["failover"] = "changed", 1, 99
	body := get(t, srv.URL+"/metrics", http.StatusOK)
	parse(t, body)
	if !strings.Contains(body, `replctl_replication_lag_bytes{cluster="demo",node="pg3"} 4096`) ||
		!strings.Contains(body, `replctl_failovers_total{cluster="demo",kind="failover"} 1`) || strings.Contains(body, "changed") {
		t.Fatalf("/metrics does not report the Input as set:\n%s", body)
	}
	if body != writeText(t, fullInput()) {
		t.Errorf("/metrics and WriteText differ:\n--- /metrics\n%s\n--- WriteText\n%s", body, writeText(t, fullInput()))
	}
	// A node that leaves the Input leaves the metrics: no stale series.
	in = fullInput()
	in.Nodes = in.Nodes[1:]
	e.Set(in)
	if body := get(t, srv.URL+"/metrics", http.StatusOK); strings.Contains(body, `node="pg3"`) {
		t.Errorf("pg3 still reported:\n%s", body)
	}
}

// TestExporterConcurrent runs Set against scrapes (meaningful under -race).
func TestExporterConcurrent(t *testing.T) {
	t.Parallel()
	e := watch.NewExporter()
	h := watch.Handler(e, nil)
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range 50 {
			in := fullInput()
			in.Nodes[0].LagBytes = ptr(float64(i))
			e.Set(in)
		}
	})
	for range 20 {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("/metrics %d: %s", rec.Code, rec.Body)
		}
	}
	wg.Wait()
}

func TestHealthz(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		healthy func() (bool, string)
		code    int
		body    string
	}{
		{name: "nil is healthy", code: http.StatusOK, body: "ok\n"},
		{name: "healthy", healthy: func() (bool, string) { return true, "" }, code: http.StatusOK, body: "ok\n"},
		{name: "no primary", healthy: func() (bool, string) { return false, "no primary" }, code: http.StatusServiceUnavailable, body: "no primary\n"},
		{name: "no reason", healthy: func() (bool, string) { return false, "" }, code: http.StatusServiceUnavailable, body: "unhealthy\n"},
		{name: "password masked", healthy: func() (bool, string) {
			return false, "pg1: connect host=db1 user=replctl password=hunter2: refused"
		}, code: http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(watch.Handler(watch.NewExporter(), tc.healthy))
			defer srv.Close()
			body := get(t, srv.URL+"/healthz", tc.code)
			if tc.body != "" && body != tc.body {
				t.Errorf("body %q, want %q", body, tc.body)
			}
			if strings.Contains(body, "hunter2") {
				t.Errorf("password in /healthz: %q", body)
			}
		})
	}
	srv := httptest.NewServer(watch.Handler(watch.NewExporter(), nil))
	defer srv.Close()
	get(t, srv.URL+"/nope", http.StatusNotFound)
	resp, err := http.Post(srv.URL+"/metrics", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /metrics: %d", resp.StatusCode)
	}
}

func get(t *testing.T, url string, code int) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != code {
		t.Fatalf("GET %s: %d, want %d: %s", url, resp.StatusCode, code, b)
	}
	return string(b)
}
