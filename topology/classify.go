package topology

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/replctl/replctl/config"
)

// Role is a node's role as observed.
type Role string

// Roles. A foreign or unreachable node is RoleUnknown.
const (
	RolePrimary Role = "primary"
	RoleReplica Role = "replica"
	RoleUnknown Role = "unknown"
)

// NodeName is a node name that is JSON null when empty, so that "no
// upstream" and "no primary" read as null rather than as a name.
type NodeName string

// MarshalJSON writes null for the empty name.
func (n NodeName) MarshalJSON() ([]byte, error) {
	if n == "" {
		return []byte("null"), nil
	}
	return json.Marshal(string(n))
}

// Record is what the cluster record in etcd says: the primary replctl last
// installed and the nodes it fenced. Classification takes it as input so
// that a fenced former primary that is writable again is told apart from the
// primary.
type Record struct {
	Primary string   `json:"primary"`
	Fenced  []string `json:"fenced"`
	// SyncRestore is a lowered synchronous replication that a rejoin
	// raises back; nil when there is none.
	SyncRestore *SyncRestore `json:"sync_restore,omitempty"`
}

// SyncRestore records that an operation had to lower synchronous
// replication: a node (Node) was needed to keep as many synchronous
// standbys as the old primary's synchronous_standby_names (Before) asked
// for, so on the node it promoted (Primary) it set fewer (Set; "" for
// none). Node is the former primary it fenced, or a replica that could not
// stream from Primary yet (its replay paused or delayed). When Node streams
// from Primary, and Primary's setting is still Set, `replctl rejoin NODE`
// raises it back: to Raise, or without Raise to what Before asked for, Node
// taking the promoted node's place in the list.
type SyncRestore struct {
	Node    string `json:"node"`
	Primary string `json:"primary"`
	Set     string `json:"set"`
	Before  string `json:"before"`
	// Raise is the setting to raise to; empty when Node is the former
	// primary (and in records written before it existed).
	Raise string `json:"raise,omitempty"`
	// Why says why Node was missing; empty when it was fenced.
	Why         string `json:"why,omitempty"`
	OperationID string `json:"operation_id,omitempty"`
}

// Node is a configured node with its probe and its classification.
type Node struct {
	NodeStatus
	Zone     string `json:"zone"`
	Priority int    `json:"priority"`
	Role     Role   `json:"role"`
	// State is a short human description: writable, streaming, unreachable...
	State string `json:"state"`
	// Upstream is the configured node this replica streams from.
	Upstream NodeName `json:"upstream"`
	// UpstreamAddress is where the WAL receiver connects, host:port, even
	// when it matches no configured node.
	UpstreamAddress string `json:"upstream_address,omitempty"`
	// Depth is the node's depth in the replication tree (0 for a root).
	Depth int `json:"depth"`
	// Foreign means the node belongs to another cluster (different system
	// identifier): it must never be promoted or repointed.
	Foreign bool `json:"foreign"`
	// Fenced means the cluster record marks the node fenced.
	Fenced bool `json:"fenced"`
	// LagBytes is the primary's current LSN minus this replica's replay
	// LSN, clamped at zero; nil when either is unknown.
	LagBytes *uint64 `json:"lag_bytes"`
	// ReceiveLagBytes is the same against the receive LSN.
	ReceiveLagBytes *uint64 `json:"receive_lag_bytes"`
	// ReplayDelaySeconds is zero only when the replica has replayed up to
	// the primary's current LSN; otherwise the age of the last replayed
	// transaction on the primary's clock (an upper bound), or the
	// walsender's replay_lag; nil when none is known.
	ReplayDelaySeconds *float64 `json:"replay_delay_seconds"`
	// SyncState is sync_state of the upstream's walsender for this node.
	SyncState *string `json:"sync_state"`
	// Walsender is the upstream's pg_stat_replication row serving this node.
	Walsender *Replication `json:"walsender"`
}

// ReplayDelay returns the replay delay and whether it is known.
func (n *Node) ReplayDelay() (time.Duration, bool) {
	if n.ReplayDelaySeconds == nil {
		return 0, false
	}
	return time.Duration(*n.ReplayDelaySeconds * float64(time.Second)), true
}

// Member reports whether the node is a reachable member of this cluster.
func (n *Node) Member() bool { return n.Reachable && !n.Foreign }

// Writable reports whether the node accepts writes: a reachable member out
// of recovery whose sessions do not start read-only
// (default_transaction_read_only) and whose commits do not wait for the SQL
// fence's standby name (FenceStandbyName). A node out of recovery that is
// not writable keeps RolePrimary but is never the snapshot's primary nor in
// its split brain. The record's fence mark does not enter: a node marked
// fenced whose fence was lifted is writable, and reported as such.
func (n *Node) Writable() bool {
	return n.Member() && !n.InRecovery && !n.ReadOnly() && !n.SyncFenced()
}

// Streaming reports whether a replica's WAL receiver is streaming.
func (n *Node) Streaming() bool {
	return n.Role == RoleReplica && n.WALReceiver != nil && n.WALReceiver.Status == "streaming"
}

// Unmanaged is a walsender connection on a configured node that serves no
// configured node: a replica replctl does not know about.
type Unmanaged struct {
	Upstream string `json:"upstream"`
	Replication
}

// Snapshot is the classified state of the cluster at one moment.
type Snapshot struct {
	Cluster string `json:"cluster"`
	// Primary is the one writable member (Node.Writable) not marked fenced;
	// null when there is none, or several and the record does not say which.
	// A node out of recovery under the SQL fence is never the primary.
	Primary NodeName `json:"primary"`
	// SystemID is the cluster's system identifier: the one most reachable
	// nodes share.
	SystemID string `json:"system_identifier"`
	// Nodes are in tree order: the primary, its replicas, cascades under
	// their upstream, then the rest.
	Nodes     []*Node     `json:"nodes"`
	Unmanaged []Unmanaged `json:"unmanaged_replicas"`
	// SplitBrain lists the writable members (Node.Writable) not marked
	// fenced, when there is more than one.
	SplitBrain []string `json:"split_brain"`
	// Record is the cluster record classification used, nil without one.
	Record *Record `json:"-"`
	// Previous is the look before this one when there was one (status
	// --watch), for the checks that need two looks to tell a trend, such
	// as subscription error counts that grow. Nil for a single look.
	Previous *Snapshot `json:"-"`
}

// Node returns the node with the given name, or nil.
func (s *Snapshot) Node(name string) *Node {
	for _, n := range s.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// PrimaryNode returns the primary, or nil when there is none.
func (s *Snapshot) PrimaryNode() *Node {
	if s.Primary == "" {
		return nil
	}
	return s.Node(string(s.Primary))
}

// Replicas returns the reachable member replicas in tree order.
func (s *Snapshot) Replicas() []*Node {
	var out []*Node
	for _, n := range s.Nodes {
		if n.Member() && n.Role == RoleReplica {
			out = append(out, n)
		}
	}
	return out
}

// Root is the primary a replica's lag is measured against: the member out of
// recovery at the top of its chain of upstreams (in a split brain, the one
// it actually follows, even fenced), else the cluster's primary; nil when
// there is none.
func (s *Snapshot) Root(n *Node) *Node {
	seen := map[*Node]bool{n: true}
	for cur := n; cur.Upstream != ""; {
		up := s.Node(string(cur.Upstream))
		if up == nil || seen[up] {
			break
		}
		if up.Member() && up.Role == RolePrimary {
			return up
		}
		seen[up] = true
		cur = up
	}
	return s.PrimaryNode()
}

// Unwritable returns the members out of recovery that accept no writes
// (read-only, or under the SQL fence), in tree order.
func (s *Snapshot) Unwritable() []*Node {
	var out []*Node
	for _, n := range s.Nodes {
		if n.Member() && n.Role == RolePrimary && !n.Writable() {
			out = append(out, n)
		}
	}
	return out
}

// Reachable counts the nodes that answered.
func (s *Snapshot) Reachable() int {
	c := 0
	for _, n := range s.Nodes {
		if n.Reachable {
			c++
		}
	}
	return c
}

// Classify turns probe results into a Snapshot: roles, the primary, the
// replication tree, foreign nodes, split brain, unmanaged replicas, lag. It
// does no I/O. rec may be nil. Statuses are matched to configured nodes by
// name; a configured node without a status is unreachable.
func Classify(cfg *config.Config, statuses []NodeStatus, rec *Record) *Snapshot {
	snap := &Snapshot{Cluster: cfg.Cluster, Record: rec, Unmanaged: []Unmanaged{}, SplitBrain: []string{}}
	byName := map[string]*Node{}
	var nodes []*Node
	for _, cn := range cfg.Nodes {
		n := &Node{NodeStatus: NodeStatus{Name: cn.Name, Error: "not probed"}, Zone: cn.Zone, Priority: cn.Prio(), Role: RoleUnknown}
		for _, st := range statuses {
			if st.Name == cn.Name {
				n.NodeStatus = st
				break
			}
		}
		if rec != nil && slices.Contains(rec.Fenced, cn.Name) {
			n.Fenced = true
		}
		nodes = append(nodes, n)
		byName[cn.Name] = n
	}

	snap.SystemID = clusterSystemID(nodes, rec)
	for _, n := range nodes {
		switch {
		case !n.Reachable:
		case n.SystemID != "" && snap.SystemID != "" && n.SystemID != snap.SystemID:
			n.Foreign = true
		case n.InRecovery:
			n.Role = RoleReplica
		default:
			n.Role = RolePrimary
		}
	}

	var writable []string
	for _, n := range nodes {
		if n.Writable() && !n.Fenced {
			writable = append(writable, n.Name)
		}
	}
	switch {
	case len(writable) == 1:
		snap.Primary = NodeName(writable[0])
	case len(writable) > 1:
		snap.SplitBrain = writable
		if rec != nil && slices.Contains(writable, rec.Primary) {
			snap.Primary = NodeName(rec.Primary)
		}
	}

	classifySubscriptions(cfg, nodes)
	resolveUpstreams(cfg, nodes, byName)
	snap.Unmanaged = matchWalsenders(nodes, byName)
	snap.Nodes = nodes
	for _, n := range nodes {
		if n.Member() && n.Role == RoleReplica {
			computeLag(n, snap.Root(n))
		}
		n.State = state(n)
	}
	snap.Nodes = treeOrder(nodes, byName, snap)
	return snap
}

// clusterSystemID picks the system identifier most reachable nodes share;
// ties go to the recorded primary's, then a writable node's, then the first.
func clusterSystemID(nodes []*Node, rec *Record) string {
	count := map[string]int{}
	for _, n := range nodes {
		if n.Reachable && n.SystemID != "" {
			count[n.SystemID]++
		}
	}
	best, bestScore := "", -1
	for _, n := range nodes {
		if !n.Reachable || n.SystemID == "" {
			continue
		}
		score := count[n.SystemID] * 4
		if rec != nil && rec.Primary == n.Name {
			score += 2
		}
		if !n.InRecovery {
			score++
		}
		if score > bestScore {
			best, bestScore = n.SystemID, score
		}
	}
	return best
}

// hostPort is a normalised network address of a node.
type hostPort struct {
	host string
	port int
}

// normHost folds the spellings of "this machine" together: a replica that
// reaches its upstream over localhost or a Unix socket and a configuration
// that says 127.0.0.1 mean the same server when the port matches.
func normHost(h string) string {
	h = strings.ToLower(strings.Trim(h, "[]"))
	switch {
	case h == "localhost" || h == "127.0.0.1" || h == "::1" || strings.HasPrefix(h, "/"):
		return "localhost"
	}
	return h
}

func nodeAddrs(dsn string) []hostPort {
	pc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil
	}
	out := []hostPort{{normHost(pc.Host), int(pc.Port)}}
	for _, f := range pc.Fallbacks {
		hp := hostPort{normHost(f.Host), int(f.Port)}
		if !slices.Contains(out, hp) {
			out = append(out, hp)
		}
	}
	return out
}

// resolveUpstreams maps each replica's WAL receiver sender host/port to a
// configured node, falling back to a walsender whose application_name is the
// replica's name (when the receiver's columns are not readable, or the
// configuration names the upstream differently from the replica).
func resolveUpstreams(cfg *config.Config, nodes []*Node, byName map[string]*Node) {
	addrs := map[string][]hostPort{}
	for _, cn := range cfg.Nodes {
		addrs[cn.Name] = nodeAddrs(cn.DSN)
	}
	for _, n := range nodes {
		if !n.Member() || n.Role != RoleReplica {
			continue
		}
		if w := n.WALReceiver; w != nil && w.SenderHost != nil && w.SenderPort != nil {
			n.UpstreamAddress = *w.SenderHost + ":" + strconv.Itoa(*w.SenderPort)
			want := hostPort{normHost(*w.SenderHost), *w.SenderPort}
			for _, cn := range cfg.Nodes {
				if cn.Name != n.Name && slices.Contains(addrs[cn.Name], want) {
					n.Upstream = NodeName(cn.Name)
					break
				}
			}
		}
		if n.Upstream != "" {
			continue
		}
		for _, u := range nodes {
			if u == n || !u.Member() {
				continue
			}
			if slices.ContainsFunc(u.Replication, func(r Replication) bool {
				return r.ApplicationName != nil && strings.EqualFold(*r.ApplicationName, n.Name)
			}) {
				n.Upstream = NodeName(u.Name)
				break
			}
		}
	}
}

// matchWalsenders pairs each member's walsender rows with the replicas that
// stream from it: by application_name, then by the slot the receiver uses,
// then by nearest flushed position. Rows left over serve no configured node.
func matchWalsenders(nodes []*Node, byName map[string]*Node) []Unmanaged {
	unmanaged := []Unmanaged{}
	for _, u := range nodes {
		if !u.Member() || len(u.Replication) == 0 {
			continue
		}
		rows := make([]*Replication, 0, len(u.Replication))
		for i := range u.Replication {
			// A base backup is not a replica, nor is a logical walsender
			// (a subscriber or CDC client, shown with its slot).
			if r := &u.Replication[i]; (r.State == nil || *r.State != "backup") && !r.Logical() {
				rows = append(rows, r)
			}
		}
		var children []*Node
		for _, n := range nodes {
			if n.Member() && n.Role == RoleReplica && string(n.Upstream) == u.Name {
				children = append(children, n)
			}
		}
		take := func(n *Node, i int) {
			n.Walsender = rows[i]
			n.SyncState = rows[i].SyncState
			rows = slices.Delete(rows, i, i+1)
			children = slices.DeleteFunc(children, func(c *Node) bool { return c == n })
		}
		// A configured name matches even a replica that is not a child
		// (unreachable, or its receiver columns unreadable): it is managed.
		for i := 0; i < len(rows); {
			r := rows[i]
			if r.ApplicationName != nil {
				if n, ok := byNameFold(byName, *r.ApplicationName); ok && n != u {
					if n.Walsender == nil && n.Member() {
						take(n, i)
					} else {
						rows = slices.Delete(rows, i, i+1)
					}
					continue
				}
			}
			i++
		}
		for _, n := range slices.Clone(children) {
			if n.WALReceiver == nil || n.WALReceiver.SlotName == nil {
				continue
			}
			for i, r := range rows {
				if r.PID != nil && slotPID(u, *n.WALReceiver.SlotName) == *r.PID {
					take(n, i)
					break
				}
			}
		}
		for _, n := range slices.Clone(children) {
			if !n.Streaming() || len(rows) == 0 {
				continue
			}
			best, bestD := -1, uint64(0)
			for i, r := range rows {
				if r.FlushLSN == nil || n.ReceiveLSN == nil {
					continue
				}
				d := Distance(*r.FlushLSN, *n.ReceiveLSN)
				if best < 0 || d < bestD {
					best, bestD = i, d
				}
			}
			if best >= 0 {
				take(n, best)
			}
		}
		for _, r := range rows {
			unmanaged = append(unmanaged, Unmanaged{Upstream: u.Name, Replication: *r})
		}
	}
	return unmanaged
}

func byNameFold(byName map[string]*Node, name string) (*Node, bool) {
	if n, ok := byName[name]; ok {
		return n, true
	}
	for k, n := range byName {
		if strings.EqualFold(k, name) {
			return n, true
		}
	}
	return nil, false
}

func slotPID(u *Node, slot string) int {
	for _, s := range u.Slots {
		if s.Name == slot && s.ActivePID != nil {
			return *s.ActivePID
		}
	}
	return -1
}

func computeLag(n, ref *Node) {
	if ref == nil || !ref.Reachable || ref.CurrentLSN == nil {
		return
	}
	n.LagBytes = Lag(ref.CurrentLSN, n.ReplayLSN)
	n.ReceiveLagBytes = Lag(ref.CurrentLSN, n.ReceiveLSN)
	var d *float64
	switch {
	case n.ReplayLSN != nil && *n.ReplayLSN >= *ref.CurrentLSN:
		d = new(float64)
	case n.LastReplayTime != nil && ref.ServerTime != nil:
		// Commit timestamps come from the primary's clock, as does
		// ServerTime: no clock skew between machines enters here.
		v := max(ref.ServerTime.Sub(*n.LastReplayTime).Seconds(), 0)
		d = &v
	case n.Walsender != nil && n.Walsender.ReplayLagSecs != nil:
		v := *n.Walsender.ReplayLagSecs
		d = &v
	}
	n.ReplayDelaySeconds = d
}

func state(n *Node) string {
	switch {
	case !n.Reachable && n.Fenced:
		return "unreachable, fenced"
	case !n.Reachable:
		return "unreachable"
	case n.Foreign:
		return "foreign"
	case n.Role == RolePrimary && n.Writable() && n.Fenced:
		return "writable, fenced"
	case n.Role == RolePrimary && n.Writable():
		return "writable"
	case n.Role == RolePrimary:
		s := "read-only"
		if !n.ReadOnly() {
			s = "commits blocked" // waiting for FenceStandbyName
		}
		if n.Fenced || n.SyncFenced() {
			s += ", fenced"
		}
		return s
	}
	s := "not streaming"
	if n.WALReceiver != nil {
		s = n.WALReceiver.Status
		if s == "" {
			s = "receiver unknown"
		}
	}
	if n.ReplayPaused() {
		s += ", replay paused"
	}
	return s
}

// treeOrder lists the primary, then its replicas depth first (cascades
// under their upstream), then other roots (split-brain writers, replicas of
// an unknown upstream), foreign nodes last; siblings in configuration order.
func treeOrder(nodes []*Node, byName map[string]*Node, snap *Snapshot) []*Node {
	rank := func(n *Node) int {
		switch {
		case string(snap.Primary) == n.Name:
			return 0
		case n.Member() && n.Role == RolePrimary:
			return 1
		case n.Foreign:
			return 3
		}
		return 2
	}
	isRoot := func(n *Node) bool {
		up := byName[string(n.Upstream)]
		return up == nil || up == n
	}
	var roots []*Node
	for _, n := range nodes {
		if isRoot(n) {
			roots = append(roots, n)
		}
	}
	slices.SortStableFunc(roots, func(a, b *Node) int { return rank(a) - rank(b) })

	out := make([]*Node, 0, len(nodes))
	seen := map[*Node]bool{}
	var walk func(n *Node, depth int)
	walk = func(n *Node, depth int) {
		if seen[n] {
			return
		}
		seen[n] = true
		n.Depth = depth
		out = append(out, n)
		for _, c := range nodes {
			if string(c.Upstream) == n.Name && c != n {
				walk(c, depth+1)
			}
		}
	}
	for _, r := range roots {
		walk(r, 0)
	}
	// Nodes in an upstream cycle have no root; list them rather than lose them.
	for _, n := range nodes {
		walk(n, 0)
	}
	return out
}
