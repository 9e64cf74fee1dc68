package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/replctl/replctl/config"
)

func runCheckScenario(t *testing.T, name, output string, names ...string) (string, int) {
	t.Helper()
	cfg := fixtureConfig(t, name == "healthy" || name == "degraded")
	if name != "degraded" && name != "down" {
		cfg.Nodes = cfg.Nodes[:4]
	}
	p, rec := scenario(name)
	var out bytes.Buffer
	o := &CheckOptions{IO: &IOStreams{Out: &out, ErrOut: &out}, Output: output, Timeout: time.Second, Names: names,
		Config: func() (*config.Config, error) { return cfg, nil }, Prober: p, Record: rec}
	err := runCheck(t.Context(), o)
	return out.String(), exitCode(err)
}

// TestCheckExitCodes covers each monitoring-plugins level.
func TestCheckExitCodes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		scenario string
		names    []string
		want     int
	}{
		{"healthy", nil, 0},
		{"etcd-down", nil, 0},
		{"degraded", []string{"replay_paused", "lag"}, 1},
		{"degraded", nil, 2},
		{"split", nil, 2},
		{"fenced", nil, 2},
		{"down", nil, 3},
		{"healthy", []string{"recovery_target_timeline", "major_version"}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.scenario+strings.Join(tc.names, ","), func(t *testing.T) {
			t.Parallel()
			for _, format := range []string{"table", "json", "nagios"} {
				out, code := runCheckScenario(t, tc.scenario, format, tc.names...)
				if code != tc.want {
					t.Errorf("-o %s: exit %d, want %d\n%s", format, code, tc.want, out)
				}
				if format == "json" {
					var doc struct {
						Status   string `json:"status"`
						ExitCode int    `json:"exit_code"`
						Results  []struct{ Check, Level, Code, Message, Node string }
					}
					if err := json.Unmarshal([]byte(out), &doc); err != nil || doc.ExitCode != tc.want || len(doc.Results) == 0 || doc.Results[0].Check == "" {
						t.Errorf("json: %v %+v", err, doc)
					}
				}
			}
		})
	}
}

func TestCheckUnknownOnErrors(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	o := &CheckOptions{IO: &IOStreams{Out: &out}, Output: "nagios",
		Config: func() (*config.Config, error) { return nil, &config.Error{File: "x.yaml", Msg: "bad"} }}
	if code := exitCode(runCheck(t.Context(), o)); code != 3 || !strings.HasPrefix(out.String(), "REPLCTL UNKNOWN - x.yaml: bad") {
		t.Fatalf("config error: exit %d, %q", code, out.String())
	}
	// Through the real command line: a missing file, an unknown check, a bad flag, a bad format.
	for _, args := range [][]string{
		{"check", "--config", "/nonexistent/replctl.yaml"},
		{"check", "--config", "/nonexistent/replctl.yaml", "no_such_check"},
		{"check", "--no-such-flag"},
		{"check", "-o", "xml"},
	} {
		var o, e bytes.Buffer
		if code := MainIO(context.Background(), args, &IOStreams{Out: &o, ErrOut: &e}); code != 3 {
			t.Errorf("%v: exit %d, want 3 (%s)", args, code, e.String())
		}
	}
}

func TestCheckNagiosGolden(t *testing.T) {
	t.Parallel()
	var all bytes.Buffer
	for _, s := range []string{"healthy", "degraded", "fenced", "down"} {
		out, _ := runCheckScenario(t, s, "nagios")
		if strings.Count(out, "\n") != 1 {
			t.Errorf("%s: not one line: %q", s, out)
		}
		all.WriteString(out)
	}
	golden(t, "check_nagios.txt", all.Bytes())
	out, _ := runCheckScenario(t, "degraded", "table")
	golden(t, "check_degraded.txt", []byte(out))
}
