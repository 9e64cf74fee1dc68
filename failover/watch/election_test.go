package watch

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/testenv"
)

// On a real etcd: one leader among two electors, the second elected when
// the first stops (at once: it resigns), and an operation lock taken
// through LeaderLocker counts as lost the moment the leader's election
// lease is gone, so the executor runs no further step.
func TestElectionAndLeaderLock(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs etcd")
	}
	t.Parallel()
	e := testenv.StartEtcd(t)
	ctx := t.Context()
	cfg := config.Etcd{Endpoints: []string{e.Endpoint}, Prefix: "/replctl", DialTimeout: 3 * time.Second}
	connect := func() *clientv3.Client {
		cli, err := etcdlock.Connect(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
	c1, c2 := connect(), connect()
	elect := func(cli *clientv3.Client, pid int) (*Elector, chan bool, context.CancelFunc) {
		el, err := NewElector(cli, "/replctl", "t", 2*time.Second, etcdlock.WatcherInfo{Actor: etcdlock.Actor{Host: "h", PID: pid}, Since: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		ch := make(chan bool, 16)
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			el.Run(rctx, func(leader bool, _ string) { ch <- leader })
			close(done)
		}()
		return el, ch, func() { cancel(); <-done }
	}
	await := func(ch chan bool, want bool) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case got := <-ch:
				if got == want {
					return
				}
			case <-deadline:
				t.Fatalf("no leadership change to %v", want)
			}
		}
	}
	el1, ch1, stop1 := elect(c1, 1)
	await(ch1, true)
	el2, ch2, stop2 := elect(c2, 2)
	defer stop2()
	await(ch2, false) // campaigning
	var ws []etcdlock.WatcherInfo
	var err error
	for deadline := time.Now().Add(10 * time.Second); len(ws) < 2 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		ws, err = etcdlock.ListWatchers(ctx, c1, "/replctl", "t")
	}
	if err != nil || len(ws) != 2 || !ws[0].Leader || ws[0].PID != 1 || ws[1].Leader {
		t.Fatalf("watchers %+v, %v", ws, err)
	}
	if err := el2.Check(ctx); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("the standby passed the leadership check: %v", err)
	}
	stop1()
	start := time.Now()
	await(ch2, true)
	if d := time.Since(start); d > time.Second {
		t.Errorf("the standby took %s to be elected after a graceful stop (the lease is 2s): no resignation?", d)
	}
	if err := el1.Check(ctx); err == nil {
		t.Fatal("a stopped elector still passes the check")
	}

	// The leader's operation lock, then its election lease revoked.
	spec := failover.OperationSpec{Cfg: &config.Config{Cluster: "t", Etcd: cfg, Lock: config.Lock{TTL: 5 * time.Second}, History: config.History{Keep: 10}}, Cli: c2, Kind: "automatic"}
	held, hist, err := LeaderLocker{Elector: el2, Inner: failover.EtcdLocker()}.Lock(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := held.Check(ctx, time.Second); err != nil {
		t.Fatalf("a live leader's lock failed its check: %v", err)
	}
	_, _, _, ok := el2.Leading()
	if !ok {
		t.Fatal("not leading")
	}
	resp, err := c1.Get(ctx, "/replctl/t/watch/election/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("election keys: %v %v", resp, err)
	}
	if _, err := c1.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the lock's context outlived the election")
	}
	if err := held.Check(ctx, time.Second); !errors.Is(err, plan.ErrLockLost) {
		t.Fatalf("after the election was lost the lock checks %v, want a lost lock", err)
	}
	_ = hist.Finish(context.WithoutCancel(ctx), plan.OutcomeFailed, errors.New("test"))
	_ = held.Release(context.WithoutCancel(ctx))
}
