package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// proxyDialTimeout bounds the proxy's connection to its target. The target
// is on loopback: a dial that takes longer is a target that is gone.
const proxyDialTimeout = 5 * time.Second

// Proxy is a TCP proxy on 127.0.0.1 between a client (say, replctl) and one
// target (say, a node), for tests of network faults that a stopped or
// killed server cannot model: a partition that leaves the target running
// and its other peers (the replicas) connected to it.
//
// While blocked (Block) nothing passes in either direction: no byte, no
// end of stream, no reset. Established connections stay open, so a client
// waiting for an answer hangs, as it would behind a partition or in front
// of a hung host; new connections are accepted (the kernel completes the
// handshake of a listening socket, which a userland proxy cannot stop) but
// not forwarded, so the client's startup hangs too. Unblock delivers what
// was held: the bytes read meanwhile, the ends of stream and resets, and
// the connections accepted meanwhile are dialled then. That is how TCP
// behaves when a partition heals before its retransmissions give up, so a
// client that timed out and closed its end meanwhile sees nothing more,
// and one that is still waiting gets its answer.
//
// What a proxy cannot model: behind a real partition the sender also gets
// no TCP acknowledgements, so TCP keepalives and tcp_user_timeout fire on
// it; here the proxy's own kernel acknowledges, and only application
// timeouts (a query's context, a connect timeout) notice the block.
//
// Reset closes every current connection with a TCP reset (models a host
// that rebooted, or a firewall sending RST). Close stops the proxy.
type Proxy struct {
	target string
	ln     net.Listener
	wg     sync.WaitGroup // the accept loop and every connection's goroutines

	mu      sync.Mutex
	blocked bool
	gate    chan struct{} // closed while forwarding; a new, open one while blocked
	conns   map[*proxyConn]struct{}
	closed  bool
}

// proxyConn is one client connection and, once dialled, its connection to
// the target.
type proxyConn struct {
	client net.Conn
	mu     sync.Mutex
	server net.Conn      // nil until dialled
	done   chan struct{} // closed by kill
	once   sync.Once
}

// StartProxy starts a proxy to target (host:port) for a test and registers
// a cleanup that closes it. It fails the test if the proxy cannot listen.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := NewProxy(target)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("testenv: %v", err)
		}
	})
	return p
}

// NewProxy starts a proxy listening on a free port of 127.0.0.1 that
// forwards every connection to target (host:port). The caller must Close
// it.
func NewProxy(target string) (*Proxy, error) {
	if _, _, err := net.SplitHostPort(target); err != nil {
		return nil, fmt.Errorf("proxy: target %q: %w", target, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy: listen: %w", err)
	}
	gate := make(chan struct{})
	close(gate)
	p := &Proxy{target: target, ln: ln, gate: gate, conns: map[*proxyConn]struct{}{}}
	p.wg.Go(p.acceptLoop)
	return p, nil
}

// Addr returns the proxy's address, 127.0.0.1:PORT.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Port returns the proxy's port.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Target returns the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// Block stops forwarding in both directions (see Proxy). Once it returns
// the proxy starts no write and no dial; bytes it had already read and let
// through may still be landing, as packets already on the wire would.
// Blocking a blocked proxy does nothing.
func (p *Proxy) Block() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.blocked {
		p.blocked = true
		p.gate = make(chan struct{})
	}
}

// Unblock resumes forwarding and delivers what was held during the block
// (see Proxy). Unblocking a proxy that is not blocked does nothing.
func (p *Proxy) Unblock() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.blocked {
		p.blocked = false
		close(p.gate)
	}
}

// Blocked reports whether the proxy is blocked.
func (p *Proxy) Blocked() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.blocked
}

// Reset closes every current connection, on both sides, with a TCP reset
// (SO_LINGER 0), including those accepted during a block and not yet
// forwarded. The proxy goes on accepting new ones, blocked or not as it
// was.
func (p *Proxy) Reset() {
	for _, pc := range p.snapshot() {
		pc.kill(true)
	}
}

// Conns returns the number of client connections the proxy holds now,
// forwarded or waiting for an Unblock.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Close stops listening, closes every connection and waits until the
// proxy's goroutines are gone. It may be called more than once.
func (p *Proxy) Close() error {
	p.mu.Lock()
	already := p.closed
	p.closed = true
	p.mu.Unlock()
	var err error
	if !already {
		if err = p.ln.Close(); err != nil {
			err = fmt.Errorf("proxy %s: %w", p.Addr(), err)
		}
	}
	for _, pc := range p.snapshot() {
		pc.kill(false)
	}
	p.wg.Wait()
	return err
}

func (p *Proxy) snapshot() []*proxyConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*proxyConn, 0, len(p.conns))
	for pc := range p.conns {
		out = append(out, pc)
	}
	return out
}

func (p *Proxy) acceptLoop() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: wait rather than spin.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		pc := &proxyConn{client: c, done: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return
		}
		p.conns[pc] = struct{}{}
		p.mu.Unlock()
		p.wg.Go(func() { p.serve(pc) })
	}
}

// pass waits until the proxy forwards (or the connection is killed, then
// it returns false). It is called before every write and dial: checking
// p.blocked under p.mu, which Block takes too, is what makes Block strict.
func (p *Proxy) pass(pc *proxyConn) bool {
	for {
		p.mu.Lock()
		blocked, gate := p.blocked, p.gate
		p.mu.Unlock()
		select {
		case <-pc.done:
			return false
		default:
		}
		if !blocked {
			return true
		}
		select {
		case <-gate:
		case <-pc.done:
			return false
		}
	}
}

func (p *Proxy) serve(pc *proxyConn) {
	defer func() {
		pc.kill(false)
		p.mu.Lock()
		delete(p.conns, pc)
		p.mu.Unlock()
	}()
	// A connection accepted during a block is dialled when it lifts, as a
	// SYN retransmitted after a partition heals gets through.
	if !p.pass(pc) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), proxyDialTimeout)
	defer cancel()
	go func() { // Reset and Close interrupt the dial
		select {
		case <-pc.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	var d net.Dialer
	server, err := d.DialContext(ctx, "tcp", p.target)
	cancel()
	if err != nil {
		// The client sees a reset, the nearest a proxy gets to the
		// refused connection it would have seen without the proxy.
		pc.kill(true)
		return
	}
	pc.mu.Lock()
	pc.server = server
	pc.mu.Unlock()
	select {
	case <-pc.done: // killed while dialling: kill closed no server yet
		server.Close()
		return
	default:
	}
	var wg sync.WaitGroup
	wg.Go(func() { p.pump(pc, server, pc.client) })
	wg.Go(func() { p.pump(pc, pc.client, server) })
	wg.Wait()
}

// pump copies src to dst, holding what it read while the proxy is blocked.
// An end of stream is passed on as a half close (FIN), also only while
// forwarding; any other error ends the whole connection.
func (p *Proxy) pump(pc *proxyConn, dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if !p.pass(pc) {
				return
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				pc.kill(false)
				return
			}
		}
		if rerr == nil {
			continue
		}
		if !p.pass(pc) {
			return
		}
		if errors.Is(rerr, io.EOF) {
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
				return
			}
		}
		// A reset is passed on as a reset.
		pc.kill(!errors.Is(rerr, io.EOF) && !errors.Is(rerr, net.ErrClosed))
		return
	}
}

// kill closes both sides once; with rst, as a TCP reset.
func (pc *proxyConn) kill(rst bool) {
	pc.once.Do(func() {
		close(pc.done)
		pc.mu.Lock()
		server := pc.server
		pc.mu.Unlock()
		for _, c := range []net.Conn{pc.client, server} {
			if c == nil {
				continue
			}
			if tc, ok := c.(*net.TCPConn); ok && rst {
				_ = tc.SetLinger(0)
			}
			c.Close()
		}
	})
}

// DSNVia returns the node's DSN with its host and port replaced by addr
// (host:port, e.g. a Proxy's Addr), every other keyword kept, so that a
// client connects through the proxy with the same user, database and TLS
// settings. With Options.TLS the host the certificate is verified against
// becomes addr's host: the nodes' certificates name 127.0.0.1, which Go's
// TLS (pgx, replctl) verifies on every PostgreSQL version; only libpq
// before 15 matches names alone (see Cluster.tlsHost).
func (n *Node) DSNVia(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		// A programming error in a test: make the DSN fail loudly too.
		return n.DSN + " host=invalid-proxy-address"
	}
	kept := []string{"host=" + kvValue(host), "port=" + port}
	for _, kv := range splitConninfo(n.DSN) {
		k, _, _ := strings.Cut(kv, "=")
		if k != "host" && k != "port" && k != "hostaddr" {
			kept = append(kept, kv)
		}
	}
	return strings.Join(kept, " ")
}

// DSNVia returns the DSN of the named node through addr (see
// Node.DSNVia), or an error when there is no such node.
func (c *Cluster) DSNVia(name, addr string) (string, error) {
	n, err := c.node(name)
	if err != nil {
		return "", err
	}
	return n.DSNVia(addr), nil
}

// splitConninfo splits a libpq keyword/value string into its "key=value"
// items, values still quoted as they were (testenv's own DSNs quote paths
// with kvValue). Spaces around "=" are dropped.
func splitConninfo(s string) []string {
	var out []string
	i := 0
	for i < len(s) {
		for i < len(s) && s[i] == ' ' {
			i++
		}
		if i == len(s) {
			break
		}
		start := i
		for i < len(s) && s[i] != '=' && s[i] != ' ' {
			i++
		}
		key := s[start:i]
		for i < len(s) && s[i] == ' ' {
			i++
		}
		if i < len(s) && s[i] == '=' {
			i++
		}
		for i < len(s) && s[i] == ' ' {
			i++
		}
		vstart := i
		if i < len(s) && s[i] == '\'' {
			i++
			for i < len(s) && s[i] != '\'' {
				if s[i] == '\\' {
					i++
				}
				i++
			}
			i++
		} else {
			for i < len(s) && s[i] != ' ' {
				if s[i] == '\\' {
					i++
				}
				i++
			}
		}
		out = append(out, key+"="+s[vstart:min(i, len(s))])
	}
	return out
}
