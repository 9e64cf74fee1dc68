package cmd

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/replctl/replctl/testenv"
)

// TestVersionSmoke is the version matrix's slice of the normal suite: on
// the oldest and the newest supported majors (testenv.SmokeMajors, fetched
// by make deps PG=N into the cache; skipped when they are not there), one
// synchronous cluster of server binaries alone (replicas cloned and
// rejoined in Go) goes through status, a planned switchover with the stop
// fence and one with the SQL fence, an emergency failover, a rejoin and
// the shipped drills, in sequence. make test-matrix runs every test on
// every major instead.
func TestVersionSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	for _, major := range testenv.SmokeMajors {
		t.Run(fmt.Sprintf("pg%d", major), func(t *testing.T) {
			bin := testenv.RequirePG(t, major)
			t.Parallel()
			smokeVersion(t, major, bin)
		})
	}
}

func smokeVersion(t *testing.T, major int, bin string) {
	c := testenv.Start(t, testenv.Options{Replicas: 2, Sync: true, PGBinDir: bin})
	if !strings.HasPrefix(c.PGVersion, fmt.Sprint(major)+".") {
		t.Fatalf("PostgreSQL %s from %s, want %d", c.PGVersion, bin, major)
	}

	// status: the tree, and every node's version as the probe read it.
	r := emExpect(t, 0, c.ConfigPath, "status", "-o", "json")
	var st struct {
		Nodes []struct {
			Name       string `json:"name"`
			VersionNum int    `json:"server_version_num"`
		} `json:"nodes"`
		Warnings []struct{ Code, Node, Message string } `json:"warnings"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatal(err)
	}
	for _, n := range st.Nodes {
		if n.VersionNum/10000 != major {
			t.Errorf("%s: server_version_num %d, want %d", n.Name, n.VersionNum, major)
		}
	}
	if len(st.Warnings) > 0 {
		t.Errorf("warnings on a healthy cluster: %+v", st.Warnings)
	}
	emAwaitStatus(t, c.ConfigPath, "pg2 and pg3 streaming from pg1", func(s *emStatus) bool { return s.streamsOn("pg1", 1, "pg2", "pg3") })
	if err := c.Write(t.Context(), 10); err != nil {
		t.Fatal(err)
	}

	// A planned switchover with the stop fence: pg1 is stopped, then
	// rejoined (re-cloned: these builds have no pg_rewind).
	cfgStop, logStop := switchoverConfig(t, c, fenceStop)
	r = emExpect(t, 0, cfgStop, "promote", "pg2", "--yes")
	if ran := commandsRun(t, logStop); !slices.Contains(ran, "pg1_stop") || !slices.Contains(ran, "pg1_rejoin") {
		t.Errorf("stop fence: commands run %v", ran)
	}
	if !strings.Contains(r.stdout+r.stderr, "re-cloning pg1") {
		t.Errorf("the rejoin does not say it re-clones:\n%s", r)
	}
	awaitTopology(t, c, "pg2", 2, "pg1", "pg3")

	// A planned switchover with the SQL fence: no stop command.
	cfgSQL, logSQL := switchoverConfig(t, c, fenceSQLRejoin)
	emExpect(t, 0, cfgSQL, "promote", "pg1", "--yes")
	if ran := commandsRun(t, logSQL); slices.Contains(ran, "pg2_stop") || !slices.Contains(ran, "pg2_rejoin") {
		t.Errorf("SQL fence: commands run %v", ran)
	}
	awaitTopology(t, c, "pg1", 3, "pg2", "pg3")
	if err := c.Write(t.Context(), 10); err != nil {
		t.Fatal(err)
	}

	// An emergency failover from a crashed pg1, then its rejoin.
	cfgEm := emConfig(t, c, nil, "")
	emCrash(t, c, "pg1")
	emExpect(t, 0, cfgEm, "promote", "--emergency", "--yes")
	s := emAwaitStatus(t, cfgEm, "a new primary on timeline 4", func(s *emStatus) bool {
		return s.Primary != nil && *s.Primary != "pg1" && s.node(*s.Primary).Timeline != nil && *s.node(*s.Primary).Timeline == 4
	})
	primary := *s.Primary
	other := emOther(primary, "pg2", "pg3")
	emExpect(t, 0, cfgEm, "rejoin", "pg1", "--yes")
	awaitTopology(t, c, primary, 4, "pg1", other)
	var rows int
	if err := c.QueryRow(t.Context(), "pg1", "SELECT count(*) FROM "+testenv.WriteTable).Scan(&rows); err != nil || rows != 20 {
		t.Errorf("pg1 after the rejoin: %d rows (%v), want the 20 acknowledged", rows, err)
	}

	// The shipped drills, on testenv's own replctl.yaml.
	for _, name := range []string{"nightly-preflight", "switchover-and-back", "emergency-failover"} {
		out, errOut, code := runIO(t, "--config", c.ConfigPath, "runbook", "run", ex2(name), "--yes")
		if code != 0 || !strings.Contains(out, "Drill "+name+" PASSED") {
			t.Fatalf("drill %s on PostgreSQL %d: exit %d\n%s\n%s", name, major, code, out, errOut)
		}
	}
	if err := c.WaitStreaming(t.Context()); err != nil {
		t.Fatal(err)
	}
}
