package testenv

// Differences between PostgreSQL majors that the sandbox itself must
// handle (the probe's are in topology/probe.go).

// tlsHost is the host name DSNs and conninfos name the nodes by. With TLS
// on PostgreSQL 13 and 14 it is "localhost" (resolving to 127.0.0.1): their
// libpq, which the servers' WAL receivers use, matches only the DNS names
// of a certificate's subjectAltName, never its IP addresses (15 added
// that), so sslmode=verify-full to 127.0.0.1 fails there. Otherwise
// 127.0.0.1.
func (c *Cluster) tlsHost() string {
	if c.TLS != nil && c.in != nil && c.in.major > 0 && c.in.major < 15 {
		return "localhost"
	}
	return "127.0.0.1"
}
