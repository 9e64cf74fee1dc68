package cmd

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// pgxQuery connects with a connection string and scans one row.
func pgxQuery(t *testing.T, dsn, sql string, dest ...any) error {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), strings.TrimSpace(dsn))
	if err != nil {
		return err
	}
	defer conn.Close(t.Context())
	return conn.QueryRow(t.Context(), sql).Scan(dest...)
}
