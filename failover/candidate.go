package failover

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/topology"
)

// Ranking explains the candidate choice: the chosen node and why each other
// node was not.
type Ranking struct {
	Chosen   string            `json:"chosen"`
	Why      string            `json:"why"`
	Rejected map[string]string `json:"rejected"`
}

// ChooseSwitchoverCandidate picks the best replica to promote in a planned
// switchover: priority > 0, streaming directly from the primary, least lag
// (lags within LagTie of each other count as equal), then highest
// priority, then name. It is pure.
func ChooseSwitchoverCandidate(s *topology.Snapshot) (Ranking, error) {
	r := Ranking{Rejected: map[string]string{}}
	p := s.PrimaryNode()
	if p == nil {
		return r, fmt.Errorf("no reachable primary to switch over from: use promote --emergency when the primary is down")
	}
	var eligible []*topology.Node
	for _, n := range s.Nodes {
		if n.Name == p.Name {
			continue
		}
		if why := ineligible(n, p); why != "" {
			r.Rejected[n.Name] = why
			continue
		}
		eligible = append(eligible, n)
	}
	if len(eligible) == 0 {
		return r, fmt.Errorf("no eligible candidate: %s", rejectedList(r.Rejected))
	}
	slices.SortStableFunc(eligible, func(a, b *topology.Node) int {
		if c := cmp.Compare(lagBucket(a), lagBucket(b)); c != 0 {
			return c
		}
		if c := cmp.Compare(b.Priority, a.Priority); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
	best := eligible[0]
	r.Chosen = best.Name
	r.Why = fmt.Sprintf("streams from %s with the least lag (%s), priority %d", p.Name, lagText(best), best.Priority)
	for _, n := range eligible[1:] {
		switch {
		case lagBucket(n) > lagBucket(best):
			r.Rejected[n.Name] = fmt.Sprintf("more lag (%s)", lagText(n))
		case n.Priority < best.Priority:
			r.Rejected[n.Name] = fmt.Sprintf("as little lag (%s), lower priority (%d)", lagText(n), n.Priority)
		default:
			r.Rejected[n.Name] = fmt.Sprintf("as little lag (%s) and the same priority, later by name", lagText(n))
		}
	}
	return r, nil
}

func ineligible(n, p *topology.Node) string {
	switch {
	case !n.Reachable:
		return "unreachable"
	case n.Foreign:
		return "foreign node (different system identifier)"
	case n.Role != topology.RoleReplica:
		return fmt.Sprintf("not a replica (role %s)", n.Role)
	case n.Priority <= 0:
		return "priority 0 (never promote)"
	case string(n.Upstream) != p.Name:
		if n.Upstream == "" {
			return "not streaming from " + p.Name
		}
		return fmt.Sprintf("cascades from %s, not directly from %s", n.Upstream, p.Name)
	case !n.Streaming():
		return "WAL receiver not streaming"
	case n.ReplayPaused():
		return "replay paused"
	}
	return ""
}

// LagTie is how close two candidates' lags must be to count as equal. Lag
// read from a busy primary moves by kilobytes from one look to the next;
// without a tie the choice would flip between equally good replicas, and a
// dry-run would preview a different candidate than the run then promotes.
// It is the distance the switchover waits to close anyway before fencing.
const LagTie = 1 << 20

// lagBucket orders lags in steps of LagTie: transitive, as sorting needs,
// unlike "within LagTie of each other".
func lagBucket(n *topology.Node) uint64 {
	l := lagOrMax(n)
	if l == ^uint64(0) {
		return l
	}
	return l / LagTie
}

func lagOrMax(n *topology.Node) uint64 {
	if n.LagBytes == nil {
		return ^uint64(0)
	}
	return *n.LagBytes
}

func lagText(n *topology.Node) string {
	if n.LagBytes == nil {
		return "unknown"
	}
	return config.HumanBytes(*n.LagBytes)
}

func rejectedList(m map[string]string) string {
	var names []string
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names)
	var parts []string
	for _, k := range names {
		parts = append(parts, k+": "+m[k])
	}
	if len(parts) == 0 {
		return "no replicas configured"
	}
	return strings.Join(parts, "; ")
}

// rankByReceived orders an emergency failover's eligible replicas: the
// highest received position first (what it has, not what it replayed: it
// replays the rest before the promotion), then priority, then name.
func rankByReceived(eligible []*topology.Node) {
	slices.SortStableFunc(eligible, func(a, b *topology.Node) int {
		if c := cmp.Compare(*receivePos(b), *receivePos(a)); c != 0 {
			return c
		}
		if c := cmp.Compare(b.Priority, a.Priority); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
}

// receivePos is how far a replica has received, or replayed when that is
// further (a receiver restarted from the replay position reports less).
func receivePos(n *topology.Node) *topology.LSN {
	if n.ReceiveLSN != nil && (n.ReplayLSN == nil || *n.ReceiveLSN >= *n.ReplayLSN) {
		return n.ReceiveLSN
	}
	return n.ReplayLSN
}
