package runbooks

import (
	"testing"

	"github.com/replctl/replctl/topology"
	tt "github.com/replctl/replctl/topology/topologytest"
)

// logical_slots_kept counts the initial primary's logical slots that the
// primary has now, by name; temporary and physical slots never count.
func TestLogicalSlotsKept(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	slot := func(name, typ string, temp bool) topology.Slot {
		return topology.Slot{Name: name, Type: typ, Temporary: temp}
	}
	before := tt.Primary("pg1", 0x3000000, "pg2")
	before.Slots = []topology.Slot{slot("cdc", "logical", false), slot("sub", "logical", false), slot("tmp", "logical", true), slot("pg2", "physical", false)}
	initial := logicalSlotNames(topology.Classify(cfg, []topology.NodeStatus{before}, nil).PrimaryNode())
	if len(initial) != 2 {
		t.Fatalf("initial %v", initial)
	}
	after := tt.Primary("pg2", 0x4000000)
	after.Slots = []topology.Slot{slot("cdc", "logical", false), slot("sub", "physical", false), slot("tmp", "logical", false)}
	old := before
	old.InRecovery = true
	v, ok := logicalSlotsKept(initial, topology.Classify(cfg, []topology.NodeStatus{old, after}, nil))
	if !ok || v.N != 1 || v.Type != TypeInt {
		t.Fatalf("kept %+v %v, want 1", v, ok)
	}
	if _, ok := logicalSlotsKept(initial, topology.Classify(cfg, nil, nil)); ok {
		t.Fatal("no primary: not measured")
	}
	if _, ok := metricInfo(MetricLogicalSlotsKept); !ok {
		t.Fatal("logical_slots_kept is not a known metric")
	}
}
