package testenv

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replctl/replctl/config"
)

// echoServer accepts connections on 127.0.0.1 and echoes each line back.
// It sends on eofs each time a connection's read ends, so that a test can
// tell when an end of stream got through the proxy.
func echoServer(t *testing.T) (addr string, eofs <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan struct{}, 100)
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
				ch <- struct{}{}
			}()
		}
	}()
	return ln.Addr().String(), ch
}

func dialProxy(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// echo writes msg and reads it back within d.
func echo(c net.Conn, msg string, d time.Duration) error {
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return err
	}
	return expectLine(c, msg, d)
}

func expectLine(c net.Conn, msg string, d time.Duration) error {
	_ = c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg+"\n" {
		return errors.New("read " + strconv.Quote(got) + ", want " + strconv.Quote(msg))
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestProxyEcho(t *testing.T) {
	t.Parallel()
	addr, eofs := echoServer(t)
	p := StartProxy(t, addr)
	if p.Addr() != "127.0.0.1:"+strconv.Itoa(p.Port()) || p.Target() != addr {
		t.Fatalf("Addr %s, Port %d, Target %s", p.Addr(), p.Port(), p.Target())
	}

	a := dialProxy(t, p)
	if err := echo(a, "hello", 2*time.Second); err != nil {
		t.Fatalf("through the proxy: %v", err)
	}
	closing := dialProxy(t, p)
	if err := echo(closing, "bye soon", 2*time.Second); err != nil {
		t.Fatal(err)
	}

	p.Block()
	if !p.Blocked() {
		t.Fatal("Blocked() = false after Block")
	}
	// An established connection stays open and passes nothing.
	if _, err := a.Write([]byte("held\n")); err != nil {
		t.Fatalf("write during the block: %v", err)
	}
	if err := expectLine(a, "held", 300*time.Millisecond); !isTimeout(err) {
		t.Fatalf("read during the block: %v, want a timeout", err)
	}
	// A new connection is accepted but not forwarded.
	b := dialProxy(t, p)
	if err := echo(b, "pending", 300*time.Millisecond); !isTimeout(err) {
		t.Fatalf("new connection during the block: %v, want a timeout", err)
	}
	// An end of stream does not pass either.
	closing.Close()
	select {
	case <-eofs:
		t.Fatal("the client's close reached the server during the block")
	case <-time.After(300 * time.Millisecond):
	}
	if n := p.Conns(); n != 3 {
		t.Errorf("Conns() = %d during the block, want 3", n)
	}

	// Unblock delivers what was held, in both directions.
	p.Unblock()
	if err := expectLine(a, "held", 2*time.Second); err != nil {
		t.Fatalf("after Unblock, the held line: %v", err)
	}
	if err := expectLine(b, "pending", 2*time.Second); err != nil {
		t.Fatalf("after Unblock, the pending connection: %v", err)
	}
	select {
	case <-eofs:
	case <-time.After(2 * time.Second):
		t.Fatal("the held close did not reach the server after Unblock")
	}
	if err := echo(a, "again", 2*time.Second); err != nil {
		t.Fatal(err)
	}

	// A half close goes through as one: the server answers, then ends.
	h := dialProxy(t, p)
	if _, err := h.Write([]byte("half\n")); err != nil {
		t.Fatal(err)
	}
	if err := h.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = h.SetReadDeadline(time.Now().Add(2 * time.Second))
	if got, err := io.ReadAll(h); err != nil || string(got) != "half\n" {
		t.Fatalf("after a half close: %q, %v", got, err)
	}

	// Reset ends every connection, a pending one included, with a reset;
	// the proxy goes on serving.
	waitConns(t, p, 2) // a and b: the others ended
	p.Block()
	pending := dialProxy(t, p)
	waitConns(t, p, 3)
	p.Reset()
	for name, c := range map[string]net.Conn{"established": a, "pending": pending} {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err := c.Read(make([]byte, 1))
		if err == nil || isTimeout(err) {
			t.Errorf("%s connection after Reset: %v, want a reset or EOF", name, err)
		}
	}
	p.Unblock()
	if err := echo(dialProxy(t, p), "after reset", 2*time.Second); err != nil {
		t.Fatalf("new connection after Reset: %v", err)
	}

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("the proxy accepts connections after Close")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// waitConns waits until the proxy holds n connections: Dial returns once
// the kernel completed the handshake, before the proxy accepted.
func waitConns(t *testing.T, p *Proxy, n int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for p.Conns() != n {
		if time.Now().After(deadline) {
			t.Fatalf("proxy holds %d connections, want %d", p.Conns(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestProxyDeadTarget(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	if _, err := NewProxy("no port"); err == nil {
		t.Error("NewProxy accepted a target without a port")
	}
	p := StartProxy(t, addr)
	// On loopback the proxy's reset may come before the dial even returns.
	c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
	if err != nil {
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("dial: %v, want success or a reset", err)
		}
		return
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("read through a proxy to a dead target: %v, want a reset or EOF", err)
	}
}

func TestDSNVia(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ dsn, want string }{
		{dsn(5432), "host=127.0.0.1 port=6000 user=postgres dbname=postgres sslmode=disable"},
		{
			"host=localhost port=5432 user=postgres dbname=postgres sslmode=verify-full sslrootcert='/t d/ca.crt' sslcert=/t/c.crt sslkey='/it\\'s/k'",
			"host=127.0.0.1 port=6000 user=postgres dbname=postgres sslmode=verify-full sslrootcert='/t d/ca.crt' sslcert=/t/c.crt sslkey='/it\\'s/k'",
		},
		{"user=postgres  port = 5 host=x", "host=127.0.0.1 port=6000 user=postgres"},
	} {
		n := &Node{DSN: tc.dsn}
		if got := n.DSNVia("127.0.0.1:6000"); got != tc.want {
			t.Errorf("DSNVia(%q)\n got %q\nwant %q", tc.dsn, got, tc.want)
		}
	}
}

// TestProxyPostgres runs pgx through the proxy to a real server: Block
// makes a query hang until its context ends, and a new connection too;
// Unblock lets new connections through; Reset breaks the established ones.
func TestProxyPostgres(t *testing.T) {
	integration(t)
	ctx := t.Context()
	c := Start(t, Options{Replicas: -1, NoEtcd: true})
	pg1 := c.Node("pg1")
	p := StartProxy(t, "127.0.0.1:"+strconv.Itoa(pg1.Port))
	via, err := c.DSNVia("pg1", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	// The same DSN in a rendered replctl.yaml, the other nodes' unchanged.
	cfgText, err := c.RenderConfigVia(true, map[string]string{"pg1": p.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("via.yaml", cfgText)
	if err != nil {
		t.Fatalf("%v\n%s", err, cfgText)
	}
	if n, _ := cfg.Node("pg1"); n.DSN != via || !strings.Contains(n.Commands.Rejoin, " "+strconv.Itoa(pg1.Port)) {
		t.Errorf("RenderConfigVia: pg1 dsn %q, rejoin %q; want dsn %q and the node's own port in rejoin", n.DSN, n.Commands.Rejoin, via)
	}
	if pg1.DSN == via {
		t.Error("RenderConfigVia changed the node itself")
	}
	if _, err := c.RenderConfigVia(false, map[string]string{"nope": p.Addr()}); err == nil {
		t.Error("RenderConfigVia accepted an unknown node")
	}
	connect := func(d time.Duration) (*pgx.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return pgx.Connect(ctx, via)
	}
	query := func(conn *pgx.Conn, d time.Duration) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		start := time.Now()
		var port int
		err := conn.QueryRow(ctx, "SELECT current_setting('port')::int").Scan(&port)
		if err == nil && port != pg1.Port {
			err = errors.New("answered by port " + strconv.Itoa(port))
		}
		return time.Since(start), err
	}

	conn, err := connect(5 * time.Second)
	if err != nil {
		t.Fatalf("connect through the proxy: %v", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := query(conn, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if p.Conns() != 1 {
		t.Errorf("proxy holds %d connections, want 1", p.Conns())
	}

	p.Block()
	took, err := query(conn, time.Second)
	if !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
		t.Fatalf("query during the block: %v after %s, want a timeout", err, took)
	}
	if took < 900*time.Millisecond || took > 3*time.Second {
		t.Errorf("query during the block returned after %s, want about 1s", took)
	}
	if conn2, err := connect(time.Second); err == nil {
		conn2.Close(ctx)
		t.Fatal("connected through a blocked proxy")
	}
	// The server itself is fine: only the path through the proxy is cut.
	if err := c.Exec(ctx, "pg1", "SELECT 1"); err != nil {
		t.Fatalf("direct connection during the block: %v", err)
	}

	p.Unblock()
	conn3, err := connect(5 * time.Second)
	if err != nil {
		t.Fatalf("connect after Unblock: %v", err)
	}
	defer conn3.Close(context.WithoutCancel(ctx))
	if _, err := query(conn3, 5*time.Second); err != nil {
		t.Fatalf("query after Unblock: %v", err)
	}

	p.Reset()
	if _, err := query(conn3, 5*time.Second); err == nil {
		t.Fatal("query on a connection the proxy reset succeeded")
	}
	conn4, err := connect(5 * time.Second)
	if err != nil {
		t.Fatalf("connect after Reset: %v", err)
	}
	defer conn4.Close(context.WithoutCancel(ctx))
	if _, err := query(conn4, 5*time.Second); err != nil {
		t.Fatalf("query after Reset: %v", err)
	}
}
