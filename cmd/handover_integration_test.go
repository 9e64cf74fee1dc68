package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replctl/replctl/testenv"
)

// The logical slot handover on real servers: a subscriber in another
// cluster consumes the primary's publication through a connection string
// that names every node with target_session_attrs=read-write, while a
// writer commits every 5 ms. A planned switchover (the default
// --logical-slots handover) ends with the subscriber holding every row the
// writer got acknowledged, streaming from the new primary. Then, with the
// subscription disabled (the consumer stopped), the switchover is refused
// after the fence and undone, nothing half-done; --logical-slots drop then
// switches over and says the slot is lost.
func TestIntegrationLogicalHandover(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	ctx := t.Context()
	c := testenv.Start(t, testenv.Options{Replicas: 2, Logical: true})
	sub := testenv.Start(t, testenv.Options{Replicas: 0, NoEtcd: true, Logical: true})
	multi := hoMultiDSN(c)
	must := func(node *testenv.Cluster, name string, stmts ...string) {
		t.Helper()
		for _, s := range stmts {
			if err := node.Exec(ctx, name, s); err != nil {
				t.Fatalf("%s: %s: %v", name, s, err)
			}
		}
	}
	must(c, "pg1", "CREATE TABLE items (id bigint PRIMARY KEY)", "CREATE PUBLICATION pub FOR TABLE items")
	must(sub, "pg1", "CREATE TABLE items (id bigint PRIMARY KEY)",
		"CREATE SUBSCRIPTION s CONNECTION '"+multi+"' PUBLICATION pub WITH (slot_name = 's')")

	// The writer, through the same multi-host string.
	stopWriter := hoWriter(t, multi)
	subCount := func() int64 {
		var n int64
		if err := sub.QueryRow(ctx, "pg1", "SELECT count(*) FROM items").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	awaitRows := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s (subscriber has %d rows)", what, subCount())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	awaitRows("the subscription to stream", func() bool { return subCount() > 20 })

	r := emExpect(t, 0, c.ConfigPath, "promote", "pg2", "--yes")
	if !strings.Contains(r.stderr, "create the logical slots s (pgoutput, database postgres)") {
		t.Errorf("the switchover did not hand the slot over:\n%s", r)
	}
	time.Sleep(2 * time.Second)
	want := stopWriter()
	awaitRows("every acknowledged row on the subscriber", func() bool { return subCount() >= int64(len(want)) })
	var missing int64
	if err := sub.QueryRow(ctx, "pg1", "SELECT count(*) FROM unnest($1::bigint[]) AS a(id) WHERE id NOT IN (SELECT id FROM items)", want).Scan(&missing); err != nil {
		t.Fatal(err)
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged rows never reached the subscriber", missing, len(want))
	}
	var streaming int
	if err := c.QueryRow(ctx, "pg2", "SELECT count(*) FROM pg_stat_replication WHERE application_name = 's' AND state = 'streaming'").Scan(&streaming); err != nil {
		t.Fatal(err)
	}
	if streaming != 1 {
		t.Errorf("the subscription does not stream from the new primary pg2")
	}
	var ro string
	if err := c.QueryRow(ctx, "pg2", "SELECT current_setting('default_transaction_read_only')").Scan(&ro); err != nil || ro != "off" {
		t.Errorf("writes still held on pg2: %q %v", ro, err)
	}
	t.Logf("%d acknowledged rows, all on the subscriber", len(want))

	// The consumer stopped: refused after the fence, and undone.
	must(sub, "pg1", "ALTER SUBSCRIPTION s DISABLE")
	must(c, "pg2", "INSERT INTO items VALUES (-1)")
	r = emExpect(t, ExitFailed, c.ConfigPath, "--timeout", "2s", "promote", "pg1", "--yes", "--catchup-timeout", "3s")
	if !strings.Contains(r.stderr+r.stdout, "did not confirm") {
		t.Errorf("the refusal does not name the consumer:\n%s", r)
	}
	st := emAwaitStatus(t, c.ConfigPath, "pg2 the primary again, pg1 and pg3 streaming", func(s *emStatus) bool { return s.streamsOn("pg2", 2, "pg1", "pg3") })
	_ = st
	if err := c.QueryRow(ctx, "pg1", "SELECT current_setting('default_transaction_read_only')").Scan(&ro); err != nil || ro != "off" {
		t.Errorf("writes left held on pg1 after the undo: %q %v", ro, err)
	}
	r = emExpect(t, 0, c.ConfigPath, "promote", "pg1", "--yes", "--logical-slots", "drop")
	if !strings.Contains(r.stdout+r.stderr, "LOST") {
		t.Errorf("drop did not say the slot is lost:\n%s", r)
	}
}

// hoMultiDSN names every node of c, for clients that follow the primary.
func hoMultiDSN(c *testenv.Cluster) string {
	var ports []string
	for _, n := range c.Nodes {
		ports = append(ports, fmt.Sprint(n.Port))
	}
	return "host=" + strings.TrimSuffix(strings.Repeat("127.0.0.1,", len(ports)), ",") + " port=" + strings.Join(ports, ",") +
		" user=postgres dbname=postgres sslmode=disable target_session_attrs=read-write"
}

// hoWriter inserts ids 1, 2, ... into items every 5 ms through dsn until
// the returned stop, which returns the ids acknowledged.
func hoWriter(t *testing.T, dsn string) (stop func() []int64) {
	ctx := t.Context()
	var mu sync.Mutex
	var acked []int64
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.WithoutCancel(ctx))
			}
		}()
		for id := int64(1); wctx.Err() == nil; id++ {
			if conn == nil || conn.IsClosed() {
				cctx, ccancel := context.WithTimeout(wctx, time.Second)
				conn, _ = pgx.Connect(cctx, dsn)
				ccancel()
				if conn == nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
			}
			ectx, ecancel := context.WithTimeout(wctx, time.Second)
			_, err := conn.Exec(ectx, "INSERT INTO items VALUES ($1)", id)
			ecancel()
			if err == nil {
				mu.Lock()
				acked = append(acked, id)
				mu.Unlock()
			} else {
				conn.Close(context.WithoutCancel(ctx))
				conn = nil
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return func() []int64 {
		cancel()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(acked)
	}
}

// TestIntegrationLogicalHandoverCDC: a CDC client (pg_recvlogical with
// test_decoding, following the primary through a connection string naming
// every node) keeps its slot across a planned switchover and misses no
// change: every row the writer got acknowledged is in its output.
func TestIntegrationLogicalHandoverCDC(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	ctx := t.Context()
	c := testenv.Start(t, testenv.Options{Replicas: 2, Logical: true})
	bin := filepath.Join(c.BinDir, "pg_recvlogical")
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no pg_recvlogical next to the server binaries (%s): %v", c.BinDir, err)
	}
	for _, sql := range []string{"CREATE TABLE items (id bigint PRIMARY KEY)", "SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')"} {
		if err := c.Exec(ctx, "pg1", sql); err != nil {
			t.Fatal(err)
		}
	}
	multi := hoMultiDSN(c)
	out := filepath.Join(t.TempDir(), "cdc.out")
	// -F 1 -s 1: flush and confirm every second; it reconnects by itself
	// (every 5 s) when its walsender ends.
	rl := exec.Command(bin, "-d", multi, "-S", "cdc", "--start", "-f", out, "-F", "1", "-s", "1")
	var rlErr bytes.Buffer
	rl.Stderr = &rlErr
	if err := rl.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = rl.Process.Kill()
		_ = rl.Wait()
		if t.Failed() {
			t.Logf("pg_recvlogical:\n%s", rlErr.String())
		}
	})
	stopWriter := hoWriter(t, multi)
	seen := func() map[int64]bool {
		b, _ := os.ReadFile(out)
		m := map[int64]bool{}
		for _, line := range strings.Split(string(b), "\n") {
			if i := strings.Index(line, "id[bigint]:"); i >= 0 {
				var id int64
				if _, err := fmt.Sscan(line[i+len("id[bigint]:"):], &id); err == nil {
					m[id] = true
				}
			}
		}
		return m
	}
	deadline := time.Now().Add(60 * time.Second)
	for len(seen()) < 20 {
		if time.Now().After(deadline) {
			t.Fatalf("pg_recvlogical does not receive changes:\n%s", rlErr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	emExpect(t, 0, c.ConfigPath, "promote", "pg2", "--yes")
	time.Sleep(2 * time.Second)
	want := stopWriter()
	deadline = time.Now().Add(60 * time.Second)
	for {
		got := seen()
		var missing []int64
		for _, id := range want {
			if !got[id] {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 {
			t.Logf("%d acknowledged rows, every one decoded by the CDC client", len(want))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged rows never reached the CDC client (first %d)", len(missing), len(want), missing[0])
		}
		time.Sleep(100 * time.Millisecond)
	}
	var active bool
	if err := c.QueryRow(ctx, "pg2", "SELECT active FROM pg_replication_slots WHERE slot_name = 'cdc'").Scan(&active); err != nil || !active {
		t.Errorf("the CDC client does not stream from the new primary's slot: %v %v", active, err)
	}
}

// TestIntegrationLogicalPeers: two clusters replicating a table to each
// other (a subscription on each side, the other cluster's primary as
// publisher): with the other cluster's configuration in peers, status
// names each subscription's publisher as the peer cluster's node and the
// pair as bidirectional.
func TestIntegrationLogicalPeers(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL")
	}
	t.Parallel()
	ctx := t.Context()
	east := testenv.Start(t, testenv.Options{Cluster: "east", Replicas: 0, NoEtcd: true, Logical: true})
	west := testenv.Start(t, testenv.Options{Cluster: "west", Replicas: 0, NoEtcd: true, Logical: true})
	dsn := func(c *testenv.Cluster) string {
		return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", c.Node("pg1").Port)
	}
	for _, side := range []struct {
		c        *testenv.Cluster
		pub, sub string
		from     *testenv.Cluster
	}{{east, "pub_east", "from_west", west}, {west, "pub_west", "from_east", east}} {
		for _, sql := range []string{"CREATE TABLE items (id bigint PRIMARY KEY)", "CREATE PUBLICATION " + side.pub + " FOR TABLE items"} {
			if err := side.c.Exec(ctx, "pg1", sql); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, side := range []struct {
		c        *testenv.Cluster
		sub, pub string
		from     *testenv.Cluster
	}{{east, "from_west", "pub_west", west}, {west, "from_east", "pub_east", east}} {
		if err := side.c.Exec(ctx, "pg1", "CREATE SUBSCRIPTION "+side.sub+" CONNECTION '"+dsn(side.from)+"' PUBLICATION "+side.pub+" WITH (copy_data = false)"); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(t.TempDir(), "east.yaml")
	if err := os.WriteFile(cfg, []byte(readFile(t, east.ConfigPath)+"peers: ["+fmt.Sprintf("%q", west.ConfigPath)+"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := runCLI(t, "--config", cfg, "status", "-o", "json")
	if code != 0 {
		t.Fatalf("status exit %d\n%s", code, out)
	}
	var doc struct {
		Nodes []struct {
			Name          string `json:"name"`
			Subscriptions []struct {
				Name              string  `json:"name"`
				Kind              string  `json:"kind"`
				PublisherCluster  string  `json:"publisher_cluster"`
				PublisherNode     *string `json:"publisher_node"`
				BidirectionalWith *string `json:"bidirectional_with"`
			} `json:"subscriptions"`
		} `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	su := doc.Nodes[0].Subscriptions
	if len(su) != 1 || su[0].Kind != "peer" || su[0].PublisherCluster != "west" || su[0].PublisherNode == nil || *su[0].PublisherNode != "pg1" ||
		su[0].BidirectionalWith == nil || *su[0].BidirectionalWith != "west/pg1/postgres/from_east" {
		t.Fatalf("subscriptions of east: %+v\n%s", su, out)
	}
	table, _ := runCLI(t, "--config", cfg, "status")
	if !strings.Contains(table, "(west/pg1, peer), bidirectional with west/pg1/postgres/from_east") {
		t.Errorf("the status table does not name the peer and the pair:\n%s", table)
	}
	// A peer file that does not load is an error naming it.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte(readFile(t, east.ConfigPath)+"peers: [\"/nonexistent/west.yaml\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := runIO(t, "--config", bad, "status"); code != ExitUsage || !strings.Contains(errOut, "peers[0]: stat /nonexistent/west.yaml") {
		t.Errorf("a missing peer file: exit %d\n%s", code, errOut)
	}
}
