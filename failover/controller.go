package failover

import (
	"context"

	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/topology"
)

// Controller changes nodes: the operations promotion is made of. pgctl.PG
// is the one real implementation; plans are built without one.
type Controller interface {
	Checkpoint(ctx context.Context, node string) error
	CurrentLSN(ctx context.Context, node string) (topology.LSN, error)
	ReceiveReplay(ctx context.Context, node string) (recv, replay topology.LSN, err error)
	// Reload makes node re-read its configuration (pg_reload_conf()).
	Reload(ctx context.Context, node string) error
	// CaptureSettings reads how node has the named settings: what
	// RestoreSettings puts back.
	CaptureSettings(ctx context.Context, node string, names ...string) (*pgctl.SettingsSnapshot, error)
	// RestoreSettings puts captured settings back (ALTER SYSTEM SET the
	// captured value, or RESET one that was not set by ALTER SYSTEM) and
	// reloads. It is idempotent.
	RestoreSettings(ctx context.Context, node string, s *pgctl.SettingsSnapshot) error
	// Setting is current_setting(name) on node.
	Setting(ctx context.Context, node, name string) (string, error)
	// FenceSQL returns once no session that started read-write remains.
	FenceSQL(ctx context.Context, node string) error
	// FinalLSN is the primary's WAL insert position once it is flushed:
	// a commit acknowledged with synchronous_commit = off may lie beyond
	// the write position.
	FinalLSN(ctx context.Context, node string) (topology.LSN, error)
	// ReceiverUpstream is the host and port node's WAL receiver is
	// connected to, with its pid; pid 0 without a receiver.
	ReceiverUpstream(ctx context.Context, node string) (pid int, host string, port int, err error)
	// TerminateWALSenders ends node's walsenders that serve slot, or
	// application name appName; it returns how many it signalled.
	TerminateWALSenders(ctx context.Context, node, slot, appName string) (int, error)
	// ReplayPaused reports whether a replica's replay is paused (or a pause
	// was requested).
	ReplayPaused(ctx context.Context, node string) (bool, error)
	CreateSlots(ctx context.Context, node string, slots []string) (created []string, err error)
	// HoldWrites makes new sessions on node read-only by default (writes
	// held while logical slots are handed over), once reloaded.
	HoldWrites(ctx context.Context, node string) error
	// LogicalSlotPositions is the confirmed_flush_lsn of node's logical slots.
	LogicalSlotPositions(ctx context.Context, node string) (map[string]topology.LSN, error)
	// CreateLogicalSlots creates the missing logical slots, each in its
	// database, at node's current position.
	CreateLogicalSlots(ctx context.Context, node string, slots []pgctl.LogicalSlot) (created []string, err error)
	DropSlots(ctx context.Context, node string, slots []string) error
	// Promote wraps ErrPromoteNotSent in an error that left the node
	// certainly unpromoted.
	Promote(ctx context.Context, node string) error
	Writable(ctx context.Context, node string) (timeline uint32, lsn topology.LSN, err error)
	Repoint(ctx context.Context, node string, conninfo, slot string) error
	WaitStreaming(ctx context.Context, node string, timeline uint32) error
	SetSyncStandbys(ctx context.Context, node, value string) error
	StreamingStandbys(ctx context.Context, node string, names []string) ([]string, error)
	RecordToken(ctx context.Context, node string, token int64, op string) error
	RunCommand(ctx context.Context, node, action string, env map[string]string) (pgctl.CommandResult, error)
	// RunHook runs hooks.NAME (command) for node: REPLCTL_NODE is node,
	// env adds to it. Its result is for the report, like RunCommand's.
	RunHook(ctx context.Context, name, command, node string, env map[string]string) (pgctl.CommandResult, error)
	// WatchShutdown follows a primary's WAL over a replication connection
	// until the stream ends; a clean end gives where its WAL ends once it
	// has written its shutdown checkpoint (pgctl.ShutdownWatch).
	WatchShutdown(ctx context.Context, node string) (*pgctl.ShutdownWatch, error)
}
