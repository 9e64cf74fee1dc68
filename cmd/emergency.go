package cmd

import (
	"fmt"
	"io"

	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/etcdlock"
)

func stateOf(obs observation) *etcdlock.State {
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
