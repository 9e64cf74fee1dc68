package topology

import (
	"slices"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/replctl/replctl/config"
)

// IntendedUpstream is the configured node a replica's primary_conninfo
// names, "" when it names none. Unlike Node.Upstream it does not need a
// streaming WAL receiver: after the primary dies this is still where the
// replica was pointed.
func IntendedUpstream(cfg *config.Config, n *Node) string {
	if n.Settings.PrimaryConninfo == nil || *n.Settings.PrimaryConninfo == "" {
		return ""
	}
	pc, err := pgconn.ParseConfig(*n.Settings.PrimaryConninfo)
	if err != nil {
		return ""
	}
	want := hostPort{normHost(pc.Host), int(pc.Port)}
	for _, cn := range cfg.Nodes {
		if cn.Name != n.Name && slices.Contains(nodeAddrs(cn.DSN), want) {
			return cn.Name
		}
	}
	return ""
}

// UpstreamOf is the replica's upstream as observed, else as configured in
// its primary_conninfo.
func UpstreamOf(cfg *config.Config, n *Node) string {
	if n.Upstream != "" {
		return string(n.Upstream)
	}
	return IntendedUpstream(cfg, n)
}
