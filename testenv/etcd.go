package testenv

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/client/pkg/v3/types"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// etcdReadyTimeout bounds how long a new etcd may take to answer.
const etcdReadyTimeout = 30 * time.Second

// loneMemberName is the name of a single-member etcd, as it always was.
const loneMemberName = "testenv"

func etcdEndpoint(clientPort int) string { return "127.0.0.1:" + strconv.Itoa(clientPort) }

// memberConfig is what one etcd member is started with, in this process
// (startEmbedded) or in a child (spawnEtcd, RunEtcdServe).
type memberConfig struct {
	name                 string // empty: loneMemberName
	dir                  string // data directory
	clientPort, peerPort int
	// initialCluster is etcd's initial cluster, name=peerURL,...; empty for
	// a member alone. The scheme of the member's own peer URL in it says
	// whether peers speak TLS.
	initialCluster string
	token          string    // initial cluster token; empty: etcd's default
	tls            *TLSFiles // nil: plain text
}

// embeddedEtcd is an etcd running in this process.
type embeddedEtcd struct {
	e       *embed.Etcd
	closing *atomic.Bool
	// multi: a member of a multi-member etcd.
	multi                bool
	clientPort, peerPort int
}

// close stops etcd. Its servers log "server closed" errors while they shut
// down as asked; the logger is muted first so that they do not read as
// failures.
//
// A member of a multi-member etcd stops its raft first (HardStop), because
// testenv only ever stops all members together (a lone member is killed,
// not stopped): Close would otherwise first hand the leadership to a peer
// that is stopping too, and wait for that in vain for etcd's request
// timeout (about 7 s). Its raft stopped, the connections of its peers
// carry nothing more: they are cut rather than waited for (1 s).
func (x *embeddedEtcd) close() {
	x.closing.Store(true)
	if x.multi {
		x.e.Server.HardStop()
		dropConnections([]int{x.peerPort})
	}
	x.e.Close()
}

// kill stops the member the way a crash would: its ports stop accepting,
// its raft stops at once, with no leadership transfer, and every
// connection it accepted is cut before its servers close, so that clients
// and peers see the connection drop instead of a graceful shutdown that
// waits for their streams. The listeners close first: a client that
// reconnected at once to a port still open would be served through the
// shutdown, whose gRPC server, once stopped under the still running HTTP
// server, answers a request with an empty HTTP 200 ("malformed header:
// missing HTTP content-type", seen once in TestEtcdMembersTLS under load).
func (x *embeddedEtcd) kill() {
	x.closing.Store(true)
	for _, l := range x.e.Clients {
		l.Close()
	}
	for _, p := range x.e.Peers {
		p.Listener.Close()
	}
	x.e.Server.HardStop()
	dropConnections([]int{x.clientPort, x.peerPort})
	x.e.Close()
}

// dropConnections shuts down the TCP connections this process accepted on
// 127.0.0.1 at the given ports, as the kernel does when a process dies.
// Each socket is found by its inode (/proc/net/tcp, /proc/self/fd) and shut
// down through a close-on-exec duplicate whose inode is checked first, so
// that a descriptor number closed and reused meanwhile is never touched and
// no child started meanwhile inherits the duplicate. Best effort: without
// /proc it does nothing, and Close ends the connections later.
func dropConnections(ports []int) {
	inodes := map[uint64]bool{}
	for _, s := range tcpSockets(ports) {
		if !s.listen && s.inode != 0 {
			inodes[s.inode] = true
		}
	}
	if len(inodes) == 0 {
		return
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		link, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue
		}
		s, ok := strings.CutPrefix(link, "socket:[")
		if !ok {
			continue
		}
		ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64)
		if err != nil || !inodes[ino] {
			continue
		}
		dup, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
		if errno != 0 {
			continue
		}
		var st syscall.Stat_t
		if syscall.Fstat(int(dup), &st) == nil && st.Ino == ino {
			_ = syscall.Shutdown(int(dup), syscall.SHUT_RDWR)
		}
		_ = syscall.Close(int(dup))
	}
}

// tcpSocket is a line of /proc/net/tcp.
type tcpSocket struct {
	listen bool
	inode  uint64
}

// tcpSockets lists the TCP sockets, of any process, bound to 127.0.0.1 at
// one of ports; none when /proc/net/tcp cannot be read.
func tcpSockets(ports []int) []tcpSocket {
	want := map[string]bool{}
	for _, p := range ports {
		want[fmt.Sprintf("0100007F:%04X", p)] = true
	}
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []tcpSocket
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// sl local_address rem_address st ... uid timeout inode
		fs := strings.Fields(sc.Text())
		if len(fs) < 10 || !want[fs[1]] {
			continue
		}
		ino, _ := strconv.ParseUint(fs[9], 10, 64)
		out = append(out, tcpSocket{listen: fs[3] == "0A", inode: ino})
	}
	return out
}

// waitUnbound waits until nothing listens on 127.0.0.1 at ports, for d at
// most. A SIGKILLed Go process reads as a zombie as soon as its main
// thread is done, while its other threads may still hold its sockets for
// a moment: a member restarted at once would find its ports taken.
func waitUnbound(ports []int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		listening := false
		for _, s := range tcpSockets(ports) {
			listening = listening || s.listen
		}
		if !listening {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mutableCore drops every entry once muted is set.
type mutableCore struct {
	zapcore.Core
	muted *atomic.Bool
}

func (m mutableCore) With(f []zapcore.Field) zapcore.Core {
	return mutableCore{m.Core.With(f), m.muted}
}

func (m mutableCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if m.muted.Load() {
		return ce
	}
	return m.Core.Check(e, ce)
}

// startEmbedded starts an etcd member in this process and waits until it
// serves, which for a member of a new multi-member etcd means until a
// quorum of members runs: start them together. It logs errors only, to
// stderr. With TLS files, clients must speak TLS and present a certificate
// signed by the CA; the peer port, which a single member never uses, stays
// plain, and peers of a multi-member etcd use TLS when their URLs in the
// initial cluster say https.
func startEmbedded(ctx context.Context, mc memberConfig) (*embeddedEtcd, error) {
	closing := new(atomic.Bool)
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.Lock(os.Stderr), zapcore.ErrorLevel)
	cfg := embed.NewConfig()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(mutableCore{core, closing}))
	cfg.Name = mc.name
	if cfg.Name == "" {
		cfg.Name = loneMemberName
	}
	cfg.Dir = mc.dir
	cu := url.URL{Scheme: "http", Host: etcdEndpoint(mc.clientPort)}
	pu := url.URL{Scheme: "http", Host: etcdEndpoint(mc.peerPort)}
	tf := mc.tls
	if tf != nil {
		cu.Scheme = "https"
		cfg.ClientTLSInfo = transport.TLSInfo{
			CertFile: tf.EtcdCert, KeyFile: tf.EtcdKey, TrustedCAFile: tf.CAFile, ClientCertAuth: true,
		}
	}
	if mc.initialCluster != "" {
		peers, err := types.NewURLsMap(mc.initialCluster)
		if err != nil {
			return nil, fmt.Errorf("etcd member %s: initial cluster %q: %w", cfg.Name, mc.initialCluster, err)
		}
		own := peers[cfg.Name]
		if len(own) != 1 || own[0].Host != pu.Host {
			return nil, fmt.Errorf("etcd member %s: initial cluster %q does not give it the peer address %s", cfg.Name, mc.initialCluster, pu.Host)
		}
		if own[0].Scheme == "https" {
			if tf == nil {
				return nil, fmt.Errorf("etcd member %s: https peers need TLS files", cfg.Name)
			}
			pu.Scheme = "https"
			cfg.PeerTLSInfo = transport.TLSInfo{
				CertFile: tf.EtcdCert, KeyFile: tf.EtcdKey, TrustedCAFile: tf.CAFile, ClientCertAuth: true,
			}
		}
		cfg.InitialCluster = mc.initialCluster
		if mc.token != "" {
			cfg.InitialClusterToken = mc.token
		}
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	if mc.initialCluster == "" {
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	}
	cfg.LogLevel = "error"
	// Test data: durability across power loss is worth nothing here.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd on %s: %w", cu.Host, err)
	}
	x := &embeddedEtcd{e: e, closing: closing, multi: mc.initialCluster != "", clientPort: mc.clientPort, peerPort: mc.peerPort}
	select {
	case <-e.Server.ReadyNotify():
		return x, nil
	case err := <-e.Err():
		x.kill()
		return nil, fmt.Errorf("start etcd on %s: %w", cu.Host, err)
	case <-ctx.Done():
		x.kill()
		return nil, fmt.Errorf("start etcd on %s: %w", cu.Host, ctx.Err())
	case <-time.After(etcdReadyTimeout):
		x.kill()
		return nil, fmt.Errorf("start etcd on %s: not ready after %s", cu.Host, etcdReadyTimeout)
	}
}

// ServeEtcd runs an embedded single-member etcd on 127.0.0.1 until ctx is
// done. With tf (its CAFile, EtcdCert and EtcdKey), clients must present a
// certificate signed by the CA. RunEtcdServe, what `replctl testenv
// etcd-serve` runs in the detached children that UpDetached starts so that
// etcd outlives the command, serves members of a multi-member etcd too.
func ServeEtcd(ctx context.Context, dataDir string, clientPort, peerPort int, tf *TLSFiles) error {
	return serveEtcd(ctx, memberConfig{dir: dataDir, clientPort: clientPort, peerPort: peerPort, tls: tf})
}

func serveEtcd(ctx context.Context, mc memberConfig) error {
	x, err := startEmbedded(ctx, mc)
	if err != nil {
		return err
	}
	defer x.close()
	select {
	case <-ctx.Done():
		return nil
	case err := <-x.e.Err():
		return err
	}
}

// RunEtcdServe parses the arguments UpDetached appends to its self command
// and serves that etcd member until ctx is done: --dir D --client-port P
// --peer-port Q; for a member of a multi-member etcd also --name N,
// --initial-cluster N1=URL1,N2=URL2,... (https peer URLs make the peers
// speak TLS) and --initial-cluster-token T; for a TLS cluster --ca-file,
// --cert-file and --key-file. A CLI may use it as is, or parse the same
// flags itself.
func RunEtcdServe(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("etcd-serve", flag.ContinueOnError)
	var mc memberConfig
	fs.StringVar(&mc.dir, "dir", "", "etcd data directory")
	fs.IntVar(&mc.clientPort, "client-port", 0, "client port on 127.0.0.1")
	fs.IntVar(&mc.peerPort, "peer-port", 0, "peer port on 127.0.0.1")
	fs.StringVar(&mc.name, "name", "", "member name (default "+loneMemberName+")")
	fs.StringVar(&mc.initialCluster, "initial-cluster", "", "every member of a multi-member etcd, name=peer-URL,...")
	fs.StringVar(&mc.token, "initial-cluster-token", "", "initial cluster token of a multi-member etcd")
	var tf TLSFiles
	fs.StringVar(&tf.CAFile, "ca-file", "", "CA that client certificates must be signed by")
	fs.StringVar(&tf.EtcdCert, "cert-file", "", "server certificate")
	fs.StringVar(&tf.EtcdKey, "key-file", "", "server key")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if mc.dir == "" || mc.clientPort == 0 || mc.peerPort == 0 {
		return errors.New("etcd-serve: --dir, --client-port and --peer-port are required")
	}
	if mc.initialCluster != "" && mc.name == "" {
		return errors.New("etcd-serve: --initial-cluster needs --name")
	}
	switch {
	case tf.CAFile != "" && tf.EtcdCert != "" && tf.EtcdKey != "":
		mc.tls = &tf
	case tf.CAFile != "" || tf.EtcdCert != "" || tf.EtcdKey != "":
		// Half a TLS configuration must not become a plain etcd.
		return errors.New("etcd-serve: --ca-file, --cert-file and --key-file go together")
	}
	return serveEtcd(ctx, mc)
}

// spawnEtcd starts `self... --dir D --client-port P --peer-port Q ...` in
// its own session, so that it survives the command that started it and the
// terminal's signals, and waits until etcd answers (for a member of a new
// multi-member etcd: until a quorum runs).
func spawnEtcd(ctx context.Context, self []string, mc memberConfig, logPath string) (pid int, start uint64, err error) {
	if len(self) == 0 {
		return 0, 0, errors.New("testenv: no command to start etcd with")
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, 0, err
	}
	defer logf.Close()
	var off int64
	if fi, err := logf.Stat(); err == nil {
		off = fi.Size()
	}
	args := append(append([]string{}, self[1:]...),
		"--dir", mc.dir, "--client-port", strconv.Itoa(mc.clientPort), "--peer-port", strconv.Itoa(mc.peerPort))
	if mc.initialCluster != "" {
		args = append(args, "--name", mc.name, "--initial-cluster", mc.initialCluster)
		if mc.token != "" {
			args = append(args, "--initial-cluster-token", mc.token)
		}
	}
	tf := mc.tls
	if tf != nil {
		args = append(args, "--ca-file", tf.CAFile, "--cert-file", tf.EtcdCert, "--key-file", tf.EtcdKey)
	}
	// Not CommandContext: the child must outlive ctx.
	cmd := exec.Command(self[0], args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, 0, fmt.Errorf("testenv: start etcd: %w", err)
	}
	pid, start = cmd.Process.Pid, procStart(cmd.Process.Pid)
	exited := make(chan struct{})
	// Reap the child if it dies while we run; once we exit, init does.
	go func() { _ = cmd.Wait(); close(exited) }()

	ctx, cancel := context.WithTimeout(ctx, etcdReadyTimeout)
	defer cancel()
	endpoint := etcdEndpoint(mc.clientPort)
	for {
		select {
		case <-exited:
			log := readFrom(logPath, off)
			if strings.Contains(strings.ToLower(log), "address already in use") {
				return 0, 0, fmt.Errorf("etcd on %s: %w", endpoint, errPortInUse)
			}
			return 0, 0, fmt.Errorf("testenv: etcd exited before answering:\n%s", tail([]byte(log), 20))
		case <-ctx.Done():
			stopPID(pid, start, 5*time.Second)
			return 0, 0, fmt.Errorf("testenv: etcd on %s did not answer: %w\n%s", endpoint, ctx.Err(), fileTail(logPath, 20))
		case <-time.After(100 * time.Millisecond):
		}
		if pingEtcd(ctx, endpoint, tf) == nil {
			return pid, start, nil
		}
	}
}

// pingEtcd reads a key, which only succeeds on a serving etcd; with TLS
// files, as a client with the cluster's client certificate.
func pingEtcd(ctx context.Context, endpoint string, tf *TLSFiles) error {
	tc, err := tf.clientConfig()
	if err != nil {
		return err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: time.Second,
		Logger:      zap.NewNop(),
		TLS:         tc,
	})
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = cli.Get(ctx, "replctl-testenv-ping")
	return err
}

// stopPID ends a process we started: SIGTERM, then SIGKILL after grace.
func stopPID(pid int, start uint64, grace time.Duration) bool {
	if !sameProcess(pid, start) {
		return true
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	if waitGone(pid, start, grace) {
		return true
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	return waitGone(pid, start, 5*time.Second)
}

// killPID sends SIGKILL to a process we started and waits until it is gone.
func killPID(pid int, start uint64) bool {
	if !sameProcess(pid, start) {
		return true
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	return waitGone(pid, start, 5*time.Second)
}

// etcdMember is one member of a cluster's etcd: where it lives and, while
// it runs, the embedded server or the detached process serving it.
type etcdMember struct {
	name                 string
	dir                  string // data directory
	log                  string // a detached member's stdout and stderr
	clientPort, peerPort int
	x                    *embeddedEtcd // running in this process
	proc                 *Process      // running in a child of its own
}

func (m *etcdMember) running() bool { return m.x != nil || m.proc != nil }

// newEtcdMembers names the members and hands out their ports (client,
// then peer, member after member) and directories. A single member keeps
// the names it always had: DIR/etcd, DIR/etcd.log, "testenv".
func (c *Cluster) newEtcdMembers(n int) error {
	c.etcdToken = fmt.Sprintf("replctl-testenv-%d-%d", os.Getpid(), time.Now().UnixNano())
	for i := 1; i <= n; i++ {
		m := &etcdMember{name: loneMemberName, dir: filepath.Join(c.Dir, "etcd"), log: filepath.Join(c.Dir, "etcd.log")}
		if n > 1 {
			m.name = "etcd-" + strconv.Itoa(i)
			m.dir = filepath.Join(c.Dir, m.name)
			m.log = filepath.Join(c.Dir, m.name+".log")
		}
		var err error
		if m.clientPort, err = c.pickPort(); err != nil {
			return err
		}
		if m.peerPort, err = c.pickPort(); err != nil {
			return err
		}
		c.members = append(c.members, m)
	}
	return nil
}

// memberConfig is how member i starts. Peers speak TLS in a TLS cluster,
// with the client-and-server certificate etcd has anyway: then nothing of
// the cluster, loopback included, is plain text. Callers hold c.mu.
func (c *Cluster) memberConfig(i int) memberConfig {
	m := c.members[i]
	mc := memberConfig{name: m.name, dir: m.dir, clientPort: m.clientPort, peerPort: m.peerPort, tls: c.TLS}
	if len(c.members) > 1 {
		scheme := "http"
		if c.TLS != nil {
			scheme = "https"
		}
		var peers []string
		for _, p := range c.members {
			peers = append(peers, p.name+"="+scheme+"://"+etcdEndpoint(p.peerPort))
		}
		mc.initialCluster, mc.token = strings.Join(peers, ","), c.etcdToken
	}
	return mc
}

// startEtcd starts every stopped member on its ports (in-process or
// detached), together, since a member of a multi-member etcd waits for a
// quorum. When fresh and the ports were picked, it moves every member to
// other ports if one was taken meanwhile.
func (c *Cluster) startEtcd(ctx context.Context, fresh bool) error {
	for attempt := 1; ; attempt++ {
		var idx []int
		c.mu.Lock()
		for i, m := range c.members {
			if !m.running() {
				idx = append(idx, i)
			}
		}
		c.mu.Unlock()
		err := c.startMembers(ctx, idx)
		if err == nil {
			c.mu.Lock()
			c.EtcdEndpoints = nil
			for _, m := range c.members {
				c.EtcdEndpoints = append(c.EtcdEndpoints, etcdEndpoint(m.clientPort))
			}
			c.EtcdEndpoint = c.EtcdEndpoints[0]
			c.mu.Unlock()
			return nil
		}
		clash := errors.Is(err, errPortInUse) || strings.Contains(err.Error(), "address already in use")
		if !fresh || !clash || c.opts.BasePort != 0 || attempt == portAttempts {
			return fmt.Errorf("testenv: %w", err)
		}
		// A half-made member remembers its peer URLs, its own and the
		// others': every member starts afresh, on new ports.
		c.mu.Lock()
		for _, m := range c.members {
			if err := os.RemoveAll(m.dir); err != nil {
				c.mu.Unlock()
				return err
			}
			cp, err1 := freePort()
			pp, err2 := freePort()
			if err := errors.Join(err1, err2); err != nil {
				c.mu.Unlock()
				return err
			}
			m.clientPort, m.peerPort = cp, pp
		}
		c.mu.Unlock()
	}
}

// startMembers starts the members idx concurrently and waits until each
// serves. When one fails, the others stop waiting, and the members it
// started are stopped again.
func (c *Cluster) startMembers(ctx context.Context, idx []int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, len(idx))
	var wg sync.WaitGroup
	for k, i := range idx {
		wg.Go(func() {
			if errs[k] = c.startMember(ctx, i); errs[k] != nil {
				cancel()
			}
		})
	}
	wg.Wait()
	// The members that gave up because another failed say only that.
	var first []error
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			first = append(first, err)
		}
	}
	err := errors.Join(first...)
	if err == nil {
		err = errors.Join(errs...)
	}
	if err == nil {
		return nil
	}
	var started []int
	for k, i := range idx {
		if errs[k] == nil {
			started = append(started, i)
		}
	}
	return errors.Join(err, c.stopMembers(started, false))
}

func (c *Cluster) startMember(ctx context.Context, i int) error {
	c.mu.Lock()
	mc, m := c.memberConfig(i), c.members[i]
	c.mu.Unlock()
	if c.detached {
		pid, start, err := spawnEtcd(ctx, c.self, mc, m.log)
		if err != nil {
			return err
		}
		c.mu.Lock()
		m.proc = &Process{PID: pid, Start: start}
		c.mu.Unlock()
		return nil
	}
	x, err := startEmbedded(ctx, mc)
	if err != nil {
		return err
	}
	c.mu.Lock()
	m.x = x
	c.mu.Unlock()
	return nil
}

// stopMembers stops the members idx concurrently; kill stops them the way
// a crash would (SIGKILL, or for an embedded member see kill).
func (c *Cluster) stopMembers(idx []int, kill bool) error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for _, i := range idx {
		c.mu.Lock()
		m := c.members[i]
		x, proc := m.x, m.proc
		m.x, m.proc = nil, nil
		c.mu.Unlock()
		wg.Go(func() {
			switch {
			case x != nil && kill:
				x.kill()
			case x != nil:
				x.close()
			case proc != nil:
				ok := false
				if kill {
					ok = killPID(proc.PID, proc.Start)
				} else {
					ok = stopPID(proc.PID, proc.Start, 10*time.Second)
				}
				if ok && !waitUnbound([]int{m.clientPort, m.peerPort}, 5*time.Second) {
					mu.Lock()
					errs = append(errs, fmt.Errorf("etcd member %s (pid %d) is gone, but its ports %d and %d are still taken", m.name, proc.PID, m.clientPort, m.peerPort))
					mu.Unlock()
					return
				}
				if !ok {
					mu.Lock()
					errs = append(errs, fmt.Errorf("etcd member %s (pid %d) still running", m.name, proc.PID))
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// etcdOp runs a change to the running members under etcdMu, after checking
// that there is an etcd and that the cluster is not closed, and records the
// new PIDs of a detached cluster in its state file.
func (c *Cluster) etcdOp(f func() error) error {
	c.etcdMu.Lock()
	defer c.etcdMu.Unlock()
	c.mu.Lock()
	none, closed := len(c.members) == 0, c.closed
	c.mu.Unlock()
	switch {
	case none:
		return errors.New("testenv: the cluster has no etcd")
	case closed:
		return errors.New("testenv: cluster is closed")
	}
	err := f()
	if c.detached {
		err = errors.Join(err, writeState(c.Dir, c.state()))
	}
	return err
}

func (c *Cluster) checkMember(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i < 0 || i >= len(c.members) {
		return fmt.Errorf("testenv: no etcd member %d (the cluster has %d, from 0)", i, len(c.members))
	}
	return nil
}

// StopEtcd stops every etcd member, to test what happens without etcd.
// StartEtcd starts them again on the same ports and data.
func (c *Cluster) StopEtcd() error {
	c.mu.Lock()
	none := len(c.members) == 0 || c.closed
	c.mu.Unlock()
	if none {
		return nil // nothing runs
	}
	return c.etcdOp(func() error {
		c.mu.Lock()
		idx := make([]int, len(c.members))
		for i := range idx {
			idx[i] = i
		}
		c.mu.Unlock()
		if err := c.stopMembers(idx, false); err != nil {
			return fmt.Errorf("testenv: %w", err)
		}
		return nil
	})
}

// StartEtcd starts every stopped etcd member again (after StopEtcd or
// KillEtcdMember), together, on the same ports and data. It fails if
// another process took a port meanwhile.
func (c *Cluster) StartEtcd() error {
	return c.etcdOp(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), etcdReadyTimeout)
		defer cancel()
		return c.startEtcd(ctx, false)
	})
}

// KillEtcdMember stops etcd member i (an index into EtcdEndpoints, from 0)
// abruptly, as a crash would: a detached member gets SIGKILL on its
// recorded PID; an embedded one stops its raft at once, with no leadership
// transfer, and has every connection it accepted cut before its servers
// close. Its data stays for StartEtcdMember. Killing the leader of a
// 3-member etcd makes the other two elect a new one (EtcdLeader waits for
// it).
func (c *Cluster) KillEtcdMember(i int) error {
	return c.etcdOp(func() error {
		if err := c.checkMember(i); err != nil {
			return err
		}
		c.mu.Lock()
		m := c.members[i]
		running := m.running()
		c.mu.Unlock()
		if !running {
			return fmt.Errorf("testenv: kill etcd member %d (%s): not running", i, m.name)
		}
		if err := c.stopMembers([]int{i}, true); err != nil {
			return fmt.Errorf("testenv: kill: %w", err)
		}
		return nil
	})
}

// StartEtcdMember starts etcd member i again on its ports and data
// directory, after KillEtcdMember (or StopEtcd), and returns once it
// serves: it rejoins the others and catches up from the leader. It needs a
// quorum with the members already running (with fewer, start them together
// with StartEtcd), and fails if another process took one of its ports
// meanwhile. Starting a running member does nothing.
func (c *Cluster) StartEtcdMember(i int) error {
	return c.etcdOp(func() error {
		if err := c.checkMember(i); err != nil {
			return err
		}
		c.mu.Lock()
		running := c.members[i].running()
		c.mu.Unlock()
		if running {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), etcdReadyTimeout)
		defer cancel()
		if err := c.startMembers(ctx, []int{i}); err != nil {
			return fmt.Errorf("testenv: restart etcd member %d: %w", i, err)
		}
		return nil
	})
}

// EtcdLeader returns the index in EtcdEndpoints of the current leader of
// the cluster's etcd: the member that a majority of all members, asked in
// turn, name as their leader. While there is none (an election runs after
// the leader was killed, or members are still catching up) it asks again,
// until ctx is done; without a deadline on ctx it gives up after 30 s.
// Only running members are asked.
func (c *Cluster) EtcdLeader(ctx context.Context) (int, error) {
	c.mu.Lock()
	total := len(c.members)
	var up []int
	var endpoints []string
	for i, m := range c.members {
		if m.running() {
			up = append(up, i)
			endpoints = append(endpoints, etcdEndpoint(m.clientPort))
		}
	}
	c.mu.Unlock()
	if total == 0 {
		return -1, errors.New("testenv: the cluster has no etcd")
	}
	if len(up) == 0 {
		return -1, errors.New("testenv: no etcd member runs")
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, etcdReadyTimeout)
		defer cancel()
	}
	tc, err := c.TLS.clientConfig()
	if err != nil {
		return -1, err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: time.Second, Logger: zap.NewNop(), TLS: tc})
	if err != nil {
		return -1, fmt.Errorf("testenv: %w", err)
	}
	defer cli.Close()
	type answer struct {
		id, leader uint64
		err        error
	}
	for {
		answers := make([]answer, len(up))
		var wg sync.WaitGroup
		for k := range up {
			wg.Go(func() {
				sctx, cancel := context.WithTimeout(ctx, time.Second)
				defer cancel()
				resp, err := cli.Status(sctx, endpoints[k])
				if err != nil {
					answers[k].err = fmt.Errorf("%s: %w", endpoints[k], err)
					return
				}
				answers[k] = answer{id: resp.Header.MemberId, leader: resp.Leader}
			})
		}
		wg.Wait()
		byID := map[uint64]int{}
		votes := map[uint64]int{}
		var errs []error
		for k, a := range answers {
			if a.err != nil {
				errs = append(errs, a.err)
				continue
			}
			byID[a.id] = up[k]
			if a.leader != 0 {
				votes[a.leader]++
			}
		}
		// A member that was just killed is still named by those that have
		// not noticed yet; it does not answer, so it is never taken.
		for lead, n := range votes {
			if i, ok := byID[lead]; ok && 2*n > total {
				return i, nil
			}
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("testenv: no etcd leader that a majority of %d members agrees on: %w (%v)", total, ctx.Err(), errors.Join(errs...))
		case <-time.After(100 * time.Millisecond):
		}
	}
}
