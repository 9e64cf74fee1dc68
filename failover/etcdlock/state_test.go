package etcdlock_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/testenv"
	"github.com/replctl/replctl/topology"
)

// TestStateJSON pins the cluster record's field names: status and older
// replctl versions read them.
func TestStateJSON(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 3, 4, 12, 0, 0, 0, time.UTC)
	s := etcdlock.State{Primary: "pg2", Timeline: 3, LSN: topology.LSN(0x16B374D848),
		Sync:   etcdlock.SyncSettings{StandbyNames: "ANY 1 (pg1, pg3)", Commit: "on", SeenAt: at},
		Fenced: []etcdlock.FencedNode{{Node: "pg1", Reason: "old primary", Token: 41, OperationID: "7", Since: at}},
		Token:  41, OperationID: "7", UpdatedAt: at, UpdatedBy: "alice@h (pid 1)"}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"primary":"pg2","timeline":3,"lsn":"16/B374D848","sync":{"synchronous_standby_names":"ANY 1 (pg1, pg3)","synchronous_commit":"on","seen_at":"2026-03-04T12:00:00Z"},"fenced":[{"node":"pg1","reason":"old primary","token":41,"operation_id":"7","since":"2026-03-04T12:00:00Z"}],"token":41,"operation_id":"7","updated_at":"2026-03-04T12:00:00Z","updated_by":"alice@h (pid 1)"}`
	if string(b) != want {
		t.Errorf("JSON:\n got %s\nwant %s", b, want)
	}
}

func TestStateFenceMarks(t *testing.T) {
	t.Parallel()
	var s etcdlock.State
	s.Fence("pg1", "old primary")
	s.Fence("pg1", "again")
	s.Fence("pg3", "")
	if len(s.Fenced) != 2 || s.Fenced[0].Node != "pg1" || s.Fenced[0].Reason != "again" || !s.IsFenced("pg3") {
		t.Fatalf("fenced %+v", s.Fenced)
	}
	if !s.Unfence("pg3") || s.Unfence("pg3") || s.IsFenced("pg3") {
		t.Fatalf("unfence: %+v", s.Fenced)
	}
}

func TestUpdateState(t *testing.T) {
	skipShort(t)
	t.Parallel()
	e := testenv.StartEtcd(t)
	cli := connect(t, e.Endpoint)
	cluster := clusterName(t)
	ctx := t.Context()

	s, rev, err := etcdlock.ReadState(ctx, cli, "/replctl", cluster)
	if s != nil || rev != 0 || err != nil {
		t.Fatalf("absent record: %v %d %v", s, rev, err)
	}

	l := acquire(t, cli, opts(cluster, "alice", 5*time.Second))
	op, err := l.StartOperation(ctx, "switchover", nil)
	if err != nil {
		t.Fatal(err)
	}
	lsn, _ := topology.ParseLSN("0/3000060")
	written, wrev, err := l.UpdateState(ctx, func(s *etcdlock.State) error {
		s.Primary, s.Timeline, s.LSN = "pg2", 2, lsn
		s.Sync = etcdlock.SyncSettings{StandbyNames: "pg3", Commit: "remote_apply", SeenAt: time.Now()}
		s.Fence("pg1", "old primary")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, rev, err := etcdlock.ReadState(ctx, cli, "/replctl", cluster)
	if err != nil || rev != wrev {
		t.Fatalf("read back: rev %d (wrote %d), %v", rev, wrev, err)
	}
	if got.Primary != "pg2" || got.Timeline != 2 || got.LSN != lsn || got.Sync.Commit != "remote_apply" ||
		got.Token != l.Token() || got.OperationID != op.ID() || got.UpdatedBy != "alice@test-host (pid 5)" {
		t.Errorf("record %+v", got)
	}
	if len(got.Fenced) != 1 || got.Fenced[0].Token != l.Token() || got.Fenced[0].OperationID != op.ID() || got.Fenced[0].Since.IsZero() {
		t.Errorf("fenced %+v", got.Fenced)
	}
	if written.Primary != got.Primary {
		t.Errorf("returned %+v, stored %+v", written, got)
	}

	// A write without the lock between read and write is detected.
	_, _, err = l.UpdateState(ctx, func(s *etcdlock.State) error {
		if !s.IsFenced("pg1") {
			t.Error("fn did not get the current record")
		}
		_, err := cli.Put(ctx, "/replctl/"+cluster+"/state", `{"primary":"rogue"}`)
		return err
	})
	if !errors.Is(err, etcdlock.ErrConflict) {
		t.Errorf("unlocked concurrent write: %v, want ErrConflict", err)
	}

	// fn's error aborts the write.
	boom := errors.New("boom")
	if _, _, err := l.UpdateState(ctx, func(*etcdlock.State) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("fn error: %v", err)
	}
	if s, _, _ := etcdlock.ReadState(ctx, cli, "/replctl", cluster); s.Primary != "rogue" {
		t.Errorf("record changed by a failed update: %+v", s)
	}

	// A record from a newer token means the lock is gone.
	if _, err := cli.Put(ctx, "/replctl/"+cluster+"/state", `{"primary":"future","token":99999999}`); err != nil {
		t.Fatal(err)
	}
	_, _, err = l.UpdateState(ctx, func(*etcdlock.State) error { return nil })
	var lost *etcdlock.LockLostError
	if !errors.Is(err, etcdlock.ErrStaleToken) || !errors.As(err, &lost) || l.Context().Err() == nil {
		t.Errorf("newer token: %v, want lock lost with ErrStaleToken", err)
	}
}

func TestReadStateInvalid(t *testing.T) {
	skipShort(t)
	t.Parallel()
	e := testenv.StartEtcd(t)
	cli := connect(t, e.Endpoint)
	cluster := clusterName(t)
	if _, err := cli.Put(context.Background(), "/replctl/"+cluster+"/state", "{not json"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := etcdlock.ReadState(t.Context(), cli, "/replctl/", cluster); err == nil {
		t.Error("invalid record read without error")
	}
	if _, _, err := etcdlock.ReadState(t.Context(), cli, "/replctl", "a/b"); err == nil {
		t.Error("cluster name with a slash accepted")
	}
}
