package etcdlock_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/testenv"
)

func TestLockHolderDescribe(t *testing.T) {
	t.Parallel()
	loc := time.FixedZone("X", 2*3600)
	now := time.Date(2026, 3, 4, 12, 30, 0, 0, loc)
	alice := etcdlock.Actor{User: "alice", Host: "db-admin-1", PID: 4242, Command: "promote pg2"}
	tests := []struct {
		name string
		h    etcdlock.LockHolder
		want string
	}{
		{"spec example", etcdlock.LockHolder{Actor: alice, Since: time.Date(2026, 3, 4, 10, 1, 3, 0, time.UTC), LeaseLeft: 8 * time.Second},
			"alice@db-admin-1 (pid 4242) running `promote pg2` since 12:01:03, lease 8 s"},
		{"other day shows the date", etcdlock.LockHolder{Actor: alice, Since: time.Date(2026, 3, 3, 23, 0, 0, 0, loc), LeaseLeft: 9500 * time.Millisecond},
			"alice@db-admin-1 (pid 4242) running `promote pg2` since 2026-03-03 23:00:00, lease 9 s"},
		{"with operation", etcdlock.LockHolder{Actor: alice, OperationID: "42", Since: now, LeaseLeft: 0},
			"alice@db-admin-1 (pid 4242) running `promote pg2` (operation 42) since 12:30:00, lease 0 s"},
		{"lease unknown, no command", etcdlock.LockHolder{Actor: etcdlock.Actor{User: "bob", Host: "h", PID: 1}, Since: now, LeaseLeft: -time.Second},
			"bob@h (pid 1) since 12:30:00"},
		{"unidentified", etcdlock.LockHolder{LeaseLeft: 3 * time.Second},
			"an unidentified process, lease 3 s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.h.Describe(now); got != tt.want {
				t.Errorf("Describe:\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestLockHeldErrorMessage(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 3, 4, 12, 1, 10, 0, time.UTC)
	h := &etcdlock.LockHolder{Actor: etcdlock.Actor{User: "alice", Host: "db-admin-1", PID: 4242, Command: "promote pg2"},
		Since: time.Date(2026, 3, 4, 12, 1, 3, 0, time.UTC), LeaseLeft: 8 * time.Second}
	tests := []struct {
		err  *etcdlock.LockHeldError
		want string
	}{
		{&etcdlock.LockHeldError{Cluster: "demo", Holder: h, At: at},
			"lock on cluster demo held by alice@db-admin-1 (pid 4242) running `promote pg2` since 12:01:03, lease 8 s"},
		{&etcdlock.LockHeldError{Cluster: "demo", Holder: h, At: at, Waited: 30 * time.Second},
			"lock on cluster demo held by alice@db-admin-1 (pid 4242) running `promote pg2` since 12:01:03, lease 8 s (waited 30s)"},
		{&etcdlock.LockHeldError{Cluster: "demo", At: at},
			"lock on cluster demo held by another operation that has just finished: try again"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("got  %s\nwant %s", got, tt.want)
		}
	}
}

func TestScrubCommand(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"promote", "pg2"}, "promote pg2"},
		{[]string{"lock", "run", "--", "psql", "-c", "select 1"}, "lock run -- psql -c 'select 1'"},
		{[]string{"x", "--password", "hunter2", "y"}, "x --password ******** y"},
		{[]string{"x", "--db-password=hunter2"}, "x --db-password=********"},
		{[]string{"x", "--api-token", "abc"}, "x --api-token ********"},
		{[]string{"x", "PGPASSWORD=hunter2"}, "x PGPASSWORD=********"},
		{[]string{"x", "host=a password=hunter2"}, "x 'host=a password=********'"},
		{[]string{"x", "postgres://u:hunter2@h/db"}, "x postgres://u:********@h/db"},
		// A secret inside a longer argument: only its value is masked, and
		// the argument stays whole and quoted as a shell needs it.
		{[]string{"lock", "run", "--", "sh", "-c", "echo token=$REPLCTL_LOCK_TOKEN; sleep 3"}, "lock run -- sh -c 'echo token=********; sleep 3'"},
		{[]string{"sh", "-c", "curl -H api_secret=hunter2 http://x && true"}, "sh -c 'curl -H api_secret=******** http://x && true'"},
		{[]string{"sh", "-c", "echo fencing_token=7"}, "sh -c 'echo fencing_token=7'"},
	}
	for _, tt := range tests {
		got := etcdlock.ScrubCommand(tt.args)
		if got != tt.want {
			t.Errorf("ScrubCommand(%q) = %q, want %q", tt.args, got, tt.want)
		}
		if strings.Contains(got, "hunter2") {
			t.Errorf("ScrubCommand(%q) leaks the password: %q", tt.args, got)
		}
	}
}

// --- helpers for the integration tests ---

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs a real etcd")
	}
}

// connect returns a client of endpoint, closed at cleanup.
func connect(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := etcdlock.Connect(t.Context(), config.Etcd{Endpoints: []string{endpoint}, Prefix: "/replctl", DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// clusterName makes a per-test cluster name, so that tests can share an etcd.
func clusterName(t *testing.T) string {
	return strings.NewReplacer("/", "-", " ", "_").Replace(t.Name())
}

func opts(cluster, who string, ttl time.Duration) etcdlock.LockOptions {
	return etcdlock.LockOptions{Prefix: "/replctl", Cluster: cluster, TTL: ttl,
		Actor: etcdlock.Actor{User: who, Host: "test-host", PID: len(who), Command: "test " + who}}
}

func acquire(t *testing.T, cli *clientv3.Client, o etcdlock.LockOptions) *etcdlock.Lock {
	t.Helper()
	l, err := etcdlock.Acquire(t.Context(), cli, o)
	if err != nil {
		t.Fatalf("acquire as %s: %v", o.Actor.User, err)
	}
	t.Cleanup(func() { _ = l.Release(context.Background()) })
	return l
}

// waitDone waits for ctx to be cancelled and returns how long it took.
func waitDone(t *testing.T, ctx context.Context, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-ctx.Done():
		return time.Since(start)
	case <-time.After(limit):
		t.Fatalf("context not cancelled within %s", limit)
		return 0
	}
}

// --- integration tests ---

func TestAcquireExactlyOneWins(t *testing.T) {
	skipShort(t)
	t.Parallel()
	e := testenv.StartEtcd(t)
	cluster := clusterName(t)
	const n = 6
	type result struct {
		who  string
		lock *etcdlock.Lock
		err  error
	}
	results := make(chan result, n)
	var start sync.WaitGroup
	start.Add(1)
	for i := range n {
		cli := connect(t, e.Endpoint) // one client each, like separate processes
		who := fmt.Sprintf("user%d", i)
		go func() {
			start.Wait()
			l, err := etcdlock.Acquire(t.Context(), cli, opts(cluster, who, 5*time.Second))
			results <- result{who, l, err}
		}()
	}
	start.Done()
	var winner *etcdlock.Lock
	var winnerName string
	var held []*etcdlock.LockHeldError
	for range n {
		r := <-results
		var he *etcdlock.LockHeldError
		switch {
		case r.err == nil:
			if winner != nil {
				t.Fatalf("two holders: %s and %s", winnerName, r.who)
			}
			winner, winnerName = r.lock, r.who
			defer r.lock.Release(context.Background())
		case errors.As(r.err, &he):
			held = append(held, he)
		default:
			t.Fatalf("%s: unexpected error %v", r.who, r.err)
		}
	}
	if winner == nil {
		t.Fatal("nobody got the lock")
	}
	if len(held) != n-1 {
		t.Fatalf("%d refused, want %d", len(held), n-1)
	}
	for _, he := range held {
		if he.Holder == nil || he.Holder.User != winnerName {
			t.Errorf("refusal names %+v, want %s", he.Holder, winnerName)
		}
		if want := winnerName + "@test-host"; !strings.Contains(he.Error(), want) || !strings.Contains(he.Error(), "test "+winnerName) {
			t.Errorf("message %q does not name the holder %s", he.Error(), want)
		}
	}
	// The losers left nothing behind: the next acquirer after release gets in.
	h, err := etcdlock.ReadLockHolder(t.Context(), connect(t, e.Endpoint), "/replctl", cluster)
	if err != nil || h == nil || h.Waiters != 0 || h.Token != winner.Token() {
		t.Fatalf("holder %+v err %v: want the winner, no waiters", h, err)
	}
}

func TestTokensIncreaseAndStaleWritesAreRefused(t *testing.T) {
	skipShort(t)
	t.Parallel()
	e := testenv.StartEtcd(t)
	cli := connect(t, e.Endpoint)
	cluster := clusterName(t)

	var last int64
	for i := range 3 {
		l := acquire(t, cli, opts(cluster, "alice", 3*time.Second))
		if l.Token() <= last {
			t.Fatalf("acquisition %d: token %d not above %d", i, l.Token(), last)
		}
		last = l.Token()
		if _, _, err := l.UpdateState(t.Context(), func(s *etcdlock.State) error { s.Primary = fmt.Sprintf("pg%d", i); return nil }); err != nil {
			t.Fatal(err)
		}
		if err := l.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
	}

	// alice holds, her lock is broken, bob takes over: alice's token is now
	// stale and every write she attempts is refused.
	alice := acquire(t, cli, opts(cluster, "alice", 3*time.Second))
	h, err := etcdlock.ReadLockHolder(t.Context(), cli, "/replctl", cluster)
	if err != nil || h == nil {
		t.Fatalf("holder %v %v", h, err)
	}
	if _, err := etcdlock.BreakLock(t.Context(), cli, "/replctl", cluster, h, etcdlock.Actor{User: "ops"}, 0); err != nil {
		t.Fatal(err)
	}
	bob := acquire(t, connect(t, e.Endpoint), opts(cluster, "bob", 3*time.Second))
	if bob.Token() <= alice.Token() {
		t.Fatalf("bob's token %d not above alice's %d", bob.Token(), alice.Token())
	}
	if _, _, err := bob.UpdateState(t.Context(), func(s *etcdlock.State) error { s.Primary = "pg-bob"; return nil }); err != nil {
		t.Fatal(err)
	}
	_, _, err = alice.UpdateState(t.Context(), func(s *etcdlock.State) error { s.Primary = "pg-alice"; return nil })
	var lost *etcdlock.LockLostError
	if !errors.As(err, &lost) {
		t.Fatalf("alice's write after losing the lock: %v, want *LockLostError", err)
	}
	if _, err := alice.Txn(t.Context(), nil, clientv3.OpPut("/replctl/"+cluster+"/x", "y")); !errors.As(err, &lost) {
		t.Fatalf("alice's raw write: %v, want *LockLostError", err)
	}
	s, _, err := etcdlock.ReadState(t.Context(), cli, "/replctl", cluster)
	if err != nil || s.Primary != "pg-bob" || s.Token != bob.Token() {
		t.Fatalf("state %+v err %v: want bob's", s, err)
	}
}

func TestLockWait(t *testing.T) {
	skipShort(t)
	t.Parallel()
	e := testenv.StartEtcd(t)
	cluster := clusterName(t)
	alice := acquire(t, connect(t, e.Endpoint), opts(cluster, "alice", 3*time.Second))

	t.Run("times out naming the holder", func(t *testing.T) {
		start := time.Now()
		_, err := etcdlock.Acquire(t.Context(), connect(t, e.Endpoint), func() etcdlock.LockOptions {
			o := opts(cluster, "carol", 3*time.Second)
			o.Wait = 300 * time.Millisecond
			return o
		}())
		var he *etcdlock.LockHeldError
		if !errors.As(err, &he) || he.Holder == nil || he.Holder.User != "alice" || he.Waited != 300*time.Millisecond {
			t.Fatalf("got %v, want held by alice after waiting", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("gave up after %s", d)
		}
	})

	t.Run("gets the lock once released", func(t *testing.T) {
		o := opts(cluster, "bob", 3*time.Second)
		o.Wait = 10 * time.Second
		var waitedFor string
		o.OnWait = func(h *etcdlock.LockHolder) { waitedFor = h.User }
		go func() {
			time.Sleep(300 * time.Millisecond)
			_ = alice.Release(context.Background())
		}()
		bob := acquire(t, connect(t, e.Endpoint), o)
		if waitedFor != "alice" {
			t.Errorf("OnWait told of %q, want alice", waitedFor)
		}
		if bob.Token() <= alice.Token() {
			t.Errorf("bob's token %d not above alice's %d", bob.Token(), alice.Token())
		}
		if err := bob.Check(t.Context(), time.Second); err != nil {
			t.Errorf("check after waiting: %v", err)
		}
	})
}

func TestLockLostWhenRevoked(t *testing.T) {
	skipShort(t)
	t.Parallel()
	e := testenv.StartEtcd(t)
	cli := connect(t, e.Endpoint)
	cluster := clusterName(t)
	l := acquire(t, cli, opts(cluster, "alice", 10*time.Second))
	if err := l.Check(t.Context(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := l.Check(t.Context(), 10*time.Second); err == nil {
		t.Error("a budget as long as the TTL passed Check")
	}
	if _, err := cli.Revoke(t.Context(), l.LeaseID()); err != nil {
		t.Fatal(err)
	}
	// The watch on the lock key notices at once, long before the TTL.
	if d := waitDone(t, l.Context(), 3*time.Second); d > 2*time.Second {
		t.Errorf("noticed after %s", d)
	}
	var lost *etcdlock.LockLostError
	if !errors.As(context.Cause(l.Context()), &lost) || !errors.As(l.Err(), &lost) {
		t.Fatalf("cause %v, err %v: want *LockLostError", context.Cause(l.Context()), l.Err())
	}
	if err := l.Check(t.Context(), 0); !errors.As(err, &lost) {
		t.Errorf("check after loss: %v", err)
	}
}

// proxy forwards TCP to target until paused; paused, it accepts connections
// and forwards nothing, like a network partition.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	paused bool
	conns  []net.Conn
}

func startProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.dropAll() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns = append(p.conns, c)
			paused := p.paused
			p.mu.Unlock()
			if paused {
				continue // blackholed: held open, never answered
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) dropAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) pause() {
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
	p.dropAll()
}

func (p *proxy) resume() {
	p.mu.Lock()
	p.paused = false
	p.mu.Unlock()
	p.dropAll()
}

// TestLockLostWhenPartitioned stops the holder's keepalives without its
// knowledge while etcd keeps running: etcd expires the lease, someone else
// takes the lock, and the holder must have stopped by then.
func TestLockLostWhenPartitioned(t *testing.T) {
	skipShort(t)
	t.Parallel()
	e := testenv.StartEtcd(t)
	p := startProxy(t, e.Endpoint)
	cluster := clusterName(t)
	const ttl = 2 * time.Second
	holderCli := connect(t, p.addr())
	l := acquire(t, holderCli, opts(cluster, "alice", ttl))
	op, err := l.StartOperation(l.Context(), "switchover", map[string]string{"candidate": "pg2"})
	if err != nil {
		t.Fatal(err)
	}
	if err := op.StartStep(l.Context(), "fence", "fence pg1"); err != nil {
		t.Fatal(err)
	}

	p.pause()
	paused := time.Now()
	waitDone(t, l.Context(), ttl+3*time.Second)
	var lost *etcdlock.LockLostError
	if !errors.As(context.Cause(l.Context()), &lost) {
		t.Fatalf("cause %v, want *LockLostError", context.Cause(l.Context()))
	}
	// The holder stops no later than etcd could expire its lease.
	if d := time.Since(paused); d > ttl+500*time.Millisecond {
		t.Errorf("holder noticed the loss after %s, later than the %s TTL", d, ttl)
	}

	// etcd, which never stopped, expires the lease: bob gets the lock.
	bobCli := connect(t, e.Endpoint)
	o := opts(cluster, "bob", ttl)
	o.Wait = 2 * ttl
	bob := acquire(t, bobCli, o)

	p.resume()
	if _, _, err := l.UpdateState(t.Context(), func(s *etcdlock.State) error { s.Primary = "stale"; return nil }); !errors.As(err, &lost) {
		t.Fatalf("write after loss: %v, want *LockLostError", err)
	}
	if err := l.Check(t.Context(), 0); !errors.As(err, &lost) {
		t.Fatalf("check after loss: %v", err)
	}
	// The holder still records how its operation ended, without the lock.
	if err := op.Finish(context.Background(), plan.OutcomeFailed, context.Cause(l.Context())); err != nil {
		t.Fatalf("finish after loss: %v", err)
	}
	rec, err := etcdlock.ReadOperation(t.Context(), bobCli, "/replctl", cluster, op.ID())
	if err != nil || rec == nil {
		t.Fatalf("read op: %v %v", rec, err)
	}
	if !rec.AfterLockLost || rec.Outcome != plan.OutcomeFailed || rec.Steps[0].Outcome != "interrupted" || !strings.Contains(rec.Error, "lost the lock") {
		t.Errorf("record after loss: %+v", rec)
	}
	if err := bob.Check(t.Context(), time.Second); err != nil {
		t.Errorf("bob: %v", err)
	}
}

// TestLockLostWhenEtcdStops: with etcd down past the TTL the holder stops;
// after etcd restarts (which renews every lease on the server!) its writes
// are still refused.
func TestLockLostWhenEtcdStops(t *testing.T) {
	skipShort(t)
	t.Parallel()
	e := testenv.StartEtcd(t)
	cli := connect(t, e.Endpoint)
	const ttl = 2 * time.Second
	l := acquire(t, cli, opts(clusterName(t), "alice", ttl))
	// Stop returns only after etcd's graceful shutdown (up to 7s while
	// clients hold streams), during which it may still renew leases: the
	// bound is checked from the end of it.
	if err := e.Stop(); err != nil {
		t.Fatal(err)
	}
	waitDone(t, l.Context(), ttl+time.Second)
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	var lost *etcdlock.LockLostError
	if _, err := l.Txn(t.Context(), nil, clientv3.OpPut("/replctl/x", "y")); !errors.As(err, &lost) {
		t.Fatalf("write after restart: %v, want *LockLostError", err)
	}
	if err := l.Release(t.Context()); err != nil {
		t.Errorf("release after loss: %v", err)
	}
}

func TestConnectUnreachable(t *testing.T) {
	skipShort(t)
	t.Parallel()
	// A port nobody listens on, and one that accepts and never answers (a
	// partition): both must fail within the dial timeout, never hang.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Cleanup, not defer: the parallel subtests run after this function returns.
	t.Cleanup(func() { silent.Close() })
	go func() {
		var held []net.Conn
		for {
			c, err := silent.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c)
		}
	}()
	silentDiag := ": " + silent.Addr().String() + " accepts connections but did not answer: is it etcd, and does it expect TLS (etcd.tls)?"
	for _, tt := range []struct {
		name, addr string
		user       string
		diag       string
	}{
		{"refused", closedAddr, "", ""},
		{"silent", silent.Addr().String(), "", silentDiag},
		{"silent with credentials", silent.Addr().String(), "root", silentDiag},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := config.Etcd{Endpoints: []string{tt.addr}, Prefix: "/replctl", DialTimeout: time.Second,
				Username: tt.user, Password: "hunter2-secret"}
			start := time.Now()
			cli, err := etcdlock.Connect(t.Context(), cfg)
			d := time.Since(start)
			if err == nil {
				cli.Close()
				t.Fatal("connected to nothing")
			}
			var ue *etcdlock.UnreachableError
			if !errors.As(err, &ue) {
				t.Fatalf("error %v (%T), want *UnreachableError", err, err)
			}
			if want := fmt.Sprintf("etcd unreachable at %s within 1s%s", tt.addr, tt.diag); err.Error() != want {
				t.Errorf("message %q, want %q", err.Error(), want)
			}
			if strings.Contains(fmt.Sprintf("%v %+v", err, err), "hunter2") {
				t.Error("error leaks the password")
			}
			if d > 1500*time.Millisecond {
				t.Errorf("took %s with a 1s dial timeout", d)
			}
		})
	}
}

func TestConnectAuth(t *testing.T) {
	skipShort(t)
	t.Parallel()
	e := testenv.StartEtcd(t)
	admin := connect(t, e.Endpoint)
	ctx := t.Context()
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "r00t-pass"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	cfg := config.Etcd{Endpoints: []string{e.Endpoint}, Prefix: "/replctl", DialTimeout: 3 * time.Second, Username: "root"}

	cfg.Password = "wrong-pass-123"
	_, err := etcdlock.Connect(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "authentication failed") || strings.Contains(err.Error(), "wrong-pass-123") {
		t.Fatalf("wrong password: %v", err)
	}

	cfg.Password = "r00t-pass"
	cli, err := etcdlock.Connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	l, err := etcdlock.Acquire(ctx, cli, opts(clusterName(t), "alice", 3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}
