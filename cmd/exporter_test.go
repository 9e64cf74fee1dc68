package cmd

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/failover/watch"
	tt "github.com/replctl/replctl/topology/topologytest"
)

// fixtureHistory has one operation of each case the counters distinguish,
// newest first.
func fixtureHistory() []etcdlock.OpRecord {
	at := func(min int) *time.Time { t := tt.T0().Add(time.Duration(-min) * time.Minute); return &t }
	op := func(id, kind string, outcome plan.Outcome, finished *time.Time) etcdlock.OpRecord {
		return etcdlock.OpRecord{ID: id, Kind: kind, Cluster: "demo", Outcome: outcome, Started: finished.Add(-time.Second), Finished: finished}
	}
	return []etcdlock.OpRecord{
		op("7", "rejoin", plan.OutcomeSucceeded, at(1)),                                 // not a failover
		op("6", "switchover", plan.OutcomeFailed, at(2)),                                // undone: no primary changed
		op("5", "switchover", plan.OutcomeSucceeded, at(10)),                            // the newest failover
		op("4", "automatic", plan.OutcomeSucceeded, at(20)),                             // the watcher's
		op("3", "failover", plan.OutcomePartial, at(30)),                                // promoted, a follow-up failed
		op("2", "switchover", "lock_lost", at(40)),                                      // not verifiably done
		{ID: "1", Kind: "switchover", Outcome: plan.OutcomeSucceeded, Started: *at(50)}, // no end recorded: counted, no time
	}
}

// withHistory adds the history to a scenario's record, as readMetricsRecord
// reads it.
func withHistory(rec func(context.Context) (*recordInfo, error)) func(context.Context) (*recordInfo, error) {
	return func(ctx context.Context) (*recordInfo, error) {
		info, err := rec(ctx)
		if info != nil {
			info.History = fixtureHistory()
		}
		return info, err
	}
}

// scenarioObservation observes a status scenario as status does.
func scenarioObservation(t *testing.T, name string) (*config.Config, observation) {
	t.Helper()
	cfg := fixtureConfig(t, false)
	cfg.Nodes = cfg.Nodes[:4]
	p, rec := scenario(name)
	return cfg, observe(t.Context(), cfg, time.Second, p, withHistory(rec))
}

func TestStatusPrometheusGolden(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"healthy", "fenced", "split"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg, obs := scenarioObservation(t, name)
			var out bytes.Buffer
			if err := writeStatusPrometheus(&out, cfg, obs); err != nil {
				t.Fatal(err)
			}
			parser := expfmt.NewTextParser(model.UTF8Validation)
			if _, err := parser.TextToMetricFamilies(bytes.NewReader(out.Bytes())); err != nil {
				t.Fatalf("%v:\n%s", err, out.String())
			}
			golden(t, "status_prometheus_"+name+".txt", out.Bytes())
		})
	}
}

func TestStatusMetricsInput(t *testing.T) {
	t.Parallel()
	primaryOnly := func(in watch.Input) string {
		var s []string
		for _, n := range in.Nodes {
			if n.IsPrimary {
				s = append(s, n.Name)
			}
		}
		return strings.Join(s, ",")
	}
	for _, tc := range []struct {
		scenario     string
		primaryKnown bool
		primary      string
		lockHeld     bool
		etcdUnread   bool
	}{
		// pg1 is the only writable node.
		{scenario: "healthy", primaryKnown: true, primary: "pg1", etcdUnread: true},
		// Two writable nodes, no record to say which is the primary.
		{scenario: "split", primaryKnown: false, primary: "", etcdUnread: true},
		// pg3 is the primary, but the fenced pg1 is writable again.
		{scenario: "fenced", primaryKnown: false, primary: "pg3", lockHeld: true},
		// pg1 under the SQL fence is no primary; pg3 is.
		{scenario: "sql-fenced", primaryKnown: true, primary: "pg3"},
		{scenario: "sql-fenced-alone", primaryKnown: false, primary: ""},
		{scenario: "etcd-down", primaryKnown: true, primary: "pg1", etcdUnread: true},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			t.Parallel()
			cfg, obs := scenarioObservation(t, tc.scenario)
			in := metricsInput(cfg, obs, true)
			if in.Cluster != "demo" || in.PrimaryKnown != tc.primaryKnown || primaryOnly(in) != tc.primary ||
				in.LockHeld != tc.lockHeld || in.EtcdUnread != tc.etcdUnread || !in.Paused || in.Watch != nil || in.PrimaryUnreachable {
				t.Fatalf("%+v", in)
			}
			if tc.etcdUnread {
				return
			}
			want := map[string]float64{"switchover": 2, "failover": 1, "automatic": 1}
			for k, v := range want {
				if in.FailoversTotal[k] != v {
					t.Errorf("failovers_total{kind=%q} = %v, want %v (%v)", k, in.FailoversTotal[k], v, in.FailoversTotal)
				}
			}
			if len(in.FailoversTotal) != len(want) {
				t.Errorf("kinds %v", in.FailoversTotal)
			}
			if w := tt.T0().Add(-10 * time.Minute); !in.LastFailover.Equal(w) {
				t.Errorf("last failover %s, want %s", in.LastFailover, w)
			}
		})
	}

	// What each node reports, healthy: pg4 cascades from pg2 and lags it.
	cfg, obs := scenarioObservation(t, "healthy")
	in := metricsInput(cfg, obs, false)
	for _, n := range in.Nodes {
		if !n.Up || n.Timeline == nil || *n.Timeline != 1 {
			t.Errorf("%s: %+v", n.Name, n)
		}
		if (n.Name == "pg1") != (n.LagBytes == nil || n.ReplayDelaySeconds == nil) {
			t.Errorf("%s: lag %v delay %v: only replicas have them", n.Name, n.LagBytes, n.ReplayDelaySeconds)
		}
		if n.Name == "pg4" && (*n.LagBytes != 0x60 || *n.ReplayDelaySeconds <= 0) {
			t.Errorf("pg4 lag %v delay %v", *n.LagBytes, *n.ReplayDelaySeconds)
		}
	}

	// No history yet: every kind is reported, at 0, and no time.
	cfg, obs = scenarioObservation(t, "sql-fenced")
	obs.Record.History = nil
	in = metricsInput(cfg, obs, false)
	if len(in.FailoversTotal) != 3 || in.FailoversTotal["switchover"] != 0 || !in.LastFailover.IsZero() {
		t.Errorf("empty history: %v %s", in.FailoversTotal, in.LastFailover)
	}
}

// TestStatusPrimaryUnreachable: a primary replctl cannot reach is
// unreachable, not dead, while a replica still streams from it.
func TestStatusPrimaryUnreachable(t *testing.T) {
	t.Parallel()
	cfg := fixtureConfig(t, false)
	cfg.Nodes = cfg.Nodes[:3]
	replicas := func(streaming bool) tt.Prober {
		p := tt.Prober{"pg2": tt.Replica("pg2", 5432, 0x3000060), "pg3": tt.Replica("pg3", 5432, 0x3000060)}
		if !streaming {
			for _, n := range []string{"pg2", "pg3"} {
				st := p[n]
				st.WALReceiver = nil
				p[n] = st
			}
		}
		return p
	}
	recordPrimary := func(name string) func(context.Context) (*recordInfo, error) {
		return func(context.Context) (*recordInfo, error) { return &recordInfo{RecordedPrimary: name}, nil }
	}
	for _, tc := range []struct {
		name   string
		p      tt.Prober
		record func(context.Context) (*recordInfo, error)
		want   bool
	}{
		{name: "streaming, no record", p: replicas(true), want: true},
		{name: "streaming, recorded primary", p: replicas(true), record: recordPrimary("pg1"), want: true},
		// The record says pg3 is the primary, yet the replicas follow pg1:
		// the unreachable pg1 is not the primary.
		{name: "streaming from another node", p: replicas(true), record: recordPrimary("pg3"), want: false},
		// Receivers gone: the replicas no longer hear from pg1 either.
		{name: "dead", p: replicas(false), want: false},
		{name: "reachable", p: func() tt.Prober {
			p := replicas(true)
			p["pg1"] = tt.Primary("pg1", 0x3000060, "pg2", "pg3")
			return p
		}(), want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rec := tc.record
			if rec == nil {
				rec = func(context.Context) (*recordInfo, error) { return nil, errEtcdNotConfigured }
			}
			in := metricsInput(cfg, observe(t.Context(), cfg, time.Second, tc.p, rec), false)
			if in.PrimaryUnreachable != tc.want {
				t.Fatalf("primary unreachable %v, want %v: %+v", in.PrimaryUnreachable, tc.want, in)
			}
			if in.PrimaryUnreachable && in.PrimaryKnown {
				t.Fatalf("both known and unreachable: %+v", in)
			}
		})
	}
}

// TestStatusPrometheusExit: status -o prometheus exits as status does, and
// still reports every node down when none answered.
func TestStatusPrometheusExit(t *testing.T) {
	t.Parallel()
	out, err := runStatusScenario(t, "down", "prometheus", false)
	if exitCode(err) != ExitFailed {
		t.Fatalf("exit %d (%v), want 1", exitCode(err), err)
	}
	for _, n := range []string{"pg1", "pg2", "pg3", "pg4", "other"} {
		if !strings.Contains(out, `replctl_node_up{cluster="demo",node="`+n+`"} 0`) {
			t.Errorf("no node_up 0 for %s:\n%s", n, out)
		}
	}
	if !strings.Contains(out, `replctl_primary_known{cluster="demo"} 0`) || strings.Contains(out, "replctl_lock_held") {
		t.Errorf("down, etcd not configured:\n%s", out)
	}
	out, err = runStatusScenario(t, "degraded", "prometheus", false)
	if err != nil || !strings.HasPrefix(out, "# HELP ") {
		t.Fatalf("%v\n%s", err, out)
	}
}

func TestStatusPrometheusFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		code int
	}{
		{args: []string{"status", "-o", "prometheus"}, code: ExitOK},
		{args: []string{"status", "-o", "prometheus", "--watch", "2s"}, code: ExitUsage},
		// check reports its usage errors as UNKNOWN, the plugins' way.
		{args: []string{"check", "-o", "prometheus"}, code: 3},
		{args: []string{"history", "-o", "prometheus"}, code: ExitUsage},
	} {
		f := NewFactory(&IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}})
		var got *StatusOptions
		root := NewRootCmd(f)
		root.RemoveCommand(mustFind(t, root, "status"))
		root.AddCommand(newCmdStatus(f, func(_ context.Context, o *StatusOptions) error { got = o; return nil }))
		root.SetArgs(tc.args)
		err := root.Execute()
		if exitCode(err) != tc.code {
			t.Errorf("%v: exit %d (%v), want %d", tc.args, exitCode(err), err, tc.code)
		}
		if tc.code == ExitOK && (got == nil || got.Output != "prometheus") {
			t.Errorf("%v: options %+v", tc.args, got)
		}
	}
}
