package topology

import (
	"testing"

	"github.com/replctl/replctl/config"
)

// A replica's primary_conninfo may name certificate files that exist only
// on the replica's host: the upstream is still found.
func TestIntendedUpstreamTLSFiles(t *testing.T) {
	t.Parallel()
	cfg := &config.Config{Nodes: []config.Node{
		{Name: "pg1", DSN: "host=10.0.0.1 port=5432 user=replctl"},
		{Name: "pg2", DSN: "host=10.0.0.2 port=5432 user=replctl"},
	}}
	for _, ci := range []string{
		"host=10.0.0.1 port=5432 user=replctl sslmode=verify-full sslrootcert=/nowhere/ca.crt sslcert=/nowhere/c.crt sslkey=/nowhere/c.key application_name=pg2",
		"postgresql://replctl@10.0.0.1:5432/postgres?sslmode=verify-full&sslrootcert=/nowhere/ca.crt&sslcert=/nowhere/c.crt&sslkey=/nowhere/c.key",
	} {
		n := &Node{NodeStatus: NodeStatus{Name: "pg2"}}
		n.Settings.PrimaryConninfo = &ci
		if got := IntendedUpstream(cfg, n); got != "pg1" {
			t.Errorf("IntendedUpstream(%q) = %q, want pg1", ci, got)
		}
	}
}
