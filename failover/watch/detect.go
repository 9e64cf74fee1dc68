package watch

import (
	"fmt"
	"time"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/topology"
)

// Verdict is what the watcher concludes about the primary from its looks.
type Verdict string

// Verdicts, after Orchestrator's failure analysis: a primary this watcher
// cannot reach is only dead when no replica hears from it either, and only
// after the confirmation window.
const (
	// Healthy: the primary answers and accepts writes.
	Healthy Verdict = "healthy"
	// Unreachable: the watcher cannot reach the primary but a replica still
	// receives WAL from it. Not dead: no failover.
	Unreachable Verdict = "unreachable"
	// Suspect: unreachable and no replica hears it, for less than the
	// confirmation window.
	Suspect Verdict = "suspect"
	// Dead: Suspect for the whole confirmation window.
	Dead Verdict = "dead"
	// NotWritable: the primary answers but does not accept writes (in
	// recovery, read-only or SQL-fenced) outside any operation: something
	// a human did; the watcher reports it and does not act.
	NotWritable Verdict = "not_writable"
	// Unknown: no node can be named the primary (no record, no replica
	// points anywhere).
	Unknown Verdict = "unknown"
)

// Analysis is one look judged.
type Analysis struct {
	Primary string
	Verdict Verdict
	// Evidence is the emergency failover's own judgement of the probes
	// and the replicas' receivers (set when the primary did not answer).
	Evidence *failover.Evidence
	// SuspectSince is when the evidence first became conclusive.
	SuspectSince time.Time
	// Probes are the failed probes of the primary since it stopped
	// answering: the confirmation an automatic failover passes to the
	// driver instead of probing over the window again.
	Probes []failover.ProbeAttempt
	// Returned are nodes the record marks fenced that accept writes again
	// (a crashed old primary restarted by its init system).
	Returned []string
	// Fenced are the nodes the record marks fenced that answer: rejoin
	// candidates.
	Fenced []string
	// Message says it in a sentence.
	Message string
}

// detector keeps what one look cannot tell: since when the primary has been
// silent, and the probes that failed.
type detector struct {
	primary string
	probes  []failover.ProbeAttempt
	since   time.Time
}

// maxProbes bounds the probes kept as evidence: enough to show the window.
const maxProbes = 20

// observe judges one look. It is pure but for the detector's memory.
func (d *detector) observe(cfg *config.Config, obs failover.Observation, now time.Time) Analysis {
	var a Analysis
	snap := obs.Snap
	if snap == nil {
		a.Verdict, a.Message = Unknown, "no look at the cluster"
		return a
	}
	for _, n := range snap.Nodes {
		if !n.Fenced || !n.Reachable {
			continue
		}
		a.Fenced = append(a.Fenced, n.Name)
		if n.Writable() {
			a.Returned = append(a.Returned, n.Name)
		}
	}
	old, err := failover.OldPrimary(cfg, snap, obs.State)
	if err != nil {
		d.reset("")
		a.Verdict, a.Message = Unknown, err.Error()
		return a
	}
	if old != d.primary {
		d.reset(old)
	}
	a.Primary = old
	n := snap.Node(old)
	if n == nil {
		a.Verdict, a.Message = Unknown, fmt.Sprintf("%s is not a configured node", old)
		return a
	}
	if n.Reachable {
		d.reset(old)
		if n.Writable() {
			a.Verdict, a.Message = Healthy, fmt.Sprintf("%s accepts writes", old)
		} else {
			a.Verdict, a.Message = NotWritable, fmt.Sprintf("%s answers but does not accept writes (%s): not a failure the watcher repairs", old, n.State)
		}
		return a
	}
	d.probes = append(d.probes, failover.AttemptOf(n.NodeStatus))
	if len(d.probes) > maxProbes {
		d.probes = d.probes[len(d.probes)-maxProbes:]
	}
	ev := failover.JudgeEvidence(cfg, snap, old, d.probes)
	a.Evidence = &ev
	a.Probes = append([]failover.ProbeAttempt(nil), d.probes...)
	if !ev.Conclusive {
		d.since = time.Time{}
		a.Verdict, a.Message = Unreachable, "unreachable, not dead: "+ev.Verdict
		return a
	}
	if d.since.IsZero() {
		d.since = now
	}
	a.SuspectSince = d.since
	window := cfg.Failover.ConfirmWindow
	if left := d.since.Add(window).Sub(now); left > 0 {
		a.Verdict = Suspect
		a.Message = fmt.Sprintf("%s; confirming for %s more (failover.confirm_window %s)", ev.Verdict, left.Round(10*time.Millisecond), window)
		return a
	}
	a.Verdict = Dead
	a.Message = fmt.Sprintf("%s, for the whole confirmation window (%s)", ev.Verdict, window)
	return a
}

func (d *detector) reset(primary string) {
	d.primary, d.probes, d.since = primary, nil, time.Time{}
}

// LossDecision decides whether an automatic failover whose preflight
// failed only on the data-loss checks may go on with --allow-data-loss:
// only when watch.max_data_loss is set and the measured loss (the last
// primary LSN a watcher saw minus the candidate's received LSN) is within
// it. It returns the decision and why.
func LossDecision(cfg *config.Config, failedChecks []string, seenPrimary string, seenLSN *topology.LSN, old string, candReceived *topology.LSN) (bool, string) {
	for _, c := range failedChecks {
		if c != "sync_proof" && c != "most_advanced" {
			return false, fmt.Sprintf("the preflight failed on %s, which no data-loss bound overrides", c)
		}
	}
	bound := cfg.Watch.MaxDataLoss
	if bound == nil || *bound == 0 {
		return false, "no synchronous quorum proves the candidate has every acknowledged commit, and watch.max_data_loss is 0: set watch.max_data_loss (e.g. 1MB) to allow an automatic failover of an asynchronous cluster, or fail over by hand"
	}
	if seenPrimary != old || seenLSN == nil {
		return false, fmt.Sprintf("no watcher saw %s's last LSN, so the data loss cannot be measured against watch.max_data_loss", old)
	}
	if candReceived == nil {
		return false, "the candidate's received LSN is unknown, so the data loss cannot be measured"
	}
	loss := topology.LagBytes(*seenLSN, *candReceived)
	if loss > uint64(*bound) {
		return false, fmt.Sprintf("the candidate lacks %s of WAL the primary had (last seen at %s, candidate received %s), over watch.max_data_loss %s",
			config.Size(loss), seenLSN, candReceived, *bound)
	}
	return true, fmt.Sprintf("at most %s of WAL lost (last seen at %s, candidate received %s), within watch.max_data_loss %s",
		config.Size(loss), seenLSN, candReceived, *bound)
}
