package cmd

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/replctl/replctl/testenv"
	"github.com/replctl/replctl/testenv/faultcheck"
)

// BenchmarkWatchFailover measures automatic failover from the client's
// side: on a fresh synchronous 3-node cluster per iteration, with one
// replctl watch running and the independent checker writing every 10 ms
// to whichever node accepts, the primary's postmaster is killed with
// SIGKILL; crash-to-write-ms is the time from the kill to the first write
// a new primary acknowledges (median over the iterations). "defaults" runs
// watch with its defaults (--interval 1s, failover.confirm_window 2s);
// "aggressive" with --interval 250ms and a 500ms window.
func BenchmarkWatchFailover(b *testing.B) {
	emSkip(b)
	for _, s := range []struct {
		name, interval, window string
	}{{"defaults", "1s", ""}, {"aggressive", "250ms", "500ms"}} {
		b.Run(s.name, func(b *testing.B) {
			bin := replctlBinary(b)
			var ms []float64
			b.StopTimer()
			for i := 0; i < b.N; i++ {
				ms = append(ms, float64(benchWatchOnce(b, bin, s.interval, s.window))/float64(time.Millisecond))
			}
			b.ReportMetric(emMedian(ms), "crash-to-write-ms")
			b.Logf("%s: crash -> first acknowledged write, ms: %v", s.name, ms)
		})
	}
}

func benchWatchOnce(b *testing.B, bin, interval, window string) time.Duration {
	b.Helper()
	ctx := b.Context()
	c, err := testenv.Up(ctx, testenv.Options{Replicas: 2, Sync: true})
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
	extra := "watch:\n  election_ttl: 2s\n"
	if window != "" {
		extra += "failover:\n  confirm_window: " + window + "\n"
	}
	cfg := filepath.Join(b.TempDir(), "replctl.yaml")
	if err := os.WriteFile(cfg, append(raw, []byte(extra)...), 0o644); err != nil {
		b.Fatal(err)
	}
	target := faultTarget(c)
	chk, err := faultcheck.Watch(ctx, target, faultcheck.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer chk.Stop()
	w := startWatcherArgs(b, bin, "bench", cfg, []string{"--interval", interval})
	defer w.stop(b)
	w.await(b, "seen_ok", "", 30*time.Second)
	// Mid-interval, as a crash would be.
	time.Sleep(300 * time.Millisecond)
	crash := wpKillPostmaster(b, c, "pg1")
	w.await(b, "failover_done", "pg1", 60*time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if d, ok := firstAckAfter(chk.Snapshot(), crash, "pg1"); ok {
			return d
		}
		if time.Now().After(deadline) {
			b.Fatal(fmt.Errorf("no write acknowledged after the failover"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
