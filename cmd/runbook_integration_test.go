package cmd

import (
	"encoding/json"
	"encoding/xml"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/runbooks"
	"github.com/replctl/replctl/testenv"
)

// junitCases is the part of JUnit XML the tests read.
type junitCases struct {
	Tests    int `xml:"tests,attr"`
	Failures int `xml:"failures,attr"`
	Suite    []struct {
		Cases []struct {
			Name    string    `xml:"name,attr"`
			Failure *struct{} `xml:"failure"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

func readJUnit(t *testing.T, path string) junitCases {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var j junitCases
	if err := xml.Unmarshal(b, &j); err != nil {
		t.Fatalf("%s is not well-formed XML: %v\n%s", path, err, b)
	}
	if len(j.Suite) != 1 {
		t.Fatalf("%s: %d test suites", path, len(j.Suite))
	}
	return j
}

// reportDoc is the part of the JSON report the tests read: field names are
// a contract.
type reportDoc struct {
	Runbook        string           `json:"runbook"`
	OperationID    string           `json:"operation_id"`
	Outcome        runbooks.Outcome `json:"outcome"`
	InitialPrimary string           `json:"initial_primary"`
	FinalPrimary   string           `json:"final_primary"`
	Steps          []struct {
		ID          string           `json:"id"`
		Description string           `json:"description"`
		Outcome     runbooks.Outcome `json:"outcome"`
		PhaseName   string           `json:"phase"`
		Assertions  []struct {
			Expr   string `json:"expr"`
			Passed bool   `json:"passed"`
		} `json:"assertions"`
	} `json:"steps"`
	Metrics runbooks.MetricsSummary `json:"metrics"`
}

func readReport(t *testing.T, path string) *reportDoc {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r reportDoc
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &r
}

// planBlock extracts the numbered plan under "Plan (" from promote
// --dry-run's or runbook plan's output.
func planBlock(out string) []string {
	var block []string
	in := false
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "Plan ("):
			in = true
		case in && strings.TrimSpace(l) == "":
			return block
		}
		if in {
			block = append(block, l)
		}
	}
	return block
}

// TestRunbookExamples runs every example runbook through the CLI against a
// synchronous testenv cluster, plan then run, in an order that leaves the
// cluster ready for the next, and checks the exit codes, the JSON reports
// and the JUnit XML.
func TestRunbookExamples(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	c := testenv.Start(t, testenv.Options{Replicas: 2, Sync: true})
	dir := t.TempDir()
	ex := func(name string) string { return filepath.Join("..", "runbooks", "examples", name+".yaml") }

	// The first promotion of a plan is the plan promote --dry-run prints.
	dry, _, code := runIO(t, "--config", c.ConfigPath, "promote", "--dry-run")
	plan, _, pcode := runIO(t, "--config", c.ConfigPath, "runbook", "plan", ex("switchover-and-back"))
	if code != 0 || pcode != 0 || len(planBlock(dry)) < 5 || !slices.Equal(planBlock(dry), planBlock(plan)) {
		t.Errorf("exit %d/%d; promote --dry-run plan:\n%s\nrunbook plan:\n%s", code, pcode, strings.Join(planBlock(dry), "\n"), plan)
	}
	if !strings.Contains(plan, "[at run time] switch_back") || !strings.Contains(plan, "Nothing was changed.") {
		t.Errorf("runbook plan:\n%s", plan)
	}

	for _, tc := range []struct {
		name    string
		primary string // after the drill
		quiet   bool
	}{
		{"nightly-preflight", "pg1", true},
		{"switchover-and-back", "pg1", false},
		{"emergency-failover", "", false},
	} {
		out, errOut, code := runIO(t, "--config", c.ConfigPath, "-o", "json", "runbook", "plan", ex(tc.name))
		var pr struct {
			WouldProceed bool `json:"would_proceed"`
			Steps        []struct {
				ID     string              `json:"id"`
				Status runbooks.PlanStatus `json:"status"`
			} `json:"steps"`
		}
		if err := json.Unmarshal([]byte(out), &pr); err != nil || code != 0 || !pr.WouldProceed {
			t.Fatalf("%s: plan exit %d %v\n%s\n%s", tc.name, code, err, out, errOut)
		}
		rj, ju := filepath.Join(dir, tc.name+".json"), filepath.Join(dir, tc.name+".xml")
		args := []string{"--config", c.ConfigPath, "runbook", "run", ex(tc.name), "--yes", "--report-json", rj, "--junit", ju}
		if tc.quiet {
			args = append(args, "--quiet")
		}
		out, errOut, code = runIO(t, args...)
		if code != 0 {
			t.Fatalf("%s: run exit %d\n%s\n%s", tc.name, code, out, errOut)
		}
		if tc.quiet && (out != "" || errOut != "") {
			t.Errorf("%s --quiet printed:\n%s\n%s", tc.name, out, errOut)
		}
		if !tc.quiet && (!strings.Contains(out, "Drill "+tc.name+" PASSED") || strings.Count(errOut, "\n[") < 4) {
			t.Errorf("%s output:\n%s\n%s", tc.name, out, errOut)
		}
		rep := readReport(t, rj)
		if rep.Outcome != runbooks.Passed || rep.OperationID == "" || rep.Runbook != tc.name {
			t.Errorf("%s report: %+v", tc.name, rep)
		}
		if tc.primary != "" && rep.FinalPrimary != tc.primary {
			t.Errorf("%s: final primary %s", tc.name, rep.FinalPrimary)
		}
		cases, assertions := 0, 0
		for _, s := range rep.Steps {
			cases++
			assertions += len(s.Assertions)
		}
		j := readJUnit(t, ju)
		if j.Tests != cases+assertions || j.Failures != 0 || len(j.Suite[0].Cases) != j.Tests {
			t.Errorf("%s junit: %d tests, %d failures; want %d steps + %d assertions", tc.name, j.Tests, j.Failures, cases, assertions)
		}
		var names []string
		for _, c := range j.Suite[0].Cases {
			names = append(names, c.Name)
		}
		for _, s := range rep.Steps {
			want := []string{s.ID + ": " + s.Description}
			for _, a := range s.Assertions {
				want = append(want, s.ID+": assert "+a.Expr)
				if s.PhaseName == "steps" && !a.Passed {
					t.Errorf("%s: assertion %s did not pass", tc.name, a.Expr)
				}
			}
			for _, w := range want {
				if !slices.Contains(names, w) {
					t.Errorf("%s junit: no test case %q in %q", tc.name, w, names)
				}
			}
		}
		if tc.name != "nightly-preflight" {
			m := rep.Metrics
			if m.LostWrites == nil || *m.LostWrites != 0 || m.WriteOutageSeconds == nil {
				t.Errorf("%s metrics: %+v", tc.name, m)
			} else {
				t.Logf("%s: write outage %.3fs, %d writes acknowledged, none lost", tc.name, *m.WriteOutageSeconds, *m.WritesAcked)
			}
		}
	}
	if p, err := c.Primary(t.Context()); err != nil || p.Name == "pg1" {
		t.Errorf("after the emergency drill: %v %v", p, err)
	}
	if err := c.WaitStreaming(t.Context()); err != nil {
		t.Error(err)
	}
}

// TestRunbookExitCodes: a failed assertion exits 1 with the failure in the
// JUnit XML; a lock held by another operation skips the drill with exit 5
// and one line, and makes the plan exit 5.
func TestRunbookExitCodes(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	c := testenv.Start(t, testenv.Options{Replicas: 1})
	dir := t.TempDir()
	rb := writeFile(t, dir, "fail.yaml", `
name: fails
cluster: demo
steps:
  - check: [single_primary]
  - assert: ["replicas_streaming == 1", "primary == pg9000"]
`)
	_, errOut, code := runIO(t, "--config", c.ConfigPath, "runbook", "validate", rb)
	if code != ExitUsage || !strings.Contains(errOut, `"pg9000" is not a configured node`) {
		t.Fatalf("validate: %d %s", code, errOut)
	}
	rb = writeFile(t, dir, "fail.yaml", `
name: fails
cluster: demo
steps:
  - check: [single_primary]
  - assert: ["replicas_streaming == 1", "primary == pg2"]
`)
	ju := filepath.Join(dir, "j.xml")
	out, errOut, code := runIO(t, "--config", c.ConfigPath, "runbook", "run", rb, "--junit", ju, "--quiet")
	if code != ExitFailed || !strings.Contains(out, "assertion failed: primary == pg2: measured pg1") || !strings.Contains(errOut, "drill fails failed") {
		t.Errorf("failed drill: exit %d\n%s\n%s", code, out, errOut)
	}
	j := readJUnit(t, ju)
	if j.Tests != 4 || j.Failures != 2 || j.Suite[0].Cases[3].Name != "step2: assert primary == pg2" || j.Suite[0].Cases[3].Failure == nil {
		t.Errorf("junit: %+v", j)
	}

	cfg, err := config.Load(c.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := etcdlock.Connect(t.Context(), cfg.Etcd)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	l, err := etcdlock.Acquire(t.Context(), cli, etcdlock.LockOptions{Prefix: cfg.Etcd.Prefix, Cluster: cfg.Cluster, TTL: 10 * time.Second,
		Actor: etcdlock.Actor{User: "carol", Host: "ops2", PID: 7, Command: "promote pg2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(t.Context())
	rj := filepath.Join(dir, "r.json")
	out, errOut, code = runIO(t, "--config", c.ConfigPath, "runbook", "run", ex2("nightly-preflight"), "--report-json", rj, "--quiet")
	if code != ExitLocked || out != "" || strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, "skipped: drill nightly-preflight not run: lock on cluster demo held by carol@ops2") {
		t.Errorf("lock held: exit %d\nstdout: %q\nstderr: %q", code, out, errOut)
	}
	if rep := readReport(t, rj); rep.Outcome != runbooks.Skipped {
		t.Errorf("report of a skipped drill: %+v", rep)
	}
	_, _, code = runIO(t, "--config", c.ConfigPath, "runbook", "plan", ex2("nightly-preflight"))
	if code != ExitLocked {
		t.Errorf("plan with the lock held: exit %d", code)
	}
	// One rule for every command: a held lock is exit 5, dry-runs too.
	for _, args := range [][]string{{"promote", "--dry-run"}, {"promote", "--emergency", "--dry-run"}} {
		_, errOut, code := runIO(t, append([]string{"--config", c.ConfigPath}, args...)...)
		if code != ExitLocked || !strings.Contains(errOut, "carol@ops2") {
			t.Errorf("%v with the lock held: exit %d, want 5 naming the holder\n%s", args, code, errOut)
		}
	}
	// Except where there is nothing to do, and so no lock to take: a
	// healthy replica needs no rejoin, dry-run or not.
	for _, args := range [][]string{{"rejoin", "pg2", "--dry-run"}, {"rejoin", "pg2", "--yes"}} {
		out, errOut, code := runIO(t, append([]string{"--config", c.ConfigPath}, args...)...)
		if code != 0 || !strings.Contains(out, "pg2 already streams from pg1: nothing to do") {
			t.Errorf("%v of a healthy replica: exit %d\n%s\n%s", args, code, out, errOut)
		}
	}
}

func ex2(name string) string { return filepath.Join("..", "runbooks", "examples", name+".yaml") }
