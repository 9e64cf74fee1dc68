package config

import (
	"slices"
	"testing"
)

func TestDSNSettings(t *testing.T) {
	t.Parallel()
	for dsn, want := range map[string]map[string]string{
		`host=a password = 'it\'s' sslmode=require`:        {"host": "a", "password": "it's", "sslmode": "require"},
		`host=a password='x\'y z' dbname=d`:                {"host": "a", "password": "x'y z", "dbname": "d"},
		`postgresql://u:p%40ss@h:1/db?sslmode=verify-full`: {"password": "p@ss", "sslmode": "verify-full"},
		// A file that does not exist here is only a name: nothing is read.
		`host=b sslrootcert='/no such/ca.crt'`: {"host": "b", "sslrootcert": "/no such/ca.crt"},
	} {
		got := DSNSettings(dsn)
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s = %q, want %q", dsn, k, got[k], v)
			}
		}
	}
}

// TLSSettings keeps every keyword that secures the connection, in a fixed
// order, and never the key's password.
func TestTLSSettings(t *testing.T) {
	t.Parallel()
	for dsn, want := range map[string][][2]string{
		"host=h sslkey=/k sslpassword=hunter22 sslrootcert='/a b/ca.crt' sslmode=verify-full sslcert=/c user=u": {
			{"sslmode", "verify-full"}, {"sslrootcert", "/a b/ca.crt"}, {"sslcert", "/c"}, {"sslkey", "/k"},
		},
		"postgres://u@h/db?sslmode=require&sslpassword=hunter22&sslcrl=/crl.pem": {{"sslmode", "require"}, {"sslcrl", "/crl.pem"}},
		"host=h port=5432": nil,
	} {
		if got := TLSSettings(dsn); !slices.Equal(got, want) {
			t.Errorf("TLSSettings(%q) = %q, want %q", dsn, got, want)
		}
	}
}
