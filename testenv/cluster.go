package testenv

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Budgets for waits. Generous, because CI machines run many clusters at once.
const (
	streamTimeout = 60 * time.Second // a replica starts streaming
	queryTimeout  = 5 * time.Second  // one probe of one node
	portAttempts  = 5                // starts tried when a picked port was taken meanwhile
)

// Role is a node's role when it was created; failovers change the real one.
type Role string

// Roles at creation.
const (
	RolePrimary    Role = "primary"
	RoleReplica    Role = "replica"
	RoleStandalone Role = "standalone" // separately initdb'd: a foreign system identifier
)

// Options describe the cluster to build.
type Options struct {
	// Replicas is the number of streaming replicas of the primary: 0 means
	// the default, 2; a negative number means none (a lone primary).
	Replicas int
	// Sync sets synchronous_standby_names = 'ANY 1 (pg2, pg3, ...)' on the
	// primary once the replicas stream.
	Sync bool
	// Dir is the cluster directory. Empty: a new os.TempDir()/replctl-testenv-*.
	// Otherwise it is created if missing and must be empty or hold a
	// running testenv (ErrAlreadyUp). When running as root, every directory
	// on its path must be traversable by others (o+x) for the postgres user.
	Dir string
	// BasePort, when set, gives ports base, base+1, ... to pg1, pg2, ...,
	// then to etcd's client and peer ports, then to nodes added later.
	// Otherwise free ports are picked, and picked again when one is taken
	// before the server binds it.
	BasePort int
	// Cluster is the cluster name in replctl.yaml; default "demo".
	Cluster string
	// NoEtcd builds no etcd, and replctl.yaml gets no etcd or lock section.
	NoEtcd bool
	// NoCommands leaves the node commands out of replctl.yaml (SQL-only mode).
	NoCommands bool
	// Zones gives node i (from 0) the zone z1 or z2 alternately in replctl.yaml.
	Zones bool
	// FenceCommand adds each node's commands.fence to replctl.yaml (unless
	// NoCommands): DIR/fence.sh, which stops the server at once and for
	// good, as STONITH would (see NodeCommands.Fence). Off by default,
	// so that an emergency failover in a test runs the plan it always ran
	// (no fence-command step); `replctl testenv up` turns it on.
	FenceCommand bool
	// EtcdMembers is the number of etcd members: 0 means 1, a single
	// member in DIR/etcd. With more, member i (from 1) is etcd-i, with its
	// own client and peer ports on 127.0.0.1 and its data in DIR/etcd-i
	// (a detached member logs to DIR/etcd-i.log), so that fault tests can
	// kill the leader (Cluster.EtcdLeader, KillEtcdMember, StartEtcdMember).
	EtcdMembers int
	// TLS makes a throwaway CA (Cluster.TLS) and runs every server with
	// TLS only: PostgreSQL with ssl = on and hostssl rules that demand a
	// client certificate (replication too), etcd with client-certificate
	// auth. Every DSN, primary_conninfo and replctl.yaml then uses
	// sslmode=verify-full with the CA and the client certificate, and
	// replctl.yaml gets an etcd tls block.
	TLS bool
	// ReceiverTimeout, when positive, sets wal_receiver_timeout and
	// wal_sender_timeout on every node (rounded to milliseconds); zero
	// keeps PostgreSQL's default, 60 s. A replica's WAL receiver notices a
	// primary that hangs without closing its connections (SIGSTOP, a
	// partition) only when this timeout expires, so tests of a hung
	// primary shorten it, e.g. to 2s. The settings are in postgresql.conf,
	// which every clone, rewind and re-clone copies.
	ReceiverTimeout time.Duration
	// PGBinDir is the directory of the PostgreSQL server binaries; empty:
	// $PG_BINDIR, else pg_config's, else the newest /usr/lib/postgresql/N/bin.
	// Server binaries alone will do (initdb, pg_ctl, postgres): without the
	// server's own pg_basebackup and pg_rewind, replicas are cloned and
	// rejoined in Go (clone.go).
	PGBinDir string
	// Logical sets wal_level = logical on every node (with room for a few
	// subscriptions' workers), for tests of logical slots, publications
	// and subscriptions.
	Logical bool
}

// Node is one PostgreSQL server of the cluster.
type Node struct {
	Name    string
	Port    int
	DataDir string // PGDATA
	LogPath string // server log, next to DataDir
	// DSN is a keyword/value connection string:
	// "host=127.0.0.1 port=N user=postgres dbname=postgres sslmode=disable",
	// or with Options.TLS sslmode=verify-full and the TLS files.
	DSN      string
	Role     Role
	Upstream string // the node it was cloned from and streams from at creation
	Managed  bool   // listed in replctl.yaml
}

// Cluster is a running local cluster. Close stops it.
type Cluster struct {
	Dir          string
	Name         string  // cluster name in replctl.yaml
	Nodes        []*Node // managed nodes, in replctl.yaml order; pg1 first
	EtcdEndpoint string  // host:port of the first etcd member; empty with NoEtcd
	// EtcdEndpoints are the host:port of every etcd member, in member
	// order (EtcdEndpoints[0] == EtcdEndpoint); replctl.yaml lists them
	// all. Member indices of EtcdLeader and KillEtcdMember index it.
	EtcdEndpoints []string
	ConfigPath    string // DIR/replctl.yaml
	BinDir        string // PostgreSQL server binaries
	PGVersion     string // e.g. "15.18"
	// TLS is the cluster's CA and certificate files; nil without
	// Options.TLS.
	TLS *TLSFiles

	opts     Options
	in       *install
	created  time.Time
	ownDir   bool     // Close removes Dir itself, not only its content
	detached bool     // built by UpDetached: etcd runs in a child of its own
	self     []string // argv prefix of the etcd-serve command, when detached

	mu        sync.Mutex
	all       []*Node // every node, managed or not, for cleanup
	nextPort  int
	members   []*etcdMember // the etcd's members; none with NoEtcd
	etcdToken string        // initial cluster token of a multi-member etcd
	closed    bool

	// etcdMu serialises the starts and stops of etcd members, so that a
	// member is never started twice or started while it stops.
	etcdMu sync.Mutex
}

// Start builds a cluster for a test and registers a cleanup that stops
// every process and removes the directory, whether the test passed or not.
// It fails the test if the cluster cannot be built.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	c, err := Up(t.Context(), o)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("testenv: %v", err)
		}
	})
	return c
}

// Up builds and starts a cluster with an in-process etcd and returns when
// every replica streams. The caller must Close it. On a directory that
// already holds a running cluster it returns an error wrapping ErrAlreadyUp.
func Up(ctx context.Context, o Options) (*Cluster, error) {
	return up(ctx, o, false, nil)
}

// UpDetached builds a cluster that outlives this process, for
// `replctl testenv up`: PostgreSQL runs detached anyway (pg_ctl starts it
// in its own session), and each etcd member runs in a child started in its
// own session as self + "--dir D --client-port P --peer-port Q" (and, for a
// member of a multi-member etcd, --name, --initial-cluster and
// --initial-cluster-token), where self re-executes replctl, e.g.
// {os.Executable(), "testenv", "etcd-serve"}; that command must call
// RunEtcdServe (or, for a single member, ServeEtcd). o.Dir is required. It returns the
// state written to DIR/testenv.json; Down stops it all. On a directory
// that already holds a running cluster it returns that cluster's state and
// an error wrapping ErrAlreadyUp.
func UpDetached(ctx context.Context, o Options, self []string) (*State, error) {
	if o.Dir == "" {
		return nil, errors.New("testenv: a detached cluster needs Options.Dir")
	}
	if len(self) == 0 && !o.NoEtcd {
		return nil, errors.New("testenv: a detached cluster needs the etcd-serve command")
	}
	c, err := up(ctx, o, true, self)
	if errors.Is(err, ErrAlreadyUp) {
		st, rerr := ReadState(o.Dir)
		if rerr != nil {
			return nil, errors.Join(err, rerr)
		}
		return st, err
	}
	if err != nil {
		return nil, err
	}
	return c.state(), nil
}

func up(ctx context.Context, o Options, detached bool, self []string) (_ *Cluster, err error) {
	if o.Replicas == 0 {
		o.Replicas = 2
	}
	if o.Replicas < 0 {
		o.Replicas = 0
	}
	if o.Cluster == "" {
		o.Cluster = "demo"
	}
	if o.EtcdMembers == 0 {
		o.EtcdMembers = 1
	}
	if o.ReceiverTimeout < 0 {
		return nil, fmt.Errorf("testenv: receiver timeout %s: want 0 (the default) or more", o.ReceiverTimeout)
	}
	if o.EtcdMembers < 0 {
		return nil, fmt.Errorf("testenv: %d etcd members: want 1 or more", o.EtcdMembers)
	}
	in, err := findInstallIn(ctx, o.PGBinDir)
	if err != nil {
		return nil, err
	}
	if !detached {
		startReaper()
	}
	c := &Cluster{
		Name: o.Cluster, BinDir: in.binDir, PGVersion: in.version,
		opts: o, in: in, created: time.Now().UTC(), detached: detached, self: self, nextPort: o.BasePort,
	}
	if err := c.prepareDir(o.Dir); err != nil {
		return nil, err
	}
	c.ConfigPath = filepath.Join(c.Dir, ConfigFile)
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Close())
		}
	}()
	// Written first so that ReapStale knows the directory's owner.
	if err := writeState(c.Dir, c.state()); err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	if o.TLS {
		if err := c.setupTLS(); err != nil {
			return nil, err
		}
	}

	// Ports are handed out before anything runs in parallel so that
	// BasePort gives the documented, stable numbers.
	primary, err := c.newNode("pg1", RolePrimary, "", true)
	if err != nil {
		return nil, err
	}
	var replicas []*Node
	for i := 2; i <= o.Replicas+1; i++ {
		n, err := c.newNode("pg"+strconv.Itoa(i), RoleReplica, "pg1", true)
		if err != nil {
			return nil, err
		}
		replicas = append(replicas, n)
	}
	etcdDone := make(chan error, 1)
	if o.NoEtcd {
		etcdDone <- nil
	} else {
		if err := c.newEtcdMembers(o.EtcdMembers); err != nil {
			return nil, err
		}
		go func() { etcdDone <- c.startEtcd(ctx, true) }()
	}

	pgErr := func() error {
		tmpl, err := in.template(ctx, c.Dir)
		if err != nil {
			return err
		}
		if err := c.createPrimary(ctx, primary, tmpl); err != nil {
			return err
		}
		errs := make([]error, len(replicas))
		var wg sync.WaitGroup
		for i, n := range replicas {
			wg.Go(func() { errs[i] = c.createReplica(ctx, n, primary) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
		if o.Sync && len(replicas) > 0 {
			return c.setSync(ctx, primary, replicas)
		}
		return nil
	}()
	if err := errors.Join(pgErr, <-etcdDone); err != nil {
		return nil, err
	}
	if err := c.writeFiles(); err != nil {
		return nil, err
	}
	return c, nil
}

// prepareDir sets c.Dir; see Options.Dir.
func (c *Cluster) prepareDir(dir string) error {
	if dir == "" {
		d, err := os.MkdirTemp("", TempPrefix+"*")
		if err != nil {
			return fmt.Errorf("testenv: %w", err)
		}
		// MkdirTemp makes 0700, which the postgres user cannot traverse.
		c.Dir, c.ownDir = d, true
		return os.Chmod(d, 0o755)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	c.Dir = abs
	if _, err := ReadState(abs); err == nil {
		if r, err := Status(abs); err == nil && r.Running() {
			return fmt.Errorf("testenv: %s: %w", abs, ErrAlreadyUp)
		}
		return fmt.Errorf("testenv: %s holds a stopped testenv (%s): take it down first", abs, StateFile)
	}
	if err := c.checkTraversable(abs); err != nil {
		return err
	}
	ents, err := os.ReadDir(abs)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(abs, 0o755); err != nil {
			return fmt.Errorf("testenv: %w", err)
		}
		c.ownDir = true
		return os.Chmod(abs, 0o755)
	case err != nil:
		return fmt.Errorf("testenv: %w", err)
	case len(ents) > 0:
		return fmt.Errorf("testenv: %s is not empty and holds no %s", abs, StateFile)
	}
	return nil
}

// checkTraversable makes sure, when PostgreSQL runs as another user, that
// it can reach dir: every existing directory on the path needs o+x.
func (c *Cluster) checkTraversable(dir string) error {
	if c.in.user == nil {
		return nil
	}
	for p := dir; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
			// Created with mode 0755.
		case err != nil:
			return fmt.Errorf("testenv: %w", err)
		case fi.Mode().Perm()&0o001 == 0:
			return fmt.Errorf("testenv: %s (mode %v) is not traversable by the OS user %s, which runs PostgreSQL: chmod o+x it or choose a directory elsewhere (e.g. under /tmp)",
				p, fi.Mode().Perm(), c.in.user.name)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// portsGiven remembers the ports handed out in this process: the kernel
// may hand a just-closed port out again, and parallel tests must not get
// the same one. claimPort does the same across processes.
var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

func freePort() (int, error) {
	for range 200 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("testenv: pick a port: %w", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		portsMu.Lock()
		fresh := !portsGiven[p]
		portsGiven[p] = true
		portsMu.Unlock()
		if fresh && claimPort(p) {
			return p, nil
		}
	}
	return 0, errors.New("testenv: no free port")
}

// portClaims is where processes of this machine record the ports they
// handed out, one file per port holding the owner's PID. `go test ./...`
// runs packages as parallel processes, and a port is unbound whenever its
// node is stopped (a stop fence, a rejoin): without a claim, another
// process's freePort may get it then, and the node cannot start again.
// Its name does not start with TempPrefix: ReapStale removes those.
func portClaims() string { return filepath.Join(os.TempDir(), "replctl-ports") }

// claimPort records port as this process's, unless a live process holds
// it. A claim of a dead process is taken over. Claims are never released
// while the process lives (its own portsGiven keeps it from reusing them
// either); ReapPortClaims removes those of dead processes.
func claimPort(port int) bool {
	dir := portClaims()
	if err := os.MkdirAll(dir, 0o1777); err != nil {
		return true // no registry: fall back to this process's own record
	}
	_ = os.Chmod(dir, 0o1777) // past the umask: every user's tests share it
	path := filepath.Join(dir, strconv.Itoa(port))
	for range 2 {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err == nil {
			_, err = fmt.Fprintf(f, "%d\n", os.Getpid())
			return errors.Join(err, f.Close()) == nil
		}
		if !errors.Is(err, fs.ErrExist) || claimAlive(path) {
			return false
		}
		_ = os.Remove(path)
	}
	return false
}

// claimAlive reports whether the claim file names a running process.
func claimAlive(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return !errors.Is(err, fs.ErrNotExist)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return false
	}
	if pid == os.Getpid() {
		return true
	}
	err = syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM) // EPERM: another user's, alive
}

// ReapPortClaims removes the port claims of processes that are gone.
func ReapPortClaims() error {
	entries, err := os.ReadDir(portClaims())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if p := filepath.Join(portClaims(), e.Name()); !claimAlive(p) {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

func (c *Cluster) pickPort() (int, error) {
	if c.opts.BasePort == 0 {
		return freePort()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.nextPort
	c.nextPort++
	return p, nil
}

func dsn(port int) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", port)
}

// nodeDSN is the DSN of the node on port: dsn, or with TLS the same
// verifying the server and presenting the client certificate.
func (c *Cluster) nodeDSN(port int) string {
	if c.TLS == nil {
		return dsn(port)
	}
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", c.tlsHost(), port) + c.TLS.conninfo()
}

// conninfo is how the cluster's own PostgreSQL programs (pg_basebackup, a
// replica's WAL receiver) reach the node on port.
func (c *Cluster) conninfo(port int) string {
	return fmt.Sprintf("host=%s port=%d user=postgres", c.tlsHost(), port) + c.TLS.conninfo()
}

// Node names become slot names, application names and directory names.
var nodeName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// newNode reserves a name, a port and a directory, and registers the node
// for cleanup before anything runs in it.
func (c *Cluster) newNode(name string, role Role, upstream string, managed bool) (*Node, error) {
	if !nodeName.MatchString(name) {
		return nil, fmt.Errorf("testenv: node name %q: use lower-case letters, digits and _", name)
	}
	port, err := c.pickPort()
	if err != nil {
		return nil, err
	}
	nodeDir := filepath.Join(c.Dir, name)
	n := &Node{
		Name: name, Port: port, DSN: c.nodeDSN(port), Role: role, Upstream: upstream, Managed: managed,
		DataDir: filepath.Join(nodeDir, "data"), LogPath: filepath.Join(nodeDir, "server.log"),
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("testenv: cluster is closed")
	}
	for _, o := range c.all {
		if o.Name == name {
			return nil, fmt.Errorf("testenv: node %s exists", name)
		}
	}
	if err := c.in.mkdirOwned(nodeDir); err != nil {
		return nil, fmt.Errorf("testenv: %s: %w", name, err)
	}
	if c.TLS != nil {
		if err := c.writeServerCert(n, nil, nil); err != nil {
			return nil, err
		}
	}
	c.all = append(c.all, n)
	if managed {
		c.Nodes = append(c.Nodes, n)
	}
	return n, nil
}

// startNew starts a node for the first time, moving it to another port if
// its port was taken since it was picked.
func (c *Cluster) startNew(ctx context.Context, n *Node) error {
	for attempt := 1; ; attempt++ {
		err := c.in.startServer(ctx, n)
		if err == nil || !errors.Is(err, errPortInUse) || c.opts.BasePort != 0 || attempt == portAttempts {
			return err
		}
		port, perr := freePort()
		if perr != nil {
			return errors.Join(err, perr)
		}
		c.mu.Lock()
		n.Port, n.DSN = port, c.nodeDSN(port)
		c.mu.Unlock()
		if err := c.in.setAutoConf(n.DataDir, []setting{{"port", strconv.Itoa(port)}}); err != nil {
			return err
		}
	}
}

// extraConf is the postgresql.conf text the options add to every node.
func (c *Cluster) extraConf() string {
	extra := timeoutConf(c.opts.ReceiverTimeout)
	if c.opts.Logical {
		extra += logicalServerConf
	}
	return extra
}

func (c *Cluster) createPrimary(ctx context.Context, n *Node, tmpl string) error {
	if err := copyTree(ctx, tmpl, n.DataDir); err != nil {
		return err
	}
	if err := c.in.own(n.DataDir, 0o700); err != nil {
		return err
	}
	if err := c.in.configureServer(n.DataDir, n, c.TLS, c.extraConf()); err != nil {
		return fmt.Errorf("testenv: configure %s: %w", n.Name, err)
	}
	return c.startNew(ctx, n)
}

// createReplica clones upstream with pg_basebackup (or, without it, the
// low-level backup API: clone.go), creating the node's slot there, and
// starts it as a standby streaming from upstream.
func (c *Cluster) createReplica(ctx context.Context, n, upstream *Node) error {
	if err := c.in.cloneNode(ctx, n, c.conninfo(upstream.Port)); err != nil {
		return fmt.Errorf("testenv: clone %s from %s: %w", n.Name, upstream.Name, err)
	}
	if err := c.startNew(ctx, n); err != nil {
		return err
	}
	return c.waitStreamingFrom(ctx, upstream, n)
}

// waitStreamingFrom waits until upstream's pg_stat_replication shows n
// streaming.
func (c *Cluster) waitStreamingFrom(ctx context.Context, upstream, n *Node) error {
	ctx, cancel := context.WithTimeout(ctx, streamTimeout)
	defer cancel()
	var last error
	for {
		var ok bool
		last = c.QueryRow(ctx, upstream.Name,
			`SELECT EXISTS (SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming')`,
			n.Name).Scan(&ok)
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testenv: %s does not stream from %s after %s (last error: %v)\n%s:\n%s",
				n.Name, upstream.Name, streamTimeout, last, n.LogPath, fileTail(n.LogPath, 20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *Cluster) setSync(ctx context.Context, primary *Node, replicas []*Node) error {
	var names []string
	for _, n := range replicas {
		names = append(names, n.Name)
	}
	// Node names are checked identifiers, safe to inline: ALTER SYSTEM
	// takes no parameters.
	want := "ANY 1 (" + strings.Join(names, ", ") + ")"
	if err := c.Exec(ctx, primary.Name, "ALTER SYSTEM SET synchronous_standby_names = '"+want+"'"); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	if err := c.Exec(ctx, primary.Name, "SELECT pg_reload_conf()"); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	// The reload is asynchronous; callers expect the setting in force.
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		var got string
		err := c.QueryRow(ctx, primary.Name, "SELECT current_setting('synchronous_standby_names')").Scan(&got)
		if err == nil && got == want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testenv: synchronous_standby_names on %s is %q, want %q", primary.Name, got, want)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// writeFiles writes replctl.yaml, rejoin.sh and testenv.json.
func (c *Cluster) writeFiles() error {
	if err := os.WriteFile(filepath.Join(c.Dir, RejoinScript), rejoinScript(c.in), 0o755); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	if err := os.WriteFile(filepath.Join(c.Dir, FenceScript), fenceScript(c.in), 0o755); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	if err := os.WriteFile(c.ConfigPath, c.RenderConfig(!c.opts.NoCommands), 0o644); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	if err := writeState(c.Dir, c.state()); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	return nil
}

// RenderConfig returns replctl.yaml for the managed nodes, with or without
// the node commands, e.g. for a test of SQL-only mode on a cluster built
// with commands.
func (c *Cluster) RenderConfig(commands bool) []byte {
	b, _ := c.RenderConfigVia(commands, nil) // no names: no error
	return b
}

// RenderConfigVia is RenderConfig with the DSNs of some nodes going
// through other addresses: via maps a node's name to a host:port, such as
// a Proxy's Addr (see Node.DSNVia). It is for a replctl that reaches those
// nodes through a proxy while the servers replicate directly. Mind that
// replctl builds the primary_conninfo it writes from the new primary's
// DSN: a node proxied here that becomes primary has its replicas stream
// through the proxy too. A name that is no managed node is an error.
func (c *Cluster) RenderConfigVia(commands bool, via map[string]string) ([]byte, error) {
	c.mu.Lock()
	nodes := slices.Clone(c.Nodes)
	c.mu.Unlock()
	for name, addr := range via {
		i := slices.IndexFunc(nodes, func(n *Node) bool { return n.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("testenv: no managed node %s to render via %s", name, addr)
		}
		n := *nodes[i]
		n.DSN = n.DSNVia(addr)
		nodes[i] = &n
	}
	return renderConfig(configInput{
		cluster: c.Name, dir: c.Dir, etcd: slices.Clone(c.EtcdEndpoints), nodes: nodes,
		zones: c.opts.Zones, commands: commands, fence: c.opts.FenceCommand, in: c.in, tls: c.TLS,
	}), nil
}

func (c *Cluster) state() *State {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := &State{
		Cluster: c.Name, Dir: c.Dir, Config: c.ConfigPath, BinDir: c.BinDir, PGVersion: c.PGVersion,
		OSUser: c.in.userName(), CreatedAt: c.created, TLS: c.TLS,
	}
	if !c.detached {
		st.Owner = &Process{PID: os.Getpid(), Start: procStart(os.Getpid())}
	} else {
		// The etcd children are the only processes of a detached cluster
		// whose life says whether someone still runs it: the first that
		// runs stands for them (ReapStale asks every member).
		for _, m := range c.members {
			if m.proc != nil {
				p := *m.proc
				st.Owner = &p
				break
			}
		}
	}
	for _, n := range c.all {
		st.Nodes = append(st.Nodes, NodeState{
			Name: n.Name, Port: n.Port, DataDir: n.DataDir, Log: n.LogPath, Role: n.Role,
			Upstream: n.Upstream, Managed: n.Managed, PID: postmasterPID(n.DataDir),
		})
	}
	var ms []EtcdMemberState
	for _, m := range c.members {
		ems := EtcdMemberState{
			Name: m.name, Endpoint: etcdEndpoint(m.clientPort), ClientPort: m.clientPort, PeerPort: m.peerPort, DataDir: m.dir,
		}
		if !c.detached {
			ems.Process = *st.Owner
		} else if m.proc != nil {
			ems.Process = *m.proc
			ems.Log = m.log
		} else {
			ems.Log = m.log
		}
		ms = append(ms, ems)
	}
	if len(ms) > 0 {
		first := ms[0]
		st.Etcd = &EtcdState{
			Endpoint: first.Endpoint, ClientPort: first.ClientPort, PeerPort: first.PeerPort, DataDir: first.DataDir,
			InProcess: !c.detached, Process: first.Process,
		}
		if len(ms) > 1 {
			st.Etcd.Members = ms
		}
	}
	return st
}

// Close stops every server the cluster knows of, whoever started it last
// (replctl's node commands included: the PID comes from postmaster.pid),
// stops etcd and removes the directory. Servers get an immediate shutdown
// (SIGQUIT), then SIGKILL: their data is about to be deleted. Close may be
// called more than once.
func (c *Cluster) Close() error {
	c.etcdMu.Lock()
	defer c.etcdMu.Unlock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	st := &State{}
	for _, n := range c.all {
		st.Nodes = append(st.Nodes, NodeState{DataDir: n.DataDir})
	}
	var members []int
	for i, m := range c.members {
		if m.running() {
			members = append(members, i)
		}
	}
	c.mu.Unlock()

	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for _, data := range dataDirs(c.Dir, st) {
		wg.Go(func() {
			if err := killPostmaster(data, syscall.SIGQUIT, 10*time.Second); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Go(func() {
		if err := c.stopMembers(members, false); err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	})
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close %s: %w", c.Dir, err)
	}
	if c.ownDir {
		return os.RemoveAll(c.Dir)
	}
	ents, err := os.ReadDir(c.Dir)
	if err != nil {
		return err
	}
	for _, ent := range ents {
		errs = append(errs, os.RemoveAll(filepath.Join(c.Dir, ent.Name())))
	}
	return errors.Join(errs...)
}

// Node returns the node called name, managed or not, or nil.
func (c *Cluster) Node(name string) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.all {
		if n.Name == name {
			return n
		}
	}
	return nil
}

func (c *Cluster) node(name string) (*Node, error) {
	if n := c.Node(name); n != nil {
		return n, nil
	}
	return nil, fmt.Errorf("testenv: no node %s", name)
}

// StopNode stops a node with pg_ctl stop -m fast (SIGKILL if that fails).
func (c *Cluster) StopNode(ctx context.Context, name string) error {
	n, err := c.node(name)
	if err != nil {
		return err
	}
	if err := c.in.stopServer(ctx, n, "fast"); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	return nil
}

// KillNode crashes a node: SIGKILL to the postmaster PID in postmaster.pid.
// It returns once the postmaster and its children are gone, so that the
// node can be started again at once.
func (c *Cluster) KillNode(ctx context.Context, name string) error {
	n, err := c.node(name)
	if err != nil {
		return err
	}
	if postmasterPID(n.DataDir) == 0 {
		return fmt.Errorf("testenv: kill %s: not running", name)
	}
	if err := killPostmaster(n.DataDir, syscall.SIGKILL, 5*time.Second); err != nil {
		return fmt.Errorf("testenv: kill %s: %w", name, err)
	}
	return nil
}

// StartNode starts a stopped node with pg_ctl start.
func (c *Cluster) StartNode(ctx context.Context, name string) error {
	n, err := c.node(name)
	if err != nil {
		return err
	}
	if err := c.in.startServer(ctx, n); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	return nil
}

// PauseReplay pauses WAL replay on a standby.
func (c *Cluster) PauseReplay(ctx context.Context, name string) error {
	return c.Exec(ctx, name, "SELECT pg_wal_replay_pause()")
}

// ResumeReplay resumes WAL replay on a standby.
func (c *Cluster) ResumeReplay(ctx context.Context, name string) error {
	return c.Exec(ctx, name, "SELECT pg_wal_replay_resume()")
}

// Conn opens a connection to a node; the caller closes it.
func (c *Cluster) Conn(ctx context.Context, name string) (*pgx.Conn, error) {
	n, err := c.node(name)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.Connect(ctx, n.DSN)
	if err != nil {
		return nil, fmt.Errorf("testenv: connect %s: %w", name, err)
	}
	return conn, nil
}

// Exec runs one statement on a node.
func (c *Cluster) Exec(ctx context.Context, name, sql string, args ...any) error {
	conn, err := c.Conn(ctx, name)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("testenv: %s: %w", name, err)
	}
	return nil
}

// QueryRow runs a query on a node over a connection of its own, closed by
// Scan: c.QueryRow(ctx, "pg2", "SELECT count(*) FROM t").Scan(&n).
func (c *Cluster) QueryRow(ctx context.Context, name, sql string, args ...any) pgx.Row {
	conn, err := c.Conn(ctx, name)
	if err != nil {
		return errRow{err}
	}
	return &connRow{ctx: ctx, conn: conn, row: conn.QueryRow(ctx, sql, args...), name: name}
}

type connRow struct {
	ctx  context.Context
	conn *pgx.Conn
	row  pgx.Row
	name string
}

func (r *connRow) Scan(dest ...any) error {
	defer r.conn.Close(context.WithoutCancel(r.ctx))
	if err := r.row.Scan(dest...); err != nil {
		return fmt.Errorf("testenv: %s: %w", r.name, err)
	}
	return nil
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// Primary returns the one node that is not in recovery. Standalone nodes
// are not part of the cluster and are not considered.
func (c *Cluster) Primary(ctx context.Context) (*Node, error) {
	st, err := c.probe(ctx)
	if err != nil {
		return nil, err
	}
	return st.primary()
}

// WriteTable is the table Write fills.
const WriteTable = "testenv_writes"

// Write inserts n rows into testenv_writes on the current primary, creating
// the table if missing. With synchronous replication it returns once the
// rows are acknowledged.
func (c *Cluster) Write(ctx context.Context, n int) error {
	p, err := c.Primary(ctx)
	if err != nil {
		return err
	}
	conn, err := c.Conn(ctx, p.Name)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+WriteTable+` (
		id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), payload text)`)
	if err == nil {
		_, err = conn.Exec(ctx, `INSERT INTO `+WriteTable+` (payload)
			SELECT 'row ' || g FROM generate_series(1, $1::int) g`, n)
	}
	if err != nil {
		return fmt.Errorf("testenv: write on %s: %w", p.Name, err)
	}
	return nil
}

// probeResult is what every cluster node says about itself.
type probeResult struct {
	nodes     []*Node
	down      map[string]error
	inRecov   map[string]bool
	streaming map[string][]string // node -> application names streaming from it
}

func (c *Cluster) probe(ctx context.Context) (*probeResult, error) {
	c.mu.Lock()
	var nodes []*Node
	for _, n := range c.all {
		if n.Role != RoleStandalone {
			nodes = append(nodes, n)
		}
	}
	c.mu.Unlock()
	r := &probeResult{nodes: nodes, down: map[string]error{}, inRecov: map[string]bool{}, streaming: map[string][]string{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, queryTimeout)
			defer cancel()
			var rec bool
			var names []string
			err := c.QueryRow(ctx, n.Name, `SELECT pg_is_in_recovery(),
				ARRAY(SELECT application_name FROM pg_stat_replication WHERE state = 'streaming')::text[]`).Scan(&rec, &names)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				r.down[n.Name] = err
				return
			}
			r.inRecov[n.Name], r.streaming[n.Name] = rec, names
		})
	}
	wg.Wait()
	return r, ctx.Err()
}

func (r *probeResult) primary() (*Node, error) {
	var ps []*Node
	for _, n := range r.nodes {
		if _, down := r.down[n.Name]; !down && !r.inRecov[n.Name] {
			ps = append(ps, n)
		}
	}
	switch len(ps) {
	case 1:
		return ps[0], nil
	case 0:
		return nil, fmt.Errorf("testenv: no primary (down: %v)", r.down)
	default:
		var names []string
		for _, p := range ps {
			names = append(names, p.Name)
		}
		return nil, fmt.Errorf("testenv: more than one primary: %s", strings.Join(names, ", "))
	}
}

// notStreaming lists the replicas that do not stream from the primary,
// directly or through a chain of streaming replicas.
func (r *probeResult) notStreaming() ([]string, error) {
	p, err := r.primary()
	if err != nil {
		return nil, err
	}
	reached := map[string]bool{p.Name: true}
	queue := []string{p.Name}
	for len(queue) > 0 {
		up := queue[0]
		queue = queue[1:]
		for _, down := range r.streaming[up] {
			if !reached[down] {
				reached[down] = true
				queue = append(queue, down)
			}
		}
	}
	var missing []string
	for _, n := range r.nodes {
		if !reached[n.Name] {
			missing = append(missing, n.Name)
		}
	}
	return missing, nil
}

// WaitStreaming waits until every replica (every node but the primary and
// standalone nodes) streams from the current primary, directly or in
// cascade. Without a deadline on ctx it gives up after 60 s.
func (c *Cluster) WaitStreaming(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, streamTimeout)
		defer cancel()
	}
	for {
		r, err := c.probe(ctx)
		var missing []string
		if err == nil {
			if missing, err = r.notStreaming(); err == nil && len(missing) == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("testenv: wait for streaming: %w", err)
			}
			var b strings.Builder
			for _, name := range missing {
				if n := c.Node(name); n != nil {
					fmt.Fprintf(&b, "\n%s:\n%s", n.LogPath, fileTail(n.LogPath, 10))
				}
			}
			return fmt.Errorf("testenv: not streaming: %s%s", strings.Join(missing, ", "), b.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// AddOption changes how AddReplica and AddStandalone add a node.
type AddOption func(*addOptions)

type addOptions struct{ unmanaged bool }

// Unmanaged keeps the new node out of replctl.yaml and Cluster.Nodes,
// for tests of servers replctl does not know about. It is still stopped
// by Close.
func Unmanaged() AddOption { return func(o *addOptions) { o.unmanaged = true } }

// AddReplica clones a new replica from upstream (the primary or a replica:
// cascading) with pg_basebackup, with a slot named after it on upstream,
// and returns once it streams from upstream. Unless Unmanaged, it is
// appended to Nodes and replctl.yaml.
func (c *Cluster) AddReplica(ctx context.Context, name, upstream string, opts ...AddOption) (*Node, error) {
	var o addOptions
	for _, f := range opts {
		f(&o)
	}
	up, err := c.node(upstream)
	if err != nil {
		return nil, err
	}
	n, err := c.newNode(name, RoleReplica, upstream, !o.unmanaged)
	if err != nil {
		return nil, err
	}
	if err := c.createReplica(ctx, n, up); err != nil {
		return nil, err
	}
	return n, c.writeFiles()
}

// AddStandalone starts a separately initdb'd server, whose system
// identifier differs from the cluster's, for tests of foreign nodes.
// Unless Unmanaged, it is appended to Nodes and replctl.yaml, as a
// misconfigured node would be.
func (c *Cluster) AddStandalone(ctx context.Context, name string, opts ...AddOption) (*Node, error) {
	var o addOptions
	for _, f := range opts {
		f(&o)
	}
	n, err := c.newNode(name, RoleStandalone, "", !o.unmanaged)
	if err != nil {
		return nil, err
	}
	if err := c.in.initdb(ctx, n.DataDir); err != nil {
		return nil, err
	}
	if err := c.in.configureServer(n.DataDir, n, c.TLS, c.extraConf()); err != nil {
		return nil, fmt.Errorf("testenv: configure %s: %w", name, err)
	}
	if err := c.startNew(ctx, n); err != nil {
		return nil, err
	}
	return n, c.writeFiles()
}
