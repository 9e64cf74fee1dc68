package cmd

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/cobra"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/topology"
)

// EndpointsOptions are the inputs of replctl endpoints.
type EndpointsOptions struct {
	IO      *IOStreams
	Config  func() (*config.Config, error)
	Output  string
	Timeout time.Duration
	// Role is "replica" (the default) or "primary".
	Role   string
	MaxLag config.Size
	// FallbackPrimary appends the primary to a replica list, so that
	// -o libpq uses target_session_attrs=prefer-standby.
	FallbackPrimary bool
	Prober          topology.Prober
	Record          func(ctx context.Context) (*recordInfo, error)
}

// endpoint is one node a client may connect to.
type endpoint struct {
	Name string `json:"name"`
	Role string `json:"role"`
	// DSN is the configured connection string without its password.
	DSN      string  `json:"dsn"`
	Zone     string  `json:"zone"`
	LagBytes *uint64 `json:"lag_bytes"`
	dsn      string  // the real DSN, for host and port only
}

// endpointsReport is the result of endpoints.
type endpointsReport struct {
	Role        string     `json:"role"`
	MaxLagBytes uint64     `json:"max_lag_bytes"`
	Endpoints   []endpoint `json:"endpoints"`
}

func newCmdEndpoints(f *Factory, runF func(context.Context, *EndpointsOptions) error) *cobra.Command {
	o := &EndpointsOptions{IO: f.IO, Config: f.Config, Role: "replica", MaxLag: 16 << 20}
	o.Record = func(ctx context.Context) (*recordInfo, error) {
		cfg, err := o.Config()
		if err != nil {
			return nil, err
		}
		return readClusterRecord(ctx, cfg)
	}
	c := &cobra.Command{
		Use:   "endpoints",
		Short: "List the nodes clients should connect to, for poolers and read splitting",
		Long: `List the reachable replicas whose replay lag is within --max-lag (a replica
whose lag is unknown is left out), or with --role primary the primary, as
connection strings without passwords.

-o libpq prints one multi-host connection string: target_session_attrs=standby
for replicas (prefer-standby with --fallback-primary, which appends the
primary), read-write for the primary. Exits 1 when no node qualifies.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f, "table", "json", "yaml", "libpq"); err != nil {
				return err
			}
			if o.Role != "replica" && o.Role != "primary" {
				return usageError("--role must be replica or primary, not %q", o.Role)
			}
			o.Output, o.Timeout = f.Output, f.Timeout
			if runF != nil {
				return runF(cmd.Context(), o)
			}
			return runEndpoints(cmd.Context(), o)
		},
	}
	c.Flags().StringVar(&o.Role, "role", o.Role, "replica or primary")
	c.Flags().Var(&o.MaxLag, "max-lag", "leave out replicas further behind than this (e.g. 16MB)")
	c.Flags().BoolVar(&o.FallbackPrimary, "fallback-primary", false, "append the primary after the replicas")
	return c
}

func runEndpoints(ctx context.Context, o *EndpointsOptions) error {
	cfg, err := o.Config()
	if err != nil {
		return err
	}
	obs := observe(ctx, cfg, o.Timeout, o.Prober, o.Record)
	if obs.Snap.Reachable() == 0 {
		return withCode(ExitFailed, errNoNodeReachable(obs.Snap))
	}
	r, err := selectEndpoints(cfg, obs.Snap, o.Role, uint64(o.MaxLag), o.FallbackPrimary)
	if err != nil {
		return withCode(ExitFailed, err)
	}
	if o.Output == "libpq" {
		s, err := libpqMultiHost(r)
		if err != nil {
			return withCode(ExitFailed, err)
		}
		_, err = fmt.Fprintln(o.IO.Out, s)
		return err
	}
	return render(o.IO, o.Output, r, func(w io.Writer) error {
		h := []string{"NODE", "ROLE", "LAG", "ZONE", "DSN"}
		var rows [][]string
		for _, e := range r.Endpoints {
			lag := "-"
			if e.LagBytes != nil {
				lag = config.HumanBytes(*e.LagBytes)
			}
			rows = append(rows, []string{e.Name, e.Role, lag, dash(e.Zone), e.DSN})
		}
		return writeTable(w, o.IO.StdoutTTY, h, rows)
	})
}

// selectEndpoints picks the nodes to hand out. It is pure.
func selectEndpoints(cfg *config.Config, s *topology.Snapshot, role string, maxLag uint64, fallbackPrimary bool) (*endpointsReport, error) {
	r := &endpointsReport{Role: role, MaxLagBytes: maxLag, Endpoints: []endpoint{}}
	mk := func(n *topology.Node) endpoint {
		cn, _ := cfg.Node(n.Name)
		return endpoint{Name: n.Name, Role: string(n.Role), DSN: cn.SafeDSN(), Zone: n.Zone, LagBytes: n.LagBytes, dsn: cn.DSN}
	}
	// Never hand out a writer while more than one node accepts writes.
	p := s.PrimaryNode()
	if len(s.SplitBrain) > 0 {
		p = nil
	}
	if role == "primary" {
		if p == nil {
			return r, fmt.Errorf("no single reachable primary")
		}
		r.Endpoints = append(r.Endpoints, mk(p))
		return r, nil
	}
	for _, n := range s.Replicas() {
		if n.Fenced || n.LagBytes == nil || *n.LagBytes > maxLag {
			continue
		}
		r.Endpoints = append(r.Endpoints, mk(n))
	}
	if fallbackPrimary && p != nil {
		r.Endpoints = append(r.Endpoints, mk(p))
	}
	if len(r.Endpoints) == 0 {
		return r, fmt.Errorf("no reachable replica within %s of the primary", config.HumanBytes(maxLag))
	}
	return r, nil
}

// libpqMultiHost joins the endpoints into one keyword/value connection
// string: every host and port, the other parameters of the first node
// (never a password), and target_session_attrs so libpq picks the role.
func libpqMultiHost(r *endpointsReport) (string, error) {
	var hosts, ports []string
	var params [][2]string
	for i, e := range r.Endpoints {
		pc, err := pgconn.ParseConfig(e.dsn)
		if err != nil {
			return "", fmt.Errorf("dsn of %s: %s", e.Name, config.Scrub(err.Error(), e.dsn))
		}
		hosts = append(hosts, pc.Host)
		ports = append(ports, strconv.Itoa(int(pc.Port)))
		if i == 0 {
			params = dsnParams(e.dsn, pc)
		}
	}
	attrs := "standby"
	switch {
	case r.Role == "primary":
		attrs = "read-write"
	case len(r.Endpoints) > 0 && r.Endpoints[len(r.Endpoints)-1].Role == string(topology.RolePrimary):
		attrs = "prefer-standby"
	}
	out := []string{"host=" + libpqQuote(strings.Join(hosts, ",")), "port=" + strings.Join(ports, ",")}
	for _, kv := range params {
		out = append(out, kv[0]+"="+libpqQuote(kv[1]))
	}
	out = append(out, "target_session_attrs="+attrs)
	return strings.Join(out, " "), nil
}

// dsnParams returns a DSN's parameters other than where to connect and
// secrets, in their written order.
func dsnParams(dsn string, pc *pgconn.Config) [][2]string {
	skip := map[string]bool{"host": true, "hostaddr": true, "port": true, "password": true, "sslpassword": true, "target_session_attrs": true}
	var kvs [][2]string
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		// URL hosts may be lists that net/url rejects: take user and
		// database from pgconn, the rest from the query string.
		if pc.User != "" {
			kvs = append(kvs, [2]string{"user", pc.User})
		}
		if pc.Database != "" {
			kvs = append(kvs, [2]string{"dbname", pc.Database})
		}
		if _, q, ok := strings.Cut(dsn, "?"); ok {
			for _, part := range strings.Split(q, "&") {
				k, v, _ := strings.Cut(part, "=")
				k, _ = url.QueryUnescape(k)
				v, _ = url.QueryUnescape(v)
				kvs = append(kvs, [2]string{k, v})
			}
		}
	} else {
		kvs = parseKeywordDSN(dsn)
	}
	var out [][2]string
	for _, kv := range kvs {
		if !skip[kv[0]] && kv[0] != "" {
			out = append(out, kv)
		}
	}
	return out
}

// parseKeywordDSN splits "k=v k2='v 2'" into pairs, with libpq's quoting.
func parseKeywordDSN(s string) [][2]string {
	var out [][2]string
	r := []rune(s)
	i := 0
	skipSpace := func() {
		for i < len(r) && (r[i] == ' ' || r[i] == '\t' || r[i] == '\n' || r[i] == '\r') {
			i++
		}
	}
	for {
		skipSpace()
		if i >= len(r) {
			return out
		}
		start := i
		for i < len(r) && r[i] != '=' && r[i] != ' ' && r[i] != '\t' {
			i++
		}
		key := string(r[start:i])
		skipSpace()
		if i >= len(r) || r[i] != '=' {
			return out
		}
		i++
		skipSpace()
		var v strings.Builder
		if i < len(r) && r[i] == '\'' {
			i++
			for i < len(r) && r[i] != '\'' {
				if r[i] == '\\' && i+1 < len(r) {
					i++
				}
				v.WriteRune(r[i])
				i++
			}
			i++
		} else {
			for i < len(r) && r[i] != ' ' && r[i] != '\t' && r[i] != '\n' {
				if r[i] == '\\' && i+1 < len(r) {
					i++
				}
				v.WriteRune(r[i])
				i++
			}
		}
		out = append(out, [2]string{key, v.String()})
	}
}

// libpqQuote quotes a value for a keyword/value connection string when needed.
func libpqQuote(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n'\\") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}
