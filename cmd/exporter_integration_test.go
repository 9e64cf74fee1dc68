package cmd

import (
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/replctl/replctl/testenv"
)

// promDoc is status -o prometheus parsed as Prometheus parses it.
type promDoc map[string]*dto.MetricFamily

func statusPrometheus(t *testing.T, cfgPath string) promDoc {
	t.Helper()
	out, code := runCLI(t, "--config", cfgPath, "status", "-o", "prometheus")
	if code != 0 {
		t.Fatalf("status -o prometheus: exit %d:\n%s", code, out)
	}
	if strings.Contains(out, "password") || strings.Contains(out, "dsn") {
		t.Fatalf("connection details in the metrics:\n%s", out)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(out))
	if err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	return mfs
}

// value returns the sample of name whose labels include want, and whether
// there is one.
func (d promDoc) value(name string, want map[string]string) (float64, bool) {
	mf := d[name]
	if mf == nil {
		return 0, false
	}
	for _, m := range mf.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && labels[k] == v
		}
		if !match {
			continue
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		}
	}
	return 0, false
}

func (d promDoc) expect(t *testing.T, name string, labels map[string]string, want float64) {
	t.Helper()
	if labels == nil {
		labels = map[string]string{}
	}
	labels["cluster"] = "demo"
	got, ok := d.value(name, labels)
	if !ok || got != want {
		t.Errorf("%s%v = %v (present %v), want %v", name, labels, got, ok, want)
	}
}

// TestStatusPrometheusIntegration reads status -o prometheus on a real
// sandbox, before and after a switchover.
func TestStatusPrometheusIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	c := testenv.Start(t, testenv.Options{Replicas: 2})
	cfg := c.ConfigPath
	awaitStatus(t, cfg, "replicas streaming", func(d *statusDoc) bool {
		for _, n := range d.Nodes[1:] {
			if n.State != "streaming" || n.LagBytes == nil {
				return false
			}
		}
		return true
	})

	d := statusPrometheus(t, cfg)
	for _, n := range []string{"pg1", "pg2", "pg3"} {
		d.expect(t, "replctl_node_up", map[string]string{"node": n}, 1)
		d.expect(t, "replctl_node_is_primary", map[string]string{"node": n}, map[bool]float64{true: 1}[n == "pg1"])
		d.expect(t, "replctl_timeline", map[string]string{"node": n}, 1)
	}
	for _, n := range []string{"pg2", "pg3"} {
		if _, ok := d.value("replctl_replication_lag_bytes", map[string]string{"node": n}); !ok {
			t.Errorf("no replication_lag_bytes for %s", n)
		}
	}
	if _, ok := d.value("replctl_replication_lag_bytes", map[string]string{"node": "pg1"}); ok {
		t.Errorf("replication_lag_bytes for the primary")
	}
	d.expect(t, "replctl_primary_known", nil, 1)
	d.expect(t, "replctl_primary_unreachable", nil, 0)
	d.expect(t, "replctl_lock_held", nil, 0)
	d.expect(t, "replctl_watch_paused", nil, 0)
	d.expect(t, "replctl_failovers_total", map[string]string{"kind": "switchover"}, 0)
	for _, absent := range []string{"replctl_last_failover_timestamp_seconds", "replctl_watch_is_leader"} {
		if d[absent] != nil {
			t.Errorf("%s present: %v", absent, d[absent])
		}
	}
	if typ := d["replctl_failovers_total"].GetType(); typ != dto.MetricType_COUNTER {
		t.Errorf("failovers_total is a %s", typ)
	}

	// A switchover shows in the counters, the time and the new timeline.
	before := time.Now()
	emExpect(t, 0, cfg, "promote", "pg2", "--yes")
	d = statusPrometheus(t, cfg)
	d.expect(t, "replctl_node_is_primary", map[string]string{"node": "pg2"}, 1)
	d.expect(t, "replctl_node_is_primary", map[string]string{"node": "pg1"}, 0)
	d.expect(t, "replctl_timeline", map[string]string{"node": "pg2"}, 2)
	d.expect(t, "replctl_failovers_total", map[string]string{"kind": "switchover"}, 1)
	d.expect(t, "replctl_failovers_total", map[string]string{"kind": "failover"}, 0)
	d.expect(t, "replctl_lock_held", nil, 0)
	last, ok := d.value("replctl_last_failover_timestamp_seconds", map[string]string{"cluster": "demo"})
	if at := time.Unix(0, int64(last*1e9)); !ok || at.Before(before.Add(-time.Second)) || at.After(time.Now()) {
		t.Errorf("last failover at %s (present %v), switchover started %s", at, ok, before)
	}
}
