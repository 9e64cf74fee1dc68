package watch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/etcdlock"
)

// Look is one look at the cluster and at the watchers' records in etcd.
type Look struct {
	Obs failover.Observation
	// StateRev is the cluster record's revision as read, for WriteSeen.
	StateRev int64
	// RecordErr is why etcd could not be read; the watcher never acts then.
	RecordErr error
	// Holder holds the operation lock, nil when it is free.
	Holder      *etcdlock.LockHolder
	Maintenance *etcdlock.Maintenance
	Seen        *etcdlock.Seen
	// Metrics is the look as the exporter reports it.
	Metrics Input
}

// Outcome is what an action did.
type Outcome struct {
	// Done: it ran and succeeded. Refused: it did not start, for the
	// reason in Message (nothing changed). Neither: it failed.
	Done, Refused bool
	OperationID   string
	Message       string
}

// Cluster is what the watcher observes and acts through: the same
// observation, driver and commands as replctl status, promote --emergency,
// rejoin and recover (cmd implements it).
type Cluster interface {
	Look(ctx context.Context) Look
	// Failover runs the emergency failover driver, kind "automatic", with
	// the watcher's failed probes as its confirmation, under lock; look is
	// the look that found the primary dead.
	Failover(ctx context.Context, look Look, probes []failover.ProbeAttempt, lock failover.Locker) Outcome
	// Recover runs replctl recover for an interrupted operation.
	Recover(ctx context.Context, lock failover.Locker) Outcome
	// Fence fences a node that the record marks fenced and that accepts
	// writes again: commands.fence when configured, then the SQL fence.
	Fence(ctx context.Context, node string) Outcome
	// Rejoin runs replctl rejoin for a fenced node.
	Rejoin(ctx context.Context, node string, lock failover.Locker) Outcome
	// LastAutomatic is the end of the newest automatic failover in the
	// history (zero: none).
	LastAutomatic(ctx context.Context) (time.Time, error)
	// WriteSeen keeps the leader's look at the live primary current.
	WriteSeen(ctx context.Context, leaderKey string, leaderRev, stateRev int64, s etcdlock.Seen) error
	// Hold keeps an idle session open on node and closes the channel when
	// it breaks: a crashed postmaster's backends exit at once, so the
	// watcher looks again at once instead of up to an interval later.
	// Nil when the node cannot be held.
	Hold(ctx context.Context, node string) <-chan struct{}
}

// Event is one line of the watcher's log.
type Event struct {
	Time    time.Time `json:"time"`
	Level   string    `json:"level"` // info, warning, critical
	Code    string    `json:"code"`
	Message string    `json:"message"`
	Node    string    `json:"node,omitempty"`
	// OperationID is the history record of an action.
	OperationID string `json:"operation_id,omitempty"`
}

// Watcher is replctl watch: every interval it looks at the cluster; the
// elected leader acts on a dead primary, a returning fenced primary and an
// interrupted operation.
type Watcher struct {
	Cfg      *config.Config
	Cluster  Cluster
	Elector  *Elector
	Locker   failover.Locker // the operation lock the leader's actions take
	Exporter *Exporter
	Interval time.Duration
	Log      func(Event)
	Now      func() time.Time
	// Once makes Run look (and act, as leader) once and return.
	Once bool
	// Who names this watcher in the seen record.
	Who string

	det      detector
	mu       sync.Mutex
	last     Analysis
	lastLook Look
	said     map[string]string // what was last logged per topic, to log changes only
	rejoinAt map[string]time.Time
	refenced map[string]bool
	leading  bool
	stopped  bool

	holdNode   string
	holdCh     <-chan struct{}
	holdCancel context.CancelFunc
}

// rejoinBackoff spaces the rejoin attempts of one node.
const rejoinBackoff = 30 * time.Second

// Healthy is /healthz: the watcher runs and the cluster has one primary.
func (w *Watcher) Healthy() (bool, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.stopped:
		return false, "the watcher is stopping"
	case w.lastLook.Obs.Snap == nil:
		return false, "no look at the cluster yet"
	case !w.lastLook.Metrics.PrimaryKnown:
		return false, "the cluster has no single writable primary: " + w.last.Message
	}
	return true, "ok"
}

// Run watches until ctx ends. It returns once the action in flight, if
// any, has finished or stopped safely: actions run on a context that a
// shutdown does not cancel (a failover is finished rather than abandoned
// between the fence and the promotion); losing the election stops one
// before its next mutating step, through the LeaderLocker.
func (w *Watcher) Run(ctx context.Context) {
	if w.Now == nil {
		w.Now = time.Now
	}
	w.rejoinAt, w.refenced = map[string]time.Time{}, map[string]bool{}
	defer w.release()
	for {
		next := w.tick(ctx)
		if w.Once || ctx.Err() != nil {
			break
		}
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
		case <-t.C:
		case <-w.holdCh:
			w.log("info", "session_lost", w.holdNode, "the watcher's session on the primary broke: looking again now")
			w.release()
		}
		t.Stop()
		if ctx.Err() != nil {
			break
		}
	}
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}

// SetLeading is the Elector's callback.
func (w *Watcher) SetLeading(leader bool, why string) {
	w.mu.Lock()
	changed := w.leading != leader
	w.leading = leader
	w.mu.Unlock()
	switch {
	case leader && changed:
		w.say("leader", "info", "leader", "", "this watcher is the leader: it acts for the cluster")
	case !leader:
		w.say("leader", "warning", "standby", "", "this watcher is not the leader (it observes only): "+why)
	}
}

func (w *Watcher) isLeading() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.leading
}

// tick is one look, and as leader one decision; it returns the time to the
// next look: shorter while the primary is suspect, so that it is declared
// dead as the window ends rather than up to an interval later.
func (w *Watcher) tick(ctx context.Context) time.Duration {
	now := w.Now()
	look := w.Cluster.Look(ctx)
	a := w.det.observe(w.Cfg, look.Obs, now)
	leading := w.isLeading()
	look.Metrics.PrimaryUnreachable = a.Verdict == Unreachable
	look.Metrics.Watch = &WatchInput{IsLeader: leading}
	if w.Exporter != nil {
		w.Exporter.Set(look.Metrics)
	}
	w.mu.Lock()
	w.last, w.lastLook = a, look
	w.mu.Unlock()
	w.report(a)
	w.hold(ctx, a)
	next := w.Interval
	if a.Verdict == Suspect {
		left := a.SuspectSince.Add(w.Cfg.Failover.ConfirmWindow).Sub(now)
		next = min(next, max(left, 50*time.Millisecond))
	}
	if !leading || ctx.Err() != nil {
		return next
	}
	w.decide(ctx, look, a)
	return next
}

// hold keeps a session on a healthy primary, and none otherwise.
func (w *Watcher) hold(ctx context.Context, a Analysis) {
	if a.Verdict != Healthy {
		w.release()
		return
	}
	if w.holdNode == a.Primary && w.holdCh != nil {
		return
	}
	w.release()
	hctx, cancel := context.WithCancel(ctx)
	if ch := w.Cluster.Hold(hctx, a.Primary); ch != nil {
		w.holdNode, w.holdCh, w.holdCancel = a.Primary, ch, cancel
		return
	}
	cancel()
}

func (w *Watcher) release() {
	if w.holdCancel != nil {
		w.holdCancel()
	}
	w.holdNode, w.holdCh, w.holdCancel = "", nil, nil
}

// report logs the verdict when it changes.
func (w *Watcher) report(a Analysis) {
	level := "info"
	switch a.Verdict {
	case Unreachable, Suspect, NotWritable, Unknown:
		level = "warning"
	case Dead:
		level = "critical"
	}
	key := string(a.Verdict) + "/" + a.Primary
	if a.Verdict == Suspect {
		key = string(Suspect) + "/" + a.Primary // the countdown is not news
	}
	w.sayKeyed("primary", key, level, "primary_"+string(a.Verdict), a.Primary, a.Message)
}

// decide is the leader's turn: guards first, then the one action the look
// calls for.
func (w *Watcher) decide(ctx context.Context, look Look, a Analysis) {
	now := w.Now()
	if look.RecordErr != nil {
		w.say("etcd", "critical", "etcd_unreachable", "", "etcd cannot be read, so no action is taken: "+look.RecordErr.Error())
		return
	}
	w.say("etcd", "info", "etcd_ok", "", "etcd answers")
	if look.Maintenance.InForce(now) {
		msg := look.Maintenance.Describe()
		if a.Verdict == Dead || len(a.Returned) > 0 || len(look.Obs.Interrupted) > 0 {
			msg += "; the watcher would act now (" + a.Message + ") but observes only"
		}
		w.say("pause", "warning", "paused", "", msg)
		return
	}
	w.say("pause", "info", "active", "", "not paused: the leader acts")
	if h := look.Holder; h != nil && !h.Dead() {
		w.say("lock", "info", "operation_in_progress", "", "an operation holds the lock, so the watcher does not act: "+h.Describe(now))
		return
	}
	w.say("lock", "info", "lock_free", "", "the operation lock is free")
	if len(look.Obs.Interrupted) > 0 {
		// The journal of an interrupted operation is the best account of
		// where the cluster stands: finishing or undoing it is what an
		// operator would do first, recover refuses on ambiguous evidence,
		// and every other operation refuses until it is dealt with.
		r := look.Obs.Interrupted[0]
		w.say("interrupted", "critical", "interrupted_operation", "", fmt.Sprintf("operation %s (%s) was interrupted: running replctl recover", r.ID, r.Kind))
		out := w.act(ctx, func(actx context.Context) Outcome { return w.Cluster.Recover(actx, w.Locker) })
		w.outcome("recover", "", out)
		return
	}
	for _, n := range a.Returned {
		w.say("returned/"+n, "critical", "fenced_node_writable", n, n+" is marked fenced but accepts writes again: fencing it")
		out := w.act(ctx, func(actx context.Context) Outcome { return w.Cluster.Fence(actx, n) })
		w.outcome("fence", n, out)
		if out.Done {
			w.refenced[n] = true
			w.say("returned/"+n, "info", "fenced", n, n+" is fenced")
		}
	}
	switch a.Verdict {
	case Healthy:
		w.keepSeen(ctx, look, a.Primary)
		w.rejoin(ctx, look, a)
	case Dead:
		w.failover(ctx, look, a)
	}
}

// keepSeen writes the primary's position and synchronous settings.
func (w *Watcher) keepSeen(ctx context.Context, look Look, primary string) {
	key, rev, _, ok := w.Elector.Leading()
	n := look.Obs.Snap.Node(primary)
	if !ok || n == nil || n.CurrentLSN == nil || n.Settings.SynchronousStandbyNames == nil || n.Settings.SynchronousCommit == nil {
		return // a partial look is not kept: unknown settings must block, not pass
	}
	s := etcdlock.Seen{Primary: primary, LSN: *n.CurrentLSN, At: w.Now(), By: w.Who,
		Sync: etcdlock.SyncSettings{StandbyNames: *n.Settings.SynchronousStandbyNames, Commit: *n.Settings.SynchronousCommit}}
	if n.Timeline != nil {
		s.Timeline = *n.Timeline
	}
	if n.SyncFenced() {
		return // the fence's own setting is never the cluster's
	}
	err := w.Cluster.WriteSeen(ctx, key, rev, look.StateRev, s)
	switch {
	case err == nil, errors.Is(err, etcdlock.ErrNotWritten):
		w.say("seen", "info", "seen_ok", "", "keeping the primary's LSN and synchronous settings current in etcd")
	default:
		w.say("seen", "warning", "seen_failed", "", "could not keep the primary's LSN current in etcd: "+err.Error())
	}
}

// rejoin rejoins the fenced nodes that answer, when configured, spaced by
// rejoinBackoff per node.
func (w *Watcher) rejoin(ctx context.Context, look Look, a Analysis) {
	if !w.Cfg.Watch.AutoRejoin() {
		return
	}
	cand := slices.Clone(a.Fenced)
	for n := range w.refenced {
		// Fenced by commands.fence, the node is down: it came back, so
		// it is rejoined all the same.
		if !slices.Contains(cand, n) {
			cand = append(cand, n)
		}
	}
	slices.Sort(cand)
	for _, n := range cand {
		cn, ok := w.Cfg.Node(n)
		if !ok || cn.Commands.Rejoin == "" || w.Now().Before(w.rejoinAt[n]) {
			continue
		}
		if sn := look.Obs.Snap.Node(n); sn != nil && !sn.Fenced {
			delete(w.refenced, n)
			continue
		}
		w.log("info", "rejoin", n, n+" is fenced and came back: rejoining it (watch.rejoin)")
		out := w.act(ctx, func(actx context.Context) Outcome { return w.Cluster.Rejoin(actx, n, w.Locker) })
		w.outcome("rejoin", n, out)
		if out.Done {
			delete(w.refenced, n)
			delete(w.rejoinAt, n)
		} else {
			w.rejoinAt[n] = w.Now().Add(rejoinBackoff)
		}
	}
}

// failover is the automatic failover of a dead primary, unless the
// anti-flapping guard holds it back.
func (w *Watcher) failover(ctx context.Context, look Look, a Analysis) {
	last, err := w.Cluster.LastAutomatic(ctx)
	if err != nil {
		w.say("flap", "critical", "history_unreadable", a.Primary, "the history cannot be read, so the anti-flapping guard cannot be checked: no failover: "+err.Error())
		return
	}
	if !last.IsZero() {
		ack := time.Time{}
		if look.Maintenance != nil {
			ack = look.Maintenance.AcknowledgedAt
		}
		if since := w.Now().Sub(last); since < w.Cfg.Watch.MinInterval && !ack.After(last) {
			msg := fmt.Sprintf("%s is dead, but an automatic failover ended %s ago, less than watch.min_interval %s: not failing over again automatically; fail over by hand (replctl promote --emergency), or acknowledge with replctl resume",
				a.Primary, since.Round(time.Second), w.Cfg.Watch.MinInterval)
			w.sayKeyed("flap", "flapping/"+a.Primary+"/"+last.String(), "critical", "flapping", a.Primary, msg)
			return
		}
	}
	// Once per dead primary: a refused failover is tried again every look
	// (a replica may come back), without a line each time.
	w.sayKeyed("failover", a.Primary+"/"+a.SuspectSince.String(), "critical", "failover", a.Primary, fmt.Sprintf("%s is dead: automatic failover", a.Primary))
	out := w.act(ctx, func(actx context.Context) Outcome { return w.Cluster.Failover(actx, look, a.Probes, w.Locker) })
	w.outcome("failover", a.Primary, out)
	if out.Done {
		w.det.reset("")
	}
}

// act runs one action on a context a shutdown does not cancel: a failover
// in flight is finished rather than abandoned between fence and promotion.
// Losing the election still stops it before its next mutating step.
func (w *Watcher) act(ctx context.Context, f func(context.Context) Outcome) Outcome {
	if err := w.Elector.Check(ctx); err != nil {
		return Outcome{Refused: true, Message: "not acting: " + err.Error()}
	}
	return f(context.WithoutCancel(ctx))
}

func (w *Watcher) outcome(action, node string, out Outcome) {
	switch {
	case out.Done:
		w.logOp("info", action+"_done", node, out.OperationID, out.Message)
	case out.Refused:
		w.sayKeyed("refused/"+action+"/"+node, out.Message, "critical", action+"_refused", node, out.Message)
	default:
		w.logOp("critical", action+"_failed", node, out.OperationID, out.Message)
	}
}

// say logs msg under topic when it differs from what the topic last said.
func (w *Watcher) say(topic, level, code, node, msg string) {
	w.sayKeyed(topic, code+"/"+msg, level, code, node, msg)
}

func (w *Watcher) sayKeyed(topic, key, level, code, node, msg string) {
	w.mu.Lock()
	if w.said == nil {
		w.said = map[string]string{}
	}
	same := w.said[topic] == key
	w.said[topic] = key
	w.mu.Unlock()
	if !same {
		w.log(level, code, node, msg)
	}
}

func (w *Watcher) log(level, code, node, msg string) { w.logOp(level, code, node, "", msg) }

func (w *Watcher) logOp(level, code, node, op, msg string) {
	if w.Log != nil {
		w.Log(Event{Time: w.Now(), Level: level, Code: code, Node: node, OperationID: op, Message: msg})
	}
}

// Describe is the last analysis in a sentence (for --once).
func (w *Watcher) Describe() (Analysis, Look) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last, w.lastLook
}
