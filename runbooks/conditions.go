package runbooks

import (
	"fmt"
	"strings"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/topology"
)

// waitHolds reports whether a wait step's condition holds in snap, and
// what was seen, for progress and for the error on timeout. It is pure, so
// the plan judges it exactly as the run will.
func waitHolds(cfg *config.Config, s *Step, snap *topology.Snapshot, initial string) (bool, string) {
	switch s.Condition {
	case WaitReplicasStreaming:
		want := len(cfg.Nodes) - 1
		if s.Count != nil {
			want = *s.Count
		}
		if snap.Primary == "" {
			return false, "no single writable primary"
		}
		got := streamingReplicas(snap)
		var not []string
		for _, n := range snap.Nodes {
			if n.Name != string(snap.Primary) && !(n.Streaming() && snap.Root(n) == snap.PrimaryNode() && !n.Fenced) {
				not = append(not, n.Name+" ("+n.State+")")
			}
		}
		msg := fmt.Sprintf("%d of %d replicas stream from %s", got, want, snap.Primary)
		if len(not) > 0 {
			msg += "; not streaming: " + strings.Join(not, ", ")
		}
		return got >= want, msg
	case WaitLagBelow:
		if snap.Primary == "" {
			return false, "no single writable primary"
		}
		lag, known := largestLag(snap)
		if !known {
			return false, "a streaming replica's lag is unknown"
		}
		return lag <= uint64(s.MaxLag), fmt.Sprintf("largest replay lag %s (bound %s)", config.HumanBytes(lag), s.MaxLag)
	case WaitReachable, WaitUnreachable:
		name, err := resolve(s.Target, initial, snap)
		if err != nil {
			return false, err.Error()
		}
		n := snap.Node(name)
		if n == nil {
			return false, name + " is not configured"
		}
		if s.Condition == WaitReachable {
			if n.Reachable {
				return true, name + " answers"
			}
			return false, name + " does not answer: " + n.Error
		}
		if n.Reachable {
			return false, name + " still answers (" + n.State + ")"
		}
		return true, name + " does not answer"
	case WaitPrimary:
		if len(snap.SplitBrain) > 1 {
			return false, "several writable nodes: " + strings.Join(snap.SplitBrain, ", ")
		}
		if snap.Primary == "" {
			return false, "no writable primary"
		}
		if s.Target.Kind != "" {
			want, err := resolve(s.Target, initial, snap)
			if err != nil {
				return false, err.Error()
			}
			if want != string(snap.Primary) {
				return false, fmt.Sprintf("the primary is %s, not %s", snap.Primary, want)
			}
		}
		return true, string(snap.Primary) + " is the one writable primary"
	}
	return false, "unknown condition " + s.Condition
}

// liveValue reads a live metric from a snapshot; ok is false when the
// cluster does not say (no primary, an unknown lag).
func liveValue(name string, snap *topology.Snapshot) (Value, bool) {
	switch name {
	case MetricReplicasStreaming:
		return Value{Type: TypeInt, N: int64(streamingReplicas(snap))}, true
	case MetricReplicaLag:
		lag, ok := largestLag(snap)
		return Value{Type: TypeSize, N: int64(lag)}, ok && snap.Primary != ""
	case MetricPrimary:
		return Value{Type: TypeNode, Node: string(snap.Primary)}, true
	case MetricTimeline:
		p := snap.PrimaryNode()
		if p == nil || p.Timeline == nil {
			return Value{Type: TypeInt}, false
		}
		return Value{Type: TypeInt, N: int64(*p.Timeline)}, true
	}
	return Value{}, false
}
