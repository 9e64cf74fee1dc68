package pgctl_test

import (
	"fmt"
	"testing"

	"github.com/replctl/replctl/failover/pgctl"
)

// A standby whose primary has gone sleeps out wal_retrieve_retry_interval
// between attempts to reach it. Promote's poll must see that doze in the
// startup process's wait event: it reloads the node only then (or rarely),
// and a promote request that falls into the doze waits it out otherwise.
func TestIntegrationPromotePollSeesTheDoze(t *testing.T) {
	c, _ := watchCluster(t)
	var rec, dozing bool
	if err := c.QueryRow(t.Context(), "pg2", pgctl.PromotePollSQL).Scan(&rec, &dozing); err != nil {
		t.Fatal(err)
	}
	if !rec || dozing {
		t.Fatalf("pg2 streaming: in recovery %v, dozing %v; want true, false", rec, dozing)
	}
	if err := c.StopNode(t.Context(), "pg1"); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() (bool, string) {
		if err := c.QueryRow(t.Context(), "pg2", pgctl.PromotePollSQL).Scan(&rec, &dozing); err != nil {
			return false, err.Error()
		}
		return rec && dozing, fmt.Sprintf("pg2 with pg1 stopped: in recovery %v, dozing %v; want true, true", rec, dozing)
	})
}
