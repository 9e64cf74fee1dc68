package runbooks

import (
	"fmt"
	"strings"
	"time"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/config"
)

// Defaults applied when neither the step nor the runbook's defaults say.
const (
	DefaultWaitTimeout    = 60 * time.Second
	DefaultMaxLag         = config.Size(16 << 20) // the same as promote --max-lag
	DefaultCatchupTimeout = 30 * time.Second      // the same as promote --catchup-timeout
	DefaultProbeTable     = "replctl_drill_probe"
	DefaultProbeInterval  = 20 * time.Millisecond
	DefaultWriteTimeout   = time.Second
)

// Kind is what a step does.
type Kind string

// Step kinds.
const (
	KindCheck   Kind = "check"
	KindPromote Kind = "promote"
	KindRejoin  Kind = "rejoin"
	KindNode    Kind = "node"
	KindWait    Kind = "wait"
	KindProbe   Kind = "probe"
	KindAssert  Kind = "assert"
	KindSleep   Kind = "sleep"
)

// Kinds lists every step kind in documentation order.
func Kinds() []Kind {
	return []Kind{KindCheck, KindPromote, KindRejoin, KindNode, KindWait, KindProbe, KindAssert, KindSleep}
}

// Changes reports whether a step of this kind changes the cluster: such a
// step needs the lock, and the plan cannot predict what follows it.
func (k Kind) Changes() bool { return k == KindPromote || k == KindRejoin || k == KindNode }

// Promotion kinds.
const (
	PromotePlanned   = "planned"
	PromoteEmergency = "emergency"
)

// Node actions (the node's configured commands).
const (
	NodeStop  = "stop"
	NodeStart = "start"
	NodeKill  = "kill"
)

// Probe actions.
const (
	ProbeStart = "start"
	ProbeStop  = "stop"
)

// Wait conditions.
const (
	WaitReplicasStreaming = "replicas_streaming"
	WaitLagBelow          = "lag_below"
	WaitReachable         = "reachable"
	WaitUnreachable       = "unreachable"
	WaitPrimary           = "primary"
)

// WaitConditions lists the conditions a wait step can wait for.
func WaitConditions() []string {
	return []string{WaitReplicasStreaming, WaitLagBelow, WaitReachable, WaitUnreachable, WaitPrimary}
}

// Phase is where a step sits in the runbook.
type Phase string

// Phases.
const (
	PhaseSteps     Phase = "steps"
	PhaseOnFailure Phase = "on_failure"
)

// Runbook is a loaded, validated drill.
type Runbook struct {
	Name        string
	Description string
	// Cluster is the cluster the runbook is written for; it must match the
	// configuration's, so a drill never runs against the wrong cluster.
	Cluster   string
	File      string
	Defaults  Defaults
	Probe     ProbeSettings
	Steps     []*Step
	OnFailure []*Step
}

// Writes reports whether any step changes the cluster or writes to it
// (the probe's table and rows): such a run asks for confirmation.
func (rb *Runbook) Writes() bool {
	for _, s := range append(append([]*Step{}, rb.Steps...), rb.OnFailure...) {
		if s.Kind.Changes() || s.Kind == KindProbe {
			return true
		}
	}
	return false
}

// Defaults are the runbook-wide values steps inherit.
type Defaults struct {
	// Timeout bounds wait steps.
	Timeout time.Duration
	// MaxLag and CatchupTimeout are planned promotion's --max-lag and
	// --catchup-timeout.
	MaxLag         config.Size
	CatchupTimeout time.Duration
	// FailOn is the check level that fails a check step: Critical (the
	// default) or Warning.
	FailOn checks.Level
}

// ProbeSettings configure the write probe.
type ProbeSettings struct {
	// Database is the database the probe writes in; "" keeps the one in
	// the nodes' DSNs.
	Database string
	// Table is created if missing.
	Table        string
	Interval     time.Duration
	WriteTimeout time.Duration
}

// RefKind is how a node reference names its node.
type RefKind string

// Reference kinds.
const (
	RefNode           RefKind = "node"            // a configured node name
	RefAuto           RefKind = "auto"            // promote only: the best candidate
	RefInitialPrimary RefKind = "initial_primary" // the primary when the drill started
	RefPrimary        RefKind = "primary"         // the primary when the step runs
)

// Ref names a node: literally, or by its role in the drill, so that
// "switch over and back" needs no hard-coded names.
type Ref struct {
	Kind RefKind
	Node string
}

// String is the reference as written.
func (r Ref) String() string {
	if r.Kind == RefNode {
		return r.Node
	}
	return string(r.Kind)
}

// Step is one step of a runbook. Only the fields of its kind are set.
type Step struct {
	// ID is the id key, or step<N> / on_failure<N> (1-based).
	ID    string
	Name  string
	Kind  Kind
	Phase Phase
	// Index is the position in its phase, from 0; Line is in the file.
	Index int
	Line  int

	// check
	Checks []string
	FailOn checks.Level
	// promote
	Promote        string
	Candidate      Ref
	MaxLag         config.Size
	CatchupTimeout time.Duration
	NoRejoin       bool
	RequireStop    bool
	// AllowDataLoss is promote --emergency --allow-data-loss.
	AllowDataLoss bool
	// rejoin, node, wait (reachable, unreachable, primary)
	Target Ref
	// node: stop, start, kill; probe: start, stop
	Action string
	// wait
	Condition string
	Count     *int
	Timeout   time.Duration
	// assert
	Assertions []*Assertion
	// sleep
	Duration time.Duration
}

// Describe is the step's one-line account, naming the nodes as written
// (references are resolved when the step runs).
func (s *Step) Describe() string {
	if s.Name != "" {
		return s.Name
	}
	switch s.Kind {
	case KindCheck:
		names := "the monitoring checks"
		if len(s.Checks) > 0 {
			names = strings.Join(s.Checks, ", ")
		}
		return fmt.Sprintf("check %s (fail on %s)", names, strings.ToLower(s.FailOn.String()))
	case KindPromote:
		return fmt.Sprintf("promote (%s), candidate %s", s.Promote, s.Candidate)
	case KindRejoin:
		return fmt.Sprintf("rejoin %s as a replica of the primary", s.Target)
	case KindNode:
		return fmt.Sprintf("node %s: %s through commands.%s", s.Target, s.Action, s.Action)
	case KindWait:
		return "wait until " + s.describeCondition() + fmt.Sprintf(" (timeout %s)", s.Timeout)
	case KindProbe:
		if s.Action == ProbeStart {
			return "probe start: write through a multi-host DSN and measure the outage"
		}
		return "probe stop: stop writing, count the acknowledged writes missing"
	case KindAssert:
		var ex []string
		for _, a := range s.Assertions {
			ex = append(ex, a.Expr)
		}
		return "assert " + strings.Join(ex, ", ")
	case KindSleep:
		return fmt.Sprintf("sleep %s", s.Duration)
	}
	return string(s.Kind)
}

func (s *Step) describeCondition() string {
	switch s.Condition {
	case WaitReplicasStreaming:
		if s.Count != nil {
			return fmt.Sprintf("at least %d replicas stream from the primary", *s.Count)
		}
		return "every other configured node streams from the primary"
	case WaitLagBelow:
		return fmt.Sprintf("every streaming replica's replay lag is at most %s", s.MaxLag)
	case WaitReachable:
		return fmt.Sprintf("%s answers", s.Target)
	case WaitUnreachable:
		return fmt.Sprintf("%s no longer answers", s.Target)
	case WaitPrimary:
		if s.Target.Kind != "" {
			return fmt.Sprintf("%s is the one writable primary", s.Target)
		}
		return "there is one writable primary"
	}
	return s.Condition
}
