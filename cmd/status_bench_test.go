package cmd

import (
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/replctl/replctl/testenv"
)

// BenchmarkStatusProcess measures what a watch loop pays each second: one
// process run of "replctl status -o json", against 3 and 10 nodes. Probes
// run concurrently, so 10 nodes should cost about what 3 do (the target is
// within 1.5x). It reports the median wall time per run as ms/median.
func BenchmarkStatusProcess(b *testing.B) {
	if testing.Short() {
		b.Skip("benchmark runs PostgreSQL")
	}
	bin := filepath.Join(b.TempDir(), "replctl")
	if out, err := exec.CommandContext(b.Context(), "go", "build", "-o", bin, "github.com/replctl/replctl").CombinedOutput(); err != nil {
		b.Fatalf("build replctl: %v\n%s", err, out)
	}
	medians := map[string]time.Duration{}
	for _, tc := range []struct {
		name     string
		replicas int
	}{{"3-nodes", 2}, {"10-nodes", 9}} {
		c := testenv.Start(b, testenv.Options{Replicas: tc.replicas, NoEtcd: true})
		b.Run(tc.name, func(b *testing.B) {
			var runs []time.Duration
			for b.Loop() {
				start := time.Now()
				out, err := exec.CommandContext(b.Context(), bin, "--config", c.ConfigPath, "status", "-o", "json").CombinedOutput()
				runs = append(runs, time.Since(start))
				if err != nil {
					b.Fatalf("status: %v\n%s", err, out)
				}
			}
			slices.Sort(runs)
			med := runs[len(runs)/2]
			medians[tc.name] = med
			b.ReportMetric(float64(med.Microseconds())/1000, "ms/median")
		})
	}
	if m3, m10 := medians["3-nodes"], medians["10-nodes"]; m3 > 0 && m10 > 0 {
		b.Logf("median wall time: 3 nodes %s, 10 nodes %s, ratio %.2f (target <= 1.5)", m3, m10, float64(m10)/float64(m3))
	}
}
