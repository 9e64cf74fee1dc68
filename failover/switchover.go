package failover

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/replctl/replctl/config"
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
	StepVerify      = "verify"
	StepRecordState = "record"
	StepHook        = "post-promote-hook"
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
	UpdateState(ctx context.Context, fn func(*State) error) (*State, int64, error)
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
	// StreamTimeout bounds the wait for a repointed replica to stream.
	StreamTimeout time.Duration
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
	NoRejoin       bool
	RequireStop    bool
}

// switchover carries what one step learns for the next.
type switchover struct {
	env       *Env
	cfg       *config.Config
	pn        *topology.Node // the primary as observed
	primary   config.Node
	candidate config.Node
	others    []*topology.Node
	fence     string
	opts      SwitchoverOptions

	preStopLSN   topology.LSN
	finalLSN     topology.LSN
	sqlUndo      *SQLFenceUndo
	slots        []string
	created      []string
	promoteSent  bool
	newTimeline  uint32
	newLSN       topology.LSN
	rejoin       bool
	sync         *topology.SyncStandbys
	syncOriginal string
	// candSync is the candidate's own synchronous replication settings: what
	// it runs with once promoted, until the sync step replaces them.
	candSync SyncSettings
}

// syncSettingsOf is a node's synchronous replication settings as probed;
// unknown ones stay empty, which ProveSync reads as "not recorded".
func syncSettingsOf(n *topology.Node) SyncSettings {
	var s SyncSettings
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

// BuildSwitchoverPlan builds the planned switchover of snap's primary to
// opts.Candidate. It is a pure function of the snapshot, the configuration
// and the options: the steps run only when executed with a non-nil env.
// Preflight checks are the caller's (checks.SwitchoverPreflight); this only
// refuses what it cannot plan.
func BuildSwitchoverPlan(cfg *config.Config, snap *topology.Snapshot, opts SwitchoverOptions, env *Env) (*Plan, error) {
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
	sw := &switchover{env: env, cfg: cfg, primary: primary, candidate: candidate, opts: opts, fence: FenceSQL,
		candSync: syncSettingsOf(snap.Node(candidate.Name))}
	if primary.Commands.Stop != "" {
		sw.fence = FenceStop
	}
	for _, n := range snap.Nodes {
		if n.Member() && n.Role == topology.RoleReplica && string(n.Upstream) == primary.Name && n.Name != candidate.Name {
			sw.others = append(sw.others, n)
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
	budget := func(d time.Duration) time.Duration { return min(d, ttl/2) }
	p := &Plan{Kind: "switchover", Candidate: candidate.Name, Primary: primary.Name, Fence: sw.fence}
	add := func(s Step) { p.Steps = append(p.Steps, s) }

	add(Step{ID: StepLock, Description: fmt.Sprintf("take the cluster lock (%s/%s/lock, ttl %s), re-read the topology under it and re-run the preflight",
		cfg.Etcd.Prefix, cfg.Cluster, ttl), Run: sw.acquire})
	add(Step{ID: StepSaveConfig, Node: primary.Name, Mutates: true, Budget: budget(time.Second),
		Description: fmt.Sprintf("etcd: save %s's synchronous_standby_names (%s) and synchronous_commit (%s) in the cluster record",
			primary.Name, quoteOrEmpty(pn.Settings.SynchronousStandbyNames), orUnknown(pn.Settings.SynchronousCommit)),
		Run: sw.saveSettings})
	add(Step{ID: StepCatchup, Node: candidate.Name,
		Description: fmt.Sprintf("%s: wait until replay is within %s of %s (timeout %s)", candidate.Name, config.HumanBytes(nearlyCaughtUp), primary.Name, opts.CatchupTimeout),
		Run:         sw.catchup})
	if len(sw.slots) > 0 {
		add(Step{ID: StepCreateSlots, Node: candidate.Name, Mutates: true, Budget: budget(2 * time.Second),
			Description:     fmt.Sprintf("%s: create physical replication slots %s for the replicas that will follow it", candidate.Name, strings.Join(sw.slots, ", ")),
			UndoDescription: fmt.Sprintf("%s: drop the replication slots this operation created", candidate.Name),
			Run:             sw.createSlots, Undo: sw.dropSlots})
	}
	if sw.fence == FenceStop {
		add(Step{ID: StepCheckpoint, Node: primary.Name, Mutates: true, Budget: budget(5 * time.Second),
			Description: fmt.Sprintf("%s: CHECKPOINT while it still serves, so the shutdown checkpoint is quick", primary.Name),
			Run:         func(ctx context.Context) error { return sw.env.Ctl.Checkpoint(ctx, primary.Name) }})
		undo := fmt.Sprintf("%s: no start command: start it by hand", primary.Name)
		var undoFn func(context.Context) error
		if primary.Commands.Start != "" {
			undo = fmt.Sprintf("%s: start it again as primary: %s", primary.Name, primary.Commands.Start)
			undoFn = sw.unfenceStop
		}
		add(Step{ID: StepFence, Node: primary.Name, Mutates: true, Budget: budget(5 * time.Second),
			Description: fmt.Sprintf("%s: stop fence: stop it cleanly with commands.stop (%s); a clean shutdown waits for connected standbys to flush its last WAL",
				primary.Name, primary.Commands.Stop),
			UndoDescription: undo, Run: sw.fenceStop, Undo: undoFn})
		add(Step{ID: StepFinalLSN, Node: candidate.Name,
			Description: fmt.Sprintf("%s: read %s's final WAL position as received (after a clean shutdown it is final)", candidate.Name, primary.Name),
			Run:         sw.finalFromCandidate})
	} else {
		// The SQL-fenced primary stays up and may still write WAL of its
		// own (checkpoints, standby snapshots, hint bits). A replica that
		// replayed some of it past the candidate's end of recovery could
		// never follow the new timeline; so the other replicas first stop
		// following it and cascade from the candidate, which then has all
		// they have. Done before the fence, it costs no outage.
		for _, o := range sw.others {
			ci, err := ReplicaConninfo(candidate, o.Name)
			if err != nil {
				return nil, err
			}
			back, err := ReplicaConninfo(primary, o.Name)
			if err != nil {
				return nil, err
			}
			slot, b := slotFor(o), budget(2*time.Second)
			add(Step{ID: StepDetach + "-" + o.Name, Node: o.Name, Mutates: true, Budget: b,
				Description: fmt.Sprintf("%s: stop following %s, which the SQL fence leaves up: ALTER SYSTEM SET primary_conninfo = %s, primary_slot_name = %s (cascade from %s); SELECT pg_reload_conf(); wait until its WAL receiver has restarted",
					o.Name, primary.Name, quoteLiteral(ci), quoteLiteral(slot), candidate.Name),
				UndoDescription: fmt.Sprintf("%s: follow %s again: ALTER SYSTEM SET primary_conninfo = %s, primary_slot_name = %s; SELECT pg_reload_conf()",
					o.Name, primary.Name, quoteLiteral(back), quoteLiteral(slot)),
				Run:  func(ctx context.Context) error { return sw.detach(ctx, o.Name, ci, slot, b) },
				Undo: func(ctx context.Context) error { return sw.reattach(ctx, o.Name, back, slot, b) }})
		}
		p.Notes = append(p.Notes, fmt.Sprintf("%s has no commands.stop: using the SQL fence. It stops every ordinary client, but a session that sets default_transaction_read_only = off and synchronous_commit = local can still commit; use --require-stop to refuse without a stop command.", primary.Name))
		add(Step{ID: StepFence, Node: primary.Name, Mutates: true, Budget: budget(2 * time.Second),
			Description:     fmt.Sprintf("%s: SQL fence: %s", primary.Name, strings.Join(SQLFenceSQL, "; ")),
			UndoDescription: fmt.Sprintf("%s: restore default_transaction_read_only and synchronous_standby_names (ALTER SYSTEM), SELECT pg_reload_conf()", primary.Name),
			Run:             sw.fenceSQL, Undo: sw.unfenceSQL})
		add(Step{ID: StepFinalLSN, Node: primary.Name,
			Description: fmt.Sprintf("%s: read its final WAL position: SELECT pg_current_wal_lsn()", primary.Name),
			Run:         sw.finalFromPrimary})
	}
	add(Step{ID: StepWaitReplay, Node: candidate.Name,
		Description: fmt.Sprintf("%s: wait until it has replayed up to %s's final position (timeout %s); SELECT pg_reload_conf() wakes its startup process if replay stalls", candidate.Name, primary.Name, opts.CatchupTimeout),
		Run:         sw.waitReplay})
	add(Step{ID: StepPromote, Node: candidate.Name, Mutates: true, Budget: budget(2 * time.Second), PointOfNoReturn: true,
		Description: fmt.Sprintf("%s: promote: SELECT pg_promote(wait => false), then poll until it leaves recovery", candidate.Name),
		Run:         sw.promote})
	add(Step{ID: StepVerify, Node: candidate.Name,
		Description: fmt.Sprintf("%s: verify it accepts writes on a new timeline (from pg_walfile_name(pg_current_wal_lsn())), then CHECKPOINT", candidate.Name),
		Run:         sw.verify})
	add(Step{ID: StepRecordState, Node: candidate.Name, Mutates: true, Budget: budget(time.Second),
		Description: fmt.Sprintf("etcd: record %s as primary with its timeline, LSN and the fencing token, %s as fenced; %s: ALTER SYSTEM SET replctl.fencing_token", candidate.Name, primary.Name, candidate.Name),
		Run:         sw.record})
	if h := cfg.Hooks.PostPromote; h != "" {
		add(Step{ID: StepHook, Node: candidate.Name, Mutates: true, Budget: budget(5 * time.Second),
			Description: fmt.Sprintf("run hooks.post_promote (%s) with REPLCTL_NODE=%s", h, candidate.Name),
			Run:         sw.hook})
	}
	for _, o := range sw.others {
		ci, err := ReplicaConninfo(candidate, o.Name)
		if err != nil {
			return nil, err
		}
		o := o
		add(Step{ID: StepRepoint + "-" + o.Name, Node: o.Name, Mutates: true, Budget: budget(2 * time.Second),
			Description: fmt.Sprintf("%s: ALTER SYSTEM SET primary_conninfo = %s, primary_slot_name = %s; SELECT pg_reload_conf(); wait until it streams on the new timeline",
				o.Name, quoteLiteral(ci), quoteLiteral(slotFor(o))),
			Run: func(ctx context.Context) error { return sw.repoint(ctx, o.Name, ci, slotFor(o)) }})
	}
	if sw.rejoin {
		ci, _ := ReplicaConninfo(candidate, "")
		add(Step{ID: StepRejoin, Node: primary.Name, Mutates: true, Budget: budget(5 * time.Second),
			Description: fmt.Sprintf("%s: rejoin as a replica of %s: commands.rejoin (%s) with REPLCTL_PRIMARY_CONNINFO=%s; wait until it streams on the new timeline; drop its old slots; unmark it fenced",
				primary.Name, candidate.Name, primary.Commands.Rejoin, quoteLiteral(ci)),
			Run: func(ctx context.Context) error { return sw.rejoinOld(ctx, ci) }})
	} else {
		p.Notes = append(p.Notes, RejoinAdvice(cfg, primary.Name, candidate.Name, opts.NoRejoin))
	}
	if sw.sync != nil {
		if len(sw.sync.Names) == 0 {
			p.Notes = append(p.Notes, fmt.Sprintf("%s had synchronous_standby_names %s but no standby is left to name: %s will run asynchronous", primary.Name, quoteOrEmpty(pn.Settings.SynchronousStandbyNames), candidate.Name))
		} else {
			add(Step{ID: StepSync, Node: candidate.Name, Mutates: true, Budget: budget(2 * time.Second),
				Description: fmt.Sprintf("%s: once %d of %s stream, ALTER SYSTEM SET synchronous_standby_names = %s; SELECT pg_reload_conf()",
					candidate.Name, sw.sync.Num, strings.Join(sw.sync.Names, ", "), quoteLiteral(sw.sync.String())),
				Run: sw.applySync})
		}
	}
	return p, nil
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
	return quoteLiteral(*s)
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
	ctx, cancel := context.WithTimeout(ctx, sw.opts.CatchupTimeout)
	defer cancel()
	return pollUntil(ctx, 20*time.Millisecond, func(ctx context.Context) (bool, error) {
		cur, err := sw.env.Ctl.CurrentLSN(ctx, sw.primary.Name)
		if err != nil {
			return false, err
		}
		_, replay, err := sw.env.Ctl.ReceiveReplay(ctx, sw.candidate.Name)
		if err != nil {
			return false, err
		}
		left := cur.Behind(replay)
		sw.env.progress(StepCatchup, "%s left to replay", config.HumanBytes(left))
		return left <= nearlyCaughtUp, nil
	}, fmt.Sprintf("%s did not catch up with %s within %s", sw.candidate.Name, sw.primary.Name, sw.opts.CatchupTimeout))
}

func (sw *switchover) createSlots(ctx context.Context) error {
	created, err := sw.env.Ctl.CreateSlots(ctx, sw.candidate.Name, sw.slots)
	sw.created = created
	return err
}

func (sw *switchover) dropSlots(ctx context.Context) error {
	if len(sw.created) == 0 {
		return nil
	}
	return sw.env.Ctl.DropSlots(ctx, sw.candidate.Name, sw.created)
}

func (sw *switchover) fenceStop(ctx context.Context) error {
	lsn, err := sw.env.Ctl.CurrentLSN(ctx, sw.primary.Name)
	if err != nil {
		return err
	}
	sw.preStopLSN = lsn
	_, err = sw.env.Ctl.RunCommand(ctx, sw.primary.Name, ActionStop, nil)
	return err
}

func (sw *switchover) unfenceStop(ctx context.Context) error {
	if sw.promoteSent {
		return fmt.Errorf("not restarting %s: %s may have been promoted; check both before starting it", sw.primary.Name, sw.candidate.Name)
	}
	_, err := sw.env.Ctl.RunCommand(ctx, sw.primary.Name, ActionStart, nil)
	return err
}

func (sw *switchover) finalFromCandidate(ctx context.Context) error {
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

func (sw *switchover) fenceSQL(ctx context.Context) error {
	u, err := sw.env.Ctl.FenceSQL(ctx, sw.primary.Name)
	sw.sqlUndo = u
	return err
}

func (sw *switchover) unfenceSQL(ctx context.Context) error {
	if sw.promoteSent {
		return fmt.Errorf("not lifting the fence on %s: %s may have been promoted; check both first", sw.primary.Name, sw.candidate.Name)
	}
	return sw.env.Ctl.UnfenceSQL(ctx, sw.primary.Name, sw.sqlUndo)
}

func (sw *switchover) finalFromPrimary(ctx context.Context) error {
	lsn, err := sw.env.Ctl.CurrentLSN(ctx, sw.primary.Name)
	sw.finalLSN = lsn
	return err
}

// detach points a replica at a new upstream and waits up to timeout until
// its WAL receiver has restarted, so that it no longer receives from the
// old one.
func (sw *switchover) detach(ctx context.Context, node, conninfo, slot string, timeout time.Duration) error {
	pid0, err := sw.env.Ctl.WALReceiverPID(ctx, node)
	if err != nil {
		return err
	}
	if err := sw.env.Ctl.Repoint(ctx, node, conninfo, slot); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// A new primary_conninfo makes the startup process restart the WAL
	// receiver: a new pid, or none for a moment, means the old one is gone.
	return pollUntil(wctx, time.Millisecond, func(ctx context.Context) (bool, error) {
		pid, err := sw.env.Ctl.WALReceiverPID(ctx, node)
		return err == nil && (pid == 0 || pid != pid0), err
	}, fmt.Sprintf("%s's WAL receiver did not restart within %s after its primary_conninfo changed", node, timeout))
}

func (sw *switchover) reattach(ctx context.Context, node, conninfo, slot string, timeout time.Duration) error {
	if sw.promoteSent {
		return fmt.Errorf("leaving %s to follow %s: it may have been promoted", node, sw.candidate.Name)
	}
	// Waiting for the restart frees its slot on the candidate, which the
	// slots' undo then drops.
	return sw.detach(ctx, node, conninfo, slot, timeout)
}

// replayStall is how long the candidate's replay may stand still, with the
// WAL it needs received, before waitReplay wakes its startup process.
const replayStall = 20 * time.Millisecond

func (sw *switchover) waitReplay(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, sw.opts.CatchupTimeout)
	defer cancel()
	var last topology.LSN
	moved, nudged := time.Now(), time.Time{}
	return pollUntil(ctx, 2*time.Millisecond, func(ctx context.Context) (bool, error) {
		recv, replay, err := sw.env.Ctl.ReceiveReplay(ctx, sw.candidate.Name)
		if err != nil {
			return false, err
		}
		if replay >= sw.finalLSN {
			return true, nil
		}
		now := time.Now()
		if replay != last {
			last, moved = replay, now
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
		sw.env.progress(StepWaitReplay, "%s left to replay", config.HumanBytes(sw.finalLSN.Behind(replay)))
		return false, nil
	}, fmt.Sprintf("%s did not replay up to %s within %s", sw.candidate.Name, sw.finalLSN, sw.opts.CatchupTimeout))
}

func (sw *switchover) promote(ctx context.Context) error {
	err := sw.env.Ctl.Promote(ctx, sw.candidate.Name)
	// Unless pg_promote() certainly never reached the candidate, it may be
	// promoted yet: the undo must then leave the old primary fenced.
	sw.promoteSent = !errors.Is(err, ErrPromoteNotSent)
	return err
}

func (sw *switchover) verify(ctx context.Context) error {
	tl, lsn, err := sw.env.Ctl.Writable(ctx, sw.candidate.Name)
	if err != nil {
		return err
	}
	sw.newTimeline, sw.newLSN = tl, lsn
	if err := sw.env.Ctl.Checkpoint(ctx, sw.candidate.Name); err != nil {
		return err
	}
	return nil
}

func (sw *switchover) record(ctx context.Context) error {
	op := ""
	if sw.env.OperationID != nil {
		op = sw.env.OperationID()
	}
	_, _, err := sw.env.Lock.UpdateState(ctx, func(s *State) error {
		s.Primary = sw.candidate.Name
		s.Timeline = sw.newTimeline
		s.LSN = sw.newLSN
		// The record's settings must be the primary's that is now in
		// charge: an emergency failover proves its quorum with them, and
		// the old primary's name different standbys.
		s.Sync = sw.candSync
		s.Sync.SeenAt = time.Now()
		s.Fence(sw.primary.Name, "former primary, replaced by "+sw.candidate.Name)
		return nil
	})
	if err != nil {
		return err
	}
	return sw.env.Ctl.RecordToken(ctx, sw.candidate.Name, sw.env.Lock.Token(), op)
}

func (sw *switchover) hook(ctx context.Context) error {
	n := config.Node{Name: sw.candidate.Name, DSN: sw.candidate.DSN, Commands: config.NodeCommands{Start: sw.cfg.Hooks.PostPromote}}
	_, err := RunNodeCommand(ctx, n, ActionStart, sw.cfg.CommandTimeout, nil)
	if err != nil {
		return fmt.Errorf("hooks.post_promote: %w", err)
	}
	return nil
}

func (sw *switchover) repoint(ctx context.Context, node, conninfo, slot string) error {
	if err := sw.env.Ctl.Repoint(ctx, node, conninfo, slot); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, sw.streamTimeout())
	defer cancel()
	if err := sw.env.Ctl.WaitStreaming(wctx, node, sw.newTimeline); err != nil {
		return fmt.Errorf("%s does not stream from %s on timeline %d: %w", node, sw.candidate.Name, sw.newTimeline, err)
	}
	return nil
}

func (sw *switchover) streamTimeout() time.Duration {
	if sw.env.StreamTimeout > 0 {
		return sw.env.StreamTimeout
	}
	return 60 * time.Second
}

func (sw *switchover) rejoinOld(ctx context.Context, conninfo string) error {
	r := &rejoin{env: sw.env, primary: sw.candidate.Name, node: sw.primary.Name, conninfo: conninfo, timeline: sw.newTimeline}
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
	_, _, err := sw.env.Lock.UpdateState(ctx, func(s *State) error {
		s.Unfence(sw.primary.Name)
		return nil
	})
	return err
}

func (sw *switchover) applySync(ctx context.Context) error {
	want := sw.sync
	ctx, cancel := context.WithTimeout(ctx, sw.streamTimeout())
	defer cancel()
	err := pollUntil(ctx, 50*time.Millisecond, func(ctx context.Context) (bool, error) {
		n, err := sw.env.Ctl.StreamingStandbys(ctx, sw.candidate.Name, want.Names)
		return n >= want.Num, err
	}, fmt.Sprintf("fewer than %d of %s stream from %s: left asynchronous rather than let commits hang", want.Num, strings.Join(want.Names, ", "), sw.candidate.Name))
	if err != nil {
		return err
	}
	if err := sw.env.Ctl.SetSyncStandbys(ctx, sw.candidate.Name, want.String()); err != nil {
		return err
	}
	_, _, err = sw.env.Lock.UpdateState(ctx, func(s *State) error {
		s.Sync = SyncSettings{StandbyNames: want.String(), Commit: sw.candSync.Commit, SeenAt: time.Now()}
		return nil
	})
	return err
}

// pollUntil calls cond every interval until it is true or ctx ends; on
// timeout it fails with msg and the last error seen.
func pollUntil(ctx context.Context, interval time.Duration, cond func(context.Context) (bool, error), msg string) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	var last error
	for {
		ok, err := cond(ctx)
		if err == nil && ok {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				if last != nil {
					return fmt.Errorf("%s (last error: %v)", msg, last)
				}
				return errors.New(msg)
			}
			return context.Cause(ctx)
		case <-t.C:
		}
	}
}
