package topology

import (
	"context"
	"sync"
	"time"

	"github.com/replctl/replctl/config"
)

// ProbeAll probes every configured node concurrently, each within timeout,
// and returns the results in configuration order. A node that hangs costs
// its own timeout and delays no other.
func ProbeAll(ctx context.Context, p Prober, nodes []config.Node, timeout time.Duration) []NodeStatus {
	out := make([]NodeStatus, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() {
			nctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			out[i] = p.Probe(nctx, n)
			out[i].Name = n.Name
		})
	}
	wg.Wait()
	return out
}

// Discover probes every configured node over PostgreSQL and classifies the
// results. rec is the cluster record from etcd, nil when there is none.
func Discover(ctx context.Context, cfg *config.Config, timeout time.Duration, rec *Record) *Snapshot {
	st := ProbeAll(ctx, PgProber{Timeout: timeout}, cfg.Nodes, timeout)
	return Classify(cfg, st, rec)
}
