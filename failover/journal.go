package failover

import (
	"context"
	"encoding/json"

	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/topology"
)

// What mutating steps journal before their change (plan.Captured): the
// prior state `replctl recover` restores when it rolls an interrupted
// operation back. Field names are part of the journal's format.

// capturedSettings is a node's settings as a SettingsSnapshot holds them:
// the value set by ALTER SYSTEM, or null for none. A password in a
// captured primary_conninfo is masked in the journal (the history
// scrubs it), so recover refuses to restore a masked value.
type capturedSettings struct {
	Settings map[string]*string `json:"settings"`
}

// capturedSlots are the slots a step is about to create, and those of them
// that existed already when the plan was made: only the others are its own
// to drop.
type capturedSlots struct {
	Slots    []string `json:"slots"`
	Existing []string `json:"existing,omitempty"`
}

func captureSettings(ctx context.Context, s *pgctl.SettingsSnapshot) error {
	return plan.Captured(ctx, capturedSettings{Settings: s.Settings})
}

func captureSlots(ctx context.Context, slots []string, on *topology.Node) error {
	c := capturedSlots{Slots: slots}
	if on != nil {
		for _, s := range on.Slots {
			c.Existing = append(c.Existing, s.Name)
		}
	}
	return plan.Captured(ctx, c)
}

// decodeCaptured reads a journaled capture into v; false when there is none
// or it does not parse.
func decodeCaptured(raw json.RawMessage, v any) bool {
	return len(raw) > 0 && json.Unmarshal(raw, v) == nil
}
