package testenv

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/replctl/replctl/config"
)

// etcdClient is a client of the given endpoints, closed by t.Cleanup.
func etcdClient(t *testing.T, endpoints []string, tf *TLSFiles) *clientv3.Client {
	t.Helper()
	tc, err := tf.clientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 2 * time.Second, Logger: zap.NewNop(), TLS: tc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// put writes key=value with a deadline of its own.
func put(ctx context.Context, cli *clientv3.Client, key, value string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := cli.Put(ctx, key, value)
	return err
}

// getOn reads key with a linearizable read through endpoint alone: it
// succeeds only on a member that is part of a quorum and caught up.
func getOn(t *testing.T, endpoint string, tf *TLSFiles, key string) (string, error) {
	t.Helper()
	cli := etcdClient(t, []string{endpoint}, tf)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	if err != nil {
		return "", err
	}
	if len(resp.Kvs) != 1 {
		return "", fmt.Errorf("%s: %s: %d keys", endpoint, key, len(resp.Kvs))
	}
	return string(resp.Kvs[0].Value), nil
}

// listening reports whether something listens on addr (127.0.0.1:port),
// from /proc/net/tcp rather than by connecting: a connection to a free
// port in the ephemeral range may connect to itself.
func listening(t *testing.T, addr string) bool {
	t.Helper()
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skip("no /proc/net/tcp")
	}
	_, p, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(p)
	for _, s := range tcpSockets([]int{port}) {
		if s.listen {
			return true
		}
	}
	return false
}

// killLeaderAndWrite kills the etcd leader, waits for the others to elect
// a new one, and writes through cli (every endpoint) while the member is
// down, then restarts it and checks that it rejoined and caught up. It
// returns the member that was killed.
func killLeaderAndWrite(t *testing.T, c *Cluster, cli *clientv3.Client) int {
	t.Helper()
	ctx := t.Context()
	tf := c.TLS
	if err := put(ctx, cli, "k", "before"); err != nil {
		t.Fatal(err)
	}
	old, err := c.EtcdLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := c.KillEtcdMember(old); err != nil {
		t.Fatal(err)
	}
	if err := c.KillEtcdMember(old); err == nil {
		t.Error("killing a killed member succeeded")
	}
	if listening(t, c.EtcdEndpoints[old]) {
		t.Fatalf("killed member %d still listens", old)
	}
	lead, err := c.EtcdLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if lead == old {
		t.Fatalf("leader is still the killed member %d", old)
	}
	t.Logf("member %d killed, %d elected after %s", old, lead, time.Since(t0).Round(time.Millisecond))

	// The leader is known: every write through all endpoints succeeds,
	// none needs a retry.
	const writes = 20
	for i := 1; i <= writes; i++ {
		if err := put(ctx, cli, "k", strconv.Itoa(i)); err != nil {
			t.Fatalf("write %d with member %d down: %v", i, old, err)
		}
	}
	for i, ep := range c.EtcdEndpoints {
		if i == old {
			continue
		}
		if v, err := getOn(t, ep, tf, "k"); err != nil || v != strconv.Itoa(writes) {
			t.Errorf("member %d: k = %q, %v; want %d", i, v, err, writes)
		}
	}

	t0 = time.Now()
	if err := c.StartEtcdMember(old); err != nil {
		t.Fatal(err)
	}
	if err := c.StartEtcdMember(old); err != nil {
		t.Errorf("starting a running member: %v", err)
	}
	// A linearizable read on the member alone: it is back in the quorum
	// and has applied what was written while it was down.
	if v, err := getOn(t, c.EtcdEndpoints[old], tf, "k"); err != nil || v != strconv.Itoa(writes) {
		t.Fatalf("restarted member %d: k = %q, %v; want %d", old, v, err, writes)
	}
	t.Logf("member %d rejoined after %s", old, time.Since(t0).Round(time.Millisecond))
	mctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	ml, err := cli.MemberList(mctx)
	if err != nil || len(ml.Members) != 3 {
		t.Fatalf("member list after the restart: %v, %v", ml, err)
	}
	if _, err := c.EtcdLeader(ctx); err != nil {
		t.Fatal(err)
	}
	return old
}

// TestEtcdMembers builds a 3-member embedded etcd, kills its leader, writes
// through the other two, restarts the member, then stops and starts all.
func TestEtcdMembers(t *testing.T) {
	integration(t)
	ctx := t.Context()
	t0 := time.Now()
	c := Start(t, Options{Replicas: -1, EtcdMembers: 3})
	t.Logf("Up of a primary and 3 etcd members: %s", time.Since(t0).Round(time.Millisecond))

	if len(c.EtcdEndpoints) != 3 || c.EtcdEndpoint != c.EtcdEndpoints[0] {
		t.Fatalf("endpoints %q, first %q", c.EtcdEndpoints, c.EtcdEndpoint)
	}
	if s := slices.Clone(c.EtcdEndpoints); len(slices.Compact(slices.Sorted(slices.Values(s)))) != 3 {
		t.Fatalf("endpoints not distinct: %q", c.EtcdEndpoints)
	}
	for i := 1; i <= 3; i++ {
		if _, err := os.Stat(filepath.Join(c.Dir, "etcd-"+strconv.Itoa(i), "member")); err != nil {
			t.Errorf("data of member %d: %v", i, err)
		}
	}
	cfg, err := config.Load(c.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.Etcd.Endpoints, c.EtcdEndpoints) {
		t.Errorf("replctl.yaml endpoints %q, want %q", cfg.Etcd.Endpoints, c.EtcdEndpoints)
	}
	st, err := ReadState(c.Dir)
	if err != nil || st.Etcd == nil || len(st.Etcd.Members) != 3 || st.Etcd.Endpoint != c.EtcdEndpoint || st.Etcd.Members[2].Name != "etcd-3" {
		t.Fatalf("state: %+v, %v", st, err)
	}

	cli := etcdClient(t, c.EtcdEndpoints, nil)
	mctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	ml, err := cli.MemberList(mctx)
	if err != nil || len(ml.Members) != 3 {
		t.Fatalf("member list: %v, %v", ml, err)
	}
	for _, m := range ml.Members {
		i, err := strconv.Atoi(m.Name[len("etcd-"):])
		if err != nil || len(m.ClientURLs) != 1 || m.ClientURLs[0] != "http://"+c.EtcdEndpoints[i-1] {
			t.Errorf("member %s: client URLs %q", m.Name, m.ClientURLs)
		}
	}

	killLeaderAndWrite(t, c, cli)

	if err := c.StopEtcd(); err != nil {
		t.Fatal(err)
	}
	for i, ep := range c.EtcdEndpoints {
		if listening(t, ep) {
			t.Fatalf("member %d listens after StopEtcd", i)
		}
	}
	if _, err := c.EtcdLeader(ctx); err == nil {
		t.Error("a leader with every member stopped")
	}
	t0 = time.Now()
	if err := c.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	t.Logf("StartEtcd of 3 members: %s", time.Since(t0).Round(time.Millisecond))
	for i, ep := range c.EtcdEndpoints {
		if v, err := getOn(t, ep, nil, "k"); err != nil || v != "20" {
			t.Errorf("member %d after StartEtcd: k = %q, %v", i, v, err)
		}
	}
	if err := c.KillEtcdMember(3); err == nil {
		t.Error("member 3 of 0..2 killed")
	}
}

// TestEtcdMembersTLS: with Options.TLS, clients and peers of a 3-member
// etcd speak TLS with certificates from the cluster's CA, and losing the
// leader works as without TLS.
func TestEtcdMembersTLS(t *testing.T) {
	integration(t)
	c := Start(t, Options{Replicas: -1, EtcdMembers: 3, TLS: true})
	tf := c.TLS
	full, err := tf.clientConfig()
	if err != nil {
		t.Fatal(err)
	}
	st, err := ReadState(c.Dir)
	if err != nil || st.Etcd == nil || len(st.Etcd.Members) != 3 {
		t.Fatalf("state: %+v, %v", st, err)
	}
	for i, m := range st.Etcd.Members {
		if err := pingWith(t, m.Endpoint, full); err != nil {
			t.Errorf("member %d with the client certificate: %v", i, err)
		}
		// Both ports: TLS with a client certificate from the CA, and
		// nothing else. (Over HTTP, /version, which both serve: a gRPC
		// client would retry a refused handshake until its deadline.)
		for _, addr := range []string{m.Endpoint, "127.0.0.1:" + strconv.Itoa(m.PeerPort)} {
			if code, err := httpGet(t, "https://"+addr+"/version", full); err != nil || code != http.StatusOK {
				t.Errorf("member %d, %s over TLS: %d, %v", i, addr, code, err)
			}
			if _, err := httpGet(t, "https://"+addr+"/version", &tls.Config{RootCAs: full.RootCAs}); err == nil {
				t.Errorf("member %d, %s answers a client without a certificate", i, addr)
			}
			if code, err := httpGet(t, "http://"+addr+"/version", nil); err == nil && code == http.StatusOK {
				t.Errorf("member %d, %s answers plain text", i, addr)
			}
		}
	}
	killLeaderAndWrite(t, c, etcdClient(t, c.EtcdEndpoints, tf))
}

func httpGet(t *testing.T, url string, tc *tls.Config) (int, error) {
	t.Helper()
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// TestEtcdMembersDetached runs the CLI's path with 3 members: one detached
// etcd-serve child per member (this test binary, see TestMain), a leader
// killed by SIGKILL of its recorded PID and restarted, a member killed
// behind testenv's back that ReapStale must not take for a dead cluster,
// and Down, which must leave none of the processes behind.
func TestEtcdMembersDetached(t *testing.T) {
	integration(t)
	ctx := t.Context()
	dir, err := os.MkdirTemp("", TempPrefix+"members-*")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Down(dir, false); err != nil && !errors.Is(err, ErrNotUp) {
			t.Error(err)
		}
		os.RemoveAll(dir)
	})
	// up rather than UpDetached, for the Cluster and its fault helpers.
	c, err := up(ctx, Options{Dir: dir, Replicas: -1, EtcdMembers: 3}, true, []string{os.Args[0], etcdServeArg})
	if err != nil {
		t.Fatal(err)
	}
	memberPIDs := func() []Process {
		t.Helper()
		st, err := ReadState(dir)
		if err != nil || st.Etcd == nil || st.Etcd.InProcess || len(st.Etcd.Members) != 3 {
			t.Fatalf("state: %+v, %v", st, err)
		}
		ps := st.Etcd.processes()
		if st.Owner == nil || *st.Owner != ps[0] {
			t.Errorf("owner %+v, want the first member %+v", st.Owner, ps[0])
		}
		return ps
	}
	ps := memberPIDs()
	all := map[Process]bool{}
	for i, p := range ps {
		if p.PID == os.Getpid() || !p.Alive() || all[p] {
			t.Fatalf("member %d: process %+v", i, p)
		}
		all[p] = true
	}
	rep, err := Status(dir)
	if err != nil || len(rep.EtcdMembers) != 3 || !rep.Etcd.Running {
		t.Fatalf("status: %+v, %v", rep, err)
	}
	for _, m := range rep.EtcdMembers {
		if !m.Running {
			t.Errorf("status: %s not running", m.Name)
		}
	}

	cli := etcdClient(t, c.EtcdEndpoints, nil)
	killed := killLeaderAndWrite(t, c, cli)
	if ps[killed].Alive() {
		t.Errorf("killed member %d: process %d alive", killed, ps[killed].PID)
	}
	ps = memberPIDs()
	for _, p := range ps {
		all[p] = true
	}
	if !ps[killed].Alive() {
		t.Errorf("restarted member %d: process %+v not running", killed, ps[killed])
	}

	// Someone else kills the first member, which testenv.json names as
	// the owner: the other two still run the cluster.
	if err := syscall.Kill(ps[0].PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !waitGone(ps[0].PID, ps[0].Start, 5*time.Second) {
		t.Fatal("member 0 survives SIGKILL")
	}
	if err := ReapStale(); err != nil {
		t.Logf("ReapStale: %v", err) // about other tests' directories
	}
	if _, err := os.Stat(filepath.Join(dir, StateFile)); err != nil {
		t.Fatalf("ReapStale took a cluster with 2 members running: %v", err)
	}
	// Member 0 may have been the leader: writes wait for the next one.
	if _, err := c.EtcdLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if err := put(ctx, cli, "k", "two members"); err != nil {
		t.Fatal(err)
	}
	// testenv still counts it as running; kill forgets it.
	if err := c.KillEtcdMember(0); err != nil {
		t.Fatal(err)
	}
	if err := c.StartEtcdMember(0); err != nil {
		t.Fatal(err)
	}
	for _, p := range memberPIDs() {
		all[p] = true
	}

	if err := Down(dir, false); err != nil {
		t.Fatal(err)
	}
	for p := range all {
		if p.Alive() {
			t.Errorf("etcd member process %d alive after Down", p.PID)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there after Down (stat: %v)", dir, err)
	}
}

// Options.EtcdMembers must be positive (0 is the default, 1).
func TestEtcdMembersInvalid(t *testing.T) {
	t.Parallel()
	if _, err := Up(t.Context(), Options{EtcdMembers: -1}); err == nil {
		t.Fatal("Up with -1 etcd members succeeded")
	}
}
