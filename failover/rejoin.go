package failover

import (
	"context"
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

// StepDropSlots and StepUnfence are rejoin's own steps.
const (
	StepDropSlots = "drop-old-slots"
	StepUnfence   = "unfence"
)

// RejoinPreflight checks that node can be made a replica of the current
// primary through its rejoin command. It is pure.
func RejoinPreflight(cfg *config.Config, snap *topology.Snapshot, node string) []checks.Result {
	var out []checks.Result
	fail := func(name, msg, hint string) {
		out = append(out, checks.Result{Name: name, Node: node, Level: checks.Critical, Code: name, Message: msg, Hint: hint})
	}
	ok := func(name, msg string) {
		out = append(out, checks.Result{Name: name, Node: node, Level: checks.OK, Code: "ok", Message: msg})
	}
	cn, found := cfg.Node(node)
	if !found {
		fail("node_configured", fmt.Sprintf("%q is not a configured node", node), "name one of the nodes in "+cfg.File)
		return out
	}
	p := snap.PrimaryNode()
	switch {
	case p == nil:
		fail("primary", "no reachable primary to rejoin", "a node rejoins the current primary: promote one first")
	case p.Name == node:
		fail("not_primary", node+" is the current primary", "rejoin turns a former primary or a diverged node into a replica; it refuses on the primary")
	default:
		ok("primary", "current primary: "+p.Name)
	}
	if cn.Commands.Rejoin == "" {
		fail("rejoin_command", "no commands.rejoin configured", "configure commands.rejoin (stop, pg_rewind, standby.signal, primary_conninfo, start) or rejoin by hand")
	} else {
		ok("rejoin_command", "has commands.rejoin")
	}
	if n := snap.Node(node); p != nil && n != nil && n.Reachable && !n.InRecovery && n.Timeline != nil && p.Timeline != nil && *n.Timeline == *p.Timeline {
		// Two primaries on one timeline ID: a promotion reused the ID.
		// pg_rewind compares timeline histories by ID and would find
		// nothing to rewind, and the node could never stream.
		fail("timeline_reused", fmt.Sprintf("%s and the primary %s both run as primary on timeline %d: their histories diverged under one timeline ID", node, p.Name, *n.Timeline),
			fmt.Sprintf("pg_rewind cannot repair that: rebuild %s from %s with pg_basebackup", node, p.Name))
	}
	if n := snap.Node(node); n != nil && n.Reachable && n.Foreign {
		fail("system_identifier", "a foreign node (different system identifier)", "pg_rewind cannot rejoin a node of another cluster: rebuild it with pg_basebackup")
	}
	return out
}

// PlanRejoin plans making node a replica of the current primary: a slot for
// it on the primary, its rejoin command, a wait until it streams, the drop
// of slots it kept from its time as primary, and the fence mark removed.
// It is pure; nil plan with failed results means refused.
func PlanRejoin(cfg *config.Config, snap *topology.Snapshot, node string, env *Env) (*plan.Plan, []checks.Result, error) {
	if FollowsPrimary(snap, node) {
		// A healthy replica: nothing to rewind, nothing to run, whatever
		// commands it has; only a slot its time as a cascade left on
		// another replica, if any, to drop.
		p := snap.PrimaryNode()
		msg := fmt.Sprintf("%s already streams from %s on timeline %d: nothing to do", node, p.Name, *p.Timeline)
		rp := &plan.Plan{Kind: "rejoin", Primary: p.Name, Candidate: node}
		if left := leftCascadeSlots(snap, node); len(left) > 0 {
			msg = fmt.Sprintf("%s already streams from %s on timeline %d; %s still has the slot %s it streamed through as a cascade, inactive and retaining WAL there: it is dropped",
				node, p.Name, *p.Timeline, strings.Join(left, ", "), node)
			t := TimeoutsFor(cfg, 0, 0)
			rp.Steps = append(rp.Steps, rejoinLockStep(cfg, env))
			for _, on := range left {
				rp.Steps = append(rp.Steps, dropOldSlotStep(&cascade{env: env, node: node, upstream: on, oldSlot: node}, t, min(5*time.Second, cfg.Lock.TTL/2)))
			}
		}
		if st := syncRaise(snap, p, node); st != nil {
			// Rejoined (by hand, or the raise below failed before): what
			// is left is the synchronous replication its fencing lowered.
			msg += fmt.Sprintf("; %s's synchronous_standby_names is still the one lowered for want of %s: it is raised back", p.Name, node)
			if len(rp.Steps) == 0 {
				rp.Steps = append(rp.Steps, rejoinLockStep(cfg, env))
			}
			rp.Steps = append(rp.Steps, syncRaiseStep(env, snap, p, st, TimeoutsFor(cfg, 0, 0), min(5*time.Second, cfg.Lock.TTL/2)))
		}
		rp.Notes = []string{msg}
		return rp, []checks.Result{{Name: "already_replica", Node: node, Level: checks.OK, Code: "ok", Message: msg}}, nil
	}
	if up := cascadeUpstream(snap, node); up != nil {
		return planRepointCascade(cfg, snap, node, up, env)
	}
	results := RejoinPreflight(cfg, snap, node)
	if len(checks.Failed(results)) > 0 {
		return nil, results, nil
	}
	p := snap.PrimaryNode()
	primary, _ := cfg.Node(p.Name)
	target, _ := cfg.Node(node)
	ci, err := pgctl.ReplicaConninfo(primary, "")
	if err != nil {
		return nil, results, err
	}
	var tl uint32
	if p.Timeline != nil {
		tl = *p.Timeline
	}
	stale, staleDesc := staleSlots(cfg, snap.Node(node))
	t := TimeoutsFor(cfg, 0, 0)
	r := &rejoin{env: env, primary: primary.Name, node: target.Name, conninfo: ci, timeline: tl, stale: stale, stream: t.Stream}
	budget := min(5*time.Second, cfg.Lock.TTL/2)
	rp := &plan.Plan{Kind: "rejoin", Primary: primary.Name, Candidate: node}
	rp.Steps = []plan.Step{
		rejoinLockStep(cfg, env),
		{ID: StepSaveConfig, Node: primary.Name, Mutates: true, Timeout: t.Etcd, Budget: min(budget, t.Etcd),
			Description: fmt.Sprintf("etcd: save %s's synchronous_standby_names (%s) and synchronous_commit (%s) in the cluster record",
				primary.Name, quoteOrEmpty(p.Settings.SynchronousStandbyNames), orUnknown(p.Settings.SynchronousCommit)),
			Run: func(ctx context.Context) error { return SaveSyncSettings(ctx, env.Lock, p) }},
		slotStep(env, p, node, t, budget, &r.created, func() error {
			if !r.commandRan {
				return nil
			}
			// Rewound and set to follow the primary through this slot, the
			// node needs it to stream once it runs again (a rewind cannot
			// be undone).
			return fmt.Errorf("keeping slot %s on %s: the rejoin command ran on %s, which now follows %s through it; run `replctl rejoin %s` again, or drop the slot by hand if %s is rebuilt otherwise",
				joinNames(r.created), primary.Name, node, primary.Name, node, node)
		}),
		{ID: StepRejoin, Node: node, Mutates: true, Timeout: t.Command + t.Stream, Budget: budget, PointOfNoReturn: true,
			Description: fmt.Sprintf("%s: rejoin as a replica of %s: commands.rejoin (%s) with REPLCTL_PRIMARY_CONNINFO=%s; wait until it streams on timeline %d (timeout %s)",
				node, primary.Name, target.Commands.Rejoin, pgctl.QuoteLiteral(ci), tl, t.Stream),
			Run: r.run},
		{ID: StepDropSlots, Node: node, Mutates: true, Timeout: t.Call, Budget: budget,
			Description: fmt.Sprintf("%s: drop the inactive slots it kept as a primary (%s)", node, staleDesc),
			Run:         func(ctx context.Context) error { return env.Ctl.DropSlots(ctx, node, stale) }},
		unfenceStep(env, node, t, budget),
	}
	if len(stale) == 0 {
		rp.Steps = slices.DeleteFunc(rp.Steps, func(s plan.Step) bool { return s.ID == StepDropSlots })
	}
	if st := syncRaise(snap, p, node); st != nil {
		rp.Steps = append(rp.Steps, syncRaiseStep(env, snap, p, st, t, budget))
	} else if st := syncBack(snap, p, node); st != nil {
		want := st.String()
		rp.Steps = append(rp.Steps, plan.Step{ID: StepSync, Node: primary.Name, Mutates: true, Timeout: t.Stream, Budget: budget,
			Description: fmt.Sprintf("%s: once %s streams (timeout %s), put it back among its synchronous standbys: ALTER SYSTEM SET synchronous_standby_names = %s; SELECT pg_reload_conf() (a name added to the list never makes a commit wait longer)",
				primary.Name, node, t.Stream, pgctl.QuoteLiteral(want)),
			Run: func(ctx context.Context) error {
				return setSyncOnceStreaming(ctx, env, primary.Name, []string{node}, 1, want,
					fmt.Sprintf("%s does not stream from %s: not adding it to synchronous_standby_names", node, primary.Name),
					func(s *etcdlock.State) { s.Sync.StandbyNames = want })
			}})
	}
	return rp, results, nil
}

// FollowsPrimary reports whether node is a healthy replica of snap's
// primary: a member, streaming from it directly on its timeline, not
// fenced. Rejoining it has nothing to do. A replica that cascades from
// another replica does not count: `replctl rejoin` makes it stream from the
// primary (see cascadeUpstream).
func FollowsPrimary(snap *topology.Snapshot, node string) bool {
	n, p := snap.Node(node), snap.PrimaryNode()
	return n != nil && p != nil && n.Member() && n.Streaming() && !n.Fenced && string(n.Upstream) == p.Name &&
		n.Timeline != nil && p.Timeline != nil && *n.Timeline == *p.Timeline
}

// leftCascadeSlots are the replicas other than node that hold an inactive
// physical slot named after node: what a repoint of node, once a cascade,
// leaves behind when dropping that slot failed (its former upstream was
// down, say). replctl names the slots it makes after the node they serve.
func leftCascadeSlots(snap *topology.Snapshot, node string) []string {
	var out []string
	p := snap.PrimaryNode()
	for _, n := range snap.Nodes {
		if n.Name == node || n == p || !n.Reachable || !n.Member() || n.Role != topology.RoleReplica {
			continue
		}
		if slices.ContainsFunc(n.Slots, func(s topology.Slot) bool {
			return s.Name == node && s.Type == "physical" && !s.Active && !s.Temporary
		}) {
			out = append(out, n.Name)
		}
	}
	return out
}

// cascadeUpstream is the replica node streams through when node is a
// healthy replica of snap's primary's history (a member, streaming, on the
// primary's timeline) that cascades from another replica rather than from
// the primary; nil otherwise. An operation that could not repoint it leaves
// it there (a switchover that found it down after its detach, say): such a
// node needs no rewind, only its primary_conninfo changed.
func cascadeUpstream(snap *topology.Snapshot, node string) *topology.Node {
	n, p := snap.Node(node), snap.PrimaryNode()
	if n == nil || p == nil || !n.Member() || !n.Streaming() || n.Upstream == "" || string(n.Upstream) == p.Name ||
		snap.Root(n) != p || n.Timeline == nil || p.Timeline == nil || *n.Timeline != *p.Timeline {
		return nil
	}
	return snap.Node(string(n.Upstream))
}

// planRepointCascade plans making node, which streams through the replica
// up, stream from the primary itself: a slot for it on the primary, its
// primary_conninfo and primary_slot_name changed (captured first, restored
// on undo) and verified, and the slot it used on up dropped. Nothing is
// rewound or restarted, so no rejoin command is needed.
func planRepointCascade(cfg *config.Config, snap *topology.Snapshot, node string, up *topology.Node, env *Env) (*plan.Plan, []checks.Result, error) {
	p, n := snap.PrimaryNode(), snap.Node(node)
	primary, _ := cfg.Node(p.Name)
	ci, err := pgctl.ReplicaConninfo(primary, node)
	if err != nil {
		return nil, nil, err
	}
	t := TimeoutsFor(cfg, 0, 0)
	budget := min(5*time.Second, cfg.Lock.TTL/2)
	oldSlot := ""
	if n.Settings.PrimarySlotName != nil {
		oldSlot = *n.Settings.PrimarySlotName
	}
	rc := &cascade{env: env, node: node, primary: primary, upstream: up.Name, conninfo: ci, slot: node, oldSlot: oldSlot, timeline: *p.Timeline}
	msg := fmt.Sprintf("%s streams from %s, a replica, not from the primary %s: it is repointed at %s (no rewind needed: it is on timeline %d)",
		node, up.Name, p.Name, p.Name, *p.Timeline)
	results := []checks.Result{
		{Name: "primary", Node: node, Level: checks.OK, Code: "ok", Message: "current primary: " + p.Name},
		{Name: "cascade", Node: node, Level: checks.OK, Code: "ok", Message: msg},
	}
	rp := &plan.Plan{Kind: "rejoin", Primary: p.Name, Candidate: node, Notes: []string{msg}}
	var created []string // the slot slotStep made, for its undo
	rp.Steps = []plan.Step{
		rejoinLockStep(cfg, env),
		slotStep(env, p, node, t, budget, &created, nil),
		// The point of no return: once its receiver may have moved, an
		// interrupted run is finished from the live topology (recover
		// rolls forward), not rolled back to a cascade.
		{ID: StepRepoint + "-" + node, Node: node, Mutates: true, Timeout: t.Stream, Budget: budget, PointOfNoReturn: true,
			Description: fmt.Sprintf("%s: capture its primary_conninfo and primary_slot_name, ALTER SYSTEM SET primary_conninfo = %s, primary_slot_name = %s; SELECT pg_reload_conf(); wait until its WAL receiver streams from %s on timeline %d (timeout %s)",
				node, pgctl.QuoteLiteral(ci), pgctl.QuoteLiteral(node), p.Name, *p.Timeline, t.Stream),
			UndoDescription: fmt.Sprintf("%s: restore the primary_conninfo and primary_slot_name it had (ALTER SYSTEM), SELECT pg_reload_conf(), so that it streams from %s again", node, up.Name),
			Run:             rc.repoint, Undo: rc.restore},
	}
	if oldSlot != "" && slices.ContainsFunc(up.Slots, func(s topology.Slot) bool { return s.Name == oldSlot && s.Type == "physical" }) {
		rp.Steps = append(rp.Steps, dropOldSlotStep(rc, t, budget))
	}
	if n.Fenced {
		rp.Steps = append(rp.Steps, unfenceStep(env, node, t, budget))
	}
	// Streaming from the primary now, it can raise what an operation
	// lowered for want of it.
	if st := syncRaise(snap, p, node); st != nil {
		rp.Steps = append(rp.Steps, syncRaiseStep(env, snap, p, st, t, budget))
	}
	return rp, results, nil
}

// dropOldSlotStep drops, on up, the slot a repointed cascade streamed
// through there.
func dropOldSlotStep(c *cascade, t Timeouts, budget time.Duration) plan.Step {
	return plan.Step{ID: StepDropSlots, Node: c.upstream, Mutates: true, Timeout: t.Call, Budget: budget,
		Description:     fmt.Sprintf("%s: drop slot %s, which %s streamed through (it would retain WAL on %s for nothing)", c.upstream, c.oldSlot, c.node, c.upstream),
		UndoDescription: fmt.Sprintf("%s: create slot %s again", c.upstream, c.oldSlot),
		Run:             c.dropOld, Undo: c.recreateOld}
}

// cascadeSlotLeft is the slot an interrupted cascade repoint of node
// (planRepointCascade) meant to drop on its former upstream, and that
// upstream, when that drop did not happen: the slot node streamed through
// there, as its repoint step captured it. "" when there is none.
func cascadeSlotLeft(r *etcdlock.OpRecord, node string) (slot, on string) {
	for _, s := range r.Journal() {
		switch {
		case s.ID == StepRepoint+"-"+node:
			var c capturedSettings
			if decodeCaptured(s.Captured, &c) && c.Settings["primary_slot_name"] != nil {
				slot = *c.Settings["primary_slot_name"]
			}
		case s.ID == StepDropSlots && s.Node != node && s.Outcome != "done":
			on = s.Node
		}
	}
	if slot == "" || on == "" {
		return "", ""
	}
	return slot, on
}

// cascade is the state of planRepointCascade's steps.
type cascade struct {
	env            *Env
	node, upstream string
	primary        config.Node
	conninfo       string
	slot, oldSlot  string
	timeline       uint32
	captured       *pgctl.SettingsSnapshot
	droppedOld     bool
}

func (c *cascade) repoint(ctx context.Context) error {
	if c.captured == nil {
		s, err := c.env.Ctl.CaptureSettings(ctx, c.node, replicationSettings...)
		if err != nil {
			return err
		}
		c.captured = s
	}
	if err := captureSettings(ctx, c.captured); err != nil {
		return err
	}
	host, port, err := hostPort(c.primary)
	if err != nil {
		return err
	}
	if err := c.env.Ctl.Repoint(ctx, c.node, c.conninfo, c.slot); err != nil {
		return err
	}
	plan.Changed(ctx)
	err = pgctl.PollUntil(ctx, c.env.Clock, 5*time.Millisecond, func(ctx context.Context) (bool, error) {
		pid, h, p, err := c.env.Ctl.ReceiverUpstream(ctx, c.node)
		return pid != 0 && h == host && p == port, err
	}, fmt.Sprintf("%s's WAL receiver does not connect to %s after its primary_conninfo changed", c.node, c.primary.Name))
	if err != nil {
		return err
	}
	return c.env.Ctl.WaitStreaming(ctx, c.node, c.timeline)
}

// restore puts the captured settings back; the receiver then follows them
// (a reload changes primary_conninfo of a streaming replica).
func (c *cascade) restore(ctx context.Context) error {
	if c.captured == nil {
		return nil
	}
	return c.env.Ctl.RestoreSettings(ctx, c.node, c.captured)
}

// dropOld drops the slot node used on its former upstream, once no
// walsender holds it (its stream there ends when its receiver moved).
func (c *cascade) dropOld(ctx context.Context) error {
	err := pgctl.PollUntil(ctx, c.env.Clock, 10*time.Millisecond, func(ctx context.Context) (bool, error) {
		n, err := c.env.Ctl.TerminateWALSenders(ctx, c.upstream, c.oldSlot, "")
		return n == 0, err
	}, fmt.Sprintf("%s: slot %s stays in use", c.upstream, c.oldSlot))
	if err != nil {
		return err
	}
	c.droppedOld = true
	return c.env.Ctl.DropSlots(ctx, c.upstream, []string{c.oldSlot})
}

func (c *cascade) recreateOld(ctx context.Context) error {
	if !c.droppedOld {
		return nil
	}
	if _, err := c.env.Ctl.CreateSlots(ctx, c.upstream, []string{c.oldSlot}); err != nil {
		return err
	}
	c.droppedOld = false
	return nil
}

// staleSlots are the slots a rejoined node kept from its time as primary,
// as the node has them: its inactive physical slots. When it cannot be
// read (stopped, say), the slots replctl would have made there, one per
// other node, dropped only if they exist.
func staleSlots(cfg *config.Config, n *topology.Node) ([]string, string) {
	if n != nil && n.Reachable && n.Slots != nil {
		var out []string
		for _, sl := range n.Slots {
			if sl.Type == "physical" && !sl.Active && !sl.Temporary {
				out = append(out, sl.Name)
			}
		}
		if len(out) == 0 {
			return nil, "it has none"
		}
		return out, joinNames(out)
	}
	var out []string
	for _, c := range cfg.Nodes {
		if n == nil || c.Name != n.Name {
			out = append(out, c.Name)
		}
	}
	return out, joinNames(out) + ", those of them that exist: it could not be read"
}

type rejoin struct {
	env      *Env
	primary  string
	node     string
	conninfo string
	timeline uint32
	stale    []string
	// stream bounds the wait until it streams (Timeouts.Stream).
	stream time.Duration
	// created is the slot the operation made for it, dropped on undo
	// unless the rejoin command ran (commandRan).
	created    []string
	commandRan bool
}

func (r *rejoin) run(ctx context.Context) error {
	// Set before the command starts: it may have rewound the node and
	// pointed it at the primary's slot even if it then fails.
	r.commandRan = true
	// The command runs to its end even when the lock is lost or the
	// step's budget passes meanwhile: cut off halfway, pg_rewind leaves
	// data files of both histories that no later rewind repairs (the
	// fault matrix saw it). It only ever makes the node a replica, so
	// finishing it without the lock is safe, and nothing after it runs
	// without the lock. It stays bounded by command_timeout, and dies
	// with replctl (pgctl.RunTied).
	_, err := r.env.Ctl.RunCommand(context.WithoutCancel(ctx), r.node, pgctl.ActionRejoin, map[string]string{
		"REPLCTL_PRIMARY_CONNINFO": r.conninfo,
		"REPLCTL_PRIMARY_SLOT":     r.node,
	})
	plan.Changed(ctx)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, r.stream)
	defer cancel()
	if err := r.env.Ctl.WaitStreaming(wctx, r.node, r.timeline); err != nil {
		return fmt.Errorf("%s does not stream from %s after rejoin: %w", r.node, r.primary, err)
	}
	return nil
}

func joinNames(n []string) string {
	s := slices.Clone(n)
	slices.Sort(s)
	out := ""
	for i, x := range s {
		if i > 0 {
			out += ", "
		}
		out += x
	}
	return out
}

// syncBack is the primary's synchronous standby list with node added back,
// when a replctl operation fenced node (a former primary that an emergency
// failover, or a switchover without rejoin, left out of the list) and the
// primary names its standbys: nil otherwise. The number stays the same,
// so adding the name can only make quorum easier to reach.
func syncBack(snap *topology.Snapshot, primary *topology.Node, node string) *topology.SyncStandbys {
	ss := primary.Settings.SyncStandbys
	if ss == nil || !ss.Enabled() || containsFold(ss.Names, node) || slices.Contains(ss.Names, "*") ||
		snap.Record == nil || !slices.Contains(snap.Record.Fenced, node) {
		return nil
	}
	out := *ss
	out.Names = append(slices.Clone(ss.Names), node)
	return &out
}

// syncRaise is the primary's synchronous standby list raised back to what
// the record's SyncRestore asks for, when node is the former primary whose
// fencing lowered it and the primary still has the lowered setting: the
// old primary's list and number, the primary replaced by node, as a
// switchover that rejoined node would have set it. nil otherwise (an
// operator who changed the setting since has the last word).
func syncRaise(snap *topology.Snapshot, primary *topology.Node, node string) *topology.SyncStandbys {
	if snap.Record == nil || snap.Record.SyncRestore == nil {
		return nil
	}
	r := snap.Record.SyncRestore
	if !strings.EqualFold(r.Node, node) || r.Primary != primary.Name {
		return nil
	}
	cur := ""
	if s := primary.Settings.SynchronousStandbyNames; s != nil {
		cur = *s
	}
	if topology.CanonicalSyncStandbyNames(cur) != topology.CanonicalSyncStandbyNames(r.Set) {
		return nil
	}
	var want *topology.SyncStandbys
	if r.Raise != "" {
		raise, err := topology.ParseSyncStandbyNames(r.Raise)
		if err != nil {
			return nil
		}
		want = &raise
	} else {
		before, err := topology.ParseSyncStandbyNames(r.Before)
		if err != nil || !before.Enabled() {
			return nil
		}
		want = adaptSync(before, primary.Name, node, true)
	}
	if !want.Enabled() || want.String() == topology.CanonicalSyncStandbyNames(cur) {
		return nil
	}
	return want
}

// syncRaiseStep raises the primary's synchronous replication back to want
// (syncRaise) once enough of its standbys stream, and clears the record's
// SyncRestore.
func syncRaiseStep(env *Env, snap *topology.Snapshot, primary *topology.Node, want *topology.SyncStandbys, t Timeouts, budget time.Duration) plan.Step {
	r := snap.Record.SyncRestore
	by := "an earlier operation"
	if r.OperationID != "" {
		by = "operation " + r.OperationID
	}
	w := want.String()
	return plan.Step{ID: StepSync, Node: primary.Name, Mutates: true, Timeout: t.Stream, Budget: budget,
		Description: fmt.Sprintf("%s: once %d of %s stream (timeout %s), raise synchronous replication back, which %s lowered from %s for want of %s: ALTER SYSTEM SET synchronous_standby_names = %s; SELECT pg_reload_conf()",
			primary.Name, want.Num, strings.Join(want.Names, ", "), t.Stream, by, pgctl.QuoteLiteral(r.Before), r.Node, pgctl.QuoteLiteral(w)),
		Run: func(ctx context.Context) error {
			return setSyncOnceStreaming(ctx, env, primary.Name, want.Names, want.Num, w,
				fmt.Sprintf("fewer than %d of %s stream from %s: synchronous_standby_names left at %s rather than let commits hang; run `replctl rejoin %s` again once they stream",
					want.Num, strings.Join(want.Names, ", "), primary.Name, pgctl.QuoteLiteral(r.Set), r.Node),
				func(s *etcdlock.State) { s.Sync.StandbyNames, s.SyncRestore = w, nil })
		}}
}

// setSyncOnceStreaming sets primary's synchronous_standby_names to want
// once num of names stream from it (failing with notYet rather than let
// commits hang when they do not within the step's time), then records it:
// record changes the cluster record, whose sync settings are stamped seen
// now.
func setSyncOnceStreaming(ctx context.Context, env *Env, primary string, names []string, num int, want, notYet string, record func(*etcdlock.State)) error {
	if err := streamingIn(ctx, env, primary, names, num, notYet); err != nil {
		return err
	}
	return setSync(ctx, env, primary, want, record)
}

// setSync sets primary's synchronous_standby_names to want and records it:
// record changes the cluster record, whose sync settings are stamped seen
// now.
func setSync(ctx context.Context, env *Env, primary, want string, record func(*etcdlock.State)) error {
	if err := env.Ctl.SetSyncStandbys(ctx, primary, want); err != nil {
		return err
	}
	_, _, err := env.Lock.UpdateState(ctx, func(s *etcdlock.State) error {
		record(s)
		s.Sync.SeenAt = time.Now()
		return nil
	})
	return err
}

// streamingIn waits until num of names stream from primary.
func streamingIn(ctx context.Context, env *Env, primary string, names []string, num int, notYet string) error {
	return pgctl.PollUntil(ctx, env.Clock, 50*time.Millisecond, func(ctx context.Context) (bool, error) {
		n, err := env.Ctl.StreamingStandbys(ctx, primary, names)
		return len(n) >= num, err
	}, notYet)
}

// unfenceStep removes node's fence mark from the cluster record.
func unfenceStep(env *Env, node string, t Timeouts, budget time.Duration) plan.Step {
	return plan.Step{ID: StepUnfence, Mutates: true, Timeout: t.Etcd, Budget: min(budget, t.Etcd),
		Description: fmt.Sprintf("etcd: unmark %s fenced in the cluster record", node),
		Run: func(ctx context.Context) error {
			_, _, err := env.Lock.UpdateState(ctx, func(s *etcdlock.State) error {
				s.Unfence(node)
				return nil
			})
			return err
		}}
}

// rejoinLockStep takes the cluster lock for a rejoin.
func rejoinLockStep(cfg *config.Config, env *Env) plan.Step {
	return plan.Step{ID: StepLock, Description: fmt.Sprintf("take the cluster lock (%s/%s/lock, ttl %s), re-read the topology under it and re-run the preflight", cfg.Etcd.Prefix, cfg.Cluster, cfg.Lock.TTL),
		Run: func(ctx context.Context) error { return env.Acquire(ctx) }}
}

// slotStep creates node's physical slot on the primary p if missing,
// recording in created what it made. Its undo drops that, unless keep
// (when set) returns why the slot must stay.
func slotStep(env *Env, p *topology.Node, node string, t Timeouts, budget time.Duration, created *[]string, keep func() error) plan.Step {
	return plan.Step{ID: StepCreateSlots, Node: p.Name, Mutates: true, Timeout: t.Call, Budget: budget,
		Description:     fmt.Sprintf("%s: create physical replication slot %s for it, if missing", p.Name, node),
		UndoDescription: fmt.Sprintf("%s: drop slot %s if this operation created it and it is inactive", p.Name, node),
		Run: func(ctx context.Context) error {
			if err := captureSlots(ctx, []string{node}, p); err != nil {
				return err
			}
			made, err := env.Ctl.CreateSlots(ctx, p.Name, []string{node})
			plan.Changed(ctx)
			*created = append(*created, made...)
			return err
		},
		Undo: func(ctx context.Context) error {
			if len(*created) == 0 {
				return nil
			}
			if keep != nil {
				if err := keep(); err != nil {
					return err
				}
			}
			if err := env.Ctl.DropSlots(ctx, p.Name, *created); err != nil {
				return err
			}
			*created = nil
			return nil
		}}
}
