// Package topologytest builds probe results by hand for unit tests of code
// that consumes topology snapshots, and a Prober that returns them.
package topologytest

import (
	"context"
	"time"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/topology"
)

// T0 is the server time every built status carries, so outputs are stable.
func T0() time.Time { return time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) }

// SystemID is the system identifier built statuses share.
const SystemID = "7412345678901234567"

// Ptr returns a pointer to v.
func Ptr[T any](v T) *T { return &v }

// Prober returns canned statuses by node name; a missing name is
// unreachable. It is safe for concurrent use as long as it is not modified.
type Prober map[string]topology.NodeStatus

// Probe implements topology.Prober.
func (p Prober) Probe(_ context.Context, n config.Node) topology.NodeStatus {
	if st, ok := p[n.Name]; ok {
		return st
	}
	return topology.NodeStatus{Name: n.Name, Error: "connect to " + n.Name + ": connection refused"}
}

// Primary is a healthy writable node at lsn on timeline 1, with a streaming
// walsender for each standby name.
func Primary(name string, lsn topology.LSN, standbys ...string) topology.NodeStatus {
	st := topology.NodeStatus{Name: name, Reachable: true, ServerTime: Ptr(T0()), VersionNum: 150018, Version: "15.18",
		SystemID: SystemID, Timeline: Ptr(uint32(1)), CheckpointTimeline: Ptr(uint32(1)), CurrentLSN: Ptr(lsn),
		Replication: []topology.Replication{}, Slots: []topology.Slot{},
		Settings: topology.Settings{SyncStandbys: &topology.SyncStandbys{}, SynchronousStandbyNames: Ptr(""),
			SynchronousCommit: Ptr("on"), RecoveryTargetTimeline: Ptr("latest")}}
	for _, s := range standbys {
		st.Replication = append(st.Replication, Walsender(s, lsn))
	}
	return st
}

// Walsender is a streaming async pg_stat_replication row at lsn.
func Walsender(app string, lsn topology.LSN) topology.Replication {
	return topology.Replication{ApplicationName: Ptr(app), ClientAddr: Ptr("127.0.0.1"), State: Ptr("streaming"),
		SentLSN: Ptr(lsn), WriteLSN: Ptr(lsn), FlushLSN: Ptr(lsn), ReplayLSN: Ptr(lsn), SyncState: Ptr("async"), SyncPriority: Ptr(0)}
}

// Replica is a streaming standby of the node listening on 127.0.0.1:upstreamPort,
// having received and replayed up to lsn, its last transaction a second old.
func Replica(name string, upstreamPort int, lsn topology.LSN) topology.NodeStatus {
	return topology.NodeStatus{Name: name, Reachable: true, ServerTime: Ptr(T0()), VersionNum: 150018, Version: "15.18",
		SystemID: SystemID, InRecovery: true, Timeline: Ptr(uint32(1)), CheckpointTimeline: Ptr(uint32(1)),
		ReceiveLSN: Ptr(lsn), ReplayLSN: Ptr(lsn), ReplayPauseState: "not paused", LastReplayTime: Ptr(T0().Add(-time.Second)),
		WALReceiver: &topology.WALReceiver{Status: "streaming", SenderHost: Ptr("127.0.0.1"), SenderPort: Ptr(upstreamPort),
			SlotName: Ptr(name), ReceivedTLI: Ptr(uint32(1)), LastMsgReceiptTime: Ptr(T0())},
		Replication: []topology.Replication{}, Slots: []topology.Slot{},
		Settings: topology.Settings{SynchronousStandbyNames: Ptr(""), SyncStandbys: &topology.SyncStandbys{},
			RecoveryTargetTimeline: Ptr("latest"), PrimarySlotName: Ptr(name)}}
}
