package failover

import (
	"time"

	"github.com/replctl/replctl/config"
)

// Timeouts are every wait an operation makes, named in one place. Each step
// runs under one of them (Step.Timeout, enforced by Execute); none is a
// lease margin. The lease margin a step needs before it starts is its
// Budget, min(timeout, ttl/2).
type Timeouts struct {
	// Call bounds one SQL statement or connection (--timeout).
	Call time.Duration
	// Catchup bounds the wait for the candidate to come within
	// nearlyCaughtUp of the primary before the fence, and again for it to
	// replay the final position after it (--catchup-timeout).
	Catchup time.Duration
	// Stream bounds the wait for a repointed or rejoined replica to stream
	// from its new primary, and for a detached replica's receiver to leave
	// the old one (failover.stream_timeout).
	Stream time.Duration
	// Promote bounds pg_promote() and the wait until the candidate leaves
	// recovery (failover.promote_timeout).
	Promote time.Duration
	// Command bounds one node command: stop, start, fence, rejoin
	// (command_timeout).
	Command time.Duration
	// Etcd bounds one write to the cluster record.
	Etcd time.Duration
}

// TimeoutsFor fills the timeouts from the configuration and the command's
// flags (call and catchup; zero takes the defaults).
func TimeoutsFor(cfg *config.Config, call, catchup time.Duration) Timeouts {
	t := Timeouts{Call: call, Catchup: catchup, Stream: cfg.Failover.StreamTimeout, Promote: cfg.Failover.PromoteTimeout,
		Command: cfg.CommandTimeout, Etcd: cfg.Lock.TTL / 2}
	if t.Call <= 0 {
		t.Call = 5 * time.Second
	}
	if t.Catchup <= 0 {
		t.Catchup = 30 * time.Second
	}
	if t.Stream <= 0 {
		t.Stream = config.DefaultStreamTimeout
	}
	if t.Promote <= 0 {
		t.Promote = config.DefaultPromoteTimeout
	}
	if t.Command <= 0 {
		t.Command = config.DefaultCommandTimeout
	}
	if t.Etcd <= 0 {
		t.Etcd = 5 * time.Second
	}
	return t
}
