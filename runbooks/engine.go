package runbooks

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/topology"
)

// Engine plans and runs runbooks against one cluster.
type Engine struct {
	Cfg *config.Config
	// Cli is the etcd client; Plan works without one (and says a run could
	// not take the lock), Run needs it.
	Cli *clientv3.Client
	// Timeout bounds each call to a node (--timeout).
	Timeout time.Duration
	// Command is the command line recorded as the lock holder's.
	Command []string
	// LockWait is how long Run waits for a held lock (0 fails fast, exit 5).
	LockWait time.Duration
	// OnWait is told whom Run is about to wait for.
	OnWait func(*etcdlock.LockHolder)
	// Sink receives Run's events; it must not block for long.
	Sink func(Event)
	// Now is the clock.
	Now func() time.Time
	// Poll is how often waits look again; 250ms when zero.
	Poll time.Duration
}

// EventType is what happened in a drill.
type EventType string

// Event types.
const (
	// EventDrillStarted: the lock is held and the initial primary known.
	EventDrillStarted EventType = "drill_started"
	EventStepStarted  EventType = "step_started"
	// EventStepEnded carries the step's final report.
	EventStepEnded EventType = "step_ended"
	// EventPlanStep is an event of a promotion or rejoin plan the step
	// executes, its StepID prefixed with the drill step's ID.
	EventPlanStep EventType = "plan_step"
	// EventProgress is a wait's progress (bytes left, a condition not met).
	EventProgress EventType = "progress"
	// EventOnFailure: a step failed and the on_failure steps start.
	EventOnFailure EventType = "on_failure"
)

// Event reports a drill's progress to a sink; engines never print.
type Event struct {
	Type EventType `json:"event"`
	Time time.Time `json:"time"`
	// Step is the step concerned (for EventStepEnded, its final report);
	// Index is its position in its phase from 1, Total the phase's length.
	Step  *StepReport `json:"step,omitempty"`
	Index int         `json:"index,omitempty"`
	Total int         `json:"total,omitempty"`
	// Plan is the plan step event of EventPlanStep.
	Plan    *plan.Event `json:"plan,omitempty"`
	Message string      `json:"message,omitempty"`
}

func (e *Engine) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

func (e *Engine) emit(ev Event) {
	if ev.Time.IsZero() {
		ev.Time = e.now()
	}
	if e.Sink != nil {
		e.Sink(ev)
	}
}

func (e *Engine) poll() time.Duration {
	if e.Poll > 0 {
		return e.Poll
	}
	return 250 * time.Millisecond
}

func (e *Engine) timeout() time.Duration {
	if e.Timeout > 0 {
		return e.Timeout
	}
	return 3 * time.Second
}

// observation is one look at the cluster: every node probed, and the
// cluster record and lock holder read from etcd, concurrently.
type observation struct {
	Snap  *topology.Snapshot
	State *etcdlock.State
	// Holder is who holds the lock, nil when free or unread.
	Holder *etcdlock.LockHolder
	// EtcdErr says why etcd could not be read (nil without etcd too).
	EtcdErr error
}

// observe never writes: plans call it, and only it, against the cluster.
func (e *Engine) observe(ctx context.Context) observation {
	var obs observation
	var wg sync.WaitGroup
	if e.Cli != nil {
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, e.timeout())
			defer cancel()
			st, _, err := etcdlock.ReadState(rctx, e.Cli, e.Cfg.Etcd.Prefix, e.Cfg.Cluster)
			if err != nil {
				obs.EtcdErr = err
				return
			}
			obs.State = st
			h, err := etcdlock.ReadLockHolder(rctx, e.Cli, e.Cfg.Etcd.Prefix, e.Cfg.Cluster)
			obs.Holder, obs.EtcdErr = h, err
		})
	}
	statuses := topology.ProbeAll(ctx, topology.PgProber{Timeout: e.timeout()}, e.Cfg.Nodes, e.timeout())
	wg.Wait()
	var rec *topology.Record
	if obs.State != nil {
		rec = obs.State.TopologyRecord()
	}
	obs.Snap = topology.Classify(e.Cfg, statuses, rec)
	return obs
}

// streamingReplicas counts the replicas streaming from the primary,
// directly or through a cascade of streaming replicas.
func streamingReplicas(s *topology.Snapshot) int {
	p := s.PrimaryNode()
	if p == nil {
		return 0
	}
	n := 0
	for _, r := range s.Replicas() {
		if r.Streaming() && s.Root(r) == p && !r.Fenced {
			n++
		}
	}
	return n
}

// largestLag is the largest replay lag among the streaming replicas; ok is
// false when one of them has an unknown lag.
func largestLag(s *topology.Snapshot) (uint64, bool) {
	var most uint64
	for _, r := range s.Replicas() {
		if !r.Streaming() {
			continue
		}
		if r.LagBytes == nil {
			return 0, false
		}
		most = max(most, *r.LagBytes)
	}
	return most, true
}

// resolve turns a reference into a node name; "" with an error when it
// names none now.
func resolve(r Ref, initial string, snap *topology.Snapshot) (string, error) {
	switch r.Kind {
	case RefNode:
		return r.Node, nil
	case RefInitialPrimary:
		if initial == "" {
			return "", fmt.Errorf("initial_primary names no node: there was no primary when the drill started")
		}
		return initial, nil
	case RefPrimary:
		if snap == nil || snap.Primary == "" {
			return "", fmt.Errorf("primary names no node: there is no single writable primary now")
		}
		return string(snap.Primary), nil
	}
	return "", nil
}
