package etcdlock

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/testenv"
)

// TestGuardedTxnRefusedByEtcd checks the server-side half of the fence on
// its own: a holder that has not noticed its loss (the local check skipped)
// still cannot write once another process holds the lock.
func TestGuardedTxnRefusedByEtcd(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs a real etcd")
	}
	t.Parallel()
	e := testenv.StartEtcd(t)
	ctx := t.Context()
	dial := func() *clientv3.Client {
		cli, err := Connect(ctx, config.Etcd{Endpoints: []string{e.Endpoint}, Prefix: "/replctl", DialTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cli.Close() })
		return cli
	}
	cli := dial()
	o := LockOptions{Prefix: "/replctl", Cluster: "guarded", TTL: 5 * time.Second, Actor: Actor{User: "alice"}}
	alice, err := Acquire(ctx, cli, o)
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Release(context.Background())
	if _, err := alice.guardedTxn(ctx, nil, clientv3.OpPut("/replctl/guarded/x", "alice")); err != nil {
		t.Fatalf("write while holding: %v", err)
	}

	if _, err := cli.Revoke(ctx, alice.LeaseID()); err != nil {
		t.Fatal(err)
	}
	o.Actor = Actor{User: "bob"}
	o.Wait = 5 * time.Second
	bob, err := Acquire(ctx, dial(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Release(context.Background())

	_, err = alice.guardedTxn(ctx, nil, clientv3.OpPut("/replctl/guarded/x", "stale"))
	var lost *LockLostError
	if !errors.As(err, &lost) {
		t.Fatalf("stale write: %v, want *LockLostError", err)
	}
	resp, err := cli.Get(ctx, "/replctl/guarded/x")
	if err != nil || string(resp.Kvs[0].Value) != "alice" {
		t.Fatalf("value %v %v: the stale write went through", resp, err)
	}
	if _, err := bob.guardedTxn(ctx, nil, clientv3.OpPut("/replctl/guarded/x", "bob")); err != nil {
		t.Errorf("bob: %v", err)
	}
}
