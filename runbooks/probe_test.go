package runbooks

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestProbeDSNDatabase: the runbook's database replaces the DSN's, because
// a repeated keyword takes its last value.
func TestProbeDSNDatabase(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	for _, tc := range []struct{ db, want string }{{"", "postgres"}, {"app", "app"}, {"my db", "my db"}} {
		dsn, err := probeDSN(cfg, ProbeSettings{Database: tc.db})
		if err != nil {
			t.Fatal(err)
		}
		pc, err := pgconn.ParseConfig(dsn)
		if err != nil {
			t.Fatalf("%q: %v", dsn, err)
		}
		if pc.Database != tc.want || pc.Host != "10.0.0.1" || len(pc.Fallbacks) < 2 {
			t.Errorf("%q: database %q, host %s, %d fallbacks", dsn, pc.Database, pc.Host, len(pc.Fallbacks))
		}
	}
}
