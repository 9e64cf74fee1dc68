package testenv

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// serverConf is appended to postgresql.conf of every node. Replicas get the
// primary's settings through pg_basebackup anyway, and a promoted replica
// must be able to serve replicas of its own.
const serverConf = `
# replctl testenv
listen_addresses = '127.0.0.1'
unix_socket_directories = ''	# no socket path length limits
wal_level = replica
wal_log_hints = on	# pg_rewind
max_wal_senders = 20
max_replication_slots = 20
hot_standby = on
wal_keep_size = '256MB'
fsync = off
synchronous_commit = on
shared_buffers = '32MB'
max_connections = 60
logging_collector = off
log_min_messages = warning
# Replicas report their replay position every second rather than every 10 s,
# so that lag seen from the primary settles quickly in tests.
wal_receiver_status_interval = '1s'
# wal_receiver_timeout and wal_sender_timeout keep PostgreSQL's default
# (60s) unless Options.ReceiverTimeout says otherwise (timeoutConf).
`

// logicalServerConf is appended with Options.Logical; the later wal_level
// line wins over serverConf's.
const logicalServerConf = `
wal_level = logical
max_logical_replication_workers = 8
max_worker_processes = 16
`

const hbaConf = `# replctl testenv: trust on loopback only
local	all		all			trust
local	replication	all			trust
host	all		all	127.0.0.1/32	trust
host	replication	all	127.0.0.1/32	trust
`

// hbaTLSConf replaces hbaConf with Options.TLS: TCP connections must use
// TLS and present a client certificate whose common name is the user (the
// cert method), replication included. No plain host rule is left, so a
// client that falls back to plain text is refused rather than served.
const hbaTLSConf = `# replctl testenv: TLS with client certificates on loopback only
local	all		all			trust
local	replication	all			trust
hostssl	all		all	127.0.0.1/32	cert
hostssl	replication	all	127.0.0.1/32	cert
`

// tlsServerConf is appended to postgresql.conf with Options.TLS. The
// certificate paths are relative to the data directory and lead out of it,
// to the node's own files: pg_basebackup and pg_rewind copy postgresql.conf
// from node to node, and each must go on serving its own certificate.
func tlsServerConf(caFile string) string {
	return `
# replctl testenv: TLS
ssl = on
ssl_cert_file = '../` + serverCertFile + `'
ssl_key_file = '../` + serverKeyFile + `'
ssl_ca_file = '` + strings.ReplaceAll(caFile, "'", "''") + `'	# verifies client certificates
ssl_min_protocol_version = 'TLSv1.2'
`
}

// initdbArgs are the initdb options; change templateVersion with them.
var initdbArgs = []string{"--auth=trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"}

const templateVersion = "v1"

// templateMu keeps parallel tests of one process from running initdb for
// the same template at once; other processes are handled by the atomic
// rename in template.
var templateMu sync.Mutex

// template returns a cached, freshly initdb'd data directory to copy nodes
// from. scratch is a directory the postgres user can reach, for initdb.
func (in *install) template(ctx context.Context, scratch string) (string, error) {
	uid := os.Getuid()
	if in.user != nil {
		uid = int(in.user.uid)
	}
	sum := sha256.Sum256([]byte(in.binDir))
	cache := filepath.Join(cacheRoot(), fmt.Sprintf("pg%d-%x-u%d-%s", in.major, sum[:4], uid, templateVersion))
	if isFile(filepath.Join(cache, "PG_VERSION")) {
		return cache, nil
	}
	templateMu.Lock()
	defer templateMu.Unlock()
	if isFile(filepath.Join(cache, "PG_VERSION")) {
		return cache, nil
	}
	data := filepath.Join(scratch, ".initdb")
	if err := in.initdb(ctx, data); err != nil {
		return "", err
	}
	defer os.RemoveAll(data)
	if err := os.MkdirAll(filepath.Dir(cache), 0o755); err != nil {
		return "", fmt.Errorf("testenv: template cache: %w", err)
	}
	staging, err := os.MkdirTemp(filepath.Dir(cache), ".staging-*")
	if err != nil {
		return "", fmt.Errorf("testenv: template cache: %w", err)
	}
	defer os.RemoveAll(staging)
	if err := copyTree(ctx, data, filepath.Join(staging, "data")); err != nil {
		return "", err
	}
	// Rename is atomic: a concurrent process either sees no template or a
	// complete one. Losing the race is fine, the winner's is as good.
	if err := os.Rename(filepath.Join(staging, "data"), cache); err != nil && !isFile(filepath.Join(cache, "PG_VERSION")) {
		return "", fmt.Errorf("testenv: template cache: %w", err)
	}
	return cache, nil
}

// cacheRoot is where templates are kept across runs.
func cacheRoot() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "replctl")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("replctl-cache-%d", os.Getuid()))
}

// initdb creates a new cluster in data, which must not exist.
func (in *install) initdb(ctx context.Context, data string) error {
	if err := in.mkdirOwned(data); err != nil {
		return fmt.Errorf("testenv: initdb: %w", err)
	}
	if err := in.run(ctx, "initdb", append(append([]string{}, initdbArgs...), "-D", data)...); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	return nil
}

// copyTree copies a data directory with cp -a, which keeps owners and modes
// (as root) and is much faster than walking the tree in Go.
func copyTree(ctx context.Context, src, dst string) error {
	out, err := exec.CommandContext(ctx, "cp", "-a", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("testenv: cp -a %s %s: %w: %s", src, dst, err, tail(out, 5))
	}
	return nil
}

// timeoutConf is appended to postgresql.conf with Options.ReceiverTimeout.
// PostgreSQL reads an integer with a unit; a timeout under 1 ms would be
// 0, which disables the timeout, so it is rounded up to 1 ms.
func timeoutConf(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	ms := max(d.Milliseconds(), 1)
	return fmt.Sprintf(`
# replctl testenv: Options.ReceiverTimeout (PostgreSQL's default is 60s)
wal_receiver_timeout = '%dms'
wal_sender_timeout = '%dms'
`, ms, ms)
}

// configureServer adds the testenv settings to a new data directory; with
// TLS files, the server speaks TLS only (see hbaTLSConf); extra is more
// postgresql.conf text (timeoutConf).
func (in *install) configureServer(data string, n *Node, tf *TLSFiles, extra string) error {
	conf, hba := serverConf, hbaConf
	if tf != nil {
		conf, hba = serverConf+tlsServerConf(tf.CAFile), hbaTLSConf
	}
	conf += extra
	f, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(conf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := in.writeFile(filepath.Join(data, "pg_hba.conf"), []byte(hba)); err != nil {
		return err
	}
	return in.setAutoConf(data, []setting{{"port", strconv.Itoa(n.Port)}, {"cluster_name", n.Name}})
}

// configureStandby makes data a standby of upstream with its own port;
// upstream is the libpq connection string of the upstream (see
// Cluster.conninfo).
func (in *install) configureStandby(data string, n *Node, upstream string) error {
	err := in.setAutoConf(data, []setting{
		{"port", strconv.Itoa(n.Port)},
		{"cluster_name", n.Name},
		{"primary_conninfo", upstream + " application_name=" + n.Name},
		{"primary_slot_name", n.Name},
		{"recovery_target_timeline", "latest"},
	}, "synchronous_standby_names", "default_transaction_read_only")
	if err != nil {
		return err
	}
	return in.writeFile(filepath.Join(data, "standby.signal"), nil)
}

type setting struct{ name, value string }

// setAutoConf rewrites postgresql.auto.conf: lines for the given settings
// and for drop are removed, then the settings are appended.
func (in *install) setAutoConf(data string, set []setting, drop ...string) error {
	path := filepath.Join(data, "postgresql.auto.conf")
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	gone := map[string]bool{}
	for _, s := range set {
		gone[s.name] = true
	}
	for _, d := range drop {
		gone[d] = true
	}
	var b strings.Builder
	for _, line := range strings.SplitAfter(string(old), "\n") {
		name, _, ok := strings.Cut(line, "=")
		if ok && gone[strings.TrimSpace(name)] {
			continue
		}
		b.WriteString(line)
	}
	if b.Len() > 0 && !strings.HasSuffix(b.String(), "\n") {
		b.WriteString("\n")
	}
	for _, s := range set {
		fmt.Fprintf(&b, "%s = '%s'\n", s.name, strings.ReplaceAll(s.value, "'", "''"))
	}
	return in.writeFile(path, []byte(b.String()))
}

// writeFile writes a file in a data directory, owned by the postgres user.
func (in *install) writeFile(path string, b []byte) error {
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return err
	}
	return in.own(path, 0o600)
}

// errPortInUse marks a start that failed because another process took the
// node's port after it was picked.
var errPortInUse = errors.New("port already in use")

// startServer starts the node with pg_ctl and waits until it accepts
// connections (or, for a standby, is consistent).
//
// After a crash (kill -9 of the postmaster) the old server's children take
// a moment to notice and exit; until then the server refuses to start
// because they still hold its shared memory, so that case is retried.
func (in *install) startServer(ctx context.Context, n *Node) error {
	deadline := time.Now().Add(shmemWait)
	for {
		clearZombieLock(n.DataDir)
		var off int64
		if fi, err := os.Stat(n.LogPath); err == nil {
			off = fi.Size()
		}
		err := in.run(ctx, "pg_ctl", "-D", n.DataDir, "-l", n.LogPath, "-w", "-t", "60", "start")
		if err == nil {
			return nil
		}
		log := readFrom(n.LogPath, off)
		switch {
		case strings.Contains(log, "Address already in use") || strings.Contains(log, "could not create any TCP/IP sockets"):
			return fmt.Errorf("start %s on port %d: %w", n.Name, n.Port, errPortInUse)
		case strings.Contains(log, "pre-existing shared memory block") && time.Now().Before(deadline):
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		return fmt.Errorf("start %s: %w\n%s:\n%s", n.Name, err, n.LogPath, tail([]byte(log), 20))
	}
}

// shmemWait bounds how long a start waits for the children of a crashed
// server to go.
const shmemWait = 10 * time.Second

// stopServer stops the node with pg_ctl, then by signal if pg_ctl could
// not, so that the server is down when it returns nil.
func (in *install) stopServer(ctx context.Context, n *Node, mode string) error {
	if postmasterPID(n.DataDir) == 0 {
		return nil
	}
	err := in.run(ctx, "pg_ctl", "-D", n.DataDir, "-w", "-t", "30", "stop", "-m", mode)
	if postmasterPID(n.DataDir) == 0 {
		return nil
	}
	if kerr := killPostmaster(n.DataDir, syscall.SIGKILL, 0); kerr != nil {
		return fmt.Errorf("stop %s: %w", n.Name, errors.Join(err, kerr))
	}
	return nil
}

func readFrom(path string, off int64) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if off > int64(len(b)) {
		off = 0
	}
	return string(b[off:])
}
