package cmd

import (
	"slices"
	"testing"
	"time"

	"github.com/replctl/replctl/testenv"
)

// BenchmarkSwitchover measures what a planned switchover costs the clients
// of a 3-node cluster, with the stop fence and with the SQL fence (nodes
// with commands.rejoin but no commands.stop, so the old primary rejoins
// each time). Each iteration is one `replctl promote NODE --yes` to the
// next node in turn while the write probe writes every 10 ms through the
// read-write multi-host DSN. It reports medians: outage-ms, the longest
// gap between two acknowledged writes the probe saw; fence-to-writable-ms,
// the outage the command reports (fence start to promoted); command-ms,
// the whole command. Targets: outage under 500 ms, command under 3 s.
func BenchmarkSwitchover(b *testing.B) {
	if testing.Short() {
		b.Skip("benchmark runs PostgreSQL and etcd")
	}
	for _, bc := range []struct{ name, setup string }{{"stop-fence", fenceStop}, {"sql-fence", fenceSQLRejoin}} {
		b.Run(bc.name, func(b *testing.B) {
			c := testenv.Start(b, testenv.Options{Replicas: 2})
			cfg, _ := switchoverConfig(b, c, bc.setup)
			nodes := []string{"pg1", "pg2", "pg3"}
			var outages, reported, commands []time.Duration
			i := 0
			for b.Loop() {
				from, to := nodes[i%3], nodes[(i+1)%3]
				i++
				probe := startProbe(b, cfg)
				start := time.Now()
				run := replctl(b.Context(), nil, "--config", cfg, "-o", "json", "promote", to, "--yes")
				took := time.Since(start)
				if run.Code != 0 {
					b.Fatalf("promote %s: %s", to, run)
				}
				d := run.doc(b)
				if d.Primary != from || d.WriteOutageSeconds == nil {
					b.Fatalf("promote %s: %s", to, run)
				}
				r := stopProbe(b, probe)
				outages = append(outages, r.LongestOutage)
				reported = append(reported, time.Duration(*d.WriteOutageSeconds*float64(time.Second)))
				commands = append(commands, took)
			}
			b.ReportMetric(medianMS(outages), "outage-ms")
			b.ReportMetric(medianMS(reported), "fence-to-writable-ms")
			b.ReportMetric(medianMS(commands), "command-ms")
			b.Logf("%s: probe outages %v; reported %v; commands %v", bc.name, roundAll(outages), roundAll(reported), roundAll(commands))
		})
	}
}

func medianMS(d []time.Duration) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[len(s)/2].Microseconds()) / 1000
}

func roundAll(d []time.Duration) []time.Duration {
	out := make([]time.Duration, len(d))
	for i, v := range d {
		out[i] = v.Round(time.Millisecond)
	}
	return out
}
