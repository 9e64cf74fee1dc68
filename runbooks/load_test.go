package runbooks

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/config"
)

func testConfig(t *testing.T) *config.Config {
	t.Helper()
	cfg, err := config.Parse("replctl.yaml", []byte(`
cluster: demo
etcd: {endpoints: ["127.0.0.1:2379"]}
nodes:
  - name: pg1
    dsn: "host=10.0.0.1 user=replctl dbname=postgres"
    commands: {stop: "stop1", start: "start1", kill: "kill1", rejoin: "rejoin1"}
  - name: pg2
    dsn: "host=10.0.0.2 user=replctl dbname=postgres"
    commands: {stop: "stop2", start: "start2", kill: "kill2", rejoin: "rejoin2"}
  - name: pg3
    dsn: "host=10.0.0.3 user=replctl dbname=postgres"
`))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestParseValid(t *testing.T) {
	t.Parallel()
	rb, err := Parse("drill.yaml", []byte(`
name: drill
description: a drill
cluster: demo
defaults: {timeout: 20s, max_lag: 1MB, catchup_timeout: 10s, fail_on: warning}
probe: {database: app, table: drills.probe, interval: 50ms, write_timeout: 2s}
steps:
  - check: [single_primary, lag]
  - check: all
    fail_on: critical
  - probe: start
  - id: over
    name: switch over to pg2
    promote: planned
    candidate: pg2
    require_stop: true
  - wait: replicas_streaming
    count: 1
  - wait: lag_below
    max_lag: 512kB
  - wait: reachable
    target: initial_primary
    timeout: 5s
  - node: kill
    target: primary
  - promote: emergency
    allow_data_loss: true
  - rejoin: initial_primary
  - sleep: 1s
  - probe: stop
  - assert: "lost_writes == 0"
  - assert: ["write_outage < 2s", "over.duration <= 1m", "primary != initial_primary", "replica_lag < 16MB", "promote_outage < 3s"]
on_failure:
  - promote: planned
    candidate: initial_primary
  - probe: stop
`), testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	if rb.Name != "drill" || rb.Cluster != "demo" || len(rb.Steps) != 14 || len(rb.OnFailure) != 2 {
		t.Fatalf("%+v", rb)
	}
	d := rb.Defaults
	if d.Timeout != 20*time.Second || d.MaxLag != 1<<20 || d.CatchupTimeout != 10*time.Second || d.FailOn != checks.Warning {
		t.Errorf("defaults %+v", d)
	}
	if rb.Probe != (ProbeSettings{Database: "app", Table: "drills.probe", Interval: 50 * time.Millisecond, WriteTimeout: 2 * time.Second}) {
		t.Errorf("probe %+v", rb.Probe)
	}
	s := rb.Steps
	if s[0].FailOn != checks.Warning || s[1].FailOn != checks.Critical || s[1].Checks != nil {
		t.Errorf("check steps inherit fail_on: %+v %+v", s[0], s[1])
	}
	if s[3].ID != "over" || s[3].Describe() != "switch over to pg2" || s[3].Candidate != (Ref{Kind: RefNode, Node: "pg2"}) ||
		!s[3].RequireStop || s[3].MaxLag != 1<<20 || s[3].CatchupTimeout != 10*time.Second {
		t.Errorf("promote %+v", s[3])
	}
	if *s[4].Count != 1 || s[5].MaxLag != 512<<10 || s[6].Timeout != 5*time.Second || s[5].Timeout != 20*time.Second {
		t.Errorf("waits %+v %+v %+v", s[4], s[5], s[6])
	}
	if s[7].Target.Kind != RefPrimary || s[8].Candidate.Kind != RefAuto || !s[8].AllowDataLoss || s[9].Target.Kind != RefInitialPrimary {
		t.Errorf("refs %+v %+v %+v", s[7], s[8], s[9])
	}
	if s[2].ID != "step3" || rb.OnFailure[1].ID != "on_failure2" {
		t.Errorf("default ids %s %s", s[2].ID, rb.OnFailure[1].ID)
	}
	if len(s[13].Assertions) != 5 || s[13].Assertions[1].Metric != "over.duration" {
		t.Errorf("assertions %+v", s[13].Assertions)
	}
	if !rb.Writes() {
		t.Error("a runbook with promotions changes the cluster")
	}
}

// TestParseErrors: every mistake is reported with its file, line, key and
// what to do, all at once, before anything runs.
func TestParseErrors(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	for _, tc := range []struct {
		name string
		yaml string
		want []string
	}{
		{"unknown top key", "name: x\ncluster: demo\nstep: []\n", []string{"d.yaml:3: step: unknown key", `did you mean "steps"?`, "d.yaml:1: steps: missing"}},
		{"empty", "", []string{"the file is empty"}},
		{"bad yaml", "name: [x\n", []string{"not valid YAML"}},
		{"missing name and cluster", "steps:\n  - sleep: 1s\n", []string{"name: missing", "cluster: missing"}},
		{"wrong cluster", "name: x\ncluster: prod\nsteps:\n  - sleep: 1s\n", []string{`d.yaml:2: cluster: the runbook is for cluster "prod" but the configuration replctl.yaml is for "demo"`}},
		{"no steps", "name: x\ncluster: demo\nsteps: []\n", []string{"steps: no steps"}},
		{"unknown kind", "name: x\ncluster: demo\nsteps:\n  - promot: planned\n", []string{"d.yaml:4: steps[0]: no step kind (keys: promot)", `promot (did you mean "promote"?)`}},
		{"two kinds", "name: x\ncluster: demo\nsteps:\n  - sleep: 1s\n    wait: primary\n", []string{"d.yaml:4: steps[0]: several step kinds"}},
		{"unknown step key", "name: x\ncluster: demo\nsteps:\n  - promote: planned\n    candiate: pg2\n", []string{"d.yaml:5: steps[0] (promote).candiate: unknown key", `did you mean "candidate"?`}},
		{"bad promote kind", "name: x\ncluster: demo\nsteps:\n  - promote: now\n", []string{`d.yaml:4: steps[0] (promote).promote: "now" is not a kind of promotion`}},
		{"unknown node", "name: x\ncluster: demo\nsteps:\n  - promote: planned\n    candidate: pg9\n", []string{`d.yaml:5: steps[0] (promote).candidate: "pg9" is not a configured node: name one of pg1, pg2, pg3`}},
		{"auto is for candidates", "name: x\ncluster: demo\nsteps:\n  - rejoin: auto\n", []string{"d.yaml:4: steps[0] (rejoin).rejoin: auto names no node here"}},
		{"duration without unit", "name: x\ncluster: demo\nsteps:\n  - wait: primary\n    timeout: 10\n", []string{"d.yaml:5: steps[0] (wait).timeout: duration 10 has no unit: write durations with a unit"}},
		{"bad size", "name: x\ncluster: demo\ndefaults: {max_lag: lots}\nsteps:\n  - sleep: 1s\n", []string{`d.yaml:3: defaults.max_lag: invalid size "lots"`}},
		{"bad fail_on", "name: x\ncluster: demo\nsteps:\n  - check: all\n    fail_on: info\n", []string{`steps[0] (check).fail_on: "info" is not a level`}},
		{"unknown check", "name: x\ncluster: demo\nsteps:\n  - check: [streming]\n", []string{`d.yaml:4: steps[0] (check).check: unknown check "streming"`, `did you mean "streaming"?`}},
		{"node without command", "name: x\ncluster: demo\nsteps:\n  - node: kill\n    target: pg3\n", []string{"d.yaml:5: steps[0] (node).target: pg3 has no commands.kill in replctl.yaml", "configure commands.kill"}},
		{"node without action", "name: x\ncluster: demo\nsteps:\n  - node: reboot\n    target: pg1\n", []string{`"reboot" is not a node action`}},
		{"node without target", "name: x\ncluster: demo\nsteps:\n  - node: stop\n", []string{"d.yaml:4: steps[0] (node).target: missing"}},
		{"wait condition", "name: x\ncluster: demo\nsteps:\n  - wait: everyone_happy\n", []string{`unknown condition "everyone_happy"`}},
		{"wait option", "name: x\ncluster: demo\nsteps:\n  - wait: primary\n    count: 2\n", []string{"d.yaml:5: steps[0] (wait).count: does not apply to wait: primary"}},
		{"wait lag bound", "name: x\ncluster: demo\nsteps:\n  - wait: lag_below\n", []string{"steps[0] (wait).max_lag: missing"}},
		{"wait count too high", "name: x\ncluster: demo\nsteps:\n  - wait: replicas_streaming\n    count: 3\n", []string{"3 replicas can never stream"}},
		{"emergency options", "name: x\ncluster: demo\nsteps:\n  - promote: emergency\n    require_stop: true\n", []string{"d.yaml:5: steps[0] (promote).require_stop: does not apply to promote: emergency"}},
		{"planned options", "name: x\ncluster: demo\nsteps:\n  - promote: planned\n    allow_data_loss: true\n", []string{"allow_data_loss: does not apply to promote: planned"}},
		{"bad bool", "name: x\ncluster: demo\nsteps:\n  - promote: planned\n    no_rejoin: yes please\n", []string{`"yes please" is not true or false`}},
		{"sleep", "name: x\ncluster: demo\nsteps:\n  - sleep: forever\n", []string{`d.yaml:4: steps[0] (sleep).sleep: invalid duration "forever"`}},
		{"probe stop without start", "name: x\ncluster: demo\nsteps:\n  - probe: stop\n", []string{"d.yaml:4: steps[0] (probe): the probe is not running here"}},
		{"probe started twice", "name: x\ncluster: demo\nsteps:\n  - probe: start\n  - probe: start\n", []string{"d.yaml:5: steps[1] (probe): the probe is already running"}},
		{"probe metric unmeasured", "name: x\ncluster: demo\nsteps:\n  - probe: start\n  - assert: [\"lost_writes == 0\"]\n", []string{"d.yaml:5: steps[1] (assert): lost_writes is measured by the write probe"}},
		{"promote_outage unmeasured", "name: x\ncluster: demo\nsteps:\n  - assert: \"promote_outage < 1s\"\n", []string{"promote_outage is measured by a promote step"}},
		{"duration of a later step", "name: x\ncluster: demo\nsteps:\n  - assert: \"back.duration < 1s\"\n  - id: back\n    sleep: 1s\n", []string{`no earlier step has id "back"`}},
		{"bad assertion", "name: x\ncluster: demo\nsteps:\n  - assert:\n      - \"lost_writes = 0\"\n", []string{"d.yaml:5: steps[0] (assert).assert: \"lost_writes = 0\": use == to compare"}},
		{"unknown metric", "name: x\ncluster: demo\nsteps:\n  - assert: \"lost_write == 0\"\n", []string{`unknown metric "lost_write"`, `did you mean "lost_writes"?`}},
		{"duplicate id", "name: x\ncluster: demo\nsteps:\n  - id: a\n    sleep: 1s\n  - id: a\n    sleep: 1s\n", []string{`id "a" is already used by steps[0]`}},
		{"bad id", "name: x\ncluster: demo\nsteps:\n  - id: Switch Back\n    sleep: 1s\n", []string{`"Switch Back" is not a valid id`}},
		{"on_failure probe start", "name: x\ncluster: demo\nsteps:\n  - sleep: 1s\non_failure:\n  - probe: start\n", []string{"on_failure steps cannot start the probe"}},
		{"probe table", "name: x\ncluster: demo\nprobe: {table: \"t; drop\"}\nsteps:\n  - sleep: 1s\n", []string{"probe.table: \"t; drop\" is not a plain table name"}},
		{"step not a mapping", "name: x\ncluster: demo\nsteps:\n  - sleep\n", []string{"d.yaml:4: steps[0]: expected a step"}},
		{"key twice", "name: x\nname: y\ncluster: demo\nsteps:\n  - sleep: 1s\n", []string{"d.yaml:2: name: key given twice"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("d.yaml", []byte(tc.yaml), cfg)
			var le *LoadError
			if !errors.As(err, &le) {
				t.Fatalf("want a *LoadError, got %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestParseWithoutConfig(t *testing.T) {
	t.Parallel()
	// Without a configuration node names and the cluster cannot be checked;
	// everything else is.
	rb, err := Parse("d.yaml", []byte("name: x\ncluster: elsewhere\nsteps:\n  - promote: planned\n    candidate: db7\n"), nil)
	if err != nil || rb.Steps[0].Candidate.Node != "db7" {
		t.Fatalf("%v %+v", err, rb)
	}
	if _, err := Parse("d.yaml", []byte("name: x\ncluster: c\nsteps:\n  - promote: planned\n    candidate: auto\n    max_lag: 1\n    extra: 1\n"), nil); err == nil ||
		!strings.Contains(err.Error(), "extra: unknown key") {
		t.Errorf("unknown keys are still errors: %v", err)
	}
}

func TestExamplesValid(t *testing.T) {
	t.Parallel()
	files, _ := filepath.Glob("examples/*.yaml")
	if len(files) < 3 {
		t.Fatalf("examples: %v", files)
	}
	preflight := false
	for _, f := range files {
		rb, err := Load(f, testConfig(t))
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if strings.Contains(rb.Name, "preflight") {
			preflight = true
			if rb.Writes() || usesProbeStep(rb) {
				t.Errorf("%s: the preflight runbook must be read-only", f)
			}
		}
	}
	if !preflight {
		t.Error("no preflight example")
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml"), nil); err == nil || !strings.Contains(err.Error(), "file does not exist") {
		t.Errorf("missing file: %v", err)
	}
}

func usesProbeStep(rb *Runbook) bool {
	for _, s := range rb.Steps {
		if s.Kind == KindProbe {
			return true
		}
	}
	return false
}
