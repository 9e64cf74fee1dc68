package testenv

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// etcdReadyTimeout bounds how long a new etcd may take to answer.
const etcdReadyTimeout = 30 * time.Second

func etcdEndpoint(clientPort int) string { return "127.0.0.1:" + strconv.Itoa(clientPort) }

// embeddedEtcd is an etcd running in this process.
type embeddedEtcd struct {
	e       *embed.Etcd
	closing *atomic.Bool
}

// close stops etcd. Its servers log "server closed" errors while they shut
// down as asked; the logger is muted first so that they do not read as
// failures.
func (x *embeddedEtcd) close() {
	x.closing.Store(true)
	x.e.Close()
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

// startEmbedded starts a single-member etcd in this process and waits until
// it serves. It logs errors only, to stderr. With TLS files, clients must
// speak TLS and present a certificate signed by the CA; the peer port, which
// a single member never uses, stays plain.
func startEmbedded(dataDir string, clientPort, peerPort int, tf *TLSFiles) (*embeddedEtcd, error) {
	closing := new(atomic.Bool)
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.Lock(os.Stderr), zapcore.ErrorLevel)
	cfg := embed.NewConfig()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(mutableCore{core, closing}))
	cfg.Name = "testenv"
	cfg.Dir = dataDir
	cu := url.URL{Scheme: "http", Host: etcdEndpoint(clientPort)}
	pu := url.URL{Scheme: "http", Host: etcdEndpoint(peerPort)}
	if tf != nil {
		cu.Scheme = "https"
		cfg.ClientTLSInfo = transport.TLSInfo{
			CertFile: tf.EtcdCert, KeyFile: tf.EtcdKey, TrustedCAFile: tf.CAFile, ClientCertAuth: true,
		}
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	// Test data: durability across power loss is worth nothing here.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd on %s: %w", cu.Host, err)
	}
	x := &embeddedEtcd{e: e, closing: closing}
	select {
	case <-e.Server.ReadyNotify():
		return x, nil
	case err := <-e.Err():
		x.close()
		return nil, fmt.Errorf("start etcd on %s: %w", cu.Host, err)
	case <-time.After(etcdReadyTimeout):
		e.Server.Stop()
		x.close()
		return nil, fmt.Errorf("start etcd on %s: not ready after %s", cu.Host, etcdReadyTimeout)
	}
}

// ServeEtcd runs an embedded single-member etcd on 127.0.0.1 until ctx is
// done. It is what `replctl testenv etcd-serve` runs in the detached child
// that UpDetached starts, so that etcd outlives the command. With tf (its
// CAFile, EtcdCert and EtcdKey), clients must present a certificate signed
// by the CA.
func ServeEtcd(ctx context.Context, dataDir string, clientPort, peerPort int, tf *TLSFiles) error {
	x, err := startEmbedded(dataDir, clientPort, peerPort, tf)
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
// (--dir D --client-port P --peer-port Q, and for a TLS cluster --ca-file,
// --cert-file and --key-file) and runs ServeEtcd. A CLI may use it as is, or
// parse the same flags itself.
func RunEtcdServe(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("etcd-serve", flag.ContinueOnError)
	dir := fs.String("dir", "", "etcd data directory")
	cp := fs.Int("client-port", 0, "client port on 127.0.0.1")
	pp := fs.Int("peer-port", 0, "peer port on 127.0.0.1")
	var tf TLSFiles
	fs.StringVar(&tf.CAFile, "ca-file", "", "CA that client certificates must be signed by")
	fs.StringVar(&tf.EtcdCert, "cert-file", "", "server certificate")
	fs.StringVar(&tf.EtcdKey, "key-file", "", "server key")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || *cp == 0 || *pp == 0 {
		return errors.New("etcd-serve: --dir, --client-port and --peer-port are required")
	}
	var withTLS *TLSFiles
	switch {
	case tf.CAFile != "" && tf.EtcdCert != "" && tf.EtcdKey != "":
		withTLS = &tf
	case tf.CAFile != "" || tf.EtcdCert != "" || tf.EtcdKey != "":
		// Half a TLS configuration must not become a plain etcd.
		return errors.New("etcd-serve: --ca-file, --cert-file and --key-file go together")
	}
	return ServeEtcd(ctx, *dir, *cp, *pp, withTLS)
}

// spawnEtcd starts `self... --dir D --client-port P --peer-port Q` in its own
// session, so that it survives the command that started it and the
// terminal's signals, and waits until etcd answers.
func spawnEtcd(ctx context.Context, self []string, dataDir, logPath string, clientPort, peerPort int, tf *TLSFiles) (pid int, start uint64, err error) {
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
		"--dir", dataDir, "--client-port", strconv.Itoa(clientPort), "--peer-port", strconv.Itoa(peerPort))
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
	endpoint := etcdEndpoint(clientPort)
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
