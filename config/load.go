package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// EnvConfig names the environment variable that points at the config file.
const EnvConfig = "REPLCTL_CONFIG"

// EnvPrefix prefixes the environment variables that override keys
// (REPLCTL_CLUSTER, REPLCTL_ETCD_ENDPOINTS, REPLCTL_LOCK_TTL, ...).
const EnvPrefix = "REPLCTL"

// Error is a configuration error: it names the file, the key (or node) and
// what to do about it.
type Error struct {
	File string
	Line int
	Key  string
	Msg  string
	Hint string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	}
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	if e.Hint != "" {
		b.WriteString(": ")
		b.WriteString(e.Hint)
	}
	return b.String()
}

// Find resolves which file to read: the explicit path (--config), then
// $REPLCTL_CONFIG, then ./replctl.yaml, then ~/.config/replctl/replctl.yaml.
func Find(explicit string) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	if p := os.Getenv(EnvConfig); p != "" {
		return p, nil
	}
	candidates := []string{"replctl.yaml"}
	if home, err := os.UserHomeDir(); err == nil {
		candidates = append(candidates, filepath.Join(home, ".config", "replctl", "replctl.yaml"))
	}
	for _, c := range candidates {
		if _, err := os.Stat(c); err == nil {
			return c, nil
		}
	}
	return "", &Error{Msg: "no configuration file found",
		Hint: "pass --config FILE, set " + EnvConfig + ", or create ./replctl.yaml or ~/.config/replctl/replctl.yaml (see the README)"}
}

// Load finds, reads, decodes and validates the configuration.
func Load(explicit string) (*Config, error) {
	path, err := Find(explicit)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		msg := err.Error()
		if errors.Is(err, os.ErrNotExist) {
			msg = "file does not exist"
		}
		return nil, &Error{File: path, Msg: msg, Hint: "check the path given by --config or " + EnvConfig}
	}
	return Parse(path, data)
}

// Parse decodes and validates configuration text; path is used in errors.
func Parse(path string, data []byte) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &Error{File: path, Msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: "),
			Hint: "fix the syntax (indentation, quoting)"}
	}
	if len(root.Content) == 0 {
		return nil, &Error{File: path, Msg: "the file is empty", Hint: "add at least cluster and nodes (see the README)"}
	}
	if err := checkKeys(path, root.Content[0], reflect.TypeOf(Config{}), ""); err != nil {
		return nil, err
	}

	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
		return nil, &Error{File: path, Msg: "cannot read: " + err.Error()}
	}
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	// Keys absent from the file are unknown to viper, so AutomaticEnv alone
	// would not see their variables: bind every scalar key explicitly.
	for _, k := range leafKeys(reflect.TypeOf(Config{}), "") {
		_ = v.BindEnv(k)
	}

	var c Config
	err := v.Unmarshal(&c, viper.DecodeHook(mapstructure.ComposeDecodeHookFunc(
		durationHook,
		mapstructure.TextUnmarshallerHookFunc(),
		mapstructure.StringToSliceHookFunc(","),
	)), func(dc *mapstructure.DecoderConfig) { dc.ErrorUnused = true })
	if err != nil {
		return nil, &Error{File: path, Msg: decodeMessage(err), Hint: "fix the value (durations like 10s, sizes like 16MB)"}
	}
	c.File = path
	c.applyDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// durationHook rejects bare numbers for durations: "ttl: 10" would otherwise
// be ten nanoseconds, a dangerous surprise in a lock TTL.
func durationHook(from reflect.Type, to reflect.Type, data any) (any, error) {
	if to != reflect.TypeOf(time.Duration(0)) {
		return data, nil
	}
	switch from.Kind() {
	case reflect.String:
		d, err := time.ParseDuration(strings.TrimSpace(data.(string)))
		if err != nil {
			return nil, fmt.Errorf("invalid duration %q: write it with a unit, such as 500ms, 10s or 5m", data)
		}
		if d < 0 {
			return nil, fmt.Errorf("negative duration %q", data)
		}
		return d, nil
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint, reflect.Uint64, reflect.Float64:
		return nil, fmt.Errorf("duration %v has no unit: write it like 10s or 500ms", data)
	}
	return data, nil
}

// decodeMessage flattens mapstructure's multi-line error into one line that
// names the key.
func decodeMessage(err error) string {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "decoding failed due to the following error(s):")
	msg = strings.TrimSpace(msg)
	lines := strings.Split(msg, "\n")
	var parts []string
	for _, l := range lines {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "*"))
		if l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

// keyName returns the mapstructure name of a struct field, or "" when the
// field is not part of the schema.
func keyName(f reflect.StructField) string {
	tag := f.Tag.Get("mapstructure")
	name, _, _ := strings.Cut(tag, ",")
	if name == "-" || !f.IsExported() {
		return ""
	}
	if name == "" {
		return strings.ToLower(f.Name)
	}
	return name
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// isLeaf reports whether a type is decoded from a scalar rather than walked.
func isLeaf(t reflect.Type) bool {
	t = deref(t)
	if t.Kind() != reflect.Struct {
		return true
	}
	return false
}

// checkKeys walks the YAML tree beside the Go schema and reports the first
// unknown key with its line, so a typo is caught before anything runs.
func checkKeys(path string, n *yaml.Node, t reflect.Type, where string) error {
	t = deref(t)
	switch {
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			if n.Tag == "!!null" {
				return nil
			}
			return &Error{File: path, Line: n.Line, Key: orTop(where), Msg: "expected a mapping of keys", Hint: "see the configuration reference in the README"}
		}
		fields := map[string]reflect.StructField{}
		var names []string
		for i := 0; i < t.NumField(); i++ {
			if k := keyName(t.Field(i)); k != "" {
				fields[k] = t.Field(i)
				names = append(names, k)
			}
		}
		sort.Strings(names)
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			key := join(where, k.Value)
			f, ok := fields[k.Value]
			if !ok {
				return &Error{File: path, Line: k.Line, Key: key, Msg: "unknown key",
					Hint: "known keys here are " + strings.Join(names, ", ") + Suggest(k.Value, names)}
			}
			if seen[k.Value] {
				return &Error{File: path, Line: k.Line, Key: key, Msg: "key given twice", Hint: "keep one"}
			}
			seen[k.Value] = true
			if err := checkKeys(path, val, f.Type, key); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Slice && !isLeaf(t.Elem()):
		if n.Kind != yaml.SequenceNode {
			if n.Tag == "!!null" {
				return nil
			}
			return &Error{File: path, Line: n.Line, Key: where, Msg: "expected a list", Hint: "write it as a YAML list of entries starting with '- '"}
		}
		for i, item := range n.Content {
			label := fmt.Sprintf("%s[%d]", where, i)
			if name := mappingValue(item, "name"); name != "" {
				label = fmt.Sprintf("%s[%d] (%s)", where, i, name)
			}
			if err := checkKeys(path, item, t.Elem(), label); err != nil {
				return err
			}
		}
	default:
		if n.Kind == yaml.MappingNode && t.Kind() != reflect.Map {
			return &Error{File: path, Line: n.Line, Key: where, Msg: "expected a single value, found a mapping", Hint: "check the indentation"}
		}
	}
	return nil
}

func mappingValue(n *yaml.Node, key string) string {
	if n.Kind != yaml.MappingNode {
		return ""
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1].Value
		}
	}
	return ""
}

func join(where, k string) string {
	if where == "" {
		return k
	}
	return where + "." + k
}

func orTop(where string) string {
	if where == "" {
		return "(top level)"
	}
	return where
}

// Suggest offers the closest known name for a likely typo, as
// ` (did you mean "x"?)`, or "" when nothing is close.
func Suggest(bad string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		if d := editDistance(bad, n); d < bestD {
			best, bestD = n, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// leafKeys lists the dotted keys of every scalar setting outside lists, the
// ones an environment variable can override.
func leafKeys(t reflect.Type, prefix string) []string {
	t = deref(t)
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		k := keyName(f)
		if k == "" {
			continue
		}
		ft := deref(f.Type)
		switch {
		case ft.Kind() == reflect.Struct:
			out = append(out, leafKeys(ft, join(prefix, k))...)
		case ft.Kind() == reflect.Slice && !isLeaf(ft.Elem()):
			// Lists of mappings (nodes) cannot come from one variable.
		default:
			out = append(out, join(prefix, k))
		}
	}
	return out
}

func (c *Config) validate() error {
	f := c.File
	if strings.TrimSpace(c.Cluster) == "" {
		return &Error{File: f, Key: "cluster", Msg: "missing", Hint: "name the cluster, e.g. cluster: demo (etcd keys live under <prefix>/<cluster>/)"}
	}
	if strings.ContainsAny(c.Cluster, "/ \t") {
		return &Error{File: f, Key: "cluster", Msg: fmt.Sprintf("%q contains a slash or space", c.Cluster), Hint: "use letters, digits, '-' or '_'"}
	}
	if len(c.Nodes) == 0 {
		return &Error{File: f, Key: "nodes", Msg: "no nodes configured", Hint: "list at least one node with a name and a dsn"}
	}
	seen := map[string]int{}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		key := fmt.Sprintf("nodes[%d]", i)
		if strings.TrimSpace(n.Name) == "" {
			return &Error{File: f, Key: key + ".name", Msg: "missing", Hint: "give every node a unique name"}
		}
		key = fmt.Sprintf("nodes[%d] (%s)", i, n.Name)
		if j, dup := seen[n.Name]; dup {
			return &Error{File: f, Key: key + ".name", Msg: fmt.Sprintf("duplicate node name %q (also nodes[%d])", n.Name, j), Hint: "node names must be unique"}
		}
		seen[n.Name] = i
		if strings.TrimSpace(n.DSN) == "" {
			return &Error{File: f, Key: key + ".dsn", Msg: "empty", Hint: `set a libpq connection string, e.g. "host=10.0.0.1 port=5432 user=replctl dbname=postgres"`}
		}
		if _, err := pgconn.ParseConfig(n.DSN); err != nil {
			return &Error{File: f, Key: key + ".dsn", Msg: "cannot parse: " + dsnError(err, n.DSN),
				Hint: "use keyword=value pairs (host=... port=...) or a postgres:// URL"}
		}
		if n.Priority == nil {
			p := DefaultPriority
			n.Priority = &p
		} else if *n.Priority < 0 {
			return &Error{File: f, Key: key + ".priority", Msg: fmt.Sprintf("%d is negative", *n.Priority), Hint: "use 0 (never promote) or a positive number (higher is preferred)"}
		}
	}
	if c.Etcd.Configured() {
		for i, ep := range c.Etcd.Endpoints {
			if strings.TrimSpace(ep) == "" {
				return &Error{File: f, Key: fmt.Sprintf("etcd.endpoints[%d]", i), Msg: "empty endpoint", Hint: "write host:port, e.g. 127.0.0.1:2379"}
			}
		}
		if !strings.HasPrefix(c.Etcd.Prefix, "/") {
			return &Error{File: f, Key: "etcd.prefix", Msg: fmt.Sprintf("%q does not start with /", c.Etcd.Prefix), Hint: "use an absolute key prefix such as /replctl"}
		}
		if (c.Etcd.TLS.CertFile == "") != (c.Etcd.TLS.KeyFile == "") {
			return &Error{File: f, Key: "etcd.tls", Msg: "cert_file and key_file must be given together", Hint: "set both for client certificate authentication, or neither"}
		}
	} else if c.Etcd.Username != "" || c.Etcd.Password != "" || c.Etcd.TLS.Enabled() {
		return &Error{File: f, Key: "etcd.endpoints", Msg: "etcd credentials or TLS given without endpoints", Hint: "add etcd.endpoints, or remove the etcd section"}
	}
	t := c.Thresholds
	if t.LagCritical < t.LagWarning {
		return &Error{File: f, Key: "thresholds.lag_critical", Msg: fmt.Sprintf("%s is below lag_warning %s", t.LagCritical, t.LagWarning), Hint: "make lag_critical at least lag_warning"}
	}
	if t.DelayCritical < t.DelayWarning {
		return &Error{File: f, Key: "thresholds.delay_critical", Msg: fmt.Sprintf("%s is below delay_warning %s", t.DelayCritical, t.DelayWarning), Hint: "make delay_critical at least delay_warning"}
	}
	if *t.MinReplicas < 0 {
		return &Error{File: f, Key: "thresholds.min_replicas", Msg: "negative", Hint: "use 0 or more"}
	}
	if c.Lock.TTL < 2*time.Second {
		return &Error{File: f, Key: "lock.ttl", Msg: fmt.Sprintf("%s is too short", c.Lock.TTL), Hint: "use at least 2s (default 10s): etcd leases are granted in whole seconds"}
	}
	if c.History.Keep < 0 {
		return &Error{File: f, Key: "history.keep", Msg: "negative", Hint: "use a positive number (default 500)"}
	}
	for i, p := range c.Peers {
		if strings.TrimSpace(p) == "" {
			return &Error{File: f, Key: fmt.Sprintf("peers[%d]", i), Msg: "empty", Hint: "give the path of another cluster's replctl.yaml"}
		}
	}
	if c.Watch.ElectionTTL < 2*time.Second {
		return &Error{File: f, Key: "watch.election_ttl", Msg: fmt.Sprintf("%s is too short", c.Watch.ElectionTTL), Hint: "use at least 2s (default lock.ttl): etcd leases are granted in whole seconds"}
	}
	return nil
}

// dsnError extracts pgconn's reason without the connection string itself
// and scrubs anything that still looks like a password.
func dsnError(err error, dsn string) string {
	msg := err.Error()
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		// pgconn quotes the whole string before its reason; keep the reason.
		if i := strings.LastIndex(msg, "`: "); i >= 0 {
			msg = msg[i+3:]
		}
	}
	return Scrub(msg, dsn)
}
