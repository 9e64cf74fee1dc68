// Package config loads and validates replctl's configuration file.
//
// The schema is a public contract: cron jobs and CI pipelines generate it, so
// key names never change meaning, unknown keys are errors (a typo in a safety
// tool's configuration must not be silently ignored), and every error names
// the file, the key or node, and what to do.
package config

import (
	"time"
)

// Defaults applied to keys the file leaves out.
const (
	DefaultPrefix         = "/replctl"
	DefaultDialTimeout    = 3 * time.Second
	DefaultPriority       = 100
	DefaultLockTTL        = 10 * time.Second
	DefaultHistoryKeep    = 500
	DefaultCommandTimeout = 60 * time.Second
	DefaultStreamTimeout  = 30 * time.Second
	DefaultPromoteTimeout = 30 * time.Second
	// DefaultWatchMinInterval is watch.min_interval's default.
	DefaultWatchMinInterval = 10 * time.Minute
)

// Config is the whole configuration file.
type Config struct {
	// Cluster names the cluster; etcd keys live under <prefix>/<cluster>/.
	Cluster string `mapstructure:"cluster" json:"cluster" yaml:"cluster"`
	// Etcd is optional: read-only commands work without it.
	Etcd Etcd `mapstructure:"etcd" json:"etcd" yaml:"etcd"`
	// Nodes are the PostgreSQL servers replctl manages.
	Nodes []Node `mapstructure:"nodes" json:"nodes" yaml:"nodes"`
	// Thresholds drive warnings in status and levels in check.
	Thresholds Thresholds `mapstructure:"thresholds" json:"thresholds" yaml:"thresholds"`
	// Lock configures the etcd fencing lock.
	Lock Lock `mapstructure:"lock" json:"lock" yaml:"lock"`
	// History bounds the operation history kept in etcd.
	History History `mapstructure:"history" json:"history" yaml:"history"`
	// CommandTimeout bounds every node command (stop, start, kill, fence, rejoin).
	CommandTimeout time.Duration `mapstructure:"command_timeout" json:"command_timeout" yaml:"command_timeout"`
	// Hooks are commands run at points of an operation.
	Hooks Hooks `mapstructure:"hooks" json:"hooks" yaml:"hooks"`
	// Failover tunes emergency failover.
	Failover Failover `mapstructure:"failover" json:"failover" yaml:"failover"`
	// Watch tunes automatic failover (replctl watch).
	Watch Watch `mapstructure:"watch" json:"watch" yaml:"watch"`
	// Peers are the configuration files of other clusters replctl manages
	// (relative to this file): status probes their nodes, read-only, to
	// name subscriptions that cross clusters and pairs that replicate in
	// both directions.
	Peers []string `mapstructure:"peers" json:"peers,omitempty" yaml:"peers,omitempty"`

	// File is the path the configuration was read from (not a key).
	File string `mapstructure:"-" json:"-" yaml:"-"`
}

// Etcd is how to reach etcd.
type Etcd struct {
	Endpoints   []string      `mapstructure:"endpoints" json:"endpoints" yaml:"endpoints"`
	Prefix      string        `mapstructure:"prefix" json:"prefix" yaml:"prefix"`
	DialTimeout time.Duration `mapstructure:"dial_timeout" json:"dial_timeout" yaml:"dial_timeout"`
	Username    string        `mapstructure:"username" json:"username,omitempty" yaml:"username,omitempty"`
	Password    Secret        `mapstructure:"password" json:"password,omitempty" yaml:"password,omitempty"`
	TLS         TLS           `mapstructure:"tls" json:"tls" yaml:"tls"`
}

// Configured reports whether etcd endpoints were given at all.
func (e Etcd) Configured() bool { return len(e.Endpoints) > 0 }

// TLS holds the files for an etcd TLS connection.
type TLS struct {
	CAFile   string `mapstructure:"ca_file" json:"ca_file,omitempty" yaml:"ca_file,omitempty"`
	CertFile string `mapstructure:"cert_file" json:"cert_file,omitempty" yaml:"cert_file,omitempty"`
	KeyFile  string `mapstructure:"key_file" json:"key_file,omitempty" yaml:"key_file,omitempty"`
}

// Enabled reports whether any TLS file was configured.
func (t TLS) Enabled() bool { return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" }

// Node is one PostgreSQL server.
type Node struct {
	Name string `mapstructure:"name" json:"name" yaml:"name"`
	// DSN is a libpq connection string, keyword/value or URL. It may hold a
	// password: print it only through SafeDSN.
	DSN  string `mapstructure:"dsn" json:"-" yaml:"-"`
	Zone string `mapstructure:"zone" json:"zone,omitempty" yaml:"zone,omitempty"`
	// Priority orders promotion candidates; 0 means never promote. Nil in the
	// file means DefaultPriority (Load fills it in).
	Priority *int         `mapstructure:"priority" json:"priority" yaml:"priority"`
	Commands NodeCommands `mapstructure:"commands" json:"commands" yaml:"commands"`
}

// Prio is the node's promotion priority with the default applied.
func (n Node) Prio() int {
	if n.Priority == nil {
		return DefaultPriority
	}
	return *n.Priority
}

// SafeDSN is the node's DSN with any password removed, fit for output.
func (n Node) SafeDSN() string { return RedactDSN(n.DSN) }

// NodeCommands are shell commands (run with sh -c where replctl runs) for what
// SQL cannot do.
type NodeCommands struct {
	Stop   string `mapstructure:"stop" json:"stop,omitempty" yaml:"stop,omitempty"`
	Start  string `mapstructure:"start" json:"start,omitempty" yaml:"start,omitempty"`
	Kill   string `mapstructure:"kill" json:"kill,omitempty" yaml:"kill,omitempty"`
	Fence  string `mapstructure:"fence" json:"fence,omitempty" yaml:"fence,omitempty"`
	Rejoin string `mapstructure:"rejoin" json:"rejoin,omitempty" yaml:"rejoin,omitempty"`
}

// Thresholds for lag, delay, slots and replica count.
type Thresholds struct {
	LagWarning          Size          `mapstructure:"lag_warning" json:"lag_warning" yaml:"lag_warning"`
	LagCritical         Size          `mapstructure:"lag_critical" json:"lag_critical" yaml:"lag_critical"`
	DelayWarning        time.Duration `mapstructure:"delay_warning" json:"delay_warning" yaml:"delay_warning"`
	DelayCritical       time.Duration `mapstructure:"delay_critical" json:"delay_critical" yaml:"delay_critical"`
	SlotRetainedWarning Size          `mapstructure:"slot_retained_warning" json:"slot_retained_warning" yaml:"slot_retained_warning"`
	MinReplicas         *int          `mapstructure:"min_replicas" json:"min_replicas" yaml:"min_replicas"`
}

// Lock configures the fencing lock.
type Lock struct {
	TTL time.Duration `mapstructure:"ttl" json:"ttl" yaml:"ttl"`
}

// History configures the operation history.
type History struct {
	Keep int `mapstructure:"keep" json:"keep" yaml:"keep"`
}

// Hooks are commands run by operations, with sh -c on replctl's machine,
// bounded by command_timeout.
type Hooks struct {
	// PreFence runs right before a planned switchover fences the old
	// primary, with REPLCTL_NODE set to the old primary's name and
	// REPLCTL_CANDIDATE to the node about to be promoted: it sends no new
	// clients to REPLCTL_NODE (withdraw a virtual IP, PAUSE a pooler).
	// When the switchover is undone it runs again with REPLCTL_UNDO=1: send
	// clients to REPLCTL_NODE again.
	PreFence string `mapstructure:"pre_fence" json:"pre_fence,omitempty" yaml:"pre_fence,omitempty"`
	// PostPromote runs after a new primary is verified writable (poolers,
	// virtual IPs), with REPLCTL_NODE set to the new primary's name.
	PostPromote string `mapstructure:"post_promote" json:"post_promote,omitempty" yaml:"post_promote,omitempty"`
}

// Failover tunes emergency failover.
type Failover struct {
	// ConfirmWindow is how long the primary is probed before it is declared dead.
	ConfirmWindow time.Duration `mapstructure:"confirm_window" json:"confirm_window" yaml:"confirm_window"`
	// StreamTimeout bounds the wait for a repointed or rejoined replica to
	// stream from its new primary, and for a detached replica's WAL
	// receiver to leave the old one.
	StreamTimeout time.Duration `mapstructure:"stream_timeout" json:"stream_timeout" yaml:"stream_timeout"`
	// PromoteTimeout bounds pg_promote() and the wait until the candidate
	// leaves recovery: the write outage never outlasts it.
	PromoteTimeout time.Duration `mapstructure:"promote_timeout" json:"promote_timeout" yaml:"promote_timeout"`
}

// Watch tunes replctl watch, the automatic failover.
type Watch struct {
	// MaxDataLoss bounds the WAL an automatic failover may lose when the
	// synchronous quorum cannot prove the candidate has every acknowledged
	// commit: the last primary LSN a watcher saw minus the candidate's
	// received LSN. Nil (unset) means 0: a cluster without a synchronous
	// quorum is never failed over automatically until the operator sets a
	// bound.
	MaxDataLoss *Size `mapstructure:"max_data_loss" json:"max_data_loss" yaml:"max_data_loss"`
	// MinInterval is the least time between two automatic failovers unless
	// an operator acknowledges the first (replctl resume).
	MinInterval time.Duration `mapstructure:"min_interval" json:"min_interval" yaml:"min_interval"`
	// Rejoin makes the leader watcher rejoin a fenced old primary that
	// comes back (through its commands.rejoin). Nil means true.
	Rejoin *bool `mapstructure:"rejoin" json:"rejoin" yaml:"rejoin"`
	// ElectionTTL is the lease of a watcher's election session: a dead
	// leader is replaced within it. Zero means lock.ttl.
	ElectionTTL time.Duration `mapstructure:"election_ttl" json:"election_ttl" yaml:"election_ttl"`
}

// AutoRejoin reports whether the watcher rejoins returning old primaries.
func (w Watch) AutoRejoin() bool { return w.Rejoin == nil || *w.Rejoin }

// Node returns the configured node with the given name.
func (c *Config) Node(name string) (Node, bool) {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// NodeNames lists the configured node names in file order.
func (c *Config) NodeNames() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Name
	}
	return out
}

// Secret is a string that never prints.
type Secret string

// String hides the value.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "********"
}

// MarshalText hides the value in JSON and YAML.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Reveal returns the real value, for the one place that needs it.
func (s Secret) Reveal() string { return string(s) }

func (c *Config) applyDefaults() {
	if c.Etcd.Prefix == "" {
		c.Etcd.Prefix = DefaultPrefix
	}
	if c.Etcd.DialTimeout == 0 {
		c.Etcd.DialTimeout = DefaultDialTimeout
	}
	t := &c.Thresholds
	if t.LagWarning == 0 {
		t.LagWarning = 16 << 20
	}
	if t.LagCritical == 0 {
		t.LagCritical = 256 << 20
	}
	if t.DelayWarning == 0 {
		t.DelayWarning = 30 * time.Second
	}
	if t.DelayCritical == 0 {
		t.DelayCritical = 5 * time.Minute
	}
	if t.SlotRetainedWarning == 0 {
		t.SlotRetainedWarning = 1 << 30
	}
	if t.MinReplicas == nil {
		two := 2
		t.MinReplicas = &two
	}
	if c.Lock.TTL == 0 {
		c.Lock.TTL = DefaultLockTTL
	}
	if c.History.Keep == 0 {
		c.History.Keep = DefaultHistoryKeep
	}
	if c.CommandTimeout == 0 {
		c.CommandTimeout = DefaultCommandTimeout
	}
	if c.Failover.ConfirmWindow == 0 {
		c.Failover.ConfirmWindow = 2 * time.Second
	}
	if c.Failover.StreamTimeout == 0 {
		c.Failover.StreamTimeout = DefaultStreamTimeout
	}
	if c.Failover.PromoteTimeout == 0 {
		c.Failover.PromoteTimeout = DefaultPromoteTimeout
	}
	if c.Watch.MinInterval == 0 {
		c.Watch.MinInterval = DefaultWatchMinInterval
	}
	if c.Watch.ElectionTTL == 0 {
		c.Watch.ElectionTTL = c.Lock.TTL
	}
}
