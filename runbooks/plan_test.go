package runbooks

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/replctl/replctl/topology"
	tt "github.com/replctl/replctl/topology/topologytest"
)

// On an asynchronous cluster the plan says that an emergency drill's
// lost_writes == 0 cannot be guaranteed; with synchronous replication it
// says nothing.
func TestNoteLossBound(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	rb, err := Load(filepath.Join("examples", "emergency-failover.yaml"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, sync := range []bool{false, true} {
		primary := tt.Primary(cfg.Nodes[0].Name, 0x3000000)
		if sync {
			names := "ANY 1 (" + cfg.Nodes[1].Name + ")"
			ss, err := topology.ParseSyncStandbyNames(names)
			if err != nil {
				t.Fatal(err)
			}
			primary.Settings.SynchronousStandbyNames, primary.Settings.SyncStandbys = tt.Ptr(names), &ss
		}
		snap := topology.Classify(cfg, []topology.NodeStatus{primary}, nil)
		steps := make([]*PlannedStep, len(rb.Steps))
		for i := range steps {
			steps[i] = &PlannedStep{}
		}
		noteLossBound(rb, snap, steps)
		var notes []string
		for _, s := range steps {
			if s.Detail != "" {
				notes = append(notes, s.Detail)
			}
		}
		got := strings.Join(notes, "\n")
		if sync != (got == "") || !sync && !strings.Contains(got, "lost_writes == 0 cannot be guaranteed: "+cfg.Nodes[0].Name+" replicates asynchronously") {
			t.Errorf("sync %v: notes %q", sync, got)
		}
	}
}
