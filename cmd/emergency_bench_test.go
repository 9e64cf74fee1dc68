package cmd

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/replctl/replctl/failover/writeprobe"
	"github.com/replctl/replctl/testenv"
)

// benchWindow is the confirmation window in the benchmark's configuration.
// It is subtracted from the time to the first write: it is a wait the
// operator chooses, not work replctl does.
const benchWindow = 200 * time.Millisecond

// BenchmarkEmergencyFailover measures an emergency failover on a fresh
// 3-node cluster per iteration, with a client writing every 10 ms through
// the multi-host DSN: the primary is crashed (SIGKILL to all its
// processes), then `replctl promote --emergency --yes` runs.
//
//   - to-first-write-ms: from the start of the command to the first write
//     acknowledged by the new primary, minus the confirmation window;
//   - command-ms: the whole command, window included.
//
// Both are medians over the iterations.
func BenchmarkEmergencyFailover(b *testing.B) {
	emSkip(b)
	ctx := b.Context()
	var toWrite, command []float64
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		first, whole := benchEmergencyOnce(ctx, b)
		toWrite = append(toWrite, float64(first)/float64(time.Millisecond))
		command = append(command, float64(whole)/float64(time.Millisecond))
	}
	b.ReportMetric(emMedian(toWrite), "to-first-write-ms")
	b.ReportMetric(emMedian(command), "command-ms")
}

// benchEmergencyOnce runs one failover and returns the time to the first
// write (window excluded) and the command's duration. The timer runs
// during the command only.
func benchEmergencyOnce(ctx context.Context, b *testing.B) (toFirstWrite, cmdTime time.Duration) {
	b.Helper()
	c, err := testenv.Up(ctx, testenv.Options{Replicas: 2})
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := c.Close(); err != nil {
			b.Error(err)
		}
	}()
	raw, err := os.ReadFile(c.ConfigPath)
	if err != nil {
		b.Fatal(err)
	}
	cfgPath := filepath.Join(b.TempDir(), "replctl.yaml")
	if err := os.WriteFile(cfgPath, append(raw, []byte("failover:\n  confirm_window: "+benchWindow.String()+"\n")...), 0o644); err != nil {
		b.Fatal(err)
	}
	// As a switchover or drill would have left it: the failover refuses
	// unknown synchronous settings (sync_unknown) without --allow-data-loss.
	emSeedAsync(b, cfgPath)
	probe, err := writeprobe.Start(ctx, writeprobe.Options{DSN: writeDSN(b, cfgPath)})
	if err != nil {
		b.Fatal(err)
	}
	defer probe.Stop()
	emAwaitAcks(b, probe, 20)

	emCrash(b, c, "pg1")
	var out, errOut bytes.Buffer
	b.StartTimer()
	start := time.Now()
	code := MainIO(ctx, []string{"--config", cfgPath, "promote", "--emergency", "--yes"}, &IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
	cmdTime = time.Since(start)
	b.StopTimer()
	if code != 0 {
		b.Fatalf("promote --emergency: exit %d\n%s\n%s", code, out.String(), errOut.String())
	}
	emAwaitAcks(b, probe, len(probe.Acked())+5)
	rep := probe.Stop()
	// The longest gap between acknowledged writes is the failover's: it
	// ends with the first write the new primary acknowledged.
	if !rep.OutageTo.After(start) {
		b.Fatalf("the longest write outage ended at %s, before the failover started at %s: %+v", rep.OutageTo, start, rep)
	}
	return rep.OutageTo.Sub(start) - benchWindow, cmdTime
}

func emMedian(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
