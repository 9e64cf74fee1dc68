package failover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/topology"
)

// Fence strengths.
const (
	FenceStop = "stop" // CHECKPOINT, then a clean shutdown through commands.stop
	FenceSQL  = "sql"  // read-only default, unreachable sync standby, sessions terminated
)

// Step IDs that reports and tests refer to.
const (
	StepLock        = "lock"
	StepSaveConfig  = "save-settings"
	StepCatchup     = "catchup"
	StepCreateSlots = "create-slots"
	StepCheckpoint  = "checkpoint"
	StepFence       = "fence"
	StepFinalLSN    = "final-lsn"
	StepDetach      = "detach"
	StepWaitReplay  = "wait-replay"
	StepPromote     = "promote"
	StepStopped     = "stopped"
	StepVerify      = "verify"
	StepCheckpointN = "checkpoint-promoted"
	StepRecordState = "record"
	StepHook        = "post-promote-hook"
	StepPreFence    = "pre-fence-hook"
	StepRepoint     = "repoint"
	StepRejoin      = "rejoin"
	StepSync        = "sync-standbys"
)

// nearlyCaughtUp is how close the candidate must be before the fence goes up,
// so the outage starts only when it will be short.
const nearlyCaughtUp = 1 << 20

// Recorder is the cluster record and lock as plans use them.
type Recorder interface {
	Check(ctx context.Context, budget time.Duration) error
	UpdateState(ctx context.Context, fn func(*etcdlock.State) error) (*etcdlock.State, int64, error)
	Token() int64
}

// Env is what a plan's steps act through at run time. Building a plan never
// touches it, so a dry-run builds the very same plan with a nil Env.
type Env struct {
	Ctl Controller
	// Lock is the held cluster lock; set by Acquire before mutating steps.
	Lock Recorder
	// Acquire takes the lock, re-reads the topology under it and re-runs the
	// preflight, failing when the plan would now differ from this one.
	Acquire func(ctx context.Context) error
	// OperationID names the operation in the record and on the new primary.
	OperationID func() string
	// Progress reports waits (bytes left); may be nil.
	Progress func(step, msg string)
	// Clock is what the steps' waits poll on; nil is the wall clock.
	Clock pgctl.Clock
	// JournalTo writes the operation's journal (its history record, under
	// the lock); nil keeps none. Set by RunOperation.
	JournalTo func(ctx context.Context, events ...plan.Event) error
}

// Journal lets Env be the executor's plan.Journaler.
func (e *Env) Journal(ctx context.Context, events ...plan.Event) error {
	if e == nil || e.JournalTo == nil {
		return nil
	}
	return e.JournalTo(ctx, events...)
}

func (e *Env) progress(step, format string, a ...any) {
	if e != nil && e.Progress != nil {
		e.Progress(step, fmt.Sprintf(format, a...))
	}
}

// Check lets Env be the executor's Guard: the lock as soon as it is held.
func (e *Env) Check(ctx context.Context, budget time.Duration) error {
	if e == nil || e.Lock == nil {
		return errors.New("the cluster lock is not held")
	}
	return e.Lock.Check(ctx, budget)
}

// SwitchoverOptions are the planned switchover's parameters.
type SwitchoverOptions struct {
	Candidate      string
	MaxLag         uint64
	CatchupTimeout time.Duration
	// CallTimeout bounds one SQL statement (--timeout).
	CallTimeout time.Duration
	NoRejoin    bool
	RequireStop bool
	// LogicalSlots is what happens to the logical slots the promotion
	// would lose: LogicalHandover (""), LogicalDrop or LogicalRefuse.
	LogicalSlots string
}

// switchover carries what one step learns for the next. Emergency failover
// uses it too: the steps both make are built once, by its step methods.
type switchover struct {
	env       *Env
	cfg       *config.Config
	pn        *topology.Node // the primary as observed
	cn        *topology.Node // the candidate as observed
	primary   config.Node
	candidate config.Node
	others    []*topology.Node
	// behind are the replicas among others that will not follow the new
	// primary at once (replay paused, apply delay, not streaming), with why:
	// they are repointed and verified, not waited for.
	behind map[string]string
	// silent are the other nodes that did not answer when planned.
	silent []string
	fence  string
	opts   SwitchoverOptions
	t      Timeouts

	preStopLSN topology.LSN
	finalLSN   topology.LSN
	// stop is the stop fence's commands.stop, which runs on while the
	// promotion goes ahead once the old primary's WAL is known to end
	// (watch); shutdownEnd is that end, zero when unknown.
	stop        *background
	watch       *pgctl.ShutdownWatch
	shutdownEnd topology.LSN
	// handover are the logical slots handed over to the candidate;
	// holdCapture is its default_transaction_read_only before writes were
	// held, logicalErr why a slot could not be created.
	handover    []pgctl.LogicalSlot
	holdCapture *pgctl.SettingsSnapshot
	logicalErr  error
	// streamEnded is set by an emergency failover: finalLSN is where the
	// dead primary's stream stopped, which may be inside a record.
	streamEnded bool
	// fenceCapture is the fenced primary's settings before the SQL fence.
	fenceCapture *pgctl.SettingsSnapshot
	// detached are the other replicas' settings before the detach.
	detached     map[string]*pgctl.SettingsSnapshot
	slots        []string
	created      []string
	markedFenced bool
	promoteSent  bool
	newTimeline  uint32
	newLSN       topology.LSN
	rejoin       bool
	// rejoined is whether the old primary's rejoin step succeeded: the
	// sync step names it only then.
	rejoined     bool
	sync         *topology.SyncStandbys
	syncOriginal string
	// candSync is the candidate's own synchronous replication settings: what
	// it runs with once promoted, until the sync step replaces them.
	candSync etcdlock.SyncSettings
}

func newSwitchover(env *Env, cfg *config.Config, primary, candidate config.Node, opts SwitchoverOptions, cn *topology.Node) *switchover {
	return &switchover{env: env, cfg: cfg, primary: primary, candidate: candidate, opts: opts, cn: cn,
		t: TimeoutsFor(cfg, opts.CallTimeout, opts.CatchupTimeout), candSync: syncSettingsOf(cn),
		behind: map[string]string{}, detached: map[string]*pgctl.SettingsSnapshot{}}
}

// budget is the lease a step of timeout d needs left before it starts.
func (sw *switchover) budget(d time.Duration) time.Duration { return min(d, sw.cfg.Lock.TTL/2) }

// syncSettingsOf is a node's synchronous replication settings as probed;
// unknown ones stay empty, which ProveSync reads as "not recorded".
func syncSettingsOf(n *topology.Node) etcdlock.SyncSettings {
	var s etcdlock.SyncSettings
	if n == nil {
		return s
	}
	if v := n.Settings.SynchronousStandbyNames; v != nil {
		s.StandbyNames = *v
	}
	if v := n.Settings.SynchronousCommit; v != nil {
		s.Commit = *v
	}
	return s
}

// whyBehind says why replica n will not stream from a new primary as soon
// as it is repointed: PostgreSQL's startup process acts on a changed
// primary_conninfo only when it next waits for WAL, which a paused startup
// process never does and a delayed one does only once it has applied all
// it received. "" when it will follow at once.
func whyBehind(n *topology.Node, needStream bool) string {
	switch {
	case n.ReplayPaused():
		return "replay is paused"
	case n.Settings.RecoveryMinApplyDelayMS != nil && *n.Settings.RecoveryMinApplyDelayMS > 0:
		return fmt.Sprintf("recovery_min_apply_delay is %s", time.Duration(*n.Settings.RecoveryMinApplyDelayMS)*time.Millisecond)
	case needStream && (n.WALReceiver == nil || n.WALReceiver.Status != "streaming"):
		return "it is not streaming"
	}
	return ""
}

// BuildSwitchoverPlan builds the planned switchover of snap's primary to
// opts.Candidate. It is a pure function of the snapshot, the configuration
// and the options: the steps run only when executed with a non-nil env.
// Preflight checks are the caller's (checks.SwitchoverPreflight); this only
// refuses what it cannot plan.
func BuildSwitchoverPlan(cfg *config.Config, snap *topology.Snapshot, opts SwitchoverOptions, env *Env) (*plan.Plan, error) {
	pn := snap.PrimaryNode()
	if pn == nil {
		return nil, errors.New("no reachable primary: a planned switchover needs one (use --emergency when it is down)")
	}
	primary, _ := cfg.Node(pn.Name)
	candidate, ok := cfg.Node(opts.Candidate)
	if !ok {
		return nil, fmt.Errorf("candidate %q is not a configured node", opts.Candidate)
	}
	if opts.CatchupTimeout <= 0 {
		opts.CatchupTimeout = 30 * time.Second
	}
	sw := newSwitchover(env, cfg, primary, candidate, opts, snap.Node(candidate.Name))
	sw.pn = pn
	sw.fence = FenceSQL
	if primary.Commands.Stop != "" {
		sw.fence = FenceStop
	}
	handover, err := planHandover(pn, sw.cn, opts.LogicalSlots, opts.RequireStop)
	if err != nil {
		return nil, err
	}
	sw.handover = handover
	var handoverNote string
	if len(handover) > 0 && sw.fence == FenceStop {
		sw.fence = FenceSQL
		handoverNote = fmt.Sprintf("logical slots %s are handed over, which needs the SQL fence: once stopped, %s could not say whether their consumers confirmed its last WAL; it is stopped by its rejoin", handoverNames(handover), primary.Name)
	}
	p := &plan.Plan{Kind: "switchover", Candidate: candidate.Name, Primary: primary.Name, Fence: sw.fence}
	if handoverNote != "" {
		p.Notes = append(p.Notes, handoverNote)
	}
	for _, n := range snap.Nodes {
		if n.Name == candidate.Name || n.Name == primary.Name {
			continue
		}
		if !n.Reachable {
			// It may be hung with its stream still open: a clean shutdown
			// would wait for it. It is not repointed: nothing can be
			// changed on a node that does not answer.
			sw.silent = append(sw.silent, n.Name)
			cut := ""
			if sw.fence == FenceStop {
				cut = fmt.Sprintf("; its walsender on %s, if any, is terminated before the stop fence", primary.Name)
			}
			p.Notes = append(p.Notes, fmt.Sprintf("%s does not answer: it is not repointed%s. Once it is back, repoint it at %s or run `replctl rejoin %s`",
				n.Name, cut, candidate.Name, n.Name))
			continue
		}
		if !n.Member() || n.Role != topology.RoleReplica {
			continue
		}
		if string(n.Upstream) != primary.Name {
			if n.Upstream != "" {
				p.Notes = append(p.Notes, fmt.Sprintf("%s cascades from %s: left as it is, it follows %s's timeline change", n.Name, n.Upstream, n.Upstream))
			}
			continue
		}
		sw.others = append(sw.others, n)
		if why := whyBehind(n, true); why != "" {
			sw.behind[n.Name] = why
			p.Notes = append(p.Notes, fmt.Sprintf("%s: %s: it is repointed at %s and the setting verified, but not waited for; it follows %s once it next waits for WAL (after SELECT pg_wal_replay_resume() when paused), and its slot on %s retains WAL until then",
				n.Name, why, candidate.Name, candidate.Name, candidate.Name))
		}
	}
	sw.rejoin = !opts.NoRejoin && primary.Commands.Rejoin != ""
	for _, o := range sw.others {
		sw.slots = append(sw.slots, slotFor(o))
	}
	if sw.rejoin {
		sw.slots = append(sw.slots, primary.Name)
	}
	if s := pn.Settings.SyncStandbys; s != nil && s.Enabled() {
		sw.sync = adaptSync(*s, candidate.Name, primary.Name, sw.rejoin)
	}
	if pn.Settings.SynchronousStandbyNames != nil {
		sw.syncOriginal = *pn.Settings.SynchronousStandbyNames
	}

	ttl := cfg.Lock.TTL
	t := sw.t
	add := func(s plan.Step) { p.Steps = append(p.Steps, s) }

	add(plan.Step{ID: StepLock, Description: fmt.Sprintf("take the cluster lock (%s/%s/lock, ttl %s), re-read the topology under it and re-run the preflight",
		cfg.Etcd.Prefix, cfg.Cluster, ttl), Run: sw.acquire})
	add(plan.Step{ID: StepSaveConfig, Node: primary.Name, Mutates: true, Timeout: t.Etcd, Budget: sw.budget(t.Etcd),
		Description: fmt.Sprintf("etcd: save %s's synchronous_standby_names (%s) and synchronous_commit (%s) in the cluster record",
			primary.Name, quoteOrEmpty(pn.Settings.SynchronousStandbyNames), orUnknown(pn.Settings.SynchronousCommit)),
		Run: sw.saveSettings})
	if len(sw.slots) > 0 {
		add(sw.stepCreateSlots())
	}
	if sw.fence == FenceStop {
		add(plan.Step{ID: StepCheckpoint, Node: primary.Name, Mutates: true, Timeout: t.Command, Budget: sw.budget(5 * time.Second),
			Description: fmt.Sprintf("%s: CHECKPOINT while it still serves, so the shutdown checkpoint is quick", primary.Name),
			Run:         func(ctx context.Context) error { return sw.env.Ctl.Checkpoint(ctx, primary.Name) }})
		// Last before the fence: slot creation, the CHECKPOINT or the
		// detaches may take long enough under load for the candidate to fall
		// behind again.
		add(sw.stepCatchup())
		add(sw.stepMarkFenced(fmt.Sprintf("switchover to %s in progress", candidate.Name), false))
		if cfg.Hooks.PreFence != "" {
			add(sw.stepPreFence())
		}
		undo := fmt.Sprintf("%s: no start command: start it by hand", primary.Name)
		var undoFn func(context.Context) error
		if primary.Commands.Start != "" {
			undo = fmt.Sprintf("%s: start it again as primary: %s", primary.Name, primary.Commands.Start)
			undoFn = sw.unfenceStop
		}
		add(plan.Step{ID: StepFence, Node: primary.Name, Mutates: true, Fences: true, Timeout: t.Command, Budget: sw.budget(5 * time.Second),
			Description: fmt.Sprintf("%s: stop fence: terminate the walsender of any other replica that does not answer within %s (a clean shutdown would wait for it), open a replication connection to it, then stop it cleanly with commands.stop (%s); done once that stream ends cleanly, which a walsender does only after the shutdown checkpoint, with all WAL sent: its end is the final WAL position (without the stream: once commands.stop has finished)",
				primary.Name, hungProbe, primary.Commands.Stop),
			UndoDescription: undo, Run: sw.fenceStop, Undo: undoFn})
		add(plan.Step{ID: StepFinalLSN, Node: candidate.Name, Timeout: t.Command,
			Description: fmt.Sprintf("%s: wait until it has received %s's final WAL position, the end of the stream (without the stream: read what it received once commands.stop finished; a clean shutdown waits for connected standbys to flush its last WAL)", candidate.Name, primary.Name),
			Run:         sw.finalFromCandidate})
	} else {
		// The SQL-fenced primary stays up and may still write WAL of its
		// own (checkpoints, standby snapshots, hint bits). A replica that
		// replayed some of it past the candidate's end of recovery could
		// never follow the new timeline; so the other replicas first stop
		// following it and cascade from the candidate, which then has all
		// they have. Done before the fence, it costs no outage.
		for _, o := range sw.others {
			ci, err := pgctl.ReplicaConninfo(candidate, o.Name)
			if err != nil {
				return nil, err
			}
			slot := slotFor(o)
			add(plan.Step{ID: StepDetach + "-" + o.Name, Node: o.Name, Mutates: true, Timeout: t.Stream, Budget: sw.budget(2 * time.Second),
				Description: fmt.Sprintf("%s: stop following %s, which the SQL fence leaves up: capture its primary_conninfo and primary_slot_name, ALTER SYSTEM SET primary_conninfo = %s, primary_slot_name = %s (cascade from %s); SELECT pg_reload_conf(); wait until its WAL receiver has left %s, terminating its walsender there if it stays (timeout %s)",
					o.Name, primary.Name, pgctl.QuoteLiteral(ci), pgctl.QuoteLiteral(slot), candidate.Name, primary.Name, t.Stream),
				UndoDescription: fmt.Sprintf("%s: restore the primary_conninfo and primary_slot_name it had (ALTER SYSTEM), SELECT pg_reload_conf(), end its walsender on %s so it follows %s again", o.Name, candidate.Name, primary.Name),
				Run:             func(ctx context.Context) error { return sw.detach(ctx, o.Name, ci, slot) },
				Undo:            func(ctx context.Context) error { return sw.reattach(ctx, o.Name, slot) }})
		}
		p.Notes = append(p.Notes, fmt.Sprintf("%s has no commands.stop: using the SQL fence. It stops every ordinary client, but a session that sets default_transaction_read_only = off and synchronous_commit = local can still commit; use --require-stop to refuse without a stop command.", primary.Name))
		// Last before the fence: slot creation, the CHECKPOINT or the
		// detaches may take long enough under load for the candidate to fall
		// behind again.
		add(sw.stepCatchup())
		add(sw.stepMarkFenced(fmt.Sprintf("switchover to %s in progress", candidate.Name), false))
		if cfg.Hooks.PreFence != "" {
			add(sw.stepPreFence())
		}
		add(plan.Step{ID: StepFence, Node: primary.Name, Mutates: true, Fences: true, Timeout: t.Call, Budget: sw.budget(2 * time.Second),
			Description:     fmt.Sprintf("%s: SQL fence: capture default_transaction_read_only and synchronous_standby_names, then %s", primary.Name, strings.Join(pgctl.SQLFenceSQL, "; ")),
			UndoDescription: fmt.Sprintf("%s: restore default_transaction_read_only and synchronous_standby_names as captured (ALTER SYSTEM), SELECT pg_reload_conf()", primary.Name),
			Run:             sw.fenceSQL, Undo: sw.unfenceSQL})
		add(plan.Step{ID: StepFinalLSN, Node: primary.Name, Timeout: t.Call,
			Description: fmt.Sprintf("%s: read its final WAL position: SELECT pg_current_wal_insert_lsn(), then wait until pg_current_wal_flush_lsn() reaches it", primary.Name),
			Run:         sw.finalFromPrimary})
		if len(sw.handover) > 0 {
			add(sw.stepWaitLogical())
		}
	}
	add(plan.Step{ID: StepWaitReplay, Node: candidate.Name, Timeout: t.Catchup,
		Description: fmt.Sprintf("%s: wait until it has replayed up to %s's final position (timeout %s); SELECT pg_reload_conf() wakes its startup process if replay stalls", candidate.Name, primary.Name, t.Catchup),
		Run:         sw.waitReplay})
	if len(sw.handover) > 0 {
		add(sw.stepHoldWrites())
	}
	add(sw.stepPromote())
	if sw.fence == FenceStop {
		add(plan.Step{ID: StepStopped, Node: primary.Name, Timeout: t.Command,
			Description: fmt.Sprintf("%s: wait until commands.stop has finished (timeout %s)", primary.Name, t.Command),
			Run:         sw.waitStopped})
	}
	if len(sw.handover) > 0 {
		add(sw.stepCreateLogical())
		add(sw.stepReleaseWrites())
	}
	add(sw.stepVerify())
	if h := cfg.Hooks.PostPromote; h != "" {
		add(sw.stepHook())
	}
	add(sw.stepRecord())
	if len(sw.handover) > 0 {
		add(sw.stepEndLogical())
	}
	for _, o := range sw.others {
		st, err := sw.stepRepoint(o)
		if err != nil {
			return nil, err
		}
		add(st)
	}
	add(sw.stepCheckpointPromoted())
	if sw.rejoin {
		ci, _ := pgctl.ReplicaConninfo(candidate, "")
		add(plan.Step{ID: StepRejoin, Node: primary.Name, Mutates: true, Timeout: t.Command + t.Stream, Budget: sw.budget(5 * time.Second),
			Description: fmt.Sprintf("%s: rejoin as a replica of %s: commands.rejoin (%s) with REPLCTL_PRIMARY_CONNINFO=%s; wait until it streams on the new timeline (timeout %s); drop its old slots; unmark it fenced",
				primary.Name, candidate.Name, primary.Commands.Rejoin, pgctl.QuoteLiteral(ci), t.Stream),
			Run: func(ctx context.Context) error { return sw.rejoinOld(ctx, ci) }})
	} else {
		p.Notes = append(p.Notes, RejoinAdvice(cfg, primary.Name, candidate.Name, opts.NoRejoin))
	}
	if sw.sync != nil {
		if len(sw.sync.Names) == 0 {
			p.Notes = append(p.Notes, fmt.Sprintf("%s had synchronous_standby_names %s but no standby is left to name: %s will run asynchronous", primary.Name, quoteOrEmpty(pn.Settings.SynchronousStandbyNames), candidate.Name))
		} else {
			add(sw.stepSync())
		}
	}
	if len(sw.handover) > 0 {
		add(sw.stepVerifyLogical())
	}
	p.Notes = append(p.Notes, handoverNotes(logicalSlotNotes(pn, snap.Node(candidate.Name)), pn.Name, candidate.Name, sw.handover)...)
	p.Notes = append(p.Notes, subscriptionNotes(pn.Name, snap.Node(candidate.Name))...)
	return p, nil
}

// hungProbe is how long another replica may take to answer before the stop
// fence counts it as hung and terminates its walsender.
const hungProbe = time.Second

// The steps that switchover and emergency failover both make.

func (sw *switchover) stepCatchup() plan.Step {
	return plan.Step{ID: StepCatchup, Node: sw.candidate.Name, Timeout: sw.t.Catchup,
		Description: fmt.Sprintf("%s: wait until replay is within %s of %s (timeout %s)", sw.candidate.Name, config.HumanBytes(nearlyCaughtUp), sw.primary.Name, sw.t.Catchup),
		Run:         sw.catchup}
}

func (sw *switchover) stepCreateSlots() plan.Step {
	return plan.Step{ID: StepCreateSlots, Node: sw.candidate.Name, Mutates: true, Timeout: sw.t.Call, Budget: sw.budget(2 * time.Second),
		Description:     fmt.Sprintf("%s: create physical replication slots %s for the replicas that will follow it", sw.candidate.Name, strings.Join(sw.slots, ", ")),
		UndoDescription: fmt.Sprintf("%s: drop the replication slots this operation created", sw.candidate.Name),
		Run:             sw.createSlots, Undo: sw.dropSlots}
}

// stepMarkFenced records the intent before the fence: should replctl die
// between the fence and the record, etcd already names the old primary as
// fenced, and starting it by hand shows up as a fenced node writable again.
// keep is set for an emergency failover, whose fence is never lifted: the
// mark then has no undo either.
func (sw *switchover) stepMarkFenced(reason string, keep bool) plan.Step {
	old := sw.primary.Name
	st := plan.Step{ID: StepMarkFenced, Node: old, Mutates: true, Timeout: sw.t.Etcd, Budget: sw.budget(sw.t.Etcd),
		Description:     fmt.Sprintf("etcd: mark %s fenced in the cluster record before fencing it, so status flags it if it comes back writable", old),
		UndoDescription: fmt.Sprintf("etcd: unmark %s fenced", old),
		Run: func(ctx context.Context) error {
			_, _, err := sw.env.Lock.UpdateState(ctx, func(s *etcdlock.State) error {
				sw.markedFenced = !s.IsFenced(old)
				s.Fence(old, reason)
				return nil
			})
			plan.Changed(ctx)
			return err
		},
		Undo: func(ctx context.Context) error {
			if !sw.markedFenced {
				return nil
			}
			_, _, err := sw.env.Lock.UpdateState(ctx, func(s *etcdlock.State) error {
				s.Unfence(old)
				return nil
			})
			if err == nil {
				sw.markedFenced = false
			}
			return err
		}}
	if keep {
		st.Undo, st.UndoDescription = nil, ""
	}
	return st
}

func (sw *switchover) stepPromote() plan.Step {
	c := sw.candidate.Name
	return plan.Step{ID: StepPromote, Node: c, Mutates: true, Timeout: sw.t.Promote, Budget: sw.budget(2 * time.Second), PointOfNoReturn: true,
		Description: fmt.Sprintf("%s: promote: SELECT pg_promote(wait => false), then poll until it leaves recovery (timeout %s), asking again if its startup process dozes instead", c, sw.t.Promote),
		Run:         sw.promote}
}

func (sw *switchover) stepVerify() plan.Step {
	c := sw.candidate.Name
	return plan.Step{ID: StepVerify, Node: c, Timeout: sw.t.Command,
		Description: fmt.Sprintf("%s: verify it accepts writes on a new timeline (from pg_walfile_name(pg_current_wal_lsn()))", c),
		Run:         sw.verify}
}

// stepCheckpointPromoted puts the new timeline into the new primary's
// control file, which pg_rewind reads: without it, a rewind of the former
// primary right after the promotion may find "no rewind required" and
// leave it diverged. Switchover and emergency failover run it after the
// hook and the repoints, so that clients reconnecting to the new primary
// do not share its CPU with a checkpoint; recover, after verify.
func (sw *switchover) stepCheckpointPromoted() plan.Step {
	c := sw.candidate.Name
	return plan.Step{ID: StepCheckpointN, Node: c, Timeout: sw.t.Command,
		Description: fmt.Sprintf("%s: CHECKPOINT, so that pg_rewind of a former primary sees the new timeline", c),
		Run:         func(ctx context.Context) error { return sw.env.Ctl.Checkpoint(ctx, c) }}
}

func (sw *switchover) stepRecord() plan.Step {
	c := sw.candidate.Name
	return plan.Step{ID: StepRecordState, Node: c, Mutates: true, Timeout: sw.t.Etcd, Budget: sw.budget(sw.t.Etcd),
		Description: fmt.Sprintf("etcd: record %s as primary with its timeline, LSN and the fencing token, %s as fenced; %s: ALTER SYSTEM SET replctl.fencing_token", c, sw.primary.Name, c),
		Run:         sw.record}
}

// stepHook runs hooks.post_promote right after verify, before the record:
// it sends clients behind a virtual IP, a DNS name or a pooler to the new
// primary, so until it has run they see the write outage go on, while the
// record is for replctl and the operator. Past the point of no return a
// failed hook does not keep the record from being written.
func (sw *switchover) stepHook() plan.Step {
	c := sw.candidate.Name
	return plan.Step{ID: StepHook, Node: c, Mutates: true, Timeout: sw.t.Command, Budget: sw.budget(5 * time.Second),
		Description: fmt.Sprintf("run hooks.post_promote (%s) with REPLCTL_NODE=%s", sw.cfg.Hooks.PostPromote, c),
		Run:         sw.hook}
}

func (sw *switchover) stepRepoint(o *topology.Node) (plan.Step, error) {
	ci, err := pgctl.ReplicaConninfo(sw.candidate, o.Name)
	if err != nil {
		return plan.Step{}, err
	}
	slot := slotFor(o)
	wait := fmt.Sprintf("wait until it streams on the new timeline (timeout %s)", sw.t.Stream)
	if why := sw.behind[o.Name]; why != "" {
		wait = fmt.Sprintf("verify the setting is in effect; not waited for: %s", why)
	}
	return plan.Step{ID: StepRepoint + "-" + o.Name, Node: o.Name, Mutates: true, Timeout: sw.t.Stream, Budget: sw.budget(2 * time.Second),
		Description: fmt.Sprintf("%s: ALTER SYSTEM SET primary_conninfo = %s, primary_slot_name = %s; SELECT pg_reload_conf(); %s",
			o.Name, pgctl.QuoteLiteral(ci), pgctl.QuoteLiteral(slot), wait),
		Run: func(ctx context.Context) error { return sw.repoint(ctx, o.Name, ci, slot) }}, nil
}

func (sw *switchover) stepSync() plan.Step {
	c := sw.candidate.Name
	want, r := sw.syncTarget(true)
	var d strings.Builder
	if want.Num < sw.sync.Num && r != nil && r.Raise != "" {
		fmt.Fprintf(&d, "%s: %s is not counted on (%s): ", c, r.Node, sw.behind[r.Node])
	} else {
		fmt.Fprintf(&d, "%s: ", c)
	}
	if want.Enabled() {
		fmt.Fprintf(&d, "once %d of %s stream (timeout %s), ALTER SYSTEM SET synchronous_standby_names = %s; SELECT pg_reload_conf()",
			want.Num, strings.Join(want.Names, ", "), sw.t.Stream, pgctl.QuoteLiteral(want.String()))
	} else {
		fmt.Fprintf(&d, "no standby of %s to count on: synchronous_standby_names left as it is (%s)", strings.Join(want.Names, ", "), pgctl.QuoteLiteral(sw.candSync.StandbyNames))
	}
	if r != nil && r.Raise != "" {
		fmt.Fprintf(&d, "; noted in the record: once %s streams, `replctl rejoin %s` raises it to %s", r.Node, r.Node, pgctl.QuoteLiteral(r.Raise))
	}
	if sw.syncWithoutRejoin() != nil {
		low, _ := sw.syncTarget(false)
		if low.Enabled() {
			fmt.Fprintf(&d, "; if %s did not rejoin: the same for %s, noted in the record for its rejoin to raise", sw.primary.Name, pgctl.QuoteLiteral(low.String()))
		} else {
			fmt.Fprintf(&d, "; if %s did not rejoin: leave it as it is and note in the record that its rejoin restores the setting", sw.primary.Name)
		}
	}
	if want.Enabled() {
		fmt.Fprintf(&d, "; if fewer stream by then: as many as do (at least one), noted in the record for the missing one's rejoin to raise")
	}
	// The stream wait has sw.t.Stream; setting what streams then, its own
	// call.
	return plan.Step{ID: StepSync, Node: c, Mutates: true, Timeout: sw.t.Stream + sw.t.Call, Budget: sw.budget(2 * time.Second),
		Description: d.String(), Run: sw.applySync}
}

// syncWithoutRejoin is what the sync step sets instead when the old
// primary it names has not rejoined: the old primary's standbys without
// the candidate, as a switchover without rejoin sets them; nil when the
// plan does not name the old primary.
func (sw *switchover) syncWithoutRejoin() *topology.SyncStandbys {
	if !sw.rejoin || sw.sync == nil || !containsFold(sw.sync.Names, sw.primary.Name) {
		return nil
	}
	before, err := topology.ParseSyncStandbyNames(sw.syncOriginal)
	if err != nil {
		return nil
	}
	return adaptSync(before, sw.candidate.Name, sw.primary.Name, false)
}

// syncTarget is what the sync step sets, and what the cluster record says
// of it when that is fewer standbys than the old primary waited for
// (syncRestore). It starts from the plan's standbys, or from those of
// syncWithoutRejoin when the old primary did not rejoin, and counts only
// the replicas the plan waits for: one whose replay is paused or delayed
// (sw.behind) may not stream from the new primary for a long time, and
// commits would hang on it, so the number is lowered and the record says
// that its rejoin raises it back once it streams. A lowering for want of
// the old primary keeps its note: its rejoin raises everything back.
func (sw *switchover) syncTarget(rejoined bool) (*topology.SyncStandbys, *topology.SyncRestore) {
	if sw.sync == nil {
		return nil, nil
	}
	want, op := sw.sync, sw.opID()
	if low := sw.syncWithoutRejoin(); low != nil && !rejoined {
		want = low
	}
	able, missing := 0, ""
	for _, n := range want.Names {
		switch {
		case sw.behind[n] == "":
			able++
		case missing == "":
			missing = n
		}
	}
	r := sw.syncRestoreOf(want, op)
	// "*" stands for any number of standbys: none is left out by name.
	if able >= want.Num || slices.Contains(want.Names, "*") {
		return want, r
	}
	lowered := *want
	lowered.Num = able
	if r == nil {
		r = sw.missingRestore(missing, want, fmt.Sprintf("%s could not stream from %s (%s)", missing, sw.candidate.Name, sw.behind[missing]))
	}
	r.Set = sw.candSync.StandbyNames
	if lowered.Enabled() {
		r.Set = lowered.String()
	}
	return &lowered, r
}

// RejoinAdvice tells the operator how to bring a fenced former primary back.
func RejoinAdvice(cfg *config.Config, old, primary string, asked bool) string {
	n, _ := cfg.Node(old)
	why := "it has no commands.rejoin"
	switch {
	case asked:
		why = "--no-rejoin was given"
	case n.Commands.Rejoin != "":
		return fmt.Sprintf("%s stays fenced until it rejoins: once it is repaired, run `replctl rejoin %s` to make it a replica of %s", old, old, primary)
	}
	return fmt.Sprintf("%s stays fenced (%s). To make it a replica of %s: run `replctl rejoin %s` (needs commands.rejoin), or by hand on its host: stop it, "+
		"pg_rewind --target-pgdata=$PGDATA --source-server='<%s conninfo>', touch $PGDATA/standby.signal, set primary_conninfo to %s and primary_slot_name = '%s', start it",
		old, why, primary, old, primary, primary, old)
}

// slotFor is the slot a replica uses: its primary_slot_name, else its name.
func slotFor(n *topology.Node) string {
	if s := n.Settings.PrimarySlotName; s != nil && *s != "" {
		return *s
	}
	return n.Name
}

// adaptSync carries the old primary's synchronous standbys over to the new
// primary: the candidate cannot wait for itself, and the old primary, when it
// rejoins, takes the candidate's place.
func adaptSync(s topology.SyncStandbys, candidate, old string, rejoin bool) *topology.SyncStandbys {
	out := topology.SyncStandbys{Method: s.Method, Num: s.Num}
	hadCandidate := false
	for _, n := range s.Names {
		if strings.EqualFold(n, candidate) {
			hadCandidate = true
			continue
		}
		out.Names = append(out.Names, n)
	}
	if rejoin && (hadCandidate || len(out.Names) < s.Num) && !containsFold(out.Names, old) {
		out.Names = append(out.Names, old)
	}
	if out.Num > len(out.Names) {
		out.Num = len(out.Names)
	}
	return &out
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

func quoteOrEmpty(s *string) string {
	if s == nil {
		return "unknown"
	}
	return pgctl.QuoteLiteral(*s)
}

func orUnknown(s *string) string {
	if s == nil {
		return "unknown"
	}
	return *s
}

func (sw *switchover) acquire(ctx context.Context) error {
	if sw.env.Acquire == nil {
		return errors.New("no lock acquisition configured")
	}
	return sw.env.Acquire(ctx)
}

func (sw *switchover) saveSettings(ctx context.Context) error {
	return SaveSyncSettings(ctx, sw.env.Lock, sw.pn)
}

func (sw *switchover) catchup(ctx context.Context) error {
	return pgctl.PollUntil(ctx, sw.env.Clock, 20*time.Millisecond, func(ctx context.Context) (bool, error) {
		cur, err := sw.env.Ctl.CurrentLSN(ctx, sw.primary.Name)
		if err != nil {
			return false, err
		}
		_, replay, err := sw.env.Ctl.ReceiveReplay(ctx, sw.candidate.Name)
		if err != nil {
			return false, err
		}
		left := topology.LagBytes(cur, replay)
		sw.env.progress(StepCatchup, "%s left to replay", config.HumanBytes(left))
		return left <= nearlyCaughtUp, nil
	}, fmt.Sprintf("%s did not catch up with %s within %s", sw.candidate.Name, sw.primary.Name, sw.t.Catchup))
}

func (sw *switchover) createSlots(ctx context.Context) error {
	if err := captureSlots(ctx, sw.slots, sw.cn); err != nil {
		return err
	}
	created, err := sw.env.Ctl.CreateSlots(ctx, sw.candidate.Name, sw.slots)
	plan.Changed(ctx)
	// A partial failure still created some: the undo drops exactly those.
	sw.created = append(sw.created, created...)
	return err
}

func (sw *switchover) dropSlots(ctx context.Context) error {
	if len(sw.created) == 0 {
		return nil
	}
	if err := sw.env.Ctl.DropSlots(ctx, sw.candidate.Name, sw.created); err != nil {
		return err
	}
	sw.created = nil
	return nil
}

func (sw *switchover) fenceStop(ctx context.Context) error {
	lsn, err := sw.env.Ctl.CurrentLSN(ctx, sw.primary.Name)
	if err != nil {
		return err
	}
	sw.preStopLSN = lsn
	sw.releaseHung(ctx)
	w, werr := sw.env.Ctl.WatchShutdown(ctx, sw.primary.Name)
	if werr != nil {
		sw.env.progress(StepFence, "no replication stream from %s (%v): waiting for commands.stop to finish", sw.primary.Name, werr)
	}
	sw.watch = w
	// The command outlives the step when the stream's end comes first; it
	// has its own timeout (command_timeout).
	sw.stop = runBackground(context.WithoutCancel(ctx), func(ctx context.Context) error {
		_, err := sw.env.Ctl.RunCommand(ctx, sw.primary.Name, pgctl.ActionStop, nil)
		return err
	})
	plan.Changed(ctx)
	var watchDone <-chan struct{}
	if w != nil {
		watchDone = w.Done()
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sw.stop.done:
			if sw.stop.err != nil {
				return sw.stop.err
			}
			if w != nil {
				select {
				case <-w.Done():
					if end, err := w.End(); err == nil {
						sw.shutdownEnd = end
					}
				default:
				}
			}
			return nil
		case <-watchDone:
			end, err := w.End()
			if err != nil {
				sw.env.progress(StepFence, "the replication stream from %s ended without its shutdown (%v): waiting for commands.stop to finish", sw.primary.Name, err)
				watchDone = nil
				continue
			}
			sw.shutdownEnd = end
			sw.env.progress(StepFence, "%s wrote its shutdown checkpoint: its WAL ends at %s", sw.primary.Name, end)
			return nil
		}
	}
}

// background is a function running on in its own goroutine.
type background struct {
	done chan struct{}
	err  error
}

func runBackground(ctx context.Context, fn func(context.Context) error) *background {
	b := &background{done: make(chan struct{})}
	go func() {
		defer close(b.done)
		b.err = fn(ctx)
	}()
	return b
}

// wait returns fn's error once it has returned, or ctx's.
func (b *background) wait(ctx context.Context) error {
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitStopped waits for the stop fence's command, which the promotion did
// not wait for once the old primary's WAL was known to end.
func (sw *switchover) waitStopped(ctx context.Context) error {
	if sw.stop == nil {
		return nil
	}
	defer sw.closeWatch()
	if err := sw.stop.wait(ctx); err != nil {
		return fmt.Errorf("%s wrote its shutdown checkpoint and accepts no writes, but commands.stop failed: %w; make sure it is down before anything starts it", sw.primary.Name, err)
	}
	return nil
}

func (sw *switchover) closeWatch() {
	if sw.watch != nil {
		sw.watch.Close()
	}
}

// releaseHung terminates, on the old primary, the walsender of every other
// replica that does not answer within hungProbe: a clean shutdown waits
// until every connected standby has flushed the last WAL, and a hung one
// would hold the fence (and the write outage) for wal_sender_timeout. The
// candidate is not among them: it answered the catch-up wait.
func (sw *switchover) releaseHung(ctx context.Context) {
	slots := map[string]string{}
	for _, o := range sw.others {
		slots[o.Name] = slotFor(o)
	}
	for _, name := range sw.silent {
		slots[name] = name // replctl names the slots it makes after the node
	}
	var wg sync.WaitGroup
	for name, slot := range slots {
		wg.Go(func() {
			// A node silent when planned is not asked again: a second of
			// probing would only delay the fence.
			if !slices.Contains(sw.silent, name) {
				c, cancel := context.WithTimeout(ctx, hungProbe)
				defer cancel()
				if _, err := sw.env.Ctl.Setting(c, name, "server_version"); err == nil || ctx.Err() != nil {
					return
				}
			}
			n, err := sw.env.Ctl.TerminateWALSenders(ctx, sw.primary.Name, slot, name)
			if err == nil && n > 0 {
				sw.env.progress(StepFence, "%s does not answer: terminated its walsender on %s so the shutdown does not wait for it", name, sw.primary.Name)
			}
		})
	}
	wg.Wait()
}

func (sw *switchover) unfenceStop(ctx context.Context) error {
	if sw.promoteSent {
		return fmt.Errorf("not restarting %s: %s may have been promoted; check both before starting it", sw.primary.Name, sw.candidate.Name)
	}
	// A server still shutting down cannot be started. The wait may be
	// long: the lock is checked again after it.
	if sw.stop != nil {
		sw.closeWatch()
		select {
		case <-sw.stop.done:
		default:
			if err := sw.stop.wait(ctx); err != nil && ctx.Err() != nil {
				return err
			}
			if err := sw.env.Check(ctx, sw.budget(sw.t.Command)); err != nil {
				return err
			}
		}
	}
	_, err := sw.env.Ctl.RunCommand(ctx, sw.primary.Name, pgctl.ActionStart, nil)
	return err
}

func (sw *switchover) finalFromCandidate(ctx context.Context) error {
	if sw.shutdownEnd != 0 {
		return sw.receiveEnd(ctx)
	}
	recv, _, err := sw.env.Ctl.ReceiveReplay(ctx, sw.candidate.Name)
	if err != nil {
		return err
	}
	if recv < sw.preStopLSN {
		return fmt.Errorf("%s received only up to %s but %s had written up to %s before it stopped: it was not connected at shutdown",
			sw.candidate.Name, recv, sw.primary.Name, sw.preStopLSN)
	}
	// A candidate whose receiver dropped during the shutdown may lack the
	// shutdown checkpoint another replica got: promoting it would leave that
	// replica ahead of the new timeline's fork. Unreachable replicas are the
	// repoint step's problem, not a reason to abort.
	for _, o := range sw.others {
		orecv, _, err := sw.env.Ctl.ReceiveReplay(ctx, o.Name)
		if err == nil && orecv > recv {
			return fmt.Errorf("%s received up to %s, more than %s (%s): not promoting a candidate that is behind another replica",
				o.Name, orecv, sw.candidate.Name, recv)
		}
	}
	sw.finalLSN = recv
	return nil
}

// receiveEnd waits until the candidate has received the old primary's WAL
// up to its end. Its walsender there waits for that too, and the shutdown
// for the walsender: once commands.stop has finished, a candidate that has
// less was not connected and never gets the rest.
func (sw *switchover) receiveEnd(ctx context.Context) error {
	end := sw.shutdownEnd
	return pgctl.PollUntil(ctx, sw.env.Clock, time.Millisecond, func(ctx context.Context) (bool, error) {
		stopped := false
		select {
		case <-sw.stop.done:
			stopped = true
		default:
		}
		recv, _, err := sw.env.Ctl.ReceiveReplay(ctx, sw.candidate.Name)
		if err != nil {
			// As without the stream: a candidate that does not answer now,
			// with writes down, is not waited for.
			return false, pgctl.Fatal(err)
		}
		if recv >= end {
			sw.finalLSN = end
			return true, nil
		}
		if stopped {
			return false, pgctl.Fatal(fmt.Errorf("%s received only up to %s but %s's WAL ends at %s: it was not connected at shutdown",
				sw.candidate.Name, recv, sw.primary.Name, end))
		}
		sw.env.progress(StepFinalLSN, "%s left to receive", config.HumanBytes(topology.LagBytes(end, recv)))
		return false, nil
	}, fmt.Sprintf("%s did not receive %s's WAL up to its end (%s)", sw.candidate.Name, sw.primary.Name, end))
}

// sqlFenceSettings are the settings the SQL fence changes.
var sqlFenceSettings = []string{"default_transaction_read_only", "synchronous_standby_names"}

func (sw *switchover) fenceSQL(ctx context.Context) error {
	if sw.fenceCapture == nil {
		c, err := sw.env.Ctl.CaptureSettings(ctx, sw.primary.Name, sqlFenceSettings...)
		if err != nil {
			return err
		}
		sw.fenceCapture = c
	}
	if err := captureSettings(ctx, sw.fenceCapture); err != nil {
		return err
	}
	err := sw.env.Ctl.FenceSQL(ctx, sw.primary.Name)
	plan.Changed(ctx)
	return err
}

func (sw *switchover) unfenceSQL(ctx context.Context) error {
	if sw.promoteSent {
		return fmt.Errorf("not lifting the fence on %s: %s may have been promoted; check both first", sw.primary.Name, sw.candidate.Name)
	}
	if sw.fenceCapture == nil {
		return nil // captured nothing, so changed nothing
	}
	return sw.env.Ctl.RestoreSettings(ctx, sw.primary.Name, sw.fenceCapture)
}

func (sw *switchover) finalFromPrimary(ctx context.Context) error {
	lsn, err := sw.env.Ctl.FinalLSN(ctx, sw.primary.Name)
	sw.finalLSN = lsn
	return err
}

// replicationSettings are what a repoint changes on a replica.
var replicationSettings = []string{"primary_conninfo", "primary_slot_name"}

// detach points a replica at the candidate and waits until its WAL
// receiver no longer streams from the old primary. PostgreSQL restarts the
// receiver on a new primary_conninfo only when the startup process next
// waits for WAL: a replica whose replay is paused or delayed would keep
// receiving from the fenced primary, so its walsender there is terminated;
// its receiver then stays down until replay needs WAL again, and starts
// with the new setting.
func (sw *switchover) detach(ctx context.Context, node, conninfo, slot string) error {
	if sw.detached[node] == nil {
		c, err := sw.env.Ctl.CaptureSettings(ctx, node, replicationSettings...)
		if err != nil {
			return err
		}
		sw.detached[node] = c
	}
	if err := captureSettings(ctx, sw.detached[node]); err != nil {
		return err
	}
	host, port, err := hostPort(sw.candidate)
	if err != nil {
		return err
	}
	if err := sw.env.Ctl.Repoint(ctx, node, conninfo, slot); err != nil {
		return err
	}
	plan.Changed(ctx)
	if err := sw.waitSetting(ctx, node, "primary_conninfo", conninfo); err != nil {
		return err
	}
	clock := pgctl.ClockOr(sw.env.Clock)
	start, terminated := clock.Now(), time.Time{}
	return pgctl.PollUntil(ctx, sw.env.Clock, time.Millisecond, func(ctx context.Context) (bool, error) {
		pid, h, p, err := sw.env.Ctl.ReceiverUpstream(ctx, node)
		if err != nil {
			return false, err
		}
		if pid == 0 || h == host && p == port {
			return true, nil
		}
		// Still on the old primary: give the startup process a moment to
		// restart it by itself, then cut the stream from the other side.
		if now := clock.Now(); now.Sub(start) > detachGrace && now.Sub(terminated) > detachGrace {
			terminated = now
			if _, err := sw.env.Ctl.TerminateWALSenders(ctx, sw.primary.Name, slot, node); err != nil {
				return false, err
			}
		}
		return false, nil
	}, fmt.Sprintf("%s's WAL receiver still streams from %s within %s after its primary_conninfo changed", node, sw.primary.Name, sw.t.Stream))
}

// detachGrace is how long detach lets a replica restart its WAL receiver
// by itself before terminating the walsender that feeds it.
const detachGrace = 100 * time.Millisecond

// reattach restores the replica's own settings, as captured, and cuts its
// stream from the candidate so that it follows the old primary again and
// the candidate's slot for it is free to drop.
func (sw *switchover) reattach(ctx context.Context, node, slot string) error {
	if sw.promoteSent {
		return fmt.Errorf("leaving %s to follow %s: it may have been promoted", node, sw.candidate.Name)
	}
	c := sw.detached[node]
	if c == nil {
		return nil
	}
	if err := sw.env.Ctl.RestoreSettings(ctx, node, c); err != nil {
		return err
	}
	host, port, err := hostPort(sw.candidate)
	if err != nil {
		return err
	}
	return pgctl.PollUntil(ctx, sw.env.Clock, 20*time.Millisecond, func(ctx context.Context) (bool, error) {
		pid, h, p, err := sw.env.Ctl.ReceiverUpstream(ctx, node)
		if err != nil || pid != 0 && h == host && p == port {
			if err == nil {
				_, err = sw.env.Ctl.TerminateWALSenders(ctx, sw.candidate.Name, slot, node)
			}
			return false, err
		}
		return true, nil
	}, fmt.Sprintf("%s still streams from %s after its settings were restored", node, sw.candidate.Name))
}

// waitSetting waits until node's own session sees name = want: the reload
// has reached the node.
func (sw *switchover) waitSetting(ctx context.Context, node, name, want string) error {
	return pgctl.PollUntil(ctx, sw.env.Clock, time.Millisecond, func(ctx context.Context) (bool, error) {
		v, err := sw.env.Ctl.Setting(ctx, node, name)
		return v == want, err
	}, fmt.Sprintf("%s: %s did not take the new value after pg_reload_conf() (is its postgresql.conf valid?)", node, name))
}

// hostPort is where a replica's receiver connects for node, as
// pg_stat_wal_receiver reports it.
func hostPort(n config.Node) (string, int, error) {
	pc, err := pgconn.ParseConfig(n.DSN)
	if err != nil {
		return "", 0, config.ScrubError(err, n.Name+": dsn", n.DSN)
	}
	return pc.Host, int(pc.Port), nil
}

// replayStall is how long the candidate's replay may stand still, with the
// WAL it needs received, before waitReplay wakes its startup process.
const replayStall = 20 * time.Millisecond

// tailSettle is how long an emergency candidate's replay must stand still,
// after a nudge, before the WAL it received and cannot replay counts as an
// incomplete last record.
const tailSettle = 500 * time.Millisecond

func (sw *switchover) waitReplay(ctx context.Context) error {
	var last topology.LSN
	clock := pgctl.ClockOr(sw.env.Clock)
	moved, nudged := clock.Now(), time.Time{}
	return pgctl.PollUntil(ctx, sw.env.Clock, 2*time.Millisecond, func(ctx context.Context) (bool, error) {
		recv, replay, err := sw.env.Ctl.ReceiveReplay(ctx, sw.candidate.Name)
		if err != nil {
			return false, err
		}
		if replay >= sw.finalLSN {
			return true, nil
		}
		now := clock.Now()
		if replay != last {
			last, moved = replay, now
		}
		// A dead primary's stream can stop inside a record: its
		// walsender sends what is flushed, and WAL is flushed by pages.
		// The startup process then waits for the rest of that record
		// forever. Once replay has stood still for tailSettle after the
		// nudge below, with nothing more arriving, what is left is that
		// incomplete record: promotion replays every complete record
		// first and discards it. It was never acknowledged to a
		// synchronous client, whose commit needs its record complete on
		// the standby.
		if sw.streamEnded && recv <= sw.finalLSN && !nudged.IsZero() && nudged.After(moved) && now.Sub(moved) > tailSettle {
			sw.env.progress(StepReplayAll, "%s: replay stopped %s short of the end of the received WAL (%s): an incomplete last record of the lost stream, which the promotion discards",
				sw.candidate.Name, config.HumanBytes(topology.LagBytes(sw.finalLSN, replay)), sw.finalLSN)
			return true, nil
		}
		// When its upstream goes away (the stop fence, a dead primary)
		// before the startup process has replayed all it received, it
		// takes the lost stream for a failure and, if the previous one was
		// less than wal_retrieve_retry_interval ago (5 s by default),
		// sleeps out that interval before reading from pg_wal the WAL it
		// already has: write outage for nothing. The SIGHUP of a reload
		// wakes it; otherwise a reload changes nothing.
		if recv >= sw.finalLSN && now.Sub(moved) > replayStall && now.Sub(nudged) > replayStall {
			nudged = now
			if err := sw.env.Ctl.Reload(ctx, sw.candidate.Name); err != nil {
				return false, err
			}
		}
		sw.env.progress(StepWaitReplay, "%s left to replay", config.HumanBytes(topology.LagBytes(sw.finalLSN, replay)))
		return false, nil
	}, fmt.Sprintf("%s did not replay up to %s within %s", sw.candidate.Name, sw.finalLSN, sw.t.Catchup))
}

func (sw *switchover) promote(ctx context.Context) error {
	err := sw.env.Ctl.Promote(ctx, sw.candidate.Name)
	plan.Changed(ctx)
	// Unless pg_promote() certainly never reached the candidate, it may be
	// promoted yet: the undo must then leave the old primary fenced.
	sw.promoteSent = !errors.Is(err, pgctl.ErrPromoteNotSent)
	return err
}

func (sw *switchover) verify(ctx context.Context) error {
	tl, lsn, err := sw.env.Ctl.Writable(ctx, sw.candidate.Name)
	if err != nil {
		return err
	}
	sw.newTimeline, sw.newLSN = tl, lsn
	return nil
}

// missingRestore is the record's note of a lowering for want of the
// standby missing, which its rejoin raises back to want; its Set is the
// caller's.
func (sw *switchover) missingRestore(missing string, want *topology.SyncStandbys, why string) *topology.SyncRestore {
	return &topology.SyncRestore{Node: missing, Primary: sw.candidate.Name, Before: sw.syncOriginal, Raise: want.String(), Why: why, OperationID: sw.opID()}
}

// opID is the running operation's history ID, "" without history.
func (sw *switchover) opID() string {
	if sw.env == nil || sw.env.OperationID == nil {
		return ""
	}
	return sw.env.OperationID()
}

func (sw *switchover) record(ctx context.Context) error {
	op := sw.opID()
	_, _, err := sw.env.Lock.UpdateState(ctx, func(s *etcdlock.State) error {
		s.Primary = sw.candidate.Name
		s.Timeline = sw.newTimeline
		s.MaxTimeline = max(s.MaxTimeline, sw.newTimeline)
		s.LSN = sw.newLSN
		// The record's settings must be the primary's that is now in
		// charge: an emergency failover proves its quorum with them, and
		// the old primary's name different standbys.
		s.Sync = sw.candSync
		s.Sync.SeenAt = time.Now()
		_, s.SyncRestore = sw.syncTarget(true)
		s.Fence(sw.primary.Name, "former primary, replaced by "+sw.candidate.Name)
		return nil
	})
	if err != nil {
		return err
	}
	return sw.env.Ctl.RecordToken(ctx, sw.candidate.Name, sw.env.Lock.Token(), op)
}

// syncRestoreOf is what the record says about synchronous replication
// that this operation lowered by setting set: nil unless set waits for
// fewer standbys than the old primary's setting did (an emergency failover
// or a switchover without rejoin could not put the old primary in the
// candidate's place), so that the old primary's rejoin raises it back. A
// promotion that lowers nothing clears an earlier one's: that was about
// another primary.
func (sw *switchover) syncRestoreOf(set *topology.SyncStandbys, op string) *topology.SyncRestore {
	if set == nil {
		return nil
	}
	before, err := topology.ParseSyncStandbyNames(sw.syncOriginal)
	if err != nil || !before.Enabled() || set.Enabled() && set.Num >= before.Num {
		return nil
	}
	// Without a name left nothing is set: the candidate keeps its own.
	names := sw.candSync.StandbyNames
	if len(set.Names) > 0 {
		names = set.String()
	}
	return &topology.SyncRestore{Node: sw.primary.Name, Primary: sw.candidate.Name, Set: names, Before: sw.syncOriginal, OperationID: op}
}

func (sw *switchover) hook(ctx context.Context) error {
	_, err := sw.env.Ctl.RunHook(ctx, HookPostPromote, sw.cfg.Hooks.PostPromote, sw.candidate.Name, nil)
	return err
}

// Hook names, the keys of the hooks section.
const (
	HookPreFence    = "pre_fence"
	HookPostPromote = "post_promote"
)

// stepPreFence runs hooks.pre_fence right before the fence, so that no new
// client reaches the old primary while it goes down: with the stop fence,
// every connection attempt to a server shutting down forks a backend only
// to refuse it, on the CPUs the shutdown needs, and a pooler told to pause
// holds its clients' queries instead of failing them. Clients already
// connected go on writing until the fence itself. Its undo, for a
// switchover undone before the promotion (the failed hook's own run
// included), sends clients to the old primary again; like every undo it
// needs the lock.
func (sw *switchover) stepPreFence() plan.Step {
	old, c := sw.primary.Name, sw.candidate.Name
	return plan.Step{ID: StepPreFence, Node: old, Mutates: true, Timeout: sw.t.Command, Budget: sw.budget(5 * time.Second),
		Description:     fmt.Sprintf("%s: send no new clients to %s", preFenceCall(sw.cfg, old, c, false), old),
		UndoDescription: fmt.Sprintf("%s: send clients to %s again", preFenceCall(sw.cfg, old, c, true), old),
		Run:             preFenceHook(sw.env, sw.cfg, old, c, false),
		Undo:            preFenceHook(sw.env, sw.cfg, old, c, true)}
}

// preFenceCall says how preFenceHook runs the hook, for descriptions.
func preFenceCall(cfg *config.Config, old, c string, undo bool) string {
	s := fmt.Sprintf("run hooks.pre_fence (%s) with REPLCTL_NODE=%s REPLCTL_CANDIDATE=%s", cfg.Hooks.PreFence, old, c)
	if undo {
		s += " REPLCTL_UNDO=1"
	}
	return s
}

// preFenceHook runs hooks.pre_fence for the old primary old and the
// candidate c: to hold clients back from old or, with undo, to send them to
// it again (REPLCTL_UNDO=1).
func preFenceHook(env *Env, cfg *config.Config, old, c string, undo bool) func(context.Context) error {
	vars := map[string]string{"REPLCTL_CANDIDATE": c}
	if undo {
		vars["REPLCTL_UNDO"] = "1"
	}
	return func(ctx context.Context) error {
		_, err := env.Ctl.RunHook(ctx, HookPreFence, cfg.Hooks.PreFence, old, vars)
		return err
	}
}

// repoint points a replica at the new primary and verifies the setting
// reached it. A replica that will not stream at once (paused, delayed, not
// streaming: see whyBehind, looked at again now) is not waited for.
func (sw *switchover) repoint(ctx context.Context, node, conninfo, slot string) error {
	if err := sw.env.Ctl.Repoint(ctx, node, conninfo, slot); err != nil {
		return err
	}
	plan.Changed(ctx)
	if err := sw.waitSetting(ctx, node, "primary_conninfo", conninfo); err != nil {
		return err
	}
	why := sw.behind[node]
	if why == "" {
		if paused, err := sw.env.Ctl.ReplayPaused(ctx, node); err == nil && paused {
			why = "replay is paused"
		}
	}
	if why != "" {
		sw.env.progress(StepRepoint, "%s: %s: it follows %s once it next waits for WAL", node, why, sw.candidate.Name)
		return nil
	}
	if err := sw.env.Ctl.WaitStreaming(ctx, node, sw.newTimeline); err != nil {
		return fmt.Errorf("%s does not stream from %s on timeline %d: %w", node, sw.candidate.Name, sw.newTimeline, err)
	}
	return nil
}

func (sw *switchover) rejoinOld(ctx context.Context, conninfo string) error {
	r := &rejoin{env: sw.env, primary: sw.candidate.Name, node: sw.primary.Name, conninfo: conninfo, timeline: sw.newTimeline, stream: sw.t.Stream}
	if err := r.run(ctx); err != nil {
		return err
	}
	// The slots it kept for its own replicas would retain WAL forever.
	var old []string
	for _, o := range sw.others {
		old = append(old, slotFor(o))
	}
	old = append(old, sw.candidate.Name)
	if err := sw.env.Ctl.DropSlots(ctx, sw.primary.Name, old); err != nil {
		return err
	}
	_, _, err := sw.env.Lock.UpdateState(ctx, func(s *etcdlock.State) error {
		s.Unfence(sw.primary.Name)
		return nil
	})
	sw.rejoined = err == nil
	return err
}

// applySync sets the synchronous standbys of syncTarget once enough of
// them stream, and records them with the note of a lowering. When the old
// primary was to take the candidate's place among them but its rejoin
// failed, waiting for it would only time out and leave the new primary
// asynchronous: the others are set instead, as without a rejoin. When
// fewer than counted on stream within the stream timeout, it sets as many
// as stream (at least one, else it leaves the setting as it is), notes it
// for the missing one's rejoin to raise, and fails: something the plan
// did not foresee needs looking at.
func (sw *switchover) applySync(ctx context.Context) error {
	c := sw.candidate.Name
	want, restore := sw.syncTarget(sw.rejoined)
	if !sw.rejoined && sw.syncWithoutRejoin() != nil {
		sw.env.progress(StepSync, "%s did not rejoin: %s without it; `replctl rejoin %s` puts it back", sw.primary.Name, syncDesc(want), sw.primary.Name)
	}
	if !want.Enabled() {
		_, _, err := sw.env.Lock.UpdateState(ctx, func(s *etcdlock.State) error {
			s.SyncRestore = restore
			return nil
		})
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, sw.t.Stream)
	err := streamingIn(wctx, sw.env, c, want.Names, want.Num,
		fmt.Sprintf("fewer than %d of %s stream from %s within %s", want.Num, strings.Join(want.Names, ", "), c, sw.t.Stream))
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		got, gerr := sw.env.Ctl.StreamingStandbys(ctx, c, want.Names)
		switch {
		case gerr != nil || len(got) == 0:
			return fmt.Errorf("%w: synchronous_standby_names left as it is rather than let commits hang", err)
		case len(got) >= want.Num:
			// Enough came up right after the wait gave up.
			return sw.setSyncAndRecord(ctx, want, restore)
		}
		missing := ""
		for _, n := range want.Names {
			if n != "*" && !containsFold(got, n) {
				missing = n
				break
			}
		}
		lowered := *want
		lowered.Num = len(got)
		if missing == "" {
			// Under "*" no name is missing, only a number: nothing for a
			// rejoin to raise.
			err = fmt.Errorf("%w: synchronous_standby_names set to %s rather than let commits hang; raise it by hand once more standbys stream",
				err, pgctl.QuoteLiteral(lowered.String()))
			if restore != nil {
				restore.Set = lowered.String()
			}
		} else {
			if restore == nil {
				restore = sw.missingRestore(missing, want, fmt.Sprintf("%s did not stream from %s within %s", missing, c, sw.t.Stream))
			}
			restore.Set = lowered.String()
			err = fmt.Errorf("%w: synchronous_standby_names set to %s rather than let commits hang on %s; once it streams, `replctl rejoin %s` raises it back",
				err, pgctl.QuoteLiteral(lowered.String()), missing, restore.Node)
		}
		if serr := sw.setSyncAndRecord(ctx, &lowered, restore); serr != nil {
			return serr
		}
		return err
	}
	return sw.setSyncAndRecord(ctx, want, restore)
}

// setSyncAndRecord sets the new primary's synchronous_standby_names to
// want and records it with the note of a lowering (nil for none).
func (sw *switchover) setSyncAndRecord(ctx context.Context, want *topology.SyncStandbys, restore *topology.SyncRestore) error {
	set := want.String()
	return setSync(ctx, sw.env, sw.candidate.Name, set, func(s *etcdlock.State) {
		s.Sync = etcdlock.SyncSettings{StandbyNames: set, Commit: sw.candSync.Commit}
		s.SyncRestore = restore
	})
}

// syncDesc says what the sync step does with want.
func syncDesc(want *topology.SyncStandbys) string {
	if !want.Enabled() {
		return "no standby to count on, synchronous_standby_names left as it is"
	}
	return "setting " + pgctl.QuoteLiteral(want.String())
}

// SaveSyncSettings records the primary's synchronous replication settings in
// the cluster record, as seen by an operation holding the lock. Emergency
// failover's quorum proof relies on them (a replica's own setting says
// nothing about its primary's), so every operation that takes the lock
// while a primary answers saves them. It also records the primary when the
// record names none yet.
func SaveSyncSettings(ctx context.Context, l Recorder, primary *topology.Node) error {
	if primary == nil || !primary.Reachable {
		return nil
	}
	sync := syncSettingsOf(primary)
	sync.SeenAt = time.Now()
	if err := plan.Captured(ctx, sync); err != nil {
		return err
	}
	if primary.SyncFenced() {
		// The SQL fence's own setting (an interrupted switchover left it)
		// is not the cluster's: saving it would make the next operation
		// carry "wait for replctl_fenced" over to the new primary.
		return fmt.Errorf("%s runs under the SQL fence (synchronous_standby_names = %s): not saving that as its setting; run `replctl recover` or lift the fence by hand", primary.Name, topology.FenceStandbyName)
	}
	_, _, err := l.UpdateState(ctx, func(s *etcdlock.State) error {
		if s.Primary == "" {
			s.Primary = primary.Name
		}
		if primary.Timeline != nil {
			s.MaxTimeline = max(s.MaxTimeline, *primary.Timeline)
		}
		s.Sync = sync
		return nil
	})
	return err
}
