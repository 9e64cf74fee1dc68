package topology

import (
	"net/url"
	"slices"
	"strings"

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
	pc, err := parseAddress(*n.Settings.PrimaryConninfo)
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

// parseAddress parses where a connection string leads without reading the
// files it names. A replica's primary_conninfo names certificates and keys
// on the replica's host (sslrootcert, sslcert, sslkey), which replctl's host
// may not have, and pgconn.ParseConfig fails when it cannot read them: the
// TLS keywords are overridden so that it never tries.
func parseAddress(conninfo string) (*pgconn.Config, error) {
	if strings.HasPrefix(conninfo, "postgres://") || strings.HasPrefix(conninfo, "postgresql://") {
		if u, err := url.Parse(conninfo); err == nil {
			q := u.Query()
			for _, k := range append([]string{"sslpassword"}, config.TLSKeywords...) {
				q.Del(k)
			}
			q.Set("sslmode", "disable")
			u.RawQuery = q.Encode()
			return pgconn.ParseConfig(u.String())
		}
		return pgconn.ParseConfig(conninfo)
	}
	// Later keywords win; sslmode=disable returns before the client
	// certificate is read, the empty sslrootcert stops the CA file's read.
	return pgconn.ParseConfig(conninfo + " sslmode=disable sslrootcert='' sslcert='' sslkey=''")
}
