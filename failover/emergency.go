package failover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/etcdlock"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/failover/plan"
	"github.com/replctl/replctl/topology"
)

// Emergency step IDs.
const (
	StepFenceCommand = "fence-command"
	StepFenceSQL     = "fence-sql"
	StepMarkFenced   = "mark-fenced"
	StepReplayAll    = "replay-received"
)

// EmergencyOptions are the parameters of an emergency failover.
type EmergencyOptions struct {
	// Candidate is the node the operator named; "" lets replctl choose.
	Candidate      string
	AllowDataLoss  bool
	Force          bool // override the evidence that the primary is dead
	NoFence        bool
	CatchupTimeout time.Duration
	// CallTimeout bounds one SQL statement (--timeout).
	CallTimeout time.Duration
}

// ProbeAttempt is one attempt to reach the old primary.
type ProbeAttempt struct {
	At        time.Time `json:"at"`
	Reachable bool      `json:"reachable"`
	Writable  bool      `json:"writable"`
	Error     string    `json:"error,omitempty"`
}

// ReceiverEvidence is what one replica's WAL receiver says about the old
// primary.
type ReceiverEvidence struct {
	Node   string `json:"node"`
	Status string `json:"status"`
	// SilenceSeconds is how long since the receiver last heard from its
	// upstream (on the replica's clock), null when unknown.
	SilenceSeconds *float64 `json:"silence_seconds"`
	// ThresholdSeconds is the silence after which a streaming receiver
	// counts as having lost the primary.
	ThresholdSeconds float64 `json:"threshold_seconds"`
	HearsPrimary     bool    `json:"hears_primary"`
	ReceiveLSN       string  `json:"receive_lsn,omitempty"`
	ReplayLSN        string  `json:"replay_lsn,omitempty"`
	Timeline         *uint32 `json:"timeline"`
}

// Evidence is the proof, or not, that the old primary is dead rather than
// merely unreachable from here.
type Evidence struct {
	OldPrimary string             `json:"old_primary"`
	Probes     []ProbeAttempt     `json:"probes"`
	Receivers  []ReceiverEvidence `json:"receivers"`
	// Conclusive is true when every probe failed and no replica hears the
	// primary.
	Conclusive bool   `json:"conclusive"`
	Verdict    string `json:"verdict"`
	// ConclusiveInSeconds says when inconclusive silence becomes conclusive.
	ConclusiveInSeconds *float64 `json:"conclusive_in_seconds,omitempty"`
}

// OldPrimary finds the primary an emergency failover replaces: the one the
// cluster record names, else the node most reachable replicas point to.
func OldPrimary(cfg *config.Config, snap *topology.Snapshot, st *etcdlock.State) (string, error) {
	if st != nil && st.Primary != "" {
		if _, ok := cfg.Node(st.Primary); ok {
			return st.Primary, nil
		}
	}
	votes := map[string]int{}
	for _, n := range snap.Nodes {
		if n.Member() && n.Role == topology.RoleReplica {
			if u := topology.UpstreamOf(cfg, n); u != "" {
				votes[u]++
			}
		}
	}
	best, bestN := "", 0
	for name, v := range votes {
		if un := snap.Node(name); un != nil && un.Role == topology.RoleReplica && un.Reachable {
			continue // a cascade's upstream is a replica, not the lost primary
		}
		if v > bestN || v == bestN && name < best {
			best, bestN = name, v
		}
	}
	if best == "" {
		return "", errors.New("cannot tell which node was the primary: no cluster record in etcd and no replica's primary_conninfo names a configured node")
	}
	return best, nil
}

// directReplicaOf reports whether replica n replicates from the old primary
// rather than cascading from another member. A replica whose upstream
// matches no configured node counts: its receiver may be talking to the old
// primary under an address the configuration spells differently, and
// ignoring it would hide a live primary.
func directReplicaOf(cfg *config.Config, snap *topology.Snapshot, n *topology.Node, old string) bool {
	u := topology.UpstreamOf(cfg, n)
	if u == "" || u == old {
		return true
	}
	un := snap.Node(u)
	return un == nil || !un.Reachable || un.Role != topology.RoleReplica
}

// silenceThreshold is how long a streaming WAL receiver may go without a
// message from a live primary. An idle primary's walsender stays silent
// while the standby keeps replying; the receiver itself asks for a reply
// after wal_receiver_timeout/2 of silence, so a live link is never quiet
// much longer than that. Without a receiver timeout, the sender's keepalive
// every wal_sender_timeout/2 bounds it.
func silenceThreshold(n *topology.Node) time.Duration {
	ms := func(p *int64) time.Duration {
		if p == nil {
			return 0
		}
		return time.Duration(*p) * time.Millisecond
	}
	rt, st := ms(n.Settings.WALReceiverTimeoutMS), ms(n.Settings.WALSenderTimeoutMS)
	base := rt / 2
	if base <= 0 {
		base = st / 2
	}
	if base <= 0 {
		base = 30 * time.Second
	}
	slack := min(2*time.Second, max(base/2, 500*time.Millisecond))
	return base + slack
}

// JudgeEvidence weighs probe attempts and the replicas' receivers. It is
// pure: the I/O is GatherEvidence's.
func JudgeEvidence(cfg *config.Config, snap *topology.Snapshot, old string, probes []ProbeAttempt) Evidence {
	ev := Evidence{OldPrimary: old, Probes: probes}
	for _, p := range probes {
		if p.Reachable {
			ev.Verdict = fmt.Sprintf("%s answered a probe at %s: it is not dead", old, p.At.Format("15:04:05.000"))
			return ev
		}
	}
	var wait time.Duration
	var hearing []string
	for _, n := range snap.Nodes {
		if !n.Member() || n.Role != topology.RoleReplica || !directReplicaOf(cfg, snap, n, old) {
			continue
		}
		re := ReceiverEvidence{Node: n.Name, Timeline: n.Timeline, ThresholdSeconds: silenceThreshold(n).Seconds()}
		if n.ReceiveLSN != nil {
			re.ReceiveLSN = n.ReceiveLSN.String()
		}
		if n.ReplayLSN != nil {
			re.ReplayLSN = n.ReplayLSN.String()
		}
		if w := n.WALReceiver; w != nil {
			re.Status = w.Status
			if re.Status == "" {
				// A receiver process runs (its pid is visible to anyone)
				// but the role may not read its state: it may be
				// streaming from a live primary.
				re.Status = "unknown"
			}
			if w.LastMsgReceiptTime != nil && n.ServerTime != nil {
				s := n.ServerTime.Sub(*w.LastMsgReceiptTime).Seconds()
				re.SilenceSeconds = &s
			}
		}
		if re.Status == "" {
			re.Status = "stopped"
		}
		if re.Status == "unknown" {
			re.HearsPrimary = true
			hearing = append(hearing, n.Name+" (a WAL receiver runs; its state is unreadable: grant pg_monitor)")
		}
		if re.Status == "streaming" {
			thr := silenceThreshold(n)
			if re.SilenceSeconds == nil {
				re.HearsPrimary = true
				hearing = append(hearing, n.Name+" (streaming; silence unknown: grant pg_monitor)")
			} else if silence := time.Duration(*re.SilenceSeconds * float64(time.Second)); silence < thr {
				re.HearsPrimary = true
				hearing = append(hearing, fmt.Sprintf("%s (streaming, last message %.1fs ago)", n.Name, *re.SilenceSeconds))
				wait = max(wait, thr-silence)
			}
		}
		ev.Receivers = append(ev.Receivers, re)
	}
	if len(hearing) > 0 {
		ev.Verdict = fmt.Sprintf("not conclusive: %s still hear%s from %s; the primary may be alive and only unreachable from here",
			strings.Join(hearing, ", "), map[bool]string{true: "s", false: ""}[len(hearing) == 1], old)
		if wait > 0 {
			s := wait.Seconds()
			ev.ConclusiveInSeconds = &s
			ev.Verdict += fmt.Sprintf(" (if it is hung, the evidence becomes conclusive in about %.0fs)", s+0.5)
		}
		return ev
	}
	ev.Conclusive = true
	ev.Verdict = fmt.Sprintf("%s is dead: %d probe(s) failed and no replica hears from it", old, len(probes))
	if len(ev.Receivers) == 0 {
		ev.Verdict = fmt.Sprintf("%s is unreachable (%d probe(s) failed) and no reachable replica streamed from it", old, len(probes))
	}
	return ev
}

// SyncProof is the synchronous replication argument that the candidate has
// every acknowledged commit, or why it cannot be made.
type SyncProof struct {
	Setting string `json:"synchronous_standby_names"`
	Commit  string `json:"synchronous_commit"`
	Sync    bool   `json:"sync"`
	Proven  bool   `json:"proven"`
	// Unknown means no operation recorded the primary's settings: whether
	// acknowledged commits were synchronous cannot be told, which blocks a
	// failover like a failed proof.
	Unknown  bool     `json:"unknown,omitempty"`
	Examined []string `json:"examined"`
	Needed   int      `json:"needed"`
	Message  string   `json:"message"`
}

// ProveSync applies the quorum rule: with k synchronous acknowledgements
// over n named standbys, examining n-k+1 of them sees at least one holding
// every acknowledged commit, so the most advanced examined node has them
// all. examined are the named standbys whose receive position is known.
func ProveSync(st *etcdlock.State, examined func(name string) bool, best string, lastRecorded string) SyncProof {
	if st == nil || (st.Sync.StandbyNames == "" && st.Sync.Commit == "") {
		return SyncProof{Unknown: true, Message: "no synchronous replication settings recorded (no replctl operation has saved them): unknown whether acknowledged commits were synchronous" + lossWindow(lastRecorded)}
	}
	p := SyncProof{Setting: st.Sync.StandbyNames, Commit: st.Sync.Commit}
	ss, err := topology.ParseSyncStandbyNames(st.Sync.StandbyNames)
	strong := st.Sync.Commit == "on" || st.Sync.Commit == "remote_apply"
	if err != nil || !ss.Enabled() || !strong {
		p.Message = fmt.Sprintf("replication was asynchronous (synchronous_standby_names %s, synchronous_commit %s): acknowledged commits may be missing%s",
			pgctl.QuoteLiteral(st.Sync.StandbyNames), orDash(st.Sync.Commit), lossWindow(lastRecorded))
		return p
	}
	p.Sync = true
	if slices.Contains(ss.Names, "*") {
		p.Message = fmt.Sprintf("%s uses '*': the standbys that acknowledged cannot be enumerated, so no proof", ss.String())
		return p
	}
	n, k := len(ss.Names), ss.Num
	p.Needed = n - k + 1
	for _, name := range ss.Names {
		if examined(name) {
			p.Examined = append(p.Examined, name)
		}
	}
	if len(p.Examined) >= p.Needed {
		p.Proven = true
		p.Message = fmt.Sprintf("examined %d of %d quorum standbys, %s %d: every acknowledged commit is on %s", len(p.Examined), n, ss.Method, k, best)
		return p
	}
	p.Message = fmt.Sprintf("examined only %d of %d quorum standbys (%s); %s %d needs %d: an acknowledged commit may be on a standby not examined",
		len(p.Examined), n, strings.Join(p.Examined, ", "), ss.Method, k, p.Needed)
	return p
}

func lossWindow(lastRecorded string) string {
	if lastRecorded == "" {
		return ""
	}
	return "; " + lastRecorded
}

func orDash(s string) string {
	if s == "" {
		return "unset"
	}
	return s
}

// EmergencyChoice is the candidate decision with what it would cost.
type EmergencyChoice struct {
	Ranking
	// AheadBytes is how much WAL some reachable node has that the chosen
	// one lacks: what promoting it would lose.
	AheadBytes uint64 `json:"ahead_bytes"`
	AheadNode  string `json:"ahead_node,omitempty"`
	Proof      SyncProof
}

// EmergencyPreflight chooses the candidate among the lost primary's
// reachable replicas (highest received LSN, then priority, then name) and
// checks everything that must hold before anything changes. It is pure.
func EmergencyPreflight(cfg *config.Config, snap *topology.Snapshot, st *etcdlock.State, old string, ev Evidence, o EmergencyOptions) (EmergencyChoice, []checks.Result) {
	var out []checks.Result
	add := func(name, node string, ok bool, okMsg, badMsg, hint string) {
		r := checks.Result{Name: name, Node: node, Level: checks.OK, Code: "ok", Message: okMsg}
		if !ok {
			r.Level, r.Code, r.Message, r.Hint = checks.Critical, name, badMsg, hint
		}
		out = append(out, r)
	}
	ch := EmergencyChoice{Ranking: Ranking{Rejected: map[string]string{}}}
	if p := snap.PrimaryNode(); p != nil {
		add("primary_down", p.Name, false, "", p.Name+" is a reachable, writable primary",
			"--emergency is for a dead primary: use a planned switchover (replctl promote without --emergency)")
		return ch, out
	}
	switch {
	case ev.Conclusive:
		add("primary_dead", old, true, ev.Verdict, "", "")
	case o.Force:
		out = append(out, checks.Result{Name: "primary_dead", Node: old, Level: checks.Warning, Code: "forced",
			Message: "FORCED past the evidence: " + ev.Verdict, Hint: "you asserted the primary is dead; if it is alive this creates a split brain unless it is fenced"})
	default:
		add("primary_dead", old, false, "", ev.Verdict, "wait, check the primary and the network, or fence it yourself and pass --force")
	}

	var reps []*topology.Node
	timelines := map[uint32][]string{}
	for _, n := range snap.Nodes {
		if n.Name == old {
			continue
		}
		if !n.Reachable {
			ch.Rejected[n.Name] = "unreachable"
			continue
		}
		if n.Foreign {
			ch.Rejected[n.Name] = "foreign node"
			continue
		}
		if n.Role != topology.RoleReplica {
			ch.Rejected[n.Name] = "not a replica"
			continue
		}
		reps = append(reps, n)
		if n.Timeline != nil {
			timelines[*n.Timeline] = append(timelines[*n.Timeline], n.Name)
		}
	}
	add("timelines", "", len(timelines) <= 1, "replicas agree on the timeline",
		fmt.Sprintf("replicas are on different timelines (%s)", timelineList(timelines)),
		"the newest-timeline replica may not have the old primary's last WAL: investigate before promoting")

	var unknown []string
	var eligible []*topology.Node
	for _, n := range reps {
		if receivePos(n) == nil {
			unknown = append(unknown, n.Name)
			ch.Rejected[n.Name] = "receive position unknown (grant pg_monitor)"
			continue
		}
		switch {
		case n.Priority <= 0:
			ch.Rejected[n.Name] = "priority 0 (never promote)"
		case !directReplicaOf(cfg, snap, n, old):
			ch.Rejected[n.Name] = "does not replicate directly from " + old
		default:
			eligible = append(eligible, n)
		}
	}
	add("positions_known", strings.Join(unknown, ","), len(unknown) == 0, "every reachable replica's received position is known",
		"cannot read the received position of "+strings.Join(unknown, ", ")+": the most advanced replica is ambiguous",
		"grant pg_monitor to replctl's role, or pass --allow-data-loss")
	if o.AllowDataLoss && len(unknown) > 0 {
		out[len(out)-1].Level = checks.Warning
	}
	rankByReceived(eligible)
	var chosen *topology.Node
	if o.Candidate != "" {
		chosen = snap.Node(o.Candidate)
		if chosen == nil || !slices.Contains(eligible, chosen) {
			why := ch.Rejected[o.Candidate]
			if why == "" {
				why = "not a configured replica"
			}
			add("candidate", o.Candidate, false, "", fmt.Sprintf("%s cannot be promoted: %s", o.Candidate, why), "name an eligible replica, or let replctl choose")
			return ch, out
		}
		ch.Why = "named by the operator"
	} else if len(eligible) > 0 {
		chosen = eligible[0]
		ch.Why = fmt.Sprintf("highest received position %s among replicas of %s, priority %d", receivePos(chosen), old, chosen.Priority)
	}
	if chosen == nil {
		add("candidate", "", false, "", "no eligible replica", "bring a replica of "+old+" with priority > 0 back")
		return ch, out
	}
	ch.Chosen = chosen.Name
	for _, n := range eligible {
		if n != chosen {
			ch.Rejected[n.Name] = fmt.Sprintf("received up to %s", receivePos(n))
		}
	}
	for _, n := range reps {
		if pos := receivePos(n); pos != nil && *pos > *receivePos(chosen) {
			if d := uint64(*pos - *receivePos(chosen)); d > ch.AheadBytes {
				ch.AheadBytes, ch.AheadNode = d, n.Name
			}
		}
	}
	ok := ch.AheadBytes == 0
	r := checks.Result{Name: "most_advanced", Node: chosen.Name, Level: checks.OK, Code: "ok",
		Message: fmt.Sprintf("%s has received the most WAL of all reachable replicas", chosen.Name)}
	if !ok {
		r.Level, r.Code = checks.Critical, "data_loss"
		r.Message = fmt.Sprintf("%s is %s ahead of %s: promoting %s would lose that WAL", ch.AheadNode, config.HumanBytes(ch.AheadBytes), chosen.Name, chosen.Name)
		r.Hint = "let replctl choose, or pass --allow-data-loss"
		if o.AllowDataLoss {
			r.Level = checks.Warning
		}
	}
	out = append(out, r)

	examined := func(name string) bool {
		n := snap.Node(name)
		return n != nil && n.Reachable && n.Role == topology.RoleReplica && receivePos(n) != nil
	}
	last := ""
	if st != nil && st.Primary == old && st.LSN != 0 {
		last = fmt.Sprintf("%s was last recorded at %s; %s has received up to %s", old, st.LSN, chosen.Name, receivePos(chosen))
	}
	ch.Proof = ProveSync(st, examined, chosen.Name, last)
	if ch.Proof.Proven && ch.AheadBytes > 0 {
		// The quorum rule puts every acknowledged commit on the most
		// advanced examined node, which is not the one chosen.
		ch.Proof.Proven = false
		ch.Proof.Message = fmt.Sprintf("examined %d quorum standbys, but %s is %s ahead of %s: acknowledged commits may be only on %s",
			len(ch.Proof.Examined), ch.AheadNode, config.HumanBytes(ch.AheadBytes), chosen.Name, ch.AheadNode)
	}
	pr := checks.Result{Name: "sync_proof", Node: chosen.Name, Level: checks.OK, Code: "ok", Message: ch.Proof.Message}
	switch {
	case ch.Proof.Unknown:
		pr.Level, pr.Code = checks.Critical, "sync_unknown"
		pr.Hint = "every replctl operation that takes the lock records them (a switchover, a rejoin, a drill); without that record, pass --allow-data-loss to accept that acknowledged commits may be lost"
		if o.AllowDataLoss {
			pr.Level = checks.Warning
		}
	case ch.Proof.Sync && !ch.Proof.Proven:
		pr.Level, pr.Code, pr.Hint = checks.Critical, "sync_proof", "bring more quorum standbys back, or pass --allow-data-loss"
		if o.AllowDataLoss {
			pr.Level = checks.Warning
		}
	case !ch.Proof.Sync:
		pr.Level, pr.Code = checks.Warning, "async"
	}
	out = append(out, pr)
	if !o.NoFence {
		if cn, _ := cfg.Node(old); cn.Commands.Fence == "" {
			out = append(out, checks.Result{Name: "fence", Node: old, Level: checks.Warning, Code: "no_fence_command",
				Message: "no commands.fence (STONITH): the old primary is fenced only by SQL if reachable and by the mark in the cluster record",
				Hint:    "configure commands.fence (power off, cut its network, stop its service)"})
		}
	}
	return ch, out
}

func timelineList(m map[uint32][]string) string {
	var parts []string
	for tl, names := range m {
		parts = append(parts, fmt.Sprintf("%d: %s", tl, strings.Join(names, ", ")))
	}
	slices.Sort(parts)
	return strings.Join(parts, "; ")
}

// BuildEmergencyPlan builds the failover from the dead old primary to
// candidate. It is pure like BuildSwitchoverPlan.
func BuildEmergencyPlan(cfg *config.Config, snap *topology.Snapshot, st *etcdlock.State, old, candidate string, o EmergencyOptions, env *Env) (*plan.Plan, error) {
	oldNode, ok := cfg.Node(old)
	if !ok {
		return nil, fmt.Errorf("old primary %q is not configured", old)
	}
	cand, ok := cfg.Node(candidate)
	if !ok {
		return nil, fmt.Errorf("candidate %q is not configured", candidate)
	}
	if o.CatchupTimeout <= 0 {
		o.CatchupTimeout = 30 * time.Second
	}
	cn := snap.Node(candidate)
	sw := newSwitchover(env, cfg, oldNode, cand, SwitchoverOptions{Candidate: candidate, CatchupTimeout: o.CatchupTimeout, CallTimeout: o.CallTimeout}, cn)
	var ahead []string
	p := &plan.Plan{Kind: "failover", Candidate: candidate, Primary: old}
	for _, n := range snap.Nodes {
		if n.Member() && n.Role == topology.RoleReplica && n.Name != candidate && directReplicaOf(cfg, snap, n, old) {
			// A replica that received WAL the candidate lacks (--allow-data-loss)
			// cannot follow its timeline: repointing it would only wait for a
			// stream that never comes. It needs a rewind.
			if cn != nil && receivePos(n) != nil && receivePos(cn) != nil && *receivePos(n) > *receivePos(cn) {
				ahead = append(ahead, n.Name)
				continue
			}
			sw.others = append(sw.others, n)
			sw.slots = append(sw.slots, slotFor(n))
			// Every replica lost its stream with the primary; only those
			// whose replay will not ask for WAL soon are not waited for.
			if why := whyBehind(n, false); why != "" {
				sw.behind[n.Name] = why
				p.Notes = append(p.Notes, fmt.Sprintf("%s: %s: it is repointed at %s and the setting verified, but not waited for; it follows %s once it next waits for WAL (after SELECT pg_wal_replay_resume() when paused)",
					n.Name, why, candidate, candidate))
			}
		}
	}
	if st != nil {
		if ss, err := topology.ParseSyncStandbyNames(st.Sync.StandbyNames); err == nil && ss.Enabled() {
			sw.sync = adaptSync(ss, candidate, old, false)
			sw.syncOriginal = st.Sync.StandbyNames
		}
	}
	ttl := cfg.Lock.TTL
	t := sw.t
	add := func(s plan.Step) { p.Steps = append(p.Steps, s) }
	add(plan.Step{ID: StepLock, Description: fmt.Sprintf("take the cluster lock (%s/%s/lock, ttl %s), re-read the topology under it and re-check the evidence and the candidate",
		cfg.Etcd.Prefix, cfg.Cluster, ttl), Run: sw.acquire})
	if o.NoFence {
		p.Fence = "none"
		p.Notes = append(p.Notes, fmt.Sprintf("--no-fence: %s is NOT fenced. If it is alive it can still accept writes: a split brain.", old))
	} else {
		// The mark comes first: if replctl dies while fencing, etcd already
		// says the old primary must not take writes.
		add(sw.stepMarkFenced("failed primary, replaced by emergency failover", true))
		p.Fence = "record"
		if oldNode.Commands.Fence != "" {
			p.Fence = "command"
			add(plan.Step{ID: StepFenceCommand, Node: old, Mutates: true, Fences: true, Timeout: t.Command, Budget: sw.budget(5 * time.Second),
				Description: fmt.Sprintf("%s: fence (STONITH) with commands.fence (%s); its failure aborts the failover", old, oldNode.Commands.Fence),
				Run: func(ctx context.Context) error {
					_, err := env.Ctl.RunCommand(ctx, old, pgctl.ActionFence, nil)
					plan.Changed(ctx)
					return err
				}})
		}
		add(plan.Step{ID: StepFenceSQL, Node: old, Mutates: true, Fences: true, Timeout: 2 * t.Call, Budget: sw.budget(2 * t.Call),
			Description: fmt.Sprintf("%s: SQL fence in case it is reachable after all (%s); only a failure to connect counts as unreachable, any other error stops the failover", old, strings.Join(pgctl.SQLFenceSQL, "; ")),
			Run:         sw.fenceDeadSQL})
		p.Notes = append(p.Notes, fmt.Sprintf("an emergency fence is never lifted by replctl, even when the failover fails: %s stays fenced until `replctl rejoin %s`", old, old))
	}
	if len(sw.slots) > 0 {
		add(sw.stepCreateSlots())
	}
	add(plan.Step{ID: StepReplayAll, Node: candidate, Timeout: t.Catchup,
		Description: fmt.Sprintf("%s: wait until it has replayed everything it received (timeout %s)", candidate, t.Catchup),
		Run:         sw.replayReceived})
	add(sw.stepPromote())
	add(sw.stepVerify())
	if h := cfg.Hooks.PostPromote; h != "" {
		add(sw.stepHook())
	}
	add(sw.stepRecord())
	for _, n := range sw.others {
		st, err := sw.stepRepoint(n)
		if err != nil {
			return nil, err
		}
		add(st)
	}
	add(sw.stepCheckpointPromoted())
	if sw.sync != nil && len(sw.sync.Names) > 0 {
		add(sw.stepSync())
	} else if sw.sync != nil {
		p.Notes = append(p.Notes, fmt.Sprintf("no standby is left for synchronous_standby_names %s: %s runs asynchronous until replicas are added", pgctl.QuoteLiteral(sw.syncOriginal), candidate))
	}
	p.Notes = append(p.Notes, RejoinAdvice(cfg, old, candidate, false))
	for _, name := range ahead {
		p.Notes = append(p.Notes, fmt.Sprintf("%s received WAL that %s lacks and cannot follow it: it is left as it is; run `replctl rejoin %s` to rewind it into a replica of %s",
			name, candidate, name, candidate))
	}
	oldN := snap.Node(old)
	if oldN == nil {
		oldN = &topology.Node{NodeStatus: topology.NodeStatus{Name: old}}
	}
	p.Notes = append(p.Notes, logicalSlotNotes(oldN, cn)...)
	p.Notes = append(p.Notes, subscriptionNotes(old, cn)...)
	return p, nil
}

// fenceDeadSQL SQL-fences the old primary if it answers. Only a failure to
// connect means it is as unreachable as the evidence says; a node that
// accepted the connection and then failed or hung is alive enough to take
// writes, and promoting beside it is what the fence is there to prevent.
func (sw *switchover) fenceDeadSQL(ctx context.Context) error {
	err := sw.env.Ctl.FenceSQL(ctx, sw.primary.Name)
	plan.Changed(ctx)
	if errors.Is(err, pgctl.ErrConnect) {
		sw.env.progress(StepFenceSQL, "%s is unreachable, as expected: %v", sw.primary.Name, err)
		return nil
	}
	return err
}

// replayReceived waits until the candidate has replayed all it received: a
// node is never promoted with received WAL it has not applied.
func (sw *switchover) replayReceived(ctx context.Context) error {
	recv, _, err := sw.env.Ctl.ReceiveReplay(ctx, sw.candidate.Name)
	if err != nil {
		return err
	}
	sw.finalLSN, sw.streamEnded = recv, true
	return sw.waitReplay(ctx)
}

// ProbeOldPrimary tries to reach the old primary several times over the
// confirmation window: one lucky connection proves it alive. Attempts start
// on schedule, each bounded by timeout, rather than one after the other: a
// hung primary makes every attempt last its whole timeout, which would
// stretch the window to three timeouts.
func ProbeOldPrimary(ctx context.Context, prober topology.Prober, node config.Node, window, timeout time.Duration) []ProbeAttempt {
	const attempts = 3
	gap := window / (attempts - 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		a       ProbeAttempt
		aborted bool // cut short because another attempt succeeded
	}
	results := make([]*result, attempts)
	var wg sync.WaitGroup
	start := time.Now()
schedule:
	for i := range attempts {
		if i > 0 {
			select {
			case <-ctx.Done():
				break schedule
			case <-time.After(time.Until(start.Add(time.Duration(i) * gap))):
			}
		}
		wg.Go(func() {
			pctx, pcancel := context.WithTimeout(ctx, timeout)
			st := prober.Probe(pctx, node)
			pcancel()
			results[i] = &result{a: AttemptOf(st), aborted: !st.Reachable && ctx.Err() != nil}
			if st.Reachable {
				cancel()
			}
		})
	}
	wg.Wait()
	var out []ProbeAttempt
	for _, r := range results {
		if r != nil && !r.aborted {
			out = append(out, r.a)
		}
	}
	return out
}

// AttemptOf is one probe of the old primary as evidence.
func AttemptOf(st topology.NodeStatus) ProbeAttempt {
	a := ProbeAttempt{At: time.Now(), Reachable: st.Reachable, Writable: st.Reachable && !st.InRecovery, Error: st.Error}
	if st.ServerTime != nil {
		a.At = *st.ServerTime
	}
	return a
}

// EmergencyAnalysis is everything an emergency failover decided from one
// observation, for the dry-run's report and the run.
type EmergencyAnalysis struct {
	OldPrimary string          `json:"old_primary"`
	Evidence   Evidence        `json:"evidence"`
	Choice     EmergencyChoice `json:"choice"`
	Checks     []checks.Result `json:"checks"`
}

// PlanEmergency judges the evidence, chooses the candidate, runs the
// preflight and builds the plan from one observation (plus the probes made
// over the confirmation window, if any). Like PlanSwitchover it serves the
// dry-run, the run and the re-check under the lock.
func PlanEmergency(cfg *config.Config, snap *topology.Snapshot, st *etcdlock.State, probes []ProbeAttempt, o EmergencyOptions, env *Env) (*plan.Plan, *EmergencyAnalysis, error) {
	a := &EmergencyAnalysis{}
	old, err := OldPrimary(cfg, snap, st)
	if err != nil {
		a.Checks = []checks.Result{{Name: "old_primary", Level: checks.Critical, Code: "old_primary", Message: err.Error(),
			Hint: "check that the replicas' primary_conninfo names a configured node"}}
		return nil, a, nil
	}
	a.OldPrimary = old
	if n := snap.Node(old); n != nil {
		probes = append(probes, AttemptOf(n.NodeStatus))
	}
	a.Evidence = JudgeEvidence(cfg, snap, old, probes)
	a.Choice, a.Checks = EmergencyPreflight(cfg, snap, st, old, a.Evidence, o)
	if len(checks.Failed(a.Checks)) > 0 {
		return nil, a, nil
	}
	p, err := BuildEmergencyPlan(cfg, snap, st, old, a.Choice.Chosen, o, env)
	return p, a, err
}

// ConfirmDown probes the old primary over the confirmation window when the
// snapshot shows no primary and the old one unreachable, telling before
// (announce) whom it probes. It returns nil when there was nothing to
// confirm; after a probe the caller looks at the replicas again, since
// their receivers are judged as they are after the window.
func ConfirmDown(ctx context.Context, cfg *config.Config, snap *topology.Snapshot, st *etcdlock.State, timeout time.Duration, announce func(old string)) []ProbeAttempt {
	old, err := OldPrimary(cfg, snap, st)
	if err != nil || snap.PrimaryNode() != nil {
		return nil
	}
	n := snap.Node(old)
	if n == nil || n.Reachable {
		return nil
	}
	if announce != nil {
		announce(old)
	}
	cn, _ := cfg.Node(old)
	return ProbeOldPrimary(ctx, topology.PgProber{Timeout: timeout}, cn, cfg.Failover.ConfirmWindow, timeout)
}
