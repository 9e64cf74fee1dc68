package topology

import (
	"testing"

	"github.com/replctl/replctl/config"
)

// TestProbeTimelineFallback: a replica whose WAL receiver is gone (its
// primary died) still reports a timeline, marked with where it came from.
func TestProbeTimelineFallback(t *testing.T) {
	t.Parallel()
	node := config.Node{Name: "pg2"}
	i64 := func(v int64) *int64 { return &v }
	cases := []struct {
		name    string
		doc     string
		history *int64 // what historyTimelineQuery returned; nil: not asked, or no file
		tl      uint32 // 0: none
		src     string
	}{
		{name: "primary: the WAL file being written", tl: 3, src: TimelineFromWAL,
			doc: `{"in_recovery":false,"current_lsn":"0/5000000","walfile":"000000030000000000000005","checkpoint_timeline":2}`},
		{name: "streaming replica: the receiver, whatever the history says", tl: 2, src: TimelineFromReceiver, history: i64(5),
			doc: `{"in_recovery":true,"checkpoint_timeline":1,"wal_receiver":{"status":"streaming","received_tli":2}}`},
		{name: "no receiver: the newest history file, ahead of a stale restartpoint", tl: 2, src: TimelineFromHistory, history: i64(2),
			doc: `{"in_recovery":true,"checkpoint_timeline":1,"history_wanted":true,"wal_receiver":null}`},
		{name: "no receiver, no history file (timeline 1): the restartpoint", tl: 1, src: TimelineFromCheckpoint,
			doc: `{"in_recovery":true,"checkpoint_timeline":1,"history_wanted":true,"wal_receiver":null}`},
		{name: "no receiver, pg_ls_waldir not granted: the restartpoint", tl: 4, src: TimelineFromCheckpoint,
			doc: `{"in_recovery":true,"checkpoint_timeline":4,"history_wanted":false,"wal_receiver":null}`},
		{name: "no receiver, checkpoint unreadable: the history file", tl: 3, src: TimelineFromHistory, history: i64(3),
			doc: `{"in_recovery":true,"checkpoint_timeline":null,"wal_receiver":null}`},
		{name: "nothing readable: unknown, not zero",
			doc: `{"in_recovery":true,"checkpoint_timeline":null,"wal_receiver":null}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var st NodeStatus
			if err := decodeProbe([]byte(c.doc), node, &st); err != nil {
				t.Fatal(err)
			}
			applyHistoryTimeline(&st, c.history)
			switch {
			case c.tl == 0 && (st.Timeline != nil || st.TimelineSource != ""):
				t.Fatalf("timeline %v (%s), want none", *st.Timeline, st.TimelineSource)
			case c.tl != 0 && (st.Timeline == nil || *st.Timeline != c.tl || st.TimelineSource != c.src):
				t.Fatalf("timeline %v (%s), want %d (%s)", st.Timeline, st.TimelineSource, c.tl, c.src)
			}
		})
	}
}
