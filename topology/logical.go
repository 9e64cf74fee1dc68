package topology

import (
	"net/url"
	"strings"

	"github.com/replctl/replctl/config"
)

// SubConninfo is one subscription's connection string as the node stores
// it (pg_subscription.subconninfo). It may hold a password: it is only
// parsed, never kept.
type SubConninfo struct {
	Database, Name, Conninfo string
}

// ApplySubConninfo fills each subscription's publisher host, port and
// database from its connection string. Nothing else of the string is
// kept, so neither a password nor a key passphrase can reach the output.
func ApplySubConninfo(st *NodeStatus, infos []SubConninfo) {
	for _, c := range infos {
		for i := range st.Subscriptions {
			su := &st.Subscriptions[i]
			if su.Name != c.Name || su.Database != c.Database {
				continue
			}
			host, port, db := publisherOf(c.Conninfo)
			su.PublisherHost, su.PublisherPort, su.PublisherDB = &host, &port, &db
		}
	}
}

// publisherOf returns host, port and dbname as written in a libpq
// connection string (keyword/value or URL); hostaddr stands in for a
// missing host. It reads no file and no environment: the string is the
// subscriber's, resolved on its host, not on replctl's.
func publisherOf(conninfo string) (host, port, db string) {
	if strings.HasPrefix(conninfo, "postgres://") || strings.HasPrefix(conninfo, "postgresql://") {
		u, err := url.Parse(conninfo)
		if err != nil {
			return "", "", ""
		}
		// A URL's authority may list hosts: "h1:5432,h2:5433".
		var hosts, ports []string
		for _, hp := range strings.Split(u.Host, ",") {
			h, p := hp, ""
			if i := strings.LastIndexByte(hp, ':'); i >= 0 && !strings.HasSuffix(hp, "]") {
				h, p = hp[:i], hp[i+1:]
			}
			hosts, ports = append(hosts, strings.Trim(h, "[]")), append(ports, p)
		}
		host, port, db = strings.Join(hosts, ","), strings.Join(ports, ","), strings.TrimPrefix(u.Path, "/")
		q := u.Query()
		if v := q.Get("host"); v != "" {
			host = v
		}
		if v := q.Get("port"); v != "" {
			port = v
		}
		if v := q.Get("dbname"); v != "" {
			db = v
		}
		if strings.Trim(port, ",") == "" {
			port = ""
		}
		return host, port, db
	}
	kv := config.DSNSettings(conninfo)
	host = kv["host"]
	if host == "" {
		host = kv["hostaddr"]
	}
	return host, kv["port"], kv["dbname"]
}

// publisherAddrs are the normalised addresses a subscription connects to;
// libpq pairs each host with its port, or with the only port given.
func publisherAddrs(su Subscription) []hostPort {
	if su.PublisherHost == nil {
		return nil
	}
	hosts := strings.Split(*su.PublisherHost, ",")
	var ports []string
	if su.PublisherPort != nil && *su.PublisherPort != "" {
		ports = strings.Split(*su.PublisherPort, ",")
	}
	var out []hostPort
	for i, h := range hosts {
		p := "5432"
		switch {
		case len(ports) == 1:
			p = ports[0]
		case i < len(ports) && ports[i] != "":
			p = ports[i]
		}
		n := 0
		for _, c := range strings.TrimSpace(p) {
			if c < '0' || c > '9' {
				n = -1
				break
			}
			n = n*10 + int(c-'0')
		}
		if n <= 0 {
			continue
		}
		if h == "" {
			h = "localhost" // a Unix socket: this machine
		}
		out = append(out, hostPort{normHost(strings.TrimSpace(h)), n})
	}
	return out
}

// classifySubscriptions names each subscription's publisher when it is a
// configured node (Kind internal; otherwise external), and pairs the
// subscriptions that replicate in both directions.
//
// A "configured cluster" here is what this configuration lists: a
// publisher address that matches a node's DSN host and port is internal,
// whether it is this cluster (another database of it) or a node of
// another cluster listed in the same file. Two subscriptions form a
// bidirectional pair when each consumes from the other's database: A lives
// in database dA of cluster X and publishes from (cluster Y, dB), and B
// lives in dB of cluster Y and publishes from (X, dA); clusters are told
// apart by system identifier, so a pair across two clusters is seen only
// when both are in the configuration (each side sees only its own
// subscriptions).
func classifySubscriptions(cfg *config.Config, nodes []*Node) {
	addrs := map[string][]hostPort{}
	for _, cn := range cfg.Nodes {
		addrs[cn.Name] = nodeAddrs(cn.DSN)
	}
	byName := map[string]*Node{}
	for _, n := range nodes {
		byName[n.Name] = n
		// The probe's slice may be shared with its caller: classify a copy.
		n.Subscriptions = append([]Subscription(nil), n.Subscriptions...)
	}
	type end struct{ system, db string }
	type sub struct {
		node     *Node
		i        int
		at, from end
	}
	var subs []sub
	for _, n := range nodes {
		for i := range n.Subscriptions {
			su := &n.Subscriptions[i]
			su.PublisherNode, su.Kind, su.BidirectionalWith = "", "", nil
			pa := publisherAddrs(*su)
			if pa == nil {
				continue
			}
			su.Kind = SubscriptionExternal
			for _, cn := range cfg.Nodes {
				if hasAny(addrs[cn.Name], pa) {
					su.PublisherNode, su.Kind = NodeName(cn.Name), SubscriptionInternal
					break
				}
			}
			// Only a primary's subscriptions run; a standby's are copies
			// of its primary's and would pair with themselves. A primary
			// of another cluster (foreign here) is one side of a pair.
			if su.PublisherNode == "" || !n.Reachable || n.InRecovery || n.SystemID == "" {
				continue
			}
			pub := byName[string(su.PublisherNode)]
			if pub == nil || pub.SystemID == "" || su.PublisherDB == nil {
				continue
			}
			subs = append(subs, sub{node: n, i: i, at: end{n.SystemID, su.Database}, from: end{pub.SystemID, *su.PublisherDB}})
		}
	}
	for _, a := range subs {
		for _, b := range subs {
			if a.at == b.from && a.from == b.at && a.at != a.from {
				other := b.node.Subscriptions[b.i]
				ref := b.node.Name + "/" + other.Database + "/" + other.Name
				a.node.Subscriptions[a.i].BidirectionalWith = &ref
				break
			}
		}
	}
}

func hasAny(a, b []hostPort) bool {
	for _, x := range b {
		for _, y := range a {
			if x == y {
				return true
			}
		}
	}
	return false
}

// Peer is another cluster replctl manages (config.Config.Peers), as
// probed: what a subscription crossing clusters is named against.
type Peer struct {
	Cfg  *config.Config
	Snap *Snapshot
}

// LinkPeers names the subscriptions of s whose publisher is a node of a
// peer cluster (Kind peer, PublisherCluster, PublisherNode that cluster's
// node), and pairs those that replicate in both directions across
// clusters: a subscription of s in database dA consuming from the peer's
// database dB, and one of the peer in dB consuming from s's dA. The
// reverse subscription is named "cluster/node/database/name". Only the
// primaries' subscriptions count: a standby's are copies. It does no I/O.
func LinkPeers(cfg *config.Config, s *Snapshot, peers []Peer) {
	type cluster struct {
		name  string
		cfg   *config.Config
		snap  *Snapshot
		addrs map[string][]hostPort
	}
	all := []cluster{{name: cfg.Cluster, cfg: cfg, snap: s}}
	for _, p := range peers {
		if p.Cfg != nil && p.Snap != nil {
			all = append(all, cluster{name: p.Cfg.Cluster, cfg: p.Cfg, snap: p.Snap})
		}
	}
	for i := range all {
		all[i].addrs = map[string][]hostPort{}
		for _, cn := range all[i].cfg.Nodes {
			all[i].addrs[cn.Name] = nodeAddrs(cn.DSN)
		}
	}
	type end struct{ system, db string }
	type side struct {
		su       *Subscription
		ref      string
		self     bool
		at, from end
	}
	var sides []side
	for ci, c := range all {
		for _, n := range c.snap.Nodes {
			if !n.Reachable || n.InRecovery || n.SystemID == "" {
				continue
			}
			for i := range n.Subscriptions {
				su := &n.Subscriptions[i]
				pa := publisherAddrs(*su)
				if pa == nil || su.PublisherDB == nil {
					continue
				}
			match:
				for pi, pc := range all {
					if pi == ci {
						continue
					}
					for _, cn := range pc.cfg.Nodes {
						if !hasAny(pc.addrs[cn.Name], pa) {
							continue
						}
						if ci == 0 {
							su.Kind, su.PublisherCluster, su.PublisherNode = SubscriptionPeer, pc.name, NodeName(cn.Name)
						}
						if pub := pc.snap.Node(cn.Name); pub != nil && pub.SystemID != "" {
							sides = append(sides, side{su: su, ref: c.name + "/" + n.Name + "/" + su.Database + "/" + su.Name, self: ci == 0,
								at: end{n.SystemID, su.Database}, from: end{pub.SystemID, *su.PublisherDB}})
						}
						break match
					}
				}
			}
		}
	}
	for _, a := range sides {
		if !a.self {
			continue
		}
		for _, b := range sides {
			if !b.self && a.at == b.from && a.from == b.at {
				ref := b.ref
				a.su.BidirectionalWith = &ref
				break
			}
		}
	}
}
