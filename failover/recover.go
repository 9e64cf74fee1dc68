package failover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/topology"
)

// KindRecover is `replctl recover`: finishing or undoing an interrupted
// operation from its journal.
const KindRecover = "recover"

// Recover's own step IDs.
const (
	StepRecoverClose   = "close-interrupted"
	StepRecoverStart   = "restart-old-primary"
	StepRecoverRestore = "restore"
	StepRecoverDrop    = "drop-created-slots"
	StepRecoverUnmark  = "unmark-fenced"
	StepRecoverFence   = "fence-old-primary"
	StepRecoverClients = "send-clients-back"
)

// Recovery directions.
const (
	RollBack    = "roll back"
	RollForward = "roll forward"
	CloseOnly   = "close"
)

// RecoverOptions are recover's parameters.
type RecoverOptions struct {
	// Resolved closes the interrupted records without changing the
	// cluster: the operator repaired it by hand.
	Resolved bool
}

// InterruptedCheck is the critical finding an interrupted operation is in
// status, check and every refusal: which operation, the last step it began,
// what that may have left, and what to run.
func InterruptedCheck(r etcdlock.OpRecord) checks.Result {
	what := r.Kind
	if r.Plan != nil && r.Plan.Kind != r.Kind {
		what += " (" + r.Plan.Kind + ")"
	}
	if r.Plan != nil && r.Plan.Candidate != "" {
		what += fmt.Sprintf(" %s -> %s", orDash(r.Plan.Primary), r.Plan.Candidate)
	}
	how := "was interrupted (its process died)"
	if r.Outcome == etcdlock.OutcomeLockLost {
		how = "stopped when its lock was lost, without undoing what it began"
	}
	res := checks.Result{Name: "interrupted_operation", Level: checks.Critical, Code: "interrupted_operation",
		Hint: "run `replctl recover --dry-run` to see how it would be finished or undone, then `replctl recover`; every other operation refuses until then"}
	at := "before its first change"
	if s := r.LastBegun(); s != nil {
		at = fmt.Sprintf("at step %s", s.ID)
		if s.Node != "" {
			at += " (" + s.Node + ")"
		}
		res.Node = s.Node
	}
	res.Message = fmt.Sprintf("operation %s, %s by %s, %s %s: %s", r.ID, what, r.By.String(), how, at, leftBy(r))
	return res
}

// leftBy says what an interrupted operation may have left the cluster like.
func leftBy(r etcdlock.OpRecord) string {
	j := r.Journal()
	var fenced, committed, changed bool
	for _, s := range j {
		if !s.Began || !s.Mutates || s.Undo == string(plan.StepUndone) {
			continue
		}
		changed = true
		fenced = fenced || s.Fences
		committed = committed || s.PointOfNoReturn
	}
	p := r.Plan
	switch {
	case !changed:
		return "nothing had been changed"
	case committed && p.Kind == KindRejoin:
		return fmt.Sprintf("%s may be half rejoined (rewound, or stopped)", p.Candidate)
	case committed:
		return fmt.Sprintf("%s may have been promoted while %s is fenced; replicas may still follow %s, and the record may still name it primary", p.Candidate, p.Primary, p.Primary)
	case fenced:
		return fmt.Sprintf("%s may be stopped or fenced and %s is not promoted: there may be no writable primary", p.Primary, p.Candidate)
	}
	return "a preparatory step (slots, replica settings, the fence mark) may be half done"
}

// recovery is what recover's steps share.
type recovery struct {
	env  *Env
	cfg  *config.Config
	recs []etcdlock.OpRecord
	note string
}

// PlanRecover plans finishing or undoing the interrupted operations of obs
// from their journal and the live topology: roll forward once the point of
// no return was begun (the candidate may be promoted), roll back otherwise,
// restoring what each step captured, newest first. Evidence it cannot read
// (a candidate that does not answer, a masked captured value) is a refusal
// that says what is needed. A nil plan with failed results means refused;
// a plan without steps means nothing to recover.
func PlanRecover(cfg *config.Config, obs Observation, o RecoverOptions, env *Env) (*plan.Plan, []checks.Result, error) {
	if len(obs.Interrupted) == 0 {
		msg := "no interrupted operation: nothing to recover"
		return &plan.Plan{Kind: KindRecover, Notes: []string{msg}},
			[]checks.Result{{Name: "interrupted_operation", Level: checks.OK, Code: "ok", Message: msg}}, nil
	}
	rc := &recovery{env: env, cfg: cfg, recs: obs.Interrupted}
	// The operation to finish is the oldest that is not itself a recover:
	// recover's own steps re-derive from the live cluster, so a killed
	// recover is simply run again.
	var orig *etcdlock.OpRecord
	for i := range obs.Interrupted {
		if obs.Interrupted[i].Kind != KindRecover {
			orig = &obs.Interrupted[i]
			break
		}
	}
	var results []checks.Result
	for _, r := range obs.Interrupted {
		c := InterruptedCheck(r)
		c.Level, c.Hint = checks.OK, ""
		results = append(results, c)
	}
	p := &plan.Plan{Kind: KindRecover}
	if orig != nil && orig.Plan != nil {
		p.Primary, p.Candidate, p.Fence = orig.Plan.Primary, orig.Plan.Candidate, orig.Plan.Fence
	}
	add := func(s plan.Step) { p.Steps = append(p.Steps, s) }
	t := TimeoutsFor(cfg, 0, 0)
	add(plan.Step{ID: StepLock, Description: fmt.Sprintf("take the cluster lock (%s/%s/lock, ttl %s), re-read the topology and the journal under it and plan again",
		cfg.Etcd.Prefix, cfg.Cluster, cfg.Lock.TTL), Run: func(ctx context.Context) error { return env.Acquire(ctx) }})

	direction := CloseOnly
	var refuse []checks.Result
	switch {
	case o.Resolved:
		rc.note = "marked resolved by hand (replctl recover --resolved)"
		p.Notes = append(p.Notes, "--resolved: the cluster is not changed; the interrupted records are closed as repaired by hand. Check `replctl status` first.")
	case orig == nil || orig.Plan == nil || !began(orig):
		rc.note = "nothing had been changed: record closed by replctl recover"
	case committed(orig):
		direction = RollForward
		var err error
		refuse, err = rc.rollForward(p, orig, obs)
		if err != nil {
			return nil, results, err
		}
	default:
		direction = RollBack
		refuse = rc.rollBack(p, orig, obs)
	}
	if len(refuse) > 0 {
		return nil, append(results, refuse...), nil
	}
	if orig != nil {
		p.Notes = append([]string{fmt.Sprintf("%s operation %s (%s): %s", direction, orig.ID, orig.Kind, why(direction, orig))}, p.Notes...)
	}
	if rc.note == "" {
		rc.note = fmt.Sprintf("recovered by replctl recover (%s)", direction)
	}
	ids := make([]string, len(obs.Interrupted))
	for i, r := range obs.Interrupted {
		ids[i] = r.ID
	}
	add(plan.Step{ID: StepRecoverClose, Mutates: true, Timeout: t.Etcd, Budget: min(t.Etcd, cfg.Lock.TTL/2),
		Description: fmt.Sprintf("etcd: close interrupted operation %s in the history as interrupted, recovered by this one", strings.Join(ids, ", ")),
		Run:         rc.close})
	return p, results, nil
}

func why(direction string, r *etcdlock.OpRecord) string {
	switch direction {
	case RollForward:
		return "it had begun its point of no return, so the candidate may be promoted: finish it"
	case RollBack:
		return "it had not begun its point of no return: restore what its steps captured, newest first"
	}
	return ""
}

// began reports whether a mutating step of r's plan began.
func began(r *etcdlock.OpRecord) bool {
	for _, s := range r.Journal() {
		if s.Began && s.Mutates {
			return true
		}
	}
	return false
}

// committed reports whether r began its point of no return and did not
// then lift its fence: a failed promote whose fence was undone left the old
// primary in charge (the undo refuses to lift it once pg_promote may have
// reached the candidate).
func committed(r *etcdlock.OpRecord) bool {
	var begun, lifted bool
	for _, s := range r.Journal() {
		begun = begun || s.Began && s.PointOfNoReturn
		lifted = lifted || s.Fences && s.Undo == string(plan.StepUndone)
	}
	return begun && !lifted
}

func ambiguous(node, msg, hint string) checks.Result {
	return checks.Result{Name: "recover_evidence", Level: checks.Critical, Code: "recover_ambiguous", Node: node, Message: msg, Hint: hint}
}

// rollBack adds the undo of every begun mutating step, newest first, from
// what it captured.
func (rc *recovery) rollBack(p *plan.Plan, r *etcdlock.OpRecord, obs Observation) []checks.Result {
	snap := obs.Snap
	t := TimeoutsFor(rc.cfg, 0, 0)
	budget := min(5*time.Second, rc.cfg.Lock.TTL/2)
	kind := r.Plan.Kind
	var refuse []checks.Result
	j := r.Journal()
	if w := snap.PrimaryNode(); w != nil && w.Name != r.Plan.Primary && kind != KindFailover && kind != KindRejoin {
		refuse = append(refuse, ambiguous(w.Name, fmt.Sprintf("%s is writable, but operation %s never began promoting it", w.Name, r.ID),
			"someone changed the cluster since: check `replctl status`, repair by hand, then `replctl recover --resolved`"))
		return refuse
	}
	for i := len(j) - 1; i >= 0; i-- {
		s := j[i]
		if !s.Began || !s.Mutates || s.Undo == string(plan.StepUndone) {
			continue
		}
		node := s.Node
		switch {
		case s.ID == StepCreateSlots:
			var c capturedSlots
			if !decodeCaptured(s.Captured, &c) {
				continue // captured before creating: without it nothing was made
			}
			drop := without(c.Slots, c.Existing)
			if len(drop) == 0 {
				continue
			}
			p.Steps = append(p.Steps, plan.Step{ID: StepRecoverDrop + "-" + node, Node: node, Mutates: true, Timeout: t.Call, Budget: budget,
				Description: fmt.Sprintf("%s: drop the replication slots %s the interrupted operation was creating, if they exist and are inactive", node, strings.Join(drop, ", ")),
				Run:         func(ctx context.Context) error { return rc.env.Ctl.DropSlots(ctx, node, drop) }})
		case s.ID == StepMarkFenced && kind != KindFailover:
			if obs.State == nil || !obs.State.FencedBy(node, r.ID) {
				continue
			}
			opID := r.ID
			p.Steps = append(p.Steps, plan.Step{ID: StepRecoverUnmark, Node: node, Mutates: true, Timeout: t.Etcd, Budget: min(budget, t.Etcd),
				Description: fmt.Sprintf("etcd: unmark %s fenced (operation %s marked it)", node, opID),
				Run: func(ctx context.Context) error {
					_, _, err := rc.env.Lock.UpdateState(ctx, func(st *etcdlock.State) error {
						if st.FencedBy(node, opID) {
							st.Unfence(node)
						}
						return nil
					})
					return err
				}})
		case s.ID == StepFence && r.Plan.Fence == FenceStop:
			n := snap.Node(node)
			if n != nil && n.Reachable {
				if n.Writable() {
					continue // the stop never took effect
				}
				refuse = append(refuse, ambiguous(node, fmt.Sprintf("%s answers but does not accept writes after an interrupted stop fence", node),
					"check it by hand (is it a replica now?), then `replctl recover --resolved`"))
				continue
			}
			cn, _ := rc.cfg.Node(node)
			if cn.Commands.Start == "" {
				refuse = append(refuse, ambiguous(node, fmt.Sprintf("%s was stopped by the interrupted switchover and has no commands.start", node),
					"start it by hand as primary, then `replctl recover --resolved`"))
				continue
			}
			if c := snap.Node(r.Plan.Candidate); c == nil || !c.Reachable || !c.InRecovery {
				refuse = append(refuse, ambiguous(r.Plan.Candidate, fmt.Sprintf("%s must answer, in recovery, before %s is started again as primary", r.Plan.Candidate, node),
					fmt.Sprintf("bring %s back (or make sure it is not promoted), then run recover again", r.Plan.Candidate)))
				continue
			}
			p.Steps = append(p.Steps, plan.Step{ID: StepRecoverStart, Node: node, Mutates: true, Timeout: t.Command + t.Stream, Budget: budget,
				Description: fmt.Sprintf("%s: start it again as primary with commands.start (%s): the interrupted switchover stopped it and never began promoting %s; wait until it accepts writes", node, cn.Commands.Start, r.Plan.Candidate),
				Run:         func(ctx context.Context) error { return rc.restart(ctx, node) }})
		case s.ID == StepFence && r.Plan.Fence == FenceSQL, strings.HasPrefix(s.ID, StepDetach+"-"), s.ID == StepHoldWrites:
			var c capturedSettings
			if !decodeCaptured(s.Captured, &c) {
				continue // captured before changing: without it nothing changed
			}
			if masked(c) {
				refuse = append(refuse, ambiguous(node, fmt.Sprintf("%s's captured settings held a password, which the journal does not keep", node),
					fmt.Sprintf("restore its primary_conninfo by hand (%s), then `replctl recover --resolved`", settingNames(c))))
				continue
			}
			if n := snap.Node(node); n == nil || !n.Reachable {
				refuse = append(refuse, ambiguous(node, fmt.Sprintf("%s does not answer: its settings (%s) cannot be restored", node, settingNames(c)),
					fmt.Sprintf("bring %s back, then run recover again", node)))
				continue
			}
			snapSet := &pgctl.SettingsSnapshot{Settings: c.Settings}
			id, desc := StepRecoverRestore+"-"+node, fmt.Sprintf("%s: restore %s as the interrupted operation captured them (ALTER SYSTEM), SELECT pg_reload_conf()", node, settingNames(c))
			run := func(ctx context.Context) error { return rc.env.Ctl.RestoreSettings(ctx, node, snapSet) }
			switch {
			case s.ID == StepHoldWrites:
				desc += ": releases the writes it held"
			case s.ID != StepFence:
				cand := r.Plan.Candidate
				desc += fmt.Sprintf("; end its walsender on %s so it follows %s again", cand, r.Plan.Primary)
				run = func(ctx context.Context) error {
					if err := rc.env.Ctl.RestoreSettings(ctx, node, snapSet); err != nil {
						return err
					}
					_, err := rc.env.Ctl.TerminateWALSenders(ctx, cand, node, node)
					return err
				}
			default:
				desc += ": lifts the SQL fence"
			}
			p.Steps = append(p.Steps, plan.Step{ID: id, Node: node, Mutates: true, Fences: false, Timeout: t.Stream, Budget: budget, Description: desc, Run: run})
		case s.ID == StepPreFence:
			if rc.cfg.Hooks.PreFence == "" {
				p.Notes = append(p.Notes, fmt.Sprintf("the interrupted switchover ran hooks.pre_fence to hold clients back from %s, and hooks.pre_fence is no longer configured: send them to %s again by hand", node, node))
				continue
			}
			p.Steps = append(p.Steps, plan.Step{ID: StepRecoverClients, Node: node, Mutates: true, Timeout: t.Command, Budget: budget,
				Description: fmt.Sprintf("%s: the interrupted switchover held clients back from %s; send them to it again",
					preFenceCall(rc.cfg, node, r.Plan.Candidate, true), node),
				Run: preFenceHook(rc.env, rc.cfg, node, r.Plan.Candidate, true)})
		case s.ID == StepFenceCommand || s.ID == StepFenceSQL:
			p.Notes = append(p.Notes, fmt.Sprintf("%s stays fenced: an emergency fence is never lifted by replctl; run the failover again, or `replctl rejoin %s` once it is back", node, node))
		}
	}
	return refuse
}

// rollForward adds what the interrupted promotion (or rejoin) had left to
// do, re-derived from the live topology: promote the candidate if it is
// still in recovery, fence the old primary again if it came back writable,
// verify, record, repoint the replicas, carry over the synchronous
// settings.
func (rc *recovery) rollForward(p *plan.Plan, r *etcdlock.OpRecord, obs Observation) ([]checks.Result, error) {
	snap := obs.Snap
	if r.Plan.Kind == KindRejoin {
		return rc.rejoinForward(p, r, obs)
	}
	cand, old := r.Plan.Candidate, r.Plan.Primary
	cn := snap.Node(cand)
	if cn == nil || !cn.Reachable {
		return []checks.Result{ambiguous(cand, fmt.Sprintf("%s does not answer: recover cannot tell whether the interrupted operation promoted it", cand),
			fmt.Sprintf("bring %s back and run recover again; if it is lost, `replctl promote --emergency` another node after `replctl recover --resolved`", cand))}, nil
	}
	if !cn.Member() {
		return []checks.Result{ambiguous(cand, fmt.Sprintf("%s is not a member of the cluster (foreign or diverged)", cand), "repair it by hand, then `replctl recover --resolved`")}, nil
	}
	if w := snap.PrimaryNode(); w != nil && w.Name != cand && w.Name != old {
		return []checks.Result{ambiguous(w.Name, fmt.Sprintf("%s is writable, but the interrupted operation was promoting %s", w.Name, cand),
			"someone changed the cluster since: repair by hand, then `replctl recover --resolved`")}, nil
	}
	oc, _ := rc.cfg.Node(old)
	ccfg, _ := rc.cfg.Node(cand)
	sw := newSwitchover(rc.env, rc.cfg, oc, ccfg, SwitchoverOptions{}, cn)
	sw.pn = snap.Node(old)
	add := func(s plan.Step) { p.Steps = append(p.Steps, s) }
	if cn.InRecovery {
		st := sw.stepPromote()
		st.Description = cand + ": still in recovery: " + strings.TrimPrefix(st.Description, cand+": ")
		add(st)
	}
	if on := snap.Node(old); on != nil && on.Reachable && !on.InRecovery && !on.SyncFenced() {
		add(plan.Step{ID: StepRecoverFence, Node: old, Mutates: true, Fences: true, Timeout: 2 * sw.t.Call, Budget: sw.budget(2 * sw.t.Call),
			Description: fmt.Sprintf("%s: it answers out of recovery and unfenced: SQL fence it again (%s); it is never lifted", old, strings.Join(pgctl.SQLFenceSQL, "; ")),
			Run:         func(ctx context.Context) error { return rc.env.Ctl.FenceSQL(ctx, old) }})
	}
	if hold := heldWrites(r); hold != nil {
		snapSet := &pgctl.SettingsSnapshot{Settings: hold.Settings}
		add(plan.Step{ID: StepRecoverRestore + "-" + cand, Node: cand, Mutates: true, Timeout: sw.t.Call, Budget: sw.budget(2 * sw.t.Call),
			Description: fmt.Sprintf("%s: release the writes the interrupted switchover held for its logical slot handover: restore %s as captured (ALTER SYSTEM), SELECT pg_reload_conf()", cand, settingNames(*hold)),
			Run:         func(ctx context.Context) error { return rc.env.Ctl.RestoreSettings(ctx, cand, snapSet) }})
		p.Notes = append(p.Notes, fmt.Sprintf("the interrupted switchover was handing logical slots over to %s: check with `replctl status` that they exist there; a missing one's consumer must resynchronise", cand))
	}
	add(sw.stepVerify())
	// The interrupted operation may not have sent clients to the
	// candidate, and may have held them back from the old primary.
	if rc.cfg.Hooks.PostPromote != "" {
		add(sw.stepHook())
	}
	add(sw.stepCheckpointPromoted())
	add(sw.stepRecord())
	for _, n := range snap.Nodes {
		if n.Name == cand || n.Name == old {
			continue
		}
		if !n.Reachable {
			p.Notes = append(p.Notes, fmt.Sprintf("%s does not answer: it is not repointed; once it is back, run `replctl rejoin %s`", n.Name, n.Name))
			continue
		}
		if !n.Member() || n.Role != topology.RoleReplica || string(n.Upstream) == cand {
			continue
		}
		if up := snap.Node(string(n.Upstream)); up != nil && up.Name != old {
			continue // cascades from another replica, which follows
		}
		if why := whyBehind(n, true); why != "" && n.Upstream != "" {
			sw.behind[n.Name] = why
		}
		sw.others = append(sw.others, n)
		st, err := sw.stepRepoint(n)
		if err != nil {
			return nil, err
		}
		add(st)
	}
	hadRejoin := slices.ContainsFunc(r.Plan.Steps, func(s plan.StepSummary) bool { return s.ID == StepRejoin })
	if on := snap.Node(old); hadRejoin && oc.Commands.Rejoin != "" && (on == nil || !on.Reachable || !on.InRecovery) {
		ci, err := pgctl.ReplicaConninfo(ccfg, "")
		if err != nil {
			return nil, err
		}
		sw.rejoin = true
		add(plan.Step{ID: StepRejoin, Node: old, Mutates: true, Timeout: sw.t.Command + sw.t.Stream, Budget: sw.budget(5 * time.Second),
			Description: fmt.Sprintf("%s: rejoin as a replica of %s, as the interrupted switchover planned: commands.rejoin (%s) with REPLCTL_PRIMARY_CONNINFO=%s; wait until it streams on the new timeline (timeout %s); drop its old slots; unmark it fenced",
				old, cand, oc.Commands.Rejoin, pgctl.QuoteLiteral(ci), sw.t.Stream),
			Run: func(ctx context.Context) error { return sw.rejoinOld(ctx, ci) }})
	} else {
		p.Notes = append(p.Notes, fmt.Sprintf("%s stays fenced; rejoin it with `replctl rejoin %s`", old, old))
	}
	// As the switchover would have: the rejoined old primary takes the
	// candidate's place among the synchronous standbys, so the sync step
	// follows the rejoin; without the rejoin the number may be lowered,
	// and the record says so for the later rejoin to raise it.
	var saved etcdlock.SyncSettings
	for _, s := range r.Journal() {
		if s.ID == StepSaveConfig && decodeCaptured(s.Captured, &saved) && saved.StandbyNames != "" {
			if ss, err := topology.ParseSyncStandbyNames(saved.StandbyNames); err == nil && ss.Enabled() {
				sw.sync = adaptSync(ss, cand, old, sw.rejoin)
				sw.syncOriginal = saved.StandbyNames
			}
		}
	}
	if sw.sync != nil && len(sw.sync.Names) > 0 {
		add(sw.stepSync())
	}
	return nil, nil
}

// rejoinForward runs the rejoin again from the live topology: its command
// is meant to be repeatable (pg_rewind of a half-rewound node), and a node
// that already streams only needs its fence mark removed.
func (rc *recovery) rejoinForward(p *plan.Plan, r *etcdlock.OpRecord, obs Observation) ([]checks.Result, error) {
	node := r.Plan.Candidate
	if FollowsPrimary(obs.Snap, node) {
		t := TimeoutsFor(rc.cfg, 0, 0)
		if slot, on := cascadeSlotLeft(r, node); slot != "" {
			if up := obs.Snap.Node(on); up != nil && slices.ContainsFunc(up.Slots, func(s topology.Slot) bool { return s.Name == slot }) {
				p.Steps = append(p.Steps, dropOldSlotStep(&cascade{env: rc.env, node: node, upstream: on, oldSlot: slot}, t, min(5*time.Second, rc.cfg.Lock.TTL/2)))
			}
		}
		if obs.State != nil && obs.State.IsFenced(node) {
			p.Steps = append(p.Steps, plan.Step{ID: StepUnfence, Node: node, Mutates: true, Timeout: t.Etcd, Budget: min(t.Etcd, rc.cfg.Lock.TTL/2),
				Description: fmt.Sprintf("etcd: %s streams from the primary: unmark it fenced in the cluster record", node),
				Run: func(ctx context.Context) error {
					_, _, err := rc.env.Lock.UpdateState(ctx, func(s *etcdlock.State) error { s.Unfence(node); return nil })
					return err
				}})
		}
		return nil, nil
	}
	rp, results, err := PlanRejoin(rc.cfg, obs.Snap, node, rc.env)
	if err != nil {
		return nil, err
	}
	if failed := checks.Failed(results); len(failed) > 0 {
		return failed, nil
	}
	for _, s := range rp.Steps {
		if s.ID != StepLock {
			p.Steps = append(p.Steps, s)
		}
	}
	return nil, nil
}

// restart starts a node stopped by an interrupted stop fence and waits
// until it accepts writes.
func (rc *recovery) restart(ctx context.Context, node string) error {
	// The interrupted stop fence may have left the server shutting down
	// (the operation no longer waited for its stop command): a start
	// fails until it is down.
	if err := pgctl.PollUntil(ctx, rc.env.Clock, 20*time.Millisecond, func(ctx context.Context) (bool, error) {
		_, err := rc.env.Ctl.Setting(ctx, node, "server_version")
		return !pgctl.ShuttingDown(err), nil
	}, node+" is still shutting down (or starting up): not starting it"); err != nil {
		return err
	}
	if _, err := rc.env.Ctl.RunCommand(ctx, node, pgctl.ActionStart, nil); err != nil {
		return err
	}
	return pgctl.PollUntil(ctx, rc.env.Clock, 50*time.Millisecond, func(ctx context.Context) (bool, error) {
		_, _, err := rc.env.Ctl.Writable(ctx, node)
		return err == nil, nil
	}, node+" did not accept writes after commands.start")
}

func (rc *recovery) close(ctx context.Context) error {
	c, ok := rc.env.Lock.(interface {
		CloseInterrupted(ctx context.Context, id, note string) error
	})
	if !ok {
		return errors.New("the lock cannot close history records")
	}
	note := rc.note
	if rc.env.OperationID != nil {
		if id := rc.env.OperationID(); id != "" {
			note += " (operation " + id + ")"
		}
	}
	for _, r := range rc.recs {
		if err := c.CloseInterrupted(ctx, r.ID, note); err != nil {
			return err
		}
	}
	return nil
}

func without(all, drop []string) []string {
	var out []string
	for _, s := range all {
		if !containsFold(drop, s) {
			out = append(out, s)
		}
	}
	return out
}

// masked reports whether a captured value lost a password to the
// journal's scrubbing.
func masked(c capturedSettings) bool {
	for _, v := range c.Settings {
		if v != nil && strings.Contains(*v, "********") {
			return true
		}
	}
	return false
}

func settingNames(c capturedSettings) string {
	var names []string
	for n := range c.Settings {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// heldWrites is what the interrupted operation's hold-writes step captured
// when it began and no release-writes ended, nil otherwise.
func heldWrites(r *etcdlock.OpRecord) *capturedSettings {
	var hold *capturedSettings
	for _, s := range r.Journal() {
		switch {
		case s.ID == StepHoldWrites && s.Began && s.Undo != string(plan.StepUndone):
			var c capturedSettings
			if decodeCaptured(s.Captured, &c) {
				hold = &c
			}
		case s.ID == StepReleaseWrites && s.Outcome == "done":
			return nil
		}
	}
	return hold
}
