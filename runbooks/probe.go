package runbooks

import (
	"fmt"
	"strings"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover/writeprobe"
)

// probeDSN is the probe's multi-host DSN with the runbook's database. A
// keyword repeated in a libpq connection string takes its last value, so
// appending dbname overrides the first node's without parsing the rest.
func probeDSN(cfg *config.Config, ps ProbeSettings) (string, error) {
	dsn, err := writeprobe.DSNFromConfig(cfg)
	if err != nil {
		return "", fmt.Errorf("write probe: %w", err)
	}
	if ps.Database != "" {
		dsn += " dbname=" + kvQuote(ps.Database)
	}
	return dsn, nil
}

func kvQuote(v string) string {
	if v != "" && !strings.ContainsAny(v, " '\\\t\n") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

func probeTarget(ps ProbeSettings) string {
	if ps.Database == "" {
		return "table " + ps.Table + " (in the nodes' database)"
	}
	return "table " + ps.Table + " in database " + ps.Database
}

func probeDetail(cfg *config.Config, s *Step, rb *Runbook) string {
	if s.Action == ProbeStart {
		dsn, err := probeDSN(cfg, rb.Probe)
		if err != nil {
			return err.Error()
		}
		return fmt.Sprintf("will write to %s every %s (write timeout %s) through %s, creating the table if missing",
			probeTarget(rb.Probe), rb.Probe.Interval, rb.Probe.WriteTimeout, config.RedactDSN(dsn))
	}
	return "will stop the probe and read the writable node to count the acknowledged writes missing"
}
