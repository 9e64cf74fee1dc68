package cmd

import (
	"context"
	"fmt"
	"io"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover"
)

// runEmergency is promote --emergency: probe the old primary over the
// confirmation window, look again, judge the evidence, choose the most
// advanced replica, and fail over under the lock.
func (o *PromoteOptions) runEmergency(ctx context.Context, cfg *config.Config, cli *clientv3.Client, obs observation,
	recordFn func(context.Context) (*recordInfo, error)) error {
	st := stateOf(obs)
	probes := failover.ConfirmDown(ctx, cfg, obs.Snap, st, o.Timeout, func(old string) {
		fmt.Fprintf(o.IO.ErrOut, "probing %s over %s (failover.confirm_window)...\n", old, cfg.Failover.ConfirmWindow)
	})
	if probes != nil {
		// The replicas' receivers are judged as they are now, after the window.
		obs = observe(ctx, cfg, o.Timeout, nil, recordFn)
		st = stateOf(obs)
	}
	eo := failover.EmergencyOptions{Candidate: o.Node, AllowDataLoss: o.AllowDataLoss, Force: o.Force, NoFence: o.NoFence, CatchupTimeout: o.CatchupTimeout, CallTimeout: o.Timeout}
	plan, an, perr := failover.PlanEmergency(cfg, obs.Snap, st, probes, eo, nil)
	lockCheck, err := lockGate(obs, cfg, o.DryRun, o.LockWait)
	if err != nil {
		return err
	}
	results := append(an.Checks, lockCheck)
	rep := &promoteReport{DryRun: o.DryRun, Cluster: cfg.Cluster, OperationPlan: failover.OperationPlan{Kind: "failover", Primary: an.OldPrimary,
		Candidate: an.Choice.Chosen, Checks: results, Plan: plan, Emergency: an}}
	if an.Choice.Chosen != "" {
		rep.Choice = &an.Choice.Ranking
	}
	failed := checks.Failed(results)
	rep.Proceed = len(failed) == 0 && perr == nil
	if o.Force && !an.Evidence.Conclusive {
		fmt.Fprintf(o.IO.ErrOut, "WARNING: --force: proceeding although %s\n", an.Evidence.Verdict)
	}
	if o.NoFence {
		fmt.Fprintf(o.IO.ErrOut, "WARNING: --no-fence: %s will not be fenced; if it is alive, this makes two writable primaries\n", an.OldPrimary)
	}
	if o.DryRun || !rep.Proceed {
		if err := o.render(rep); err != nil {
			return err
		}
		return refusal(failed, perr)
	}
	if o.Output == "table" {
		fmt.Fprintf(o.IO.ErrOut, "Emergency failover of %s from %s to %s:\n%s\n", cfg.Cluster, rep.Primary, rep.Candidate, an.Choice.Proof.Message)
		writePlan(o.IO.ErrOut, plan)
	}
	if err := o.IO.Confirm(fmt.Sprintf("Fence %s and promote %s?", rep.Primary, rep.Candidate), o.Yes); err != nil {
		return err
	}
	ctl, closeCtl := o.Factory.Controller(cfg, o.Timeout)
	defer closeCtl()
	env := &failover.Env{Ctl: ctl}
	plan, _, err = failover.PlanEmergency(cfg, obs.Snap, st, probes, eo, env)
	if err != nil {
		return &ExitError{Code: ExitUnsafe, Err: err}
	}
	rep.Plan = plan
	op := &operation{f: o.Factory, spec: failover.OperationSpec{
		Cfg: cfg, Cli: cli, Kind: "failover", Command: o.Command, LockWait: o.LockWait,
		Params: map[string]string{"old_primary": rep.Primary, "candidate": rep.Candidate, "allow_data_loss": fmt.Sprint(o.AllowDataLoss),
			"force": fmt.Sprint(o.Force), "no_fence": fmt.Sprint(o.NoFence), "evidence": an.Evidence.Verdict, "sync_proof": an.Choice.Proof.Message},
		Rebuild: func(ctx context.Context) (*failover.Plan, []checks.Result, error) {
			obs := observe(ctx, cfg, o.Timeout, nil, func(rctx context.Context) (*recordInfo, error) { return readRecordWith(rctx, cli, cfg) })
			// Under the lock the evidence is the fresh look only: the window
			// was spent before the plan was shown.
			p, a, err := failover.PlanEmergency(cfg, obs.Snap, stateOf(obs), nil, eo, nil)
			return p, a.Checks, err
		},
	}}
	res := op.run(ctx, plan, env)
	rep.Result, rep.Commands = res, op.commands
	if res.Err != nil {
		rep.Error = res.Err.Error()
	}
	if res.Outcome != failover.OutcomeSucceeded {
		rep.Final = probeFinal(ctx, cfg, o.Timeout)
	}
	if err := o.render(rep); err != nil {
		return err
	}
	return resultCode(res)
}

func stateOf(obs observation) *failover.State {
	if obs.Record == nil {
		return nil
	}
	return obs.Record.State
}

// writeEvidence prints the emergency evidence and the quorum proof.
func writeEvidence(w io.Writer, tty bool, a *failover.EmergencyAnalysis) error {
	ev := a.Evidence
	fmt.Fprintf(w, "Evidence about %s: %s\n", a.OldPrimary, ev.Verdict)
	for _, p := range ev.Probes {
		res := "unreachable: " + p.Error
		if p.Reachable {
			res = "REACHABLE"
		}
		fmt.Fprintf(w, "  probe at %s: %s\n", p.At.Format("15:04:05.000"), res)
	}
	if len(ev.Receivers) > 0 {
		var rows [][]string
		for _, r := range ev.Receivers {
			silence := "-"
			if r.SilenceSeconds != nil {
				silence = fmt.Sprintf("%.1fs", *r.SilenceSeconds)
			}
			tl := "-"
			if r.Timeline != nil {
				tl = fmt.Sprint(*r.Timeline)
			}
			rows = append(rows, []string{r.Node, r.Status, silence, fmt.Sprintf("%.1fs", r.ThresholdSeconds), dash(r.ReceiveLSN), dash(r.ReplayLSN), tl, yesNo(r.HearsPrimary)})
		}
		if err := writeTable(w, tty, []string{"REPLICA", "RECEIVER", "SILENCE", "THRESHOLD", "RECEIVED", "REPLAYED", "TL", "HEARS PRIMARY"}, rows); err != nil {
			return err
		}
	}
	if a.Choice.Chosen != "" {
		fmt.Fprintf(w, "Sync proof: %s\n", a.Choice.Proof.Message)
	}
	return nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
