package writeprobe

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/replctl/replctl/config"
)

// DSNFromConfig builds the connection string a client of the cluster would
// use: every configured node's host and port in configuration order, the
// first node's user, database and (when its DSN has them) password and TLS
// settings (config.TLSSettings, plus sslpassword), and
// target_session_attrs=read-write so that a connection lands
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
	set := config.DSNSettings(cfg.Nodes[0].DSN)
	if pw, ok := set["password"]; ok && pw != "" {
		parts = append(parts, "password="+kvQuote(pw))
	}
	// The probe is a client like the operator's own: it connects the way
	// the first node's DSN does (a verify-full DSN must not become a probe
	// that trusts any certificate), and its key's password stays in this
	// process like the password above.
	for _, kv := range config.TLSSettings(cfg.Nodes[0].DSN) {
		parts = append(parts, kv[0]+"="+kvQuote(kv[1]))
	}
	if pw := set["sslpassword"]; pw != "" {
		parts = append(parts, "sslpassword="+kvQuote(pw))
	}
	parts = append(parts, "target_session_attrs=read-write")
	return strings.Join(parts, " "), nil
}

// kvQuote quotes a keyword/value connection string value when it needs it.
func kvQuote(v string) string {
	if v != "" && !strings.ContainsAny(v, " '\\\t\n") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}
