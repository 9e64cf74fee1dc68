package writeprobe

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/replctl/replctl/config"
)

// DSNFromConfig builds the connection string a client of the cluster would
// use: every configured node's host and port in configuration order, the
// first node's user, database and (when its DSN has one) password and
// sslmode, and target_session_attrs=read-write so that a connection lands
// on the node that accepts writes. Show it only through config.RedactDSN.
func DSNFromConfig(cfg *config.Config) (string, error) {
	if len(cfg.Nodes) == 0 {
		return "", errors.New("no nodes configured")
	}
	var hosts, ports []string
	seen := map[string]bool{}
	add := func(host string, port uint16) {
		p := strconv.Itoa(int(port))
		if seen[host+"\x00"+p] {
			return
		}
		seen[host+"\x00"+p] = true
		hosts, ports = append(hosts, host), append(ports, p)
	}
	var first *pgconn.Config
	for i, n := range cfg.Nodes {
		pc, err := pgconn.ParseConfig(n.DSN)
		if err != nil {
			return "", fmt.Errorf("%s: dsn: %s", n.Name, config.Scrub(err.Error(), n.DSN))
		}
		if i == 0 {
			first = pc
		}
		// sslmode=prefer and multi-host node DSNs give fallbacks: the
		// same address repeated, or further addresses of this node.
		add(pc.Host, pc.Port)
		for _, fb := range pc.Fallbacks {
			add(fb.Host, fb.Port)
		}
	}
	parts := []string{"host=" + kvQuote(strings.Join(hosts, ",")), "port=" + strings.Join(ports, ",")}
	if first.User != "" {
		parts = append(parts, "user="+kvQuote(first.User))
	}
	if first.Database != "" {
		parts = append(parts, "dbname="+kvQuote(first.Database))
	}
	// Only a password written in the DSN is carried over: one found in
	// .pgpass or PGPASSWORD is found again by the driver, per host.
	set := dsnSettings(cfg.Nodes[0].DSN)
	if pw, ok := set["password"]; ok && pw != "" {
		parts = append(parts, "password="+kvQuote(pw))
	}
	if m := set["sslmode"]; m != "" {
		parts = append(parts, "sslmode="+kvQuote(m))
	}
	parts = append(parts, "target_session_attrs=read-write")
	return strings.Join(parts, " "), nil
}

// dsnSettings returns the keywords written in a libpq connection string,
// keyword/value or URL, without defaults or environment.
func dsnSettings(dsn string) map[string]string {
	out := map[string]string{}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return out
		}
		for k, v := range u.Query() {
			if len(v) > 0 {
				out[k] = v[0]
			}
		}
		if u.User != nil {
			if pw, ok := u.User.Password(); ok {
				out["password"] = pw
			}
		}
		return out
	}
	s := dsn
	for {
		s = strings.TrimLeft(s, " \t\n\r")
		if s == "" {
			return out
		}
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return out
		}
		key := strings.TrimSpace(s[:eq])
		s = strings.TrimLeft(s[eq+1:], " \t\n\r")
		var val strings.Builder
		if strings.HasPrefix(s, "'") {
			s = s[1:]
			for len(s) > 0 && s[0] != '\'' {
				if s[0] == '\\' && len(s) > 1 {
					s = s[1:]
				}
				val.WriteByte(s[0])
				s = s[1:]
			}
			if len(s) > 0 {
				s = s[1:]
			}
		} else {
			for len(s) > 0 && !strings.ContainsRune(" \t\n\r", rune(s[0])) {
				if s[0] == '\\' && len(s) > 1 {
					s = s[1:]
				}
				val.WriteByte(s[0])
				s = s[1:]
			}
		}
		out[key] = val.String()
	}
}

// kvQuote quotes a keyword/value connection string value when it needs it.
func kvQuote(v string) string {
	if v != "" && !strings.ContainsAny(v, " '\\\t\n") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}
