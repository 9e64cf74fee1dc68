package etcdlock_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/testenv"
)

// TestOpRecordJSON pins the history record's field names: `replctl history
// -o json` shows them and they are a stable contract.
func TestOpRecordJSON(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 3, 4, 12, 0, 0, 0, time.UTC)
	end := at.Add(3 * time.Second)
	r := etcdlock.OpRecord{ID: "7", Kind: "switchover", Cluster: "demo",
		By:     etcdlock.Actor{User: "alice", Host: "h", PID: 1, Command: "switchover --to pg2"},
		Params: map[string]string{"candidate": "pg2"}, Token: 41, Started: at, Finished: &end,
		Outcome: plan.OutcomeSucceeded,
		Steps:   []etcdlock.StepRecord{{ID: "fence", Description: "fence pg1", Started: at, Finished: &end, Outcome: "done"}}}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":"7","kind":"switchover","cluster":"demo","by":{"user":"alice","host":"h","pid":1,"command":"switchover --to pg2"},"params":{"candidate":"pg2"},"token":41,"forced":false,"started":"2026-03-04T12:00:00Z","finished":"2026-03-04T12:00:03Z","outcome":"succeeded","steps":[{"id":"fence","description":"fence pg1","started":"2026-03-04T12:00:00Z","finished":"2026-03-04T12:00:03Z","outcome":"done"}]}`
	if string(b) != want {
		t.Errorf("JSON:\n got %s\nwant %s", b, want)
	}
}

func TestOperationHistory(t *testing.T) {
	skipShort(t)
	t.Parallel()
	e := testenv.StartEtcd(t)
	cli := connect(t, e.Endpoint)
	cluster := clusterName(t)
	ctx := t.Context()

	l := acquire(t, cli, opts(cluster, "alice", 5*time.Second))
	op, err := l.StartOperation(ctx, "switchover", map[string]string{"candidate": "pg2", "dsn": "host=pg2 password=s3cret-pw", "api_token": "tok-123"})
	if err != nil {
		t.Fatal(err)
	}
	h, err := etcdlock.ReadLockHolder(ctx, cli, "/replctl", cluster)
	if err != nil || h.OperationID != op.ID() {
		t.Fatalf("holder %+v %v: want operation %s", h, err, op.ID())
	}
	if err := op.StartStep(ctx, "check", "check pg2 is caught up"); err != nil {
		t.Fatal(err)
	}
	if err := op.EndStep(ctx, "check", "done", nil); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, ev := range []plan.Event{
		{Type: plan.StepStarted, StepID: "fence", Description: "fence pg1", Time: now},
		{Type: plan.StepProgress, StepID: "fence", Description: "waiting", Time: now},
		{Type: plan.StepFailed, StepID: "fence", Description: "fence pg1", Time: now, Error: "dial host=pg1 password=s3cret-pw: refused"},
		{Type: plan.StepUndone, StepID: "undo-check", Description: "undo: check", Time: now.Add(time.Second), Duration: 200 * time.Millisecond},
	} {
		if err := op.Observe(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := op.Finish(ctx, plan.OutcomeFailed, errors.New("fence pg1: refused")); err != nil {
		t.Fatal(err)
	}

	rec, err := etcdlock.ReadOperation(ctx, cli, "/replctl", cluster, op.ID())
	if err != nil || rec == nil {
		t.Fatalf("read: %v %v", rec, err)
	}
	raw, _ := json.Marshal(rec)
	if strings.Contains(string(raw), "s3cret-pw") || strings.Contains(string(raw), "tok-123") {
		t.Errorf("record leaks a secret: %s", raw)
	}
	if rec.Kind != "switchover" || rec.Token != l.Token() || rec.Outcome != plan.OutcomeFailed || rec.Finished == nil ||
		rec.Params["candidate"] != "pg2" || rec.By.User != "alice" || rec.Forced {
		t.Errorf("record %s", raw)
	}
	want := []struct{ id, outcome string }{{"check", "done"}, {"fence", "failed"}, {"undo-check", "undone"}}
	if len(rec.Steps) != len(want) {
		t.Fatalf("steps %+v", rec.Steps)
	}
	for i, w := range want {
		s := rec.Steps[i]
		if s.ID != w.id || s.Outcome != w.outcome || s.Finished == nil || s.Finished.Before(s.Started) {
			t.Errorf("step %d: %+v, want %s %s", i, s, w.id, w.outcome)
		}
	}
	if d := rec.Steps[2].Finished.Sub(rec.Steps[2].Started); d != 200*time.Millisecond {
		t.Errorf("undo step lasted %s, want the event's 200ms", d)
	}
	if got := op.Record(); got.Outcome != rec.Outcome || len(got.Steps) != 3 {
		t.Errorf("in-memory record %+v", got)
	}
	if r, err := etcdlock.ReadOperation(ctx, cli, "/replctl", cluster, "999"); r != nil || err != nil {
		t.Errorf("missing operation: %v %v", r, err)
	}
	if _, err := etcdlock.ReadOperation(ctx, cli, "/replctl", cluster, "abc"); err == nil {
		t.Error("invalid ID accepted")
	}
}

func TestHistoryBoundedAndOrdered(t *testing.T) {
	skipShort(t)
	t.Parallel()
	e := testenv.StartEtcd(t)
	cli := connect(t, e.Endpoint)
	cluster := clusterName(t)
	ctx := t.Context()
	o := opts(cluster, "alice", 5*time.Second)
	o.HistoryKeep = 3
	l := acquire(t, cli, o)
	var ids []string
	for range 5 {
		op, err := l.StartOperation(ctx, "rejoin", nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := op.Finish(ctx, plan.OutcomeSucceeded, nil); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, op.ID())
	}
	// IDs sort numerically, and the 10th must sort after the 9th: check
	// past a digit boundary by deleting the sequence key.
	if _, err := cli.Delete(ctx, "/replctl/"+cluster+"/history-seq"); err != nil {
		t.Fatal(err)
	}
	op, err := l.StartOperation(ctx, "rejoin", nil)
	if err != nil {
		t.Fatal(err)
	}
	ids = append(ids, op.ID())
	if strings.Join(ids, ",") != "1,2,3,4,5,6" {
		t.Fatalf("ids %v", ids)
	}
	got, err := etcdlock.ListHistory(ctx, cli, "/replctl", cluster, 0)
	if err != nil {
		t.Fatal(err)
	}
	var gotIDs []string
	for _, r := range got {
		gotIDs = append(gotIDs, r.ID)
	}
	if strings.Join(gotIDs, ",") != "6,5,4" {
		t.Errorf("history %v, want the 3 newest, newest first", gotIDs)
	}
	if got, _ := etcdlock.ListHistory(ctx, cli, "/replctl", cluster, 2); len(got) != 2 || got[0].ID != "6" {
		t.Errorf("limit 2: %+v", got)
	}
}

func TestBreakLock(t *testing.T) {
	skipShort(t)
	t.Parallel()
	e := testenv.StartEtcd(t)
	cli := connect(t, e.Endpoint)
	cluster := clusterName(t)
	ctx := t.Context()

	// alice's process "hangs" holding the lock with a long lease.
	alice := acquire(t, connect(t, e.Endpoint), opts(cluster, "alice", 60*time.Second))
	op, err := alice.StartOperation(ctx, "switchover", nil)
	if err != nil {
		t.Fatal(err)
	}
	h, err := etcdlock.ReadLockHolder(ctx, cli, "/replctl", cluster)
	if err != nil || h == nil || h.User != "alice" || h.Token != alice.Token() || h.LeaseLeft < 55*time.Second || h.LeaseTTL != 60*time.Second {
		t.Fatalf("holder %+v %v", h, err)
	}
	ops := etcdlock.Actor{User: "ops", Host: "admin", PID: 9, Command: "lock release --force"}
	rec, err := etcdlock.BreakLock(ctx, cli, "/replctl", cluster, h, ops, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !rec.Forced || rec.Kind != etcdlock.KindLockBreak || rec.Params["holder"] != "alice@test-host (pid 5)" || rec.Params["holder_operation"] != op.ID() {
		t.Errorf("break record %+v", rec)
	}
	if h, err := etcdlock.ReadLockHolder(ctx, cli, "/replctl", cluster); h != nil || err != nil {
		t.Errorf("lock still held after break: %+v %v", h, err)
	}
	waitDone(t, alice.Context(), 2*time.Second)

	hist, err := etcdlock.ListHistory(ctx, cli, "/replctl", cluster, 10)
	if err != nil || len(hist) != 2 {
		t.Fatalf("history %+v %v", hist, err)
	}
	if hist[0].ID != rec.ID || !hist[0].Forced || hist[0].Token != 0 {
		t.Errorf("newest record %+v, want the forced break", hist[0])
	}
	if hist[1].ID != op.ID() || hist[1].Outcome != etcdlock.OutcomeLockBroken || !strings.Contains(hist[1].Error, "ops@admin") {
		t.Errorf("broken operation %+v", hist[1])
	}
	// Breaking the same holder twice does nothing more.
	if _, err := etcdlock.BreakLock(ctx, cli, "/replctl", cluster, h, ops, 0); !errors.Is(err, etcdlock.ErrNotHeld) {
		t.Errorf("second break: %v, want ErrNotHeld", err)
	}
	// alice's late writes are refused; her Finish cannot overwrite the
	// record the break closed.
	if err := op.Finish(context.Background(), plan.OutcomeSucceeded, nil); err == nil {
		t.Error("alice's finish overwrote the broken record")
	}
}
