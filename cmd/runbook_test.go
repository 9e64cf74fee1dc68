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

	"github.com/spf13/cobra"
)

func TestRunbookFlags(t *testing.T) {
	t.Parallel()
	f := NewFactory(&IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}})
	root := NewRootCmd(f)
	var got *RunbookOptions
	capture := func(_ context.Context, o *RunbookOptions) error { got = o; return nil }
	lkSubcommand(t, root, newCmdRunbookRun(f, capture), "runbook", "run")
	root.SetArgs([]string{"runbook", "run", "drill.yaml", "--yes", "--report-json", "r.json", "--junit", "j.xml", "-q", "--lock-wait", "5s", "--timeout", "2s", "-v"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if !got.Yes || got.ReportJSON != "r.json" || got.JUnit != "j.xml" || !got.Quiet || got.LockWait != 5*time.Second ||
		got.Timeout != 2*time.Second || !got.Verbose || len(got.Files) != 1 || got.Files[0] != "drill.yaml" || got.Etcd == nil || got.Config == nil {
		t.Errorf("%+v", got)
	}
	if strings.Join(got.Command, " ") != "runbook run --junit j.xml --lock-wait 5s --quiet --report-json r.json --yes drill.yaml" {
		t.Errorf("command line recorded as %q", got.Command)
	}

	for _, args := range [][]string{{"runbook", "run"}, {"runbook", "run", "a", "b"}, {"runbook", "plan"}, {"runbook", "validate"}, {"runbook", "run", "a", "--bogus"}} {
		f := NewFactory(&IOStreams{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}})
		root := NewRootCmd(f)
		for _, sub := range []struct {
			name string
			mk   func(*Factory, func(context.Context, *RunbookOptions) error) *cobra.Command
		}{{"run", newCmdRunbookRun}, {"plan", newCmdRunbookPlan}, {"validate", newCmdRunbookValidate}} {
			lkSubcommand(t, root, sub.mk(f, capture), "runbook", sub.name)
		}
		root.SetArgs(args)
		if err := root.Execute(); exitCode(err) != ExitUsage {
			t.Errorf("%v: %v (exit %d)", args, err, exitCode(err))
		}
	}
}

func writeFile(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func runIO(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = MainIO(t.Context(), args, &IOStreams{Out: &out, ErrOut: &errOut})
	return out.String(), errOut.String(), code
}

func TestRunbookValidate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := writeFile(t, dir, "replctl.yaml", `
cluster: demo
nodes:
  - {name: pg1, dsn: "host=10.0.0.1"}
  - {name: pg2, dsn: "host=10.0.0.2"}
  - {name: pg3, dsn: "host=10.0.0.3"}
`)
	examples, _ := filepath.Glob("../runbooks/examples/*.yaml")
	if len(examples) < 3 {
		t.Fatalf("examples: %v", examples)
	}
	// The examples name nodes by reference (initial_primary), resolved when
	// they run: that this configuration has no commands shows at plan time.
	out, errOut, code := runIO(t, append([]string{"--config", cfg, "runbook", "validate"}, examples...)...)
	if code != ExitOK || strings.Count(out, ": ok: ") != len(examples) {
		t.Errorf("exit %d\n%s\n%s", code, out, errOut)
	}

	bad := writeFile(t, dir, "bad.yaml", "name: bad\ncluster: demo\nsteps:\n  - promote: planned\n    candidate: pg9\n  - wait: forever\n")
	good := writeFile(t, dir, "good.yaml", "name: good\ncluster: demo\nsteps:\n  - check: all\n  - promote: planned\n")
	out, errOut, code = runIO(t, "--config", cfg, "runbook", "validate", good, bad)
	if code != ExitUsage || !strings.Contains(out, "good.yaml: ok: good, 2 steps, 0 on_failure steps") ||
		!strings.Contains(errOut, bad+`:5: steps[0] (promote).candidate: "pg9" is not a configured node`) ||
		!strings.Contains(errOut, bad+`:6: steps[1] (wait).wait: unknown condition "forever"`) || !strings.Contains(errOut, "1 of 2 runbooks invalid") {
		t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	out, _, code = runIO(t, "--config", cfg, "-o", "json", "runbook", "validate", good, bad)
	var res []validateResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != ExitUsage || len(res) != 2 || !res[0].Valid || res[1].Valid || len(res[1].Errors) != 2 {
		t.Errorf("json: exit %d %v %+v", code, err, res)
	}
}

// TestRunbookValidateWithoutConfig: with no configuration at all (a
// repository's CI), everything but the cluster and node names is checked.
func TestRunbookValidateWithoutConfig(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "good.yaml", "name: good\ncluster: anywhere\nsteps:\n  - promote: planned\n    candidate: db7\n")
	bad := writeFile(t, dir, "bad.yaml", "name: bad\ncluster: anywhere\nsteps:\n  - sleep: 10\n")
	t.Setenv("REPLCTL_CONFIG", "")
	t.Setenv("HOME", dir)
	t.Chdir(dir)
	_, errOut, code := runIO(t, "runbook", "validate", good)
	if code != ExitOK || !strings.Contains(errOut, "warning: no configuration file found") {
		t.Errorf("without config: exit %d: %s", code, errOut)
	}
	_, errOut, code = runIO(t, "runbook", "validate", bad)
	if code != ExitUsage || !strings.Contains(errOut, "bad.yaml:4: steps[0] (sleep).sleep: duration 10 has no unit") {
		t.Errorf("without config: exit %d: %s", code, errOut)
	}
}

// TestRunbookRunNeedsYes: a drill that changes the cluster is not run
// without --yes when no one can be asked; the check comes before any
// connection.
func TestRunbookRunNeedsYes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := writeFile(t, dir, "replctl.yaml", `
cluster: demo
etcd: {endpoints: ["127.0.0.1:1"]}
nodes:
  - {name: pg1, dsn: "host=127.0.0.1 port=1"}
  - {name: pg2, dsn: "host=127.0.0.1 port=2"}
`)
	rb := writeFile(t, dir, "d.yaml", "name: d\ncluster: demo\nsteps:\n  - promote: planned\n")
	_, errOut, code := runIO(t, "--config", cfg, "runbook", "run", rb)
	if code != ExitUsage || !strings.Contains(errOut, "pass --yes") {
		t.Errorf("exit %d: %s", code, errOut)
	}
	noEtcd := writeFile(t, dir, "noetcd.yaml", "cluster: demo\nnodes:\n  - {name: pg1, dsn: \"host=127.0.0.1 port=1\"}\n")
	_, errOut, code = runIO(t, "--config", noEtcd, "runbook", "run", writeFile(t, dir, "r.yaml", "name: r\ncluster: demo\nsteps:\n  - check: all\n"))
	if code != ExitUsage || !strings.Contains(errOut, "a drill needs etcd for the cluster lock") {
		t.Errorf("without etcd: exit %d: %s", code, errOut)
	}
	_, errOut, code = runIO(t, "--config", cfg, "runbook", "plan", writeFile(t, dir, "bad.yaml", "name: b\ncluster: demo\nsteps: []\n"))
	if code != ExitUsage || !strings.Contains(errOut, "bad.yaml:3: steps: no steps") {
		t.Errorf("invalid runbook: exit %d: %s", code, errOut)
	}
}
