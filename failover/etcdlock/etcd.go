package etcdlock

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/replctl/replctl/config"
)

// UnreachableError says etcd did not answer within the dial timeout.
type UnreachableError struct {
	// Endpoints are the configured endpoints, without any credentials.
	Endpoints []string
	Timeout   time.Duration
	// Diagnosis says what a direct connection attempt found, when that
	// explains more than a timeout does (a TLS mismatch, mostly).
	Diagnosis string
	Err       error
}

// Error names the endpoints and the timeout, never credentials.
func (e *UnreachableError) Error() string {
	msg := fmt.Sprintf("etcd unreachable at %s within %s", strings.Join(e.Endpoints, ", "), e.Timeout)
	if e.Diagnosis != "" {
		msg += ": " + e.Diagnosis
	}
	return msg
}

// Unwrap returns the client's error.
func (e *UnreachableError) Unwrap() error { return e.Err }

// Connect returns a client for the configured etcd after proving, within
// cfg.DialTimeout, that it answers a linearizable read. clientv3.New alone
// succeeds against a dead endpoint and the first real call would then hang,
// which a safety tool must never do. The caller closes the client.
func Connect(ctx context.Context, cfg config.Etcd) (*clientv3.Client, error) {
	if !cfg.Configured() {
		return nil, errors.New("etcd is not configured")
	}
	timeout := cfg.DialTimeout
	if timeout <= 0 {
		timeout = config.DefaultDialTimeout
	}
	safe := safeEndpoints(cfg.Endpoints)
	// Part of the budget is kept to diagnose a failure, so that the whole
	// attempt, explanation included, still fits in the dial timeout.
	diag := min(timeout/5, 500*time.Millisecond)
	cc := clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: timeout - diag,
		Username:    cfg.Username,
		Password:    cfg.Password.Reveal(),
		// The client's own logger writes JSON lines to stderr on every
		// reconnect; the commands report errors themselves.
		Logger:  zap.NewNop(),
		Context: context.WithoutCancel(ctx),
		// Without keepalive pings a silently dropped connection (a partition
		// rather than a refused port) is only noticed by the OS, minutes
		// later. gRPC refuses intervals under 10s.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: timeout,
	}
	if cfg.TLS.Enabled() {
		tc, err := tlsConfig(cfg.TLS)
		if err != nil {
			return nil, err
		}
		cc.TLS = tc
	}
	fail := func(err error) error {
		err = connectError(ctx, safe, timeout, cfg.Username, err)
		var ue *UnreachableError
		if errors.As(err, &ue) {
			dctx, cancel := context.WithTimeout(ctx, diag)
			ue.Diagnosis = diagnose(dctx, cfg.Endpoints, cc.TLS)
			cancel()
		}
		return err
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		// With credentials, New authenticates, so it is also where an
		// unreachable etcd shows first.
		return nil, fail(err)
	}
	pctx, cancel := context.WithTimeout(ctx, timeout-diag)
	defer cancel()
	if _, err := cli.Get(pctx, strings.TrimSuffix(cfg.Prefix, "/")+"/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil {
		_ = cli.Close()
		return nil, fail(err)
	}
	return cli, nil
}

// connectError turns the client's error into one that says what to check.
// Credentials never appear in it: the client's errors do not carry them and
// the endpoints are stripped of any userinfo.
func connectError(ctx context.Context, endpoints []string, timeout time.Duration, user string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("connect to etcd: %w", context.Cause(ctx))
	}
	switch {
	case errors.Is(err, rpctypes.ErrAuthFailed) || status.Code(err) == codes.InvalidArgument && strings.Contains(err.Error(), "authentication failed"):
		return fmt.Errorf("etcd authentication failed for user %q at %s: check etcd.username and etcd.password", user, strings.Join(endpoints, ", "))
	case errors.Is(err, rpctypes.ErrPermissionDenied) || status.Code(err) == codes.PermissionDenied:
		return fmt.Errorf("etcd at %s: user %q may not read the replctl prefix: %w", strings.Join(endpoints, ", "), user, err)
	case errors.Is(err, context.DeadlineExceeded), status.Code(err) == codes.DeadlineExceeded, status.Code(err) == codes.Unavailable:
		return &UnreachableError{Endpoints: endpoints, Timeout: timeout, Err: err}
	}
	return fmt.Errorf("etcd at %s: %w", strings.Join(endpoints, ", "), err)
}

// diagnose connects to the endpoints directly to explain a timeout: the
// gRPC client only reports that its deadline passed. A refused port needs
// no explanation; a port that accepts connections but does not answer
// usually means a TLS mismatch, and a TLS handshake names the problem
// (unknown authority, certificate required).
func diagnose(ctx context.Context, endpoints []string, tc *tls.Config) string {
	for i, ep := range endpoints {
		host := ep
		if u, err := url.Parse(ep); err == nil && u.Host != "" {
			host = u.Host
		}
		shown := safeEndpoints(endpoints)[i]
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", host)
		if err != nil {
			continue
		}
		defer conn.Close()
		if dl, ok := ctx.Deadline(); ok {
			_ = conn.SetDeadline(dl)
		}
		if tc == nil {
			return fmt.Sprintf("%s accepts connections but did not answer: is it etcd, and does it expect TLS (etcd.tls)?", shown)
		}
		c := tc.Clone()
		if c.ServerName == "" {
			c.ServerName, _, _ = net.SplitHostPort(host)
		}
		tconn := tls.Client(conn, c)
		if err := tconn.HandshakeContext(ctx); err != nil {
			return fmt.Sprintf("TLS handshake with %s failed: %v", shown, err)
		}
		// With TLS 1.3 the server rejects a client certificate after the
		// client's side of the handshake is done: the alert comes on read.
		var b [1]byte
		if _, err := tconn.Read(b[:]); err != nil && strings.Contains(err.Error(), "remote error") {
			return fmt.Sprintf("%s refused the TLS connection: %v", shown, err)
		}
		return fmt.Sprintf("%s accepts TLS connections but did not answer in time: is it etcd?", shown)
	}
	return ""
}

// safeEndpoints strips userinfo from endpoint URLs so they can be printed.
func safeEndpoints(eps []string) []string {
	out := make([]string, len(eps))
	for i, ep := range eps {
		out[i] = ep
		if u, err := url.Parse(ep); err == nil && u.User != nil && u.Host != "" {
			u.User = nil
			out[i] = u.String()
		}
	}
	return out
}

// tlsConfig builds the client TLS configuration from the configured files.
func tlsConfig(t config.TLS) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd.tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd.tls.ca_file: %s holds no PEM certificate", t.CAFile)
		}
		tc.RootCAs = pool
	}
	if t.CertFile != "" || t.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd.tls.cert_file/key_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// keys is the etcd key layout of one cluster. Everything replctl writes for
// a cluster lives under <prefix>/<cluster>/, so a prefix can be shared by
// several clusters and wiped per cluster.
type keys struct {
	cluster string
	root    string // <prefix>/<cluster>
}

func newKeys(prefix, cluster string) (keys, error) {
	if cluster == "" || strings.ContainsAny(cluster, "/ \t") {
		return keys{}, fmt.Errorf("invalid cluster name %q", cluster)
	}
	prefix = strings.TrimSuffix(prefix, "/")
	if prefix == "" {
		prefix = config.DefaultPrefix
	}
	return keys{cluster: cluster, root: prefix + "/" + cluster}, nil
}

// lockPrefix is the concurrency.Mutex prefix: one key per contender, named
// by its lease ID in hex, the oldest being the holder.
func (k keys) lockPrefix() string { return k.root + "/lock" }

// state is the cluster record.
func (k keys) state() string { return k.root + "/state" }

// history is the prefix of the operation records.
func (k keys) history() string { return k.root + "/history/" }

// historySeq holds the last operation number handed out. It lives outside
// the history prefix so that listing and trimming never see it.
func (k keys) historySeq() string { return k.root + "/history-seq" }

// operation is the key of one operation record. Numbers are zero-padded so
// that key order is numeric order is creation order.
func (k keys) operation(n int64) string { return fmt.Sprintf("%s%0*d", k.history(), opIDWidth, n) }

// opIDWidth is the zero padding of operation numbers in keys.
const opIDWidth = 12

// opNumber parses an operation ID ("42", or the padded "000000000042").
func opNumber(id string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(id), 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("invalid operation ID %q: IDs are positive numbers, as listed by replctl history", id)
	}
	return n, nil
}
