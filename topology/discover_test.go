package topology

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/replctl/replctl/config"
)

// slowProber takes delay per node, or hangs until ctx ends for "hang".
type slowProber struct{ delay time.Duration }

func (p slowProber) Probe(ctx context.Context, n config.Node) NodeStatus {
	if n.Name == "hang" {
		<-ctx.Done()
		return NodeStatus{Error: ctx.Err().Error()}
	}
	time.Sleep(p.delay)
	return NodeStatus{Reachable: true}
}

func TestProbeAllConcurrentAndBounded(t *testing.T) {
	t.Parallel()
	var nodes []config.Node
	for i := range 10 {
		nodes = append(nodes, config.Node{Name: fmt.Sprintf("n%d", i)})
	}
	nodes = append(nodes, config.Node{Name: "hang"})
	start := time.Now()
	st := ProbeAll(t.Context(), slowProber{delay: 100 * time.Millisecond}, nodes, 300*time.Millisecond)
	took := time.Since(start)
	// Sequential would take 10 x 100ms + 300ms.
	if took > 900*time.Millisecond {
		t.Fatalf("took %s: probes are not concurrent", took)
	}
	for i, s := range st {
		if s.Name != nodes[i].Name {
			t.Fatalf("result %d is %q, want %q (configuration order)", i, s.Name, nodes[i].Name)
		}
		if s.Reachable == (s.Name == "hang") {
			t.Fatalf("%s: reachable %v", s.Name, s.Reachable)
		}
	}
}

// TestPgProberHangingServer: a server that accepts TCP but never answers
// costs the timeout, and the error names the node without its password.
func TestPgProberHangingServer(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	port := l.Addr().(*net.TCPAddr).Port
	n := config.Node{Name: "stuck", DSN: fmt.Sprintf("host=127.0.0.1 port=%d user=x password=topsecret sslmode=disable", port)}
	start := time.Now()
	st := PgProber{Timeout: 200 * time.Millisecond}.Probe(t.Context(), n)
	if took := time.Since(start); took > time.Second {
		t.Fatalf("took %s", took)
	}
	if st.Reachable || st.Error == "" || strings.Contains(st.Error, "topsecret") || !strings.Contains(st.Error, "stuck") {
		t.Fatalf("status %+v", st)
	}
}
