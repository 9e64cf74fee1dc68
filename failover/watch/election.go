package watch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/plan"
)

// ErrNotLeader says this watcher does not hold the election: it may not act.
var ErrNotLeader = errors.New("this watcher is not the elected leader")

// LeadershipLostError is a lost election as the executor sees it: a lost
// lock (errors.Is plan.ErrLockLost), so that no further step runs and no
// undo that could make a node writable runs either.
type LeadershipLostError struct{ Reason string }

func (e *LeadershipLostError) Error() string {
	return "lost the watchers' election: " + e.Reason
}

// Is makes the loss match plan.ErrLockLost.
func (e *LeadershipLostError) Is(target error) bool { return target == plan.ErrLockLost }

// Elector campaigns for the watchers' leadership of one cluster
// (concurrency.Election under <prefix>/<cluster>/watch/election) and keeps
// campaigning: a session lost with etcd is replaced when etcd returns.
type Elector struct {
	cli    *clientv3.Client
	prefix string
	ttl    time.Duration
	info   etcdlock.WatcherInfo

	mu      sync.Mutex
	sess    *concurrency.Session
	el      *concurrency.Election
	leading bool
	// lost closes when the current leadership ends.
	lost chan struct{}
}

// NewElector prepares a campaign of info for cluster.
func NewElector(cli *clientv3.Client, etcdPrefix, cluster string, ttl time.Duration, info etcdlock.WatcherInfo) (*Elector, error) {
	p, err := etcdlock.ElectionPrefix(etcdPrefix, cluster)
	if err != nil {
		return nil, err
	}
	return &Elector{cli: cli, prefix: p, ttl: ttl, info: info}, nil
}

// Run campaigns until ctx ends, calling onChange with each change of
// leadership. On return it resigns and revokes its session, so that a
// standby takes over at once rather than after the TTL.
func (e *Elector) Run(ctx context.Context, onChange func(leader bool, why string)) {
	for ctx.Err() == nil {
		sess, err := concurrency.NewSession(e.cli, concurrency.WithTTL(max(1, int(e.ttl.Seconds()))), concurrency.WithContext(ctx))
		if err != nil {
			onChange(false, "etcd: "+err.Error())
			sleep(ctx, time.Second)
			continue
		}
		el := concurrency.NewElection(sess, e.prefix)
		e.mu.Lock()
		e.sess, e.el = sess, el
		e.mu.Unlock()
		val, _ := json.Marshal(e.info)
		cctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-sess.Done():
			case <-cctx.Done():
			}
			cancel()
		}()
		onChange(false, "campaigning: another watcher leads, or the election is being decided")
		err = el.Campaign(cctx, string(val))
		if err == nil {
			lost := make(chan struct{})
			e.mu.Lock()
			e.leading, e.lost = true, lost
			e.mu.Unlock()
			onChange(true, "elected")
			select {
			case <-sess.Done():
				onChange(false, "the election lease expired (etcd unreachable or too slow)")
			case <-ctx.Done():
			}
			e.mu.Lock()
			e.leading = false
			close(lost)
			e.mu.Unlock()
		}
		cancel()
		// Revoking the lease deletes the campaign key: the next watcher is
		// elected now rather than after the TTL. Session.Close would
		// revoke on the session's context, which has ended by now.
		sess.Orphan()
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_, _ = e.cli.Revoke(rctx, sess.Lease())
		rcancel()
		e.mu.Lock()
		e.sess, e.el = nil, nil
		e.mu.Unlock()
		if ctx.Err() == nil {
			sleep(ctx, 500*time.Millisecond)
		}
	}
}

// Leading reports whether this watcher believes it leads, with the
// election key and its create revision, and a channel closed when the
// leadership ends.
func (e *Elector) Leading() (key string, rev int64, lost <-chan struct{}, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.leading || e.el == nil {
		return "", 0, nil, false
	}
	return e.el.Key(), e.el.Rev(), e.lost, true
}

// Check confirms the leadership with etcd now: the session's lease is alive
// and the leader key is still this watcher's. Every action checks it
// before it starts, and every mutating step of an action through
// LeaderLocker.
func (e *Elector) Check(ctx context.Context) error {
	key, rev, _, ok := e.Leading()
	if !ok {
		return ErrNotLeader
	}
	c, cancel := context.WithTimeout(ctx, max(e.ttl/3, time.Second))
	defer cancel()
	resp, err := e.cli.Txn(c).If(clientv3.Compare(clientv3.CreateRevision(key), "=", rev)).Commit()
	if err != nil {
		return fmt.Errorf("confirm leadership: %w", err)
	}
	if !resp.Succeeded {
		return &LeadershipLostError{Reason: "the leader key is gone"}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// LeaderLocker takes the cluster lock for an operation the leader runs and
// ties it to the leadership: the held lock counts as lost as soon as the
// election is, so the executor's rule for a lost lock applies (no further
// step, no undo that could make a node writable). The operation lock
// itself is what keeps a watcher and an operator, or two watchers during a
// handover, from acting at once.
type LeaderLocker struct {
	Elector *Elector
	Inner   failover.Locker
}

// Lock implements failover.Locker.
func (l LeaderLocker) Lock(ctx context.Context, spec failover.OperationSpec) (failover.HeldLock, failover.History, error) {
	if err := l.Elector.Check(ctx); err != nil {
		return nil, nil, err
	}
	_, _, lost, ok := l.Elector.Leading()
	if !ok {
		return nil, nil, ErrNotLeader
	}
	held, hist, err := l.Inner.Lock(ctx, spec)
	if held == nil {
		return nil, hist, err
	}
	ll := &leaderLock{HeldLock: held, el: l.Elector}
	ll.ctx, ll.cancel = context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		select {
		case <-held.Context().Done():
		case <-lost:
			ll.mu.Lock()
			if ll.lost == nil {
				ll.lost = &LeadershipLostError{Reason: "the election lease ended during the operation"}
			}
			ll.mu.Unlock()
		}
		ll.cancel()
	}()
	return ll, hist, err
}

type leaderLock struct {
	failover.HeldLock
	el     *Elector
	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	lost   error
}

func (l *leaderLock) Context() context.Context { return l.ctx }

func (l *leaderLock) Err() error {
	if err := l.HeldLock.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost
}

// Check confirms the leadership, then the lock.
func (l *leaderLock) Check(ctx context.Context, budget time.Duration) error {
	if err := l.Err(); err != nil {
		return err
	}
	if err := l.el.Check(ctx); err != nil {
		if errors.Is(err, ErrNotLeader) {
			err = &LeadershipLostError{Reason: "no longer the leader"}
		}
		var lle *LeadershipLostError
		if errors.As(err, &lle) {
			l.mu.Lock()
			l.lost = err
			l.mu.Unlock()
		}
		return err
	}
	return l.HeldLock.Check(ctx, budget)
}

// CloseInterrupted lets recover close records through the wrapped lock.
func (l *leaderLock) CloseInterrupted(ctx context.Context, id, note string) error {
	c, ok := l.HeldLock.(interface {
		CloseInterrupted(ctx context.Context, id, note string) error
	})
	if !ok {
		return errors.New("the lock cannot close history records")
	}
	return c.CloseInterrupted(ctx, id, note)
}

func (l *leaderLock) Release(ctx context.Context) error {
	defer l.cancel()
	return l.HeldLock.Release(ctx)
}
