package runbooks

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/replctl/replctl/config"
)

// MetricType is what a metric measures, and so how its bound is written.
type MetricType string

// Metric types.
const (
	TypeDuration MetricType = "duration" // 2s, 500ms
	TypeSize     MetricType = "size"     // 16MB, 0
	TypeInt      MetricType = "integer"  // 0, 2
	TypeNode     MetricType = "node"     // pg1, initial_primary, primary
)

// Metric names that assertions may use.
const (
	MetricWriteOutage       = "write_outage"
	MetricLostWrites        = "lost_writes"
	MetricWritesAcked       = "writes_acked"
	MetricWritesFailed      = "writes_failed"
	MetricWritesAttempted   = "writes_attempted"
	MetricPromoteOutage     = "promote_outage"
	MetricReplicasStreaming = "replicas_streaming"
	MetricReplicaLag        = "replica_lag"
	MetricPrimary           = "primary"
	MetricTimeline          = "timeline"
	MetricElapsed           = "elapsed"
	MetricLogicalSlotsKept  = "logical_slots_kept"
	// durationSuffix makes <step id>.duration: how long that step took.
	durationSuffix = ".duration"
)

// MetricInfo documents one metric.
type MetricInfo struct {
	Name string
	Type MetricType
	// Source says where the value comes from, for errors and docs.
	Source string
}

// Metrics lists the named metrics (besides <step id>.duration).
func Metrics() []MetricInfo {
	return []MetricInfo{
		{MetricWriteOutage, TypeDuration, "probe: the longest time no write succeeded"},
		{MetricLostWrites, TypeInt, "probe: acknowledged writes missing from the primary after probe stop"},
		{MetricWritesAcked, TypeInt, "probe: writes acknowledged"},
		{MetricWritesFailed, TypeInt, "probe: writes that failed"},
		{MetricWritesAttempted, TypeInt, "probe: writes attempted"},
		{MetricPromoteOutage, TypeDuration, "promote: the longest fence-to-writable time of the drill's promotions"},
		{MetricReplicasStreaming, TypeInt, "live: replicas streaming from the primary (directly or cascaded)"},
		{MetricReplicaLag, TypeSize, "live: the largest replay lag of the streaming replicas"},
		{MetricPrimary, TypeNode, "live: the one writable primary"},
		{MetricTimeline, TypeInt, "live: the primary's timeline"},
		{MetricElapsed, TypeDuration, "time since the drill started"},
		{MetricLogicalSlotsKept, TypeInt, "live: how many of the initial primary's logical slots (at the drill's start) the primary has now"},
	}
}

func metricInfo(name string) (MetricInfo, bool) {
	for _, m := range Metrics() {
		if m.Name == name {
			return m, true
		}
	}
	if strings.HasSuffix(name, durationSuffix) && len(name) > len(durationSuffix) {
		return MetricInfo{Name: name, Type: TypeDuration, Source: "how long step " + strings.TrimSuffix(name, durationSuffix) + " took"}, true
	}
	return MetricInfo{}, false
}

// probeMetric reports whether a metric is measured by the write probe.
func probeMetric(name string) bool {
	switch name {
	case MetricWriteOutage, MetricLostWrites, MetricWritesAcked, MetricWritesFailed, MetricWritesAttempted:
		return true
	}
	return false
}

// liveMetric reports whether a metric is read from the cluster when the
// assertion runs.
func liveMetric(name string) bool {
	switch name {
	case MetricReplicasStreaming, MetricReplicaLag, MetricPrimary, MetricTimeline:
		return true
	}
	return false
}

// Op is a comparison.
type Op string

// Comparisons, longest first so that "<=" is not read as "<".
var ops = []Op{"<=", ">=", "==", "!=", "<", ">"}

// Value is a typed measurement or bound.
type Value struct {
	Type MetricType
	// N is a duration in nanoseconds, a size in bytes, or an integer.
	N int64
	// Ref is a node value (a bound); Node is a measured node name.
	Ref  Ref
	Node string
}

// String renders the value the way it is written in runbooks.
func (v Value) String() string {
	switch v.Type {
	case TypeDuration:
		return roundDur(time.Duration(v.N)).String()
	case TypeSize:
		return config.HumanBytes(uint64(v.N))
	case TypeNode:
		if v.Node != "" {
			return v.Node
		}
		if v.Ref.Kind == "" {
			return "(none)"
		}
		return v.Ref.String()
	}
	return strconv.FormatInt(v.N, 10)
}

// Assertion is one parsed bound: metric OP value.
type Assertion struct {
	Expr   string
	Metric string
	Type   MetricType
	Op     Op
	Value  Value
	Line   int
}

// ParseAssertion parses "name OP value". nodes, when not nil, are the
// configured node names a node value may name.
func ParseAssertion(expr string, nodes []string) (*Assertion, error) {
	s := strings.TrimSpace(expr)
	if s == "" {
		return nil, errors.New("empty assertion: write it as `metric OP value`, e.g. `lost_writes == 0`")
	}
	i := 0
	for i < len(s) && isIdent(s[i], i == 0) {
		i++
	}
	name := s[:i]
	if name == "" {
		return nil, fmt.Errorf("%q does not start with a metric name: write it as `metric OP value`, e.g. `write_outage < 2s`", s)
	}
	info, ok := metricInfo(name)
	if !ok {
		return nil, fmt.Errorf("unknown metric %q: known metrics are %s and <step id>.duration%s", name, strings.Join(metricNames(), ", "), config.Suggest(name, metricNames()))
	}
	rest := strings.TrimSpace(s[i:])
	var op Op
	for _, o := range ops {
		if strings.HasPrefix(rest, string(o)) {
			op = o
			break
		}
	}
	if op == "" {
		if strings.HasPrefix(rest, "=") {
			return nil, fmt.Errorf("%q: use == to compare, not =", s)
		}
		return nil, fmt.Errorf("%q: expected a comparison (<, <=, >, >=, ==, !=) after %s", s, name)
	}
	raw := strings.TrimSpace(rest[len(op):])
	if raw == "" {
		return nil, fmt.Errorf("%q: no value after %s", s, op)
	}
	a := &Assertion{Expr: name + " " + string(op) + " " + raw, Metric: name, Type: info.Type, Op: op}
	v, err := parseValue(info.Type, raw, nodes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if info.Type == TypeNode && op != "==" && op != "!=" {
		return nil, fmt.Errorf("%s is a node name: compare it with == or !=", name)
	}
	a.Value = v
	return a, nil
}

func isIdent(c byte, first bool) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		return true
	case c >= '0' && c <= '9', c == '.', c == '-':
		return !first
	}
	return false
}

func metricNames() []string {
	var out []string
	for _, m := range Metrics() {
		out = append(out, m.Name)
	}
	return out
}

func parseValue(t MetricType, raw string, nodes []string) (Value, error) {
	v := Value{Type: t}
	switch t {
	case TypeDuration:
		if raw == "0" {
			return v, nil
		}
		if _, err := strconv.ParseFloat(raw, 64); err == nil {
			return v, fmt.Errorf("duration %s has no unit: write it like 2s or 500ms", raw)
		}
		d, err := time.ParseDuration(raw)
		if err != nil || d < 0 {
			return v, fmt.Errorf("invalid duration %q: write it like 2s, 500ms or 1m30s", raw)
		}
		v.N = int64(d)
	case TypeSize:
		sz, err := config.ParseSize(raw)
		if err != nil {
			return v, err
		}
		v.N = int64(sz)
	case TypeInt:
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil || n < 0 {
			return v, fmt.Errorf("invalid number %q: write a whole number such as 0 or 2", raw)
		}
		v.N = n
	case TypeNode:
		r, err := parseRef(raw, nodes, false)
		if err != nil {
			return v, err
		}
		v.Ref = r
	}
	return v, nil
}

// parseRef reads a node reference; auto is allowed for promotion candidates
// only. nodes nil skips the check of literal names (no configuration).
func parseRef(raw string, nodes []string, allowAuto bool) (Ref, error) {
	switch RefKind(raw) {
	case RefAuto:
		if !allowAuto {
			return Ref{}, errors.New("auto names no node here: it is for promote candidates only")
		}
		return Ref{Kind: RefAuto}, nil
	case RefInitialPrimary, RefPrimary:
		return Ref{Kind: RefKind(raw)}, nil
	}
	if raw == "" {
		return Ref{}, errors.New("no node named")
	}
	if nodes != nil && !contains(nodes, raw) {
		refs := "initial_primary, primary"
		if allowAuto {
			refs = "auto, " + refs
		}
		return Ref{}, fmt.Errorf("%q is not a configured node: name one of %s, or %s%s", raw, strings.Join(nodes, ", "), refs, config.Suggest(raw, nodes))
	}
	return Ref{Kind: RefNode, Node: raw}, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Eval compares a measured value with the assertion's bound; node bounds
// are resolved by the caller into bound.
func (a *Assertion) Eval(got Value, bound Value) bool {
	if a.Type == TypeNode {
		eq := got.Node != "" && got.Node == bound.Node
		if a.Op == "==" {
			return eq
		}
		return !eq
	}
	x, y := got.N, bound.N
	switch a.Op {
	case "<":
		return x < y
	case "<=":
		return x <= y
	case ">":
		return x > y
	case ">=":
		return x >= y
	case "==":
		return x == y
	case "!=":
		return x != y
	}
	return false
}
