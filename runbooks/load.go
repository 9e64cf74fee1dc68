package runbooks

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/pgctl"
)

// LoadError lists every problem found in a runbook, each naming the file,
// the line, the key and what to do. Nothing runs when a runbook has one.
type LoadError struct {
	Errs []*config.Error
}

// Error is one line per problem.
func (e *LoadError) Error() string {
	var lines []string
	for _, x := range e.Errs {
		lines = append(lines, x.Error())
	}
	return strings.Join(lines, "\n")
}

// Load reads and validates a runbook file. cfg is the configuration the
// runbook will run against: node names and the cluster are checked against
// it. With a nil cfg those two checks are skipped.
func Load(path string, cfg *config.Config) (*Runbook, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		msg := err.Error()
		if errors.Is(err, os.ErrNotExist) {
			msg = "file does not exist"
		}
		return nil, &LoadError{Errs: []*config.Error{{File: path, Msg: msg, Hint: "check the path"}}}
	}
	return Parse(path, data, cfg)
}

// Parse validates runbook text; path is used in errors.
func Parse(path string, data []byte, cfg *config.Config) (*Runbook, error) {
	l := &loader{file: path, cfg: cfg}
	if cfg != nil {
		l.nodes = cfg.NodeNames()
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &LoadError{Errs: []*config.Error{{File: path, Msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: "),
			Hint: "fix the syntax (indentation, quoting)"}}}
	}
	if len(root.Content) == 0 {
		return nil, &LoadError{Errs: []*config.Error{{File: path, Msg: "the file is empty", Hint: "a runbook needs at least name, cluster and steps (see the README)"}}}
	}
	rb := l.runbook(root.Content[0])
	if len(l.errs) > 0 {
		return nil, &LoadError{Errs: l.errs}
	}
	return rb, nil
}

type loader struct {
	file  string
	cfg   *config.Config
	nodes []string // nil without a configuration
	errs  []*config.Error
}

func (l *loader) errAt(n *yaml.Node, key, msg, hint string) {
	line := 0
	if n != nil {
		line = n.Line
	}
	l.errs = append(l.errs, &config.Error{File: l.file, Line: line, Key: key, Msg: msg, Hint: hint})
}

// mapping is a YAML mapping whose keys were checked against a known set.
type mapping struct {
	l     *loader
	node  *yaml.Node
	where string
	vals  map[string]*yaml.Node
	keyNs map[string]*yaml.Node
	order []string
}

// mapping checks that n is a mapping with only allowed keys, each once.
func (l *loader) mapping(n *yaml.Node, where string, allowed []string) *mapping {
	m := &mapping{l: l, node: n, where: where, vals: map[string]*yaml.Node{}, keyNs: map[string]*yaml.Node{}}
	if n.Kind != yaml.MappingNode {
		l.errAt(n, orTop(where), "expected a mapping of keys", "see the runbook reference in the README")
		return nil
	}
	known := slices.Clone(allowed)
	sort.Strings(known)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := join(where, k.Value)
		switch {
		case !slices.Contains(allowed, k.Value):
			l.errAt(k, key, "unknown key", "known keys here are "+strings.Join(known, ", ")+config.Suggest(k.Value, known))
		case m.vals[k.Value] != nil:
			l.errAt(k, key, "key given twice", "keep one")
		default:
			m.vals[k.Value], m.keyNs[k.Value] = v, k
			m.order = append(m.order, k.Value)
		}
	}
	return m
}

func (m *mapping) has(key string) bool { return m.vals[key] != nil }

func (m *mapping) key(key string) string { return join(m.where, key) }

// scalar returns the value of key as a string; ok is false when it is
// missing or not a scalar (the latter reported).
func (m *mapping) scalar(key string) (string, *yaml.Node, bool) {
	v := m.vals[key]
	if v == nil {
		return "", nil, false
	}
	if v.Kind != yaml.ScalarNode {
		m.l.errAt(v, m.key(key), "expected a single value", "check the indentation")
		return "", v, false
	}
	if v.Tag == "!!null" {
		return "", v, true
	}
	return v.Value, v, true
}

// required reports a missing key with what to write.
func (m *mapping) required(key, hint string) (string, *yaml.Node, bool) {
	s, n, ok := m.scalar(key)
	if !ok && n == nil {
		m.l.errAt(m.node, m.key(key), "missing", hint)
		return "", nil, false
	}
	if ok && strings.TrimSpace(s) == "" {
		m.l.errAt(n, m.key(key), "empty", hint)
		return "", n, false
	}
	return strings.TrimSpace(s), n, ok
}

func (m *mapping) duration(key string, def time.Duration) time.Duration {
	s, n, ok := m.scalar(key)
	if !ok {
		return def
	}
	d, err := parseDuration(s)
	if err != nil {
		m.l.errAt(n, m.key(key), err.Error(), "write durations with a unit: 500ms, 10s, 5m")
		return def
	}
	if d <= 0 {
		m.l.errAt(n, m.key(key), "must be positive", "write a duration such as 30s")
		return def
	}
	return d
}

func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return 0, fmt.Errorf("duration %s has no unit", s)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q", s)
	}
	return d, nil
}

func (m *mapping) size(key string, def config.Size) config.Size {
	s, n, ok := m.scalar(key)
	if !ok {
		return def
	}
	v, err := config.ParseSize(s)
	if err != nil {
		m.l.errAt(n, m.key(key), err.Error(), "sizes are like 1MB, 16MB or 0 (1024-based)")
		return def
	}
	return v
}

func (m *mapping) boolean(key string) bool {
	s, n, ok := m.scalar(key)
	if !ok {
		return false
	}
	switch s {
	case "true":
		return true
	case "false":
		return false
	}
	m.l.errAt(n, m.key(key), fmt.Sprintf("%q is not true or false", s), "write true or false")
	return false
}

func (m *mapping) level(key string, def checks.Level) checks.Level {
	s, n, ok := m.scalar(key)
	if !ok {
		return def
	}
	switch s {
	case "critical":
		return checks.Critical
	case "warning":
		return checks.Warning
	}
	m.l.errAt(n, m.key(key), fmt.Sprintf("%q is not a level", s), "write critical (fail on critical results, the default) or warning (fail on warnings too)")
	return def
}

var idPattern = regexp.MustCompile(`^[a-z][a-z0-9_-]*$`)

var (
	topKeys      = []string{"name", "description", "cluster", "defaults", "probe", "steps", "on_failure"}
	defaultsKeys = []string{"timeout", "max_lag", "catchup_timeout", "fail_on"}
	probeKeys    = []string{"database", "table", "interval", "write_timeout"}
	commonKeys   = []string{"id", "name"}
	kindKeys     = map[Kind][]string{
		KindCheck:   {"fail_on"},
		KindPromote: {"candidate", "max_lag", "catchup_timeout", "no_rejoin", "require_stop", "allow_data_loss"},
		KindRejoin:  {},
		KindNode:    {"target"},
		KindWait:    {"target", "count", "max_lag", "timeout"},
		KindProbe:   {},
		KindAssert:  {},
		KindSleep:   {},
	}
)

var tablePattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

func (l *loader) runbook(n *yaml.Node) *Runbook {
	rb := &Runbook{File: l.file}
	m := l.mapping(n, "", topKeys)
	if m == nil {
		return rb
	}
	if s, _, ok := m.required("name", "name the drill, e.g. name: switchover-and-back"); ok {
		rb.Name = s
	}
	if s, _, ok := m.scalar("description"); ok {
		rb.Description = strings.TrimSpace(s)
	}
	if s, vn, ok := m.required("cluster", "name the cluster the drill is for, as in the configuration's cluster key"); ok {
		rb.Cluster = s
		if l.cfg != nil && s != l.cfg.Cluster {
			l.errAt(vn, "cluster", fmt.Sprintf("the runbook is for cluster %q but the configuration %s is for %q", s, l.cfg.File, l.cfg.Cluster),
				"run it with the configuration of that cluster (--config), or fix the runbook's cluster")
		}
	}
	rb.Defaults = Defaults{Timeout: DefaultWaitTimeout, MaxLag: DefaultMaxLag, CatchupTimeout: DefaultCatchupTimeout, FailOn: checks.Critical}
	if v := m.vals["defaults"]; v != nil && v.Tag != "!!null" {
		if dm := l.mapping(v, "defaults", defaultsKeys); dm != nil {
			rb.Defaults.Timeout = dm.duration("timeout", rb.Defaults.Timeout)
			rb.Defaults.MaxLag = dm.size("max_lag", rb.Defaults.MaxLag)
			rb.Defaults.CatchupTimeout = dm.duration("catchup_timeout", rb.Defaults.CatchupTimeout)
			rb.Defaults.FailOn = dm.level("fail_on", rb.Defaults.FailOn)
		}
	}
	rb.Probe = ProbeSettings{Table: DefaultProbeTable, Interval: DefaultProbeInterval, WriteTimeout: DefaultWriteTimeout}
	if v := m.vals["probe"]; v != nil && v.Tag != "!!null" {
		if pm := l.mapping(v, "probe", probeKeys); pm != nil {
			if s, vn, ok := pm.scalar("database"); ok {
				rb.Probe.Database = strings.TrimSpace(s)
				if rb.Probe.Database == "" {
					l.errAt(vn, "probe.database", "empty", "name a database, or leave the key out to use the DSN's")
				}
			}
			if s, vn, ok := pm.scalar("table"); ok {
				if !tablePattern.MatchString(s) {
					l.errAt(vn, "probe.table", fmt.Sprintf("%q is not a plain table name", s), "use letters, digits and _, optionally schema-qualified (drills.probe)")
				} else {
					rb.Probe.Table = s
				}
			}
			rb.Probe.Interval = pm.duration("interval", rb.Probe.Interval)
			rb.Probe.WriteTimeout = pm.duration("write_timeout", rb.Probe.WriteTimeout)
		}
	}
	if v := m.vals["steps"]; v == nil {
		l.errAt(n, "steps", "missing", "list the drill's steps (see the README)")
	} else {
		rb.Steps = l.steps(v, PhaseSteps, rb)
		if len(rb.Steps) == 0 && v.Kind == yaml.SequenceNode {
			l.errAt(v, "steps", "no steps", "list at least one step")
		}
	}
	if v := m.vals["on_failure"]; v != nil && v.Tag != "!!null" {
		rb.OnFailure = l.steps(v, PhaseOnFailure, rb)
	}
	l.checkSequence(rb)
	return rb
}

func (l *loader) steps(n *yaml.Node, phase Phase, rb *Runbook) []*Step {
	if n.Kind != yaml.SequenceNode {
		l.errAt(n, string(phase), "expected a list of steps", "write each step as a list entry starting with '- '")
		return nil
	}
	var out []*Step
	for i, item := range n.Content {
		if s := l.step(item, phase, i, rb); s != nil {
			out = append(out, s)
		}
	}
	return out
}

func (l *loader) step(n *yaml.Node, phase Phase, i int, rb *Runbook) *Step {
	where := fmt.Sprintf("%s[%d]", phase, i)
	s := &Step{Phase: phase, Index: i, Line: n.Line}
	if phase == PhaseSteps {
		s.ID = fmt.Sprintf("step%d", i+1)
	} else {
		s.ID = fmt.Sprintf("on_failure%d", i+1)
	}
	if n.Kind != yaml.MappingNode {
		l.errAt(n, where, "expected a step (a mapping such as `promote: planned`)", "start the step with its kind: "+kindList())
		return nil
	}
	// The kind decides which keys are allowed, so find it first.
	var kinds []Kind
	for j := 0; j+1 < len(n.Content); j += 2 {
		if _, ok := kindKeys[Kind(n.Content[j].Value)]; ok {
			kinds = append(kinds, Kind(n.Content[j].Value))
		}
	}
	switch len(kinds) {
	case 0:
		var keys []string
		for j := 0; j+1 < len(n.Content); j += 2 {
			keys = append(keys, n.Content[j].Value)
		}
		hint := "give it exactly one kind key: " + kindList()
		for _, k := range keys {
			if sg := config.Suggest(k, kindNames()); sg != "" {
				hint += "; " + k + sg
			}
		}
		l.errAt(n, where, "no step kind (keys: "+strings.Join(keys, ", ")+")", hint)
		return nil
	case 1:
	default:
		l.errAt(n, where, fmt.Sprintf("several step kinds in one step: %v", kinds), "split it into one step per kind")
		return nil
	}
	s.Kind = kinds[0]
	where = fmt.Sprintf("%s[%d] (%s)", phase, i, s.Kind)
	allowed := append(append([]string{string(s.Kind)}, commonKeys...), kindKeys[s.Kind]...)
	m := l.mapping(n, where, allowed)
	if m == nil {
		return nil
	}
	if id, vn, ok := m.scalar("id"); ok {
		if !idPattern.MatchString(id) {
			l.errAt(vn, m.key("id"), fmt.Sprintf("%q is not a valid id", id), "use lower-case letters, digits, _ and -, starting with a letter")
		} else {
			s.ID = id
		}
	}
	if nm, _, ok := m.scalar("name"); ok {
		s.Name = strings.TrimSpace(nm)
	}
	kindNode := m.vals[string(s.Kind)]
	kkey := m.key(string(s.Kind))
	switch s.Kind {
	case KindCheck:
		s.FailOn = m.level("fail_on", rb.Defaults.FailOn)
		s.Checks = l.checkNames(kindNode, kkey)
	case KindPromote:
		v, vn, _ := m.required(string(s.Kind), "write promote: planned or promote: emergency")
		switch v {
		case PromotePlanned, PromoteEmergency:
			s.Promote = v
		case "":
		default:
			l.errAt(vn, kkey, fmt.Sprintf("%q is not a kind of promotion", v), "write planned (a switchover from a live primary) or emergency (failover from a dead one)")
		}
		s.Candidate = Ref{Kind: RefAuto}
		if c, cn, ok := m.scalar("candidate"); ok {
			if r, err := parseRef(strings.TrimSpace(c), l.nodes, true); err != nil {
				l.errAt(cn, m.key("candidate"), err.Error(), "a candidate is a node name, auto (the best one), initial_primary or primary")
			} else {
				s.Candidate = r
			}
		}
		s.MaxLag = m.size("max_lag", rb.Defaults.MaxLag)
		s.CatchupTimeout = m.duration("catchup_timeout", rb.Defaults.CatchupTimeout)
		s.NoRejoin = m.boolean("no_rejoin")
		s.RequireStop = m.boolean("require_stop")
		s.AllowDataLoss = m.boolean("allow_data_loss")
		only := map[string][]string{PromoteEmergency: {"max_lag", "no_rejoin", "require_stop"}, PromotePlanned: {"allow_data_loss"}}
		for _, k := range only[s.Promote] {
			if m.has(k) {
				l.errAt(m.keyNs[k], m.key(k), "does not apply to promote: "+s.Promote, "remove it")
			}
		}
	case KindRejoin:
		if v, vn, ok := m.required(string(s.Kind), "name the node to rejoin, e.g. rejoin: initial_primary"); ok {
			s.Target = l.ref(v, vn, kkey)
		}
	case KindNode:
		v, vn, _ := m.required(string(s.Kind), "write node: stop, node: start or node: kill")
		switch v {
		case NodeStop, NodeStart, NodeKill:
			s.Action = v
		case "":
		default:
			l.errAt(vn, kkey, fmt.Sprintf("%q is not a node action", v), "write stop, start or kill (the node's commands.stop, commands.start, commands.kill)")
		}
		if t, tn, ok := m.required("target", "name the node, e.g. target: initial_primary"); ok {
			s.Target = l.ref(t, tn, m.key("target"))
			if s.Target.Kind == RefNode && l.cfg != nil && s.Action != "" {
				cn, _ := l.cfg.Node(s.Target.Node)
				if pgctl.CommandFor(cn, s.Action) == "" {
					l.errAt(tn, m.key("target"), fmt.Sprintf("%s has no commands.%s in %s", s.Target.Node, s.Action, l.cfg.File),
						fmt.Sprintf("configure commands.%s for the node: replctl runs only the commands it is given", s.Action))
				}
			}
		}
	case KindWait:
		v, vn, _ := m.required(string(s.Kind), "name a condition: "+strings.Join(WaitConditions(), ", "))
		if v != "" && !slices.Contains(WaitConditions(), v) {
			l.errAt(vn, kkey, fmt.Sprintf("unknown condition %q", v), "conditions are "+strings.Join(WaitConditions(), ", ")+config.Suggest(v, WaitConditions()))
			v = ""
		}
		s.Condition = v
		s.Timeout = m.duration("timeout", rb.Defaults.Timeout)
		l.waitOptions(s, m)
	case KindProbe:
		v, vn, _ := m.required(string(s.Kind), "write probe: start or probe: stop")
		switch v {
		case ProbeStart, ProbeStop:
			s.Action = v
		case "":
		default:
			l.errAt(vn, kkey, fmt.Sprintf("%q is not a probe action", v), "write start or stop")
		}
	case KindAssert:
		s.Assertions = l.assertions(kindNode, kkey)
	case KindSleep:
		if v, vn, ok := m.required(string(s.Kind), "write a duration, e.g. sleep: 5s"); ok {
			d, err := parseDuration(v)
			switch {
			case err != nil:
				l.errAt(vn, kkey, err.Error(), "write durations with a unit: 500ms, 10s, 5m")
			case d <= 0:
				l.errAt(vn, kkey, "must be positive", "write a duration such as 5s")
			default:
				s.Duration = d
			}
		}
	}
	return s
}

func (l *loader) waitOptions(s *Step, m *mapping) {
	allowed := map[string][]string{
		WaitReplicasStreaming: {"count"},
		WaitLagBelow:          {"max_lag"},
		WaitReachable:         {"target"},
		WaitUnreachable:       {"target"},
		WaitPrimary:           {"target"},
	}[s.Condition]
	for _, k := range []string{"target", "count", "max_lag"} {
		if m.has(k) && s.Condition != "" && !slices.Contains(allowed, k) {
			l.errAt(m.keyNs[k], m.key(k), "does not apply to wait: "+s.Condition, "remove it")
		}
	}
	switch s.Condition {
	case WaitReplicasStreaming:
		if c, cn, ok := m.scalar("count"); ok {
			n, err := strconv.Atoi(c)
			if err != nil || n < 0 {
				l.errAt(cn, m.key("count"), fmt.Sprintf("%q is not a count", c), "write a whole number such as 2")
			} else if l.cfg != nil && n > len(l.cfg.Nodes)-1 {
				l.errAt(cn, m.key("count"), fmt.Sprintf("%d replicas can never stream: %s configures %d nodes", n, l.cfg.File, len(l.cfg.Nodes)),
					fmt.Sprintf("use at most %d, or leave count out to wait for every other node", len(l.cfg.Nodes)-1))
			} else {
				s.Count = &n
			}
		}
	case WaitLagBelow:
		if !m.has("max_lag") {
			l.errAt(m.node, m.key("max_lag"), "missing", "give the bound, e.g. max_lag: 1MB")
		}
		s.MaxLag = m.size("max_lag", 0)
	case WaitReachable, WaitUnreachable:
		if t, tn, ok := m.required("target", "name the node, e.g. target: initial_primary"); ok {
			s.Target = l.ref(t, tn, m.key("target"))
		}
	case WaitPrimary:
		if t, tn, ok := m.scalar("target"); ok {
			s.Target = l.ref(strings.TrimSpace(t), tn, m.key("target"))
		}
	}
}

func (l *loader) ref(v string, n *yaml.Node, key string) Ref {
	r, err := parseRef(v, l.nodes, false)
	if err != nil {
		l.errAt(n, key, err.Error(), "name a configured node, initial_primary (the primary when the drill started) or primary (the primary when the step runs)")
	}
	return r
}

func (l *loader) checkNames(n *yaml.Node, key string) []string {
	var raw []*yaml.Node
	switch {
	case n.Kind == yaml.ScalarNode && (n.Tag == "!!null" || n.Value == "all"):
		return nil
	case n.Kind == yaml.ScalarNode:
		raw = []*yaml.Node{n}
	case n.Kind == yaml.SequenceNode:
		raw = n.Content
	default:
		l.errAt(n, key, "expected a list of check names", "write check: [single_primary, streaming], or check: all for the monitoring checks")
		return nil
	}
	var out []string
	known := checks.Names()
	for _, c := range raw {
		if c.Kind != yaml.ScalarNode {
			l.errAt(c, key, "expected a check name", "write the names as a list of words")
			continue
		}
		if !slices.Contains(known, c.Value) {
			l.errAt(c, key, fmt.Sprintf("unknown check %q", c.Value), "known checks are "+strings.Join(known, ", ")+config.Suggest(c.Value, known))
			continue
		}
		out = append(out, c.Value)
	}
	return out
}

func (l *loader) assertions(n *yaml.Node, key string) []*Assertion {
	var raw []*yaml.Node
	switch {
	case n.Kind == yaml.ScalarNode && n.Tag != "!!null":
		raw = []*yaml.Node{n}
	case n.Kind == yaml.SequenceNode && len(n.Content) > 0:
		raw = n.Content
	default:
		l.errAt(n, key, "expected one or more assertions", "write assert: [\"write_outage < 2s\", \"lost_writes == 0\"]")
		return nil
	}
	var out []*Assertion
	for _, r := range raw {
		if r.Kind != yaml.ScalarNode {
			l.errAt(r, key, "expected an assertion such as \"lost_writes == 0\"", "quote each assertion")
			continue
		}
		a, err := ParseAssertion(r.Value, l.nodes)
		if err != nil {
			l.errAt(r, key, err.Error(), "write `metric OP value`; metrics are listed in the README")
			continue
		}
		a.Line = r.Line
		out = append(out, a)
	}
	return out
}

// checkSequence checks what depends on the order of steps: ids, the probe
// started before it is stopped, metrics measured before they are asserted.
func (l *loader) checkSequence(rb *Runbook) {
	seen := map[string]*Step{}
	for _, s := range append(slices.Clone(rb.Steps), rb.OnFailure...) {
		if prev := seen[s.ID]; prev != nil {
			l.errAt(&yaml.Node{Line: s.Line}, fmt.Sprintf("%s[%d]", s.Phase, s.Index), fmt.Sprintf("id %q is already used by %s[%d]", s.ID, prev.Phase, prev.Index),
				"give every step a unique id")
		}
		seen[s.ID] = s
	}
	// The main steps run in order, so what they measure is known; the
	// on_failure steps may start after any of them, so what they assert is
	// only checked at run time.
	running, stopped, promoted := false, false, false
	earlier := map[string]bool{}
	for _, s := range rb.Steps {
		where := fmt.Sprintf("%s[%d] (%s)", s.Phase, s.Index, s.Kind)
		switch s.Kind {
		case KindProbe:
			switch {
			case s.Action == ProbeStart && running:
				l.errAt(&yaml.Node{Line: s.Line}, where, "the probe is already running", "stop it (probe: stop) before starting it again")
			case s.Action == ProbeStop && !running:
				l.errAt(&yaml.Node{Line: s.Line}, where, "the probe is not running here", "start it earlier with probe: start")
			}
			running = s.Action == ProbeStart
			stopped = stopped || s.Action == ProbeStop
		case KindPromote:
			promoted = true
		case KindAssert:
			for _, a := range s.Assertions {
				line := &yaml.Node{Line: a.Line}
				switch {
				case probeMetric(a.Metric) && !stopped:
					l.errAt(line, where, fmt.Sprintf("%s is measured by the write probe, which has not been stopped before this step", a.Metric),
						"add probe: start before the steps to measure and probe: stop before this assertion")
				case a.Metric == MetricPromoteOutage && !promoted:
					l.errAt(line, where, "promote_outage is measured by a promote step, and none comes before this one", "move the assertion after a promote step")
				case strings.HasSuffix(a.Metric, durationSuffix) && !earlier[strings.TrimSuffix(a.Metric, durationSuffix)]:
					l.errAt(line, where, fmt.Sprintf("no earlier step has id %q", strings.TrimSuffix(a.Metric, durationSuffix)),
						"give the step to time an id (id: switch_back) and assert switch_back.duration after it")
				}
			}
		}
		earlier[s.ID] = true
	}
	for _, s := range rb.OnFailure {
		if s.Kind == KindProbe && s.Action == ProbeStart {
			l.errAt(&yaml.Node{Line: s.Line}, fmt.Sprintf("on_failure[%d] (probe)", s.Index), "on_failure steps cannot start the probe",
				"start it in steps; on_failure may stop it")
		}
	}
}

func kindNames() []string {
	var out []string
	for _, k := range Kinds() {
		out = append(out, string(k))
	}
	return out
}

func kindList() string { return strings.Join(kindNames(), ", ") }

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
