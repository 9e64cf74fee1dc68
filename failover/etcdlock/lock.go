package etcdlock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/user"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/plan"
)

// ErrReleased is the cause of a lock's context once Release was called, and
// what guarded writes return after it.
var ErrReleased = errors.New("the cluster lock was released")

// ErrConflict is returned by a guarded write whose own conditions failed
// while the lock was still owned: the keys changed since they were read.
var ErrConflict = errors.New("etcd keys changed since they were read")

// Actor identifies who runs an operation.
type Actor struct {
	User string `json:"user"`
	Host string `json:"host"`
	PID  int    `json:"pid"`
	// Command is the replctl command line, without the program name and
	// with anything that looks like a password masked.
	Command string `json:"command"`
	// BootID is the kernel's boot ID (Linux), which tells this host and
	// boot apart from any other with the same name: only then can a
	// vanished PID mean a dead holder.
	BootID string `json:"boot_id,omitempty"`
}

// CurrentActor describes this process running command (the arguments after
// the program name). Lookups that fail give "unknown" rather than an error:
// identity is for humans and must never prevent taking the lock.
func CurrentActor(command []string) Actor {
	a := Actor{User: "unknown", Host: "unknown", PID: os.Getpid(), Command: ScrubCommand(command)}
	if u, err := user.Current(); err == nil && u.Username != "" {
		a.User = u.Username
	} else if v := os.Getenv("USER"); v != "" {
		a.User = v
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		a.Host = h
	}
	a.BootID = bootID()
	return a
}

// bootID is this boot's ID, "" where the kernel has none.
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// String is "alice@db-admin-1 (pid 4242)".
func (a Actor) String() string {
	if a.User == "" && a.Host == "" {
		return "an unidentified process"
	}
	return fmt.Sprintf("%s@%s (pid %d)", a.User, a.Host, a.PID)
}

// ScrubCommand joins a command line for the record, masking the values of
// flags named like secrets (--password x, --db-password=x) and anything
// config.Scrub recognises (password=..., URL userinfo), because the lock
// record and the history are readable by everyone with etcd access.
func ScrubCommand(args []string) string {
	out := make([]string, 0, len(args))
	maskNext := false
	for _, a := range args {
		if maskNext {
			out = append(out, "********")
			maskNext = false
			continue
		}
		if name, val, ok := strings.Cut(a, "="); ok && wholeName.MatchString(name) && secretName(name) {
			out = append(out, name+"="+mask(val))
			continue
		}
		if strings.HasPrefix(a, "-") && secretName(a) {
			maskNext = true
		}
		// Scrubbed before quoting: the patterns end at whitespace and
		// would take a closing quote with them. Within a longer argument
		// (sh -c '...'), only each secret's value is masked.
		scrubbed := inlineSecret.ReplaceAllStringFunc(config.Scrub(a), func(m string) string {
			name, _, _ := strings.Cut(m, "=")
			if !secretName(name) {
				return m
			}
			return name + "=********"
		})
		out = append(out, shellQuote(a, scrubbed))
	}
	return strings.Join(out, " ")
}

// wholeName is an argument that is one name=value pair: a flag or a
// variable, not a shell script that contains one.
var wholeName = regexp.MustCompile(`^-{0,2}[A-Za-z_][A-Za-z0-9_.-]*$`)

// inlineSecret is a name=value pair inside a longer argument whose name
// may be a secret's (secretName decides); the value ends where a shell
// word would.
var inlineSecret = regexp.MustCompile(`(?i)[A-Za-z0-9_.-]*(?:password|passwd|secret|token|credential)[A-Za-z0-9_.-]*=[^\s;&|'"()<>]+`)

func mask(v string) string {
	if v == "" {
		return ""
	}
	return "********"
}

// secretName reports whether a flag or variable name suggests a secret.
// The fencing token is not one: it is public by design.
func secretName(name string) bool {
	n := strings.ToLower(strings.TrimLeft(name, "-"))
	n = strings.NewReplacer("fencing_token", "", "fencing-token", "").Replace(n)
	for _, s := range []string{"password", "passwd", "secret", "token", "credential"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

// shellQuote returns s, quoted only when a shell would split or expand the
// original argument orig (s is orig scrubbed), so that the usual command
// line reads as typed.
func shellQuote(orig, s string) string {
	if orig == "" {
		return "''"
	}
	if !strings.ContainsAny(orig, " \t\n'\"\\$`*?[]{}()<>|&;#~!") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// holderRecord is the value of the lock key: who holds (or waits for) the
// lock. It is attached to the lock's lease, so it vanishes with it.
type holderRecord struct {
	Actor
	OperationID string    `json:"operation_id,omitempty"`
	Since       time.Time `json:"since"`
	Token       int64     `json:"token,omitempty"`
	// Acquired is false while the contender waits: Since is then when it
	// started waiting.
	Acquired bool `json:"acquired"`
	// TTL is the lease TTL granted, in seconds.
	TTL int64 `json:"ttl_seconds"`
}

// LockHolder describes the current holder of a cluster's lock.
type LockHolder struct {
	Actor
	// OperationID is the history record of the operation running under the
	// lock, once it has started one.
	OperationID string `json:"operation_id,omitempty"`
	// Since is when the lock was acquired.
	Since time.Time `json:"since"`
	// Token is the fencing token: the etcd revision at which the lock was
	// acquired. 0 for the instant between acquisition and the record update.
	Token int64 `json:"token"`
	// Key is the lock key in etcd, LeaseID its lease.
	Key     string `json:"key"`
	LeaseID int64  `json:"lease_id"`
	// LeaseTTL is the lease's granted TTL, LeaseLeft what remained when it
	// was read (whole seconds, as etcd reports them; -1s when unknown).
	LeaseTTL  time.Duration `json:"-"`
	LeaseLeft time.Duration `json:"-"`
	// Waiters counts other processes queued for the lock.
	Waiters int `json:"waiters"`

	createRev int64
}

// Describe is the one-line account of the holder used in errors:
// "alice@db-admin-1 (pid 4242) running `promote pg2` since 12:01:03, lease 8 s".
// now decides whether the date is worth printing.
func (h *LockHolder) Describe(now time.Time) string {
	var b strings.Builder
	b.WriteString(h.Actor.String())
	if h.Command != "" {
		fmt.Fprintf(&b, " running `%s`", h.Command)
	}
	if h.OperationID != "" {
		fmt.Fprintf(&b, " (operation %s)", h.OperationID)
	}
	if !h.Since.IsZero() {
		since := h.Since
		if !now.IsZero() {
			since = since.In(now.Location())
		}
		layout := "15:04:05"
		if y1, m1, d1 := since.Date(); now.IsZero() || !(y1 == now.Year() && m1 == now.Month() && d1 == now.Day()) {
			layout = "2006-01-02 15:04:05"
		}
		fmt.Fprintf(&b, " since %s", since.Format(layout))
	}
	if h.LeaseLeft >= 0 {
		fmt.Fprintf(&b, ", lease %d s", int64(h.LeaseLeft/time.Second))
	}
	return b.String()
}

// Dead reports whether the holder is a process of this host, in this boot,
// that no longer exists: its lease outlives it by up to the TTL, but
// nothing holds the lock any more. A holder on another host (or one that
// shares this host's name) is never known dead.
func (h *LockHolder) Dead() bool {
	host, err := os.Hostname()
	if err != nil || h.Host != host || h.PID <= 0 || h.BootID == "" || h.BootID != bootID() {
		return false
	}
	return errors.Is(syscall.Kill(h.PID, 0), syscall.ESRCH)
}

// LockHeldError is returned by Acquire when another process holds the lock.
// Commands map it to exit code 5.
type LockHeldError struct {
	Cluster string
	// Holder is nil when the holder released the lock between the attempt
	// and the read: trying again will likely succeed.
	Holder *LockHolder
	// Waited is how long Acquire waited (0: it did not).
	Waited time.Duration
	// At is when the holder was read.
	At time.Time
}

// Error names the holder, what it runs, since when, and its lease left.
func (e *LockHeldError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "lock on cluster %s ", e.Cluster)
	if e.Holder != nil {
		b.WriteString("held by ")
		b.WriteString(e.Holder.Describe(e.At))
	} else {
		b.WriteString("held by another operation that has just finished: try again")
	}
	if e.Waited > 0 {
		fmt.Fprintf(&b, " (waited %s)", e.Waited)
	}
	return b.String()
}

// LockLostError is the cause of a lock's context once ownership is lost,
// and what every later guarded write or Check returns.
type LockLostError struct {
	Cluster string
	Token   int64
	Reason  string
	At      time.Time
}

// Error says which lock was lost and why.
func (e *LockLostError) Error() string {
	return fmt.Sprintf("lost the lock on cluster %s (token %d): %s", e.Cluster, e.Token, e.Reason)
}

// Is makes a lost lock match plan.ErrLockLost, which the executor tells
// apart from a lock it could not confirm.
func (e *LockLostError) Is(target error) bool { return target == plan.ErrLockLost }

// LockOptions configure Acquire.
type LockOptions struct {
	// Prefix and Cluster place the lock at <prefix>/<cluster>/lock.
	Prefix  string
	Cluster string
	// TTL is the lease TTL, rounded up to whole seconds (etcd's unit);
	// config.DefaultLockTTL when zero.
	TTL time.Duration
	// Wait is how long to wait for a held lock; 0 fails fast with a
	// *LockHeldError.
	Wait time.Duration
	// HistoryKeep bounds the history written by operations under the lock;
	// config.DefaultHistoryKeep when zero.
	HistoryKeep int
	// Actor is recorded as the holder; CurrentActor(nil) when zero.
	Actor Actor
	// OnWait, if set, is told whom Acquire is about to wait for.
	OnWait func(*LockHolder)
}

// Lock is a cluster's fencing lock, held. Its token is the etcd revision at
// which it was acquired. Every write made through it is conditional on still
// owning it; losing it cancels Context().
type Lock struct {
	cli       *clientv3.Client
	k         keys
	ttl       time.Duration // granted
	keep      int
	actor     Actor
	session   *concurrency.Session
	mutex     *concurrency.Mutex
	key       string
	createRev int64
	token     int64
	since     time.Time

	ctx    context.Context
	cancel context.CancelCauseFunc
	// stop ends the monitor and the session; it is independent of the
	// caller's context so that undo steps after ^C still run under a live,
	// watched lock.
	stop context.CancelFunc
	wg   sync.WaitGroup
	// renewed wakes the monitor to re-arm its deadline timer.
	renewed chan struct{}

	mu       sync.Mutex
	deadline time.Time // a lower bound of the lease's expiry on the server
	lost     *LockLostError
	released bool
	opID     string
}

// Acquire takes the lock of a cluster. By default it fails fast with a
// *LockHeldError naming the holder; with opts.Wait it waits that long.
//
// The returned lock's Context is ctx, also cancelled the moment the lock is
// lost. The caller must call Release, even after loss.
func Acquire(ctx context.Context, cli *clientv3.Client, opts LockOptions) (*Lock, error) {
	k, err := newKeys(opts.Prefix, opts.Cluster)
	if err != nil {
		return nil, err
	}
	ttl := opts.TTL
	if ttl <= 0 {
		ttl = config.DefaultLockTTL
	}
	if opts.Actor == (Actor{}) {
		opts.Actor = CurrentActor(nil)
	}
	keep := opts.HistoryKeep
	if keep <= 0 {
		keep = config.DefaultHistoryKeep
	}

	// One etcd call never needs longer than the lease: past it the lock
	// would be gone anyway.
	cctx, ccancel := context.WithTimeout(ctx, ttl)
	defer ccancel()
	t0 := time.Now()
	lease, err := cli.Grant(cctx, int64(math.Ceil(ttl.Seconds())))
	if err != nil {
		return nil, fmt.Errorf("lock %s: grant lease: %w", k.cluster, err)
	}
	granted := time.Duration(lease.TTL) * time.Second
	sctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	session, err := concurrency.NewSession(cli, concurrency.WithLease(lease.ID),
		concurrency.WithTTL(int(lease.TTL)), concurrency.WithContext(sctx))
	if err != nil {
		stop()
		revoke(ctx, cli, lease.ID, ttl)
		return nil, fmt.Errorf("lock %s: start lease keepalive: %w", k.cluster, err)
	}
	l := &Lock{
		cli: cli, k: k, ttl: granted, keep: keep, actor: opts.Actor, session: session,
		key: fmt.Sprintf("%s/%x", k.lockPrefix(), lease.ID), stop: stop,
		deadline: t0.Add(granted), renewed: make(chan struct{}, 1),
	}
	abandon := func() {
		session.Orphan()
		revoke(ctx, cli, lease.ID, ttl)
		stop()
	}

	// The contender key is written with the holder record before the mutex
	// sees it (the mutex reuses an existing key of its session), so that
	// whoever reads the lock always finds who holds it, never an empty key.
	rec := holderRecord{Actor: opts.Actor, Since: time.Now(), TTL: lease.TTL}
	val, _ := json.Marshal(rec)
	put, err := cli.Txn(cctx).If(clientv3.Compare(clientv3.CreateRevision(l.key), "=", 0)).
		Then(clientv3.OpPut(l.key, string(val), clientv3.WithLease(lease.ID))).Commit()
	if err != nil {
		abandon()
		return nil, fmt.Errorf("lock %s: %w", k.cluster, err)
	}
	l.createRev = put.Header.Revision
	l.mutex = concurrency.NewMutex(session, k.lockPrefix())

	if opts.Wait <= 0 {
		err = l.mutex.TryLock(cctx)
		if errors.Is(err, concurrency.ErrLocked) {
			at := time.Now()
			h, _ := ReadLockHolder(cctx, cli, opts.Prefix, opts.Cluster)
			abandon()
			return nil, &LockHeldError{Cluster: k.cluster, Holder: h, At: at}
		}
	} else {
		if h, _ := ReadLockHolder(cctx, cli, opts.Prefix, opts.Cluster); h != nil && h.Key != l.key && opts.OnWait != nil {
			opts.OnWait(h)
		}
		wctx, wcancel := context.WithTimeout(ctx, opts.Wait)
		err = l.mutex.Lock(wctx)
		timedOut := wctx.Err() != nil && ctx.Err() == nil
		wcancel()
		if err != nil && timedOut {
			at := time.Now()
			rctx, rcancel := context.WithTimeout(ctx, ttl)
			h, _ := ReadLockHolder(rctx, cli, opts.Prefix, opts.Cluster)
			rcancel()
			abandon()
			return nil, &LockHeldError{Cluster: k.cluster, Holder: h, Waited: opts.Wait, At: at}
		}
	}
	if err != nil {
		abandon()
		if errors.Is(err, concurrency.ErrSessionExpired) {
			return nil, fmt.Errorf("lock %s: the lease expired while waiting: %w", k.cluster, err)
		}
		return nil, fmt.Errorf("lock %s: %w", k.cluster, err)
	}
	l.token = l.mutex.Header().Revision
	l.since = time.Now()

	// Waiting kept the lease alive through the session, but the deadline
	// known here is still the grant's: confirm a fresh one before anything
	// relies on it.
	rctx, rcancel := context.WithTimeout(ctx, ttl)
	defer rcancel()
	if err := l.renew(rctx); err != nil {
		abandon()
		return nil, fmt.Errorf("lock %s: renew lease after acquiring: %w", k.cluster, err)
	}
	l.ctx, l.cancel = context.WithCancelCause(ctx)
	if err := l.writeHolder(rctx); err != nil {
		l.cancel(err)
		abandon()
		return nil, fmt.Errorf("lock %s: record holder: %w", k.cluster, err)
	}
	l.startMonitor(sctx)
	return l, nil
}

// revoke ends a lease, bounded: a lease that cannot be revoked expires on
// its own within its TTL.
func revoke(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID, d time.Duration) {
	c, cancel := context.WithTimeout(context.WithoutCancel(ctx), d)
	defer cancel()
	_, _ = cli.Revoke(c, id)
}

// writeHolder updates the holder record once acquired (guarded, like every
// write under the lock).
func (l *Lock) writeHolder(ctx context.Context) error {
	l.mu.Lock()
	rec := holderRecord{Actor: l.actor, OperationID: l.opID, Since: l.since, Token: l.token,
		Acquired: true, TTL: int64(l.ttl / time.Second)}
	l.mu.Unlock()
	val, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	_, err = l.Txn(ctx, nil, clientv3.OpPut(l.key, string(val), clientv3.WithLease(l.session.Lease())))
	return err
}

// startMonitor watches for loss three ways, whichever comes first: the lock
// key's deletion (a revoke or a forced break, seen at once), a local
// deadline that is a lower bound of the lease's expiry on the server (etcd
// unreachable), and the session's end (the client gave up on the lease).
func (l *Lock) startMonitor(sctx context.Context) {
	wch := l.cli.Watch(clientv3.WithRequireLeader(sctx), l.key, clientv3.WithRev(l.createRev+1))
	l.wg.Add(2)
	go func() {
		defer l.wg.Done()
		l.renewLoop(sctx)
	}()
	go func() {
		defer l.wg.Done()
		l.watchLoop(sctx, wch)
	}()
}

// renewLoop renews the lease itself three times per TTL, in addition to the
// session's keepalive, because only a renewal whose send time is known
// gives a safe bound of when the server will expire the lease.
func (l *Lock) renewLoop(ctx context.Context) {
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c, cancel := context.WithTimeout(ctx, l.ttl/3)
		err := l.renew(c)
		cancel()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			l.lose("etcd says the lease no longer exists: it expired or was revoked")
			return
		}
		select {
		case l.renewed <- struct{}{}:
		default:
		}
	}
}

func (l *Lock) watchLoop(ctx context.Context, wch clientv3.WatchChan) {
	timer := time.NewTimer(time.Until(l.Deadline()))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.session.Done():
			if ctx.Err() == nil {
				l.lose(fmt.Sprintf("the etcd client stopped renewing the lease: it expired, was revoked, or etcd was unreachable for longer than the %s TTL", l.ttl))
			}
			return
		case <-l.renewed:
			timer.Reset(time.Until(l.Deadline()))
		case <-timer.C:
			if d := l.Deadline(); time.Now().Before(d) {
				timer.Reset(time.Until(d))
				continue
			}
			l.lose(fmt.Sprintf("etcd has not confirmed a lease renewal for %s (the lease TTL): it is unreachable or too slow, and the lease may have expired", l.ttl))
			return
		case wr, ok := <-wch:
			if !ok || wr.Canceled {
				if ctx.Err() != nil {
					return
				}
				// The deadline and the session still guard the lock;
				// without the watch a break is noticed at the next renewal.
				wch = nil
				continue
			}
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					l.lose("the lock key was deleted: its lease was revoked (replctl lock release --force?) or expired")
					return
				}
			}
		}
	}
}

// renew refreshes the lease once and moves the deadline to send time + TTL:
// the server refreshed it no earlier than the request was sent.
func (l *Lock) renew(ctx context.Context) error {
	t0 := time.Now()
	resp, err := l.cli.KeepAliveOnce(ctx, l.session.Lease())
	if err != nil {
		return err
	}
	d := t0.Add(time.Duration(resp.TTL) * time.Second)
	l.mu.Lock()
	if d.After(l.deadline) {
		l.deadline = d
	}
	l.mu.Unlock()
	return nil
}

// lose records the loss and cancels the operation's context, once.
func (l *Lock) lose(reason string) *LockLostError {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost != nil {
		return l.lost
	}
	lost := &LockLostError{Cluster: l.k.cluster, Token: l.token, Reason: reason, At: time.Now()}
	if l.released {
		// The lease is gone because we gave it up: nothing was lost.
		return lost
	}
	l.lost = lost
	if l.cancel != nil {
		l.cancel(l.lost)
	}
	return l.lost
}

// Context is the context given to Acquire, also cancelled the moment the
// lock is lost, with a *LockLostError as its cause (context.Cause). Run the
// operation on it so that no step starts after the loss.
func (l *Lock) Context() context.Context { return l.ctx }

// Err is nil while the lock is believed held, a *LockLostError once it is
// lost, ErrReleased after Release. Cancelling the caller's context does not
// lose the lock: undo steps may still need it.
func (l *Lock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.lost != nil:
		return l.lost
	case l.released:
		return ErrReleased
	}
	return nil
}

// OperationID is the history ID of the operation running under the lock,
// "" before StartOperation.
func (l *Lock) OperationID() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.opID
}

// Token is the fencing token: the etcd revision at which the lock was
// acquired, greater than every earlier holder's.
func (l *Lock) Token() int64 { return l.token }

// Cluster is the cluster the lock is for.
func (l *Lock) Cluster() string { return l.k.cluster }

// Key is the lock's key in etcd.
func (l *Lock) Key() string { return l.key }

// LeaseID is the lock's lease.
func (l *Lock) LeaseID() clientv3.LeaseID { return l.session.Lease() }

// TTL is the lease TTL etcd granted.
func (l *Lock) TTL() time.Duration { return l.ttl }

// Since is when the lock was acquired.
func (l *Lock) Since() time.Time { return l.since }

// Deadline is a lower bound of when etcd expires the lease if no further
// renewal reaches it.
func (l *Lock) Deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deadline
}

// Remaining is how long the lease is sure to last without renewal.
func (l *Lock) Remaining() time.Duration { return max(time.Until(l.Deadline()), 0) }

// Check confirms with etcd, right before an irreversible step, that this
// process still owns the lock and that the lease, just renewed, has at least
// budget left, so that a step is never started that the lease could expire
// in the middle of. It implements Guard.
func (l *Lock) Check(ctx context.Context, budget time.Duration) error {
	if err := l.Err(); err != nil {
		return err
	}
	if budget >= l.ttl {
		return fmt.Errorf("the next step may take %s but the lock lease is %s: raise lock.ttl above the step's budget", budget, l.ttl)
	}
	c, cancel := context.WithTimeout(ctx, l.ttl/3)
	defer cancel()
	if err := l.renew(c); err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return l.lose("etcd says the lease no longer exists: it expired or was revoked")
		}
		return fmt.Errorf("confirm lock on %s: renew lease: %w", l.k.cluster, err)
	}
	select {
	case l.renewed <- struct{}{}:
	default:
	}
	// A linearizable read after the renewal: ownership as of now.
	resp, err := l.cli.Txn(c).If(l.mutex.IsOwner()).Commit()
	if err != nil {
		return fmt.Errorf("confirm lock on %s: %w", l.k.cluster, err)
	}
	if !resp.Succeeded {
		return l.lose("the lock key is gone or belongs to another contender")
	}
	if left := l.Remaining(); left < budget {
		return fmt.Errorf("confirm lock on %s: the lease has %s left, less than the %s the next step may take: not starting it", l.k.cluster, left.Round(time.Millisecond), budget)
	}
	return l.Err()
}

// Txn runs ops in one etcd transaction conditional on still owning the lock
// and on conds. A lost lock gives a *LockLostError (and cancels Context);
// failed conds give ErrConflict. Once the lock is known lost nothing is
// sent: the server-side condition alone would accept a write from a holder
// whose lease the server has not yet expired, after etcd restarted.
func (l *Lock) Txn(ctx context.Context, conds []clientv3.Cmp, ops ...clientv3.Op) (*clientv3.TxnResponse, error) {
	if err := l.Err(); err != nil {
		return nil, err
	}
	return l.guardedTxn(ctx, conds, ops...)
}

// guardedTxn is Txn's server-side half: the fence etcd enforces.
func (l *Lock) guardedTxn(ctx context.Context, conds []clientv3.Cmp, ops ...clientv3.Op) (*clientv3.TxnResponse, error) {
	cmps := append([]clientv3.Cmp{l.mutex.IsOwner()}, conds...)
	resp, err := l.cli.Txn(ctx).If(cmps...).Then(ops...).Else(clientv3.OpGet(l.key)).Commit()
	if err != nil {
		return nil, err
	}
	if resp.Succeeded {
		return resp, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 || kvs[0].CreateRevision != l.createRev {
		return nil, l.lose("etcd refused a write: this process no longer owns the lock key")
	}
	return resp, ErrConflict
}

// setOperation records the running operation's ID in the holder record, so
// that `lock status` can point at its history.
func (l *Lock) setOperation(ctx context.Context, id string) error {
	l.mu.Lock()
	l.opID = id
	l.mu.Unlock()
	return l.writeHolder(ctx)
}

// Release gives the lock up by revoking its lease, which deletes the lock
// key and anything else attached to it. It is safe to call more than once
// and after loss; it runs even when ctx is cancelled, bounded by the TTL.
func (l *Lock) Release(ctx context.Context) error {
	l.mu.Lock()
	if l.released {
		l.mu.Unlock()
		return nil
	}
	l.released = true
	lost := l.lost
	l.mu.Unlock()
	l.cancel(ErrReleased)
	// Stopping the monitor's context also ends the session's keepalive.
	l.stop()
	l.wg.Wait()
	l.session.Orphan()
	c, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.ttl)
	defer cancel()
	_, err := l.cli.Revoke(c, l.session.Lease())
	if err != nil && lost == nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("release lock on %s: %w (the lease expires by itself within %s)", l.k.cluster, err, l.ttl)
	}
	return nil
}

// ReadLockHolder returns who holds a cluster's lock, or nil when it is free.
// It needs no lock and writes nothing.
func ReadLockHolder(ctx context.Context, cli *clientv3.Client, prefix, cluster string) (*LockHolder, error) {
	k, err := newKeys(prefix, cluster)
	if err != nil {
		return nil, err
	}
	pfx := k.lockPrefix() + "/"
	resp, err := cli.Txn(ctx).Then(
		clientv3.OpGet(pfx, clientv3.WithFirstCreate()...),
		clientv3.OpGet(pfx, clientv3.WithPrefix(), clientv3.WithCountOnly()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("read lock of %s: %w", cluster, err)
	}
	owner := resp.Responses[0].GetResponseRange().Kvs
	if len(owner) == 0 {
		return nil, nil
	}
	kv := owner[0]
	h := &LockHolder{Key: string(kv.Key), LeaseID: kv.Lease, LeaseLeft: -time.Second, createRev: kv.CreateRevision,
		Waiters: max(int(resp.Responses[1].GetResponseRange().Count)-1, 0)}
	var rec holderRecord
	if json.Unmarshal(kv.Value, &rec) == nil {
		h.Actor, h.OperationID, h.Since, h.Token = rec.Actor, rec.OperationID, rec.Since, rec.Token
		h.LeaseTTL = time.Duration(rec.TTL) * time.Second
	}
	if kv.Lease != 0 {
		ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(kv.Lease))
		if err == nil {
			h.LeaseLeft = max(time.Duration(ttl.TTL)*time.Second, 0)
			if ttl.GrantedTTL > 0 {
				h.LeaseTTL = time.Duration(ttl.GrantedTTL) * time.Second
			}
		}
	}
	return h, nil
}
