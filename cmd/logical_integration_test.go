package cmd

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/testenv"
	"github.com/replctl/replctl/topology"
)

// logicalDoc is the logical part of status -o json.
type logicalDoc struct {
	Nodes []struct {
		Name       string `json:"name"`
		VersionNum int    `json:"server_version_num"`
		Slots      []struct {
			Name              string  `json:"slot_name"`
			Type              string  `json:"slot_type"`
			Active            bool    `json:"active"`
			Temporary         bool    `json:"temporary"`
			Synced            *bool   `json:"synced"`
			Plugin            *string `json:"plugin"`
			Database          *string `json:"database"`
			ConfirmedFlushLSN *string `json:"confirmed_flush_lsn"`
			RetainedBytes     *uint64 `json:"retained_bytes"`
			WALStatus         *string `json:"wal_status"`
		} `json:"slots"`
		Publications []struct {
			Name      string `json:"name"`
			Database  string `json:"database"`
			AllTables bool   `json:"all_tables"`
			Tables    int    `json:"tables"`
		} `json:"publications"`
		Subscriptions []struct {
			Name              string  `json:"name"`
			Database          string  `json:"database"`
			Enabled           bool    `json:"enabled"`
			PublisherHost     *string `json:"publisher_host"`
			PublisherPort     *string `json:"publisher_port"`
			PublisherDB       *string `json:"publisher_dbname"`
			PublisherNode     *string `json:"publisher_node"`
			Kind              string  `json:"kind"`
			BidirectionalWith *string `json:"bidirectional_with"`
			WorkerState       string  `json:"worker_state"`
			ReceivedLSN       *string `json:"received_lsn"`
			LatestEndLSN      *string `json:"latest_end_lsn"`
			ApplyErrorCount   *int64  `json:"apply_error_count"`
			SyncErrorCount    *int64  `json:"sync_error_count"`
		} `json:"subscriptions"`
	} `json:"nodes"`
	Warnings []struct{ Code, Node, Message string } `json:"warnings"`
}

// TestIntegrationLogical builds, on one cluster, an inactive test_decoding
// slot, a bidirectional pair of subscriptions between two of its
// databases, a subscription failing on a unique violation and one to a
// publisher that does not exist, and checks that status and check report
// each as such.
func TestIntegrationLogical(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL")
	}
	t.Parallel()
	ctx := t.Context()
	c := testenv.Start(t, testenv.Options{Replicas: 1, NoEtcd: true, Logical: true})
	t.Logf("PostgreSQL %s", c.PGVersion)
	pg1 := c.Node("pg1")
	// A password in a subscription's connection string (trust ignores it)
	// must never reach the output.
	const secret = "s3cret-logical-pw"
	pub := func(db string) string {
		return "host=127.0.0.1 port=" + strconv.Itoa(pg1.Port) + " user=postgres sslmode=disable password=" + secret + " dbname=" + db
	}
	exec := func(db string, stmts ...string) {
		t.Helper()
		conn, err := pgx.Connect(ctx, pg1.DSN+" dbname="+db)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.WithoutCancel(ctx))
		for _, s := range stmts {
			if _, err := conn.Exec(ctx, s); err != nil {
				t.Fatalf("%s: %s: %v", db, s, err)
			}
		}
	}
	exec("postgres",
		"CREATE DATABASE subok", "CREATE DATABASE suberr",
		"SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')",
		"CREATE TABLE t_ok (id int PRIMARY KEY)", "CREATE TABLE t_err (id int PRIMARY KEY)", "CREATE TABLE t_back (id int PRIMARY KEY)",
		"CREATE PUBLICATION pub_ok FOR TABLE t_ok", "CREATE PUBLICATION pub_err FOR TABLE t_err",
		// A subscription to the same cluster cannot create its slot itself.
		"SELECT pg_create_logical_replication_slot('sub_ok', 'pgoutput')",
		"SELECT pg_create_logical_replication_slot('sub_err', 'pgoutput')")
	exec("subok",
		"CREATE TABLE t_ok (id int PRIMARY KEY)", "CREATE TABLE t_back (id int PRIMARY KEY)",
		"CREATE PUBLICATION pub_back FOR TABLE t_back",
		"SELECT pg_create_logical_replication_slot('sub_back', 'pgoutput')",
		"CREATE SUBSCRIPTION sub_ok CONNECTION '"+pub("postgres")+"' PUBLICATION pub_ok WITH (create_slot = false, slot_name = 'sub_ok')")
	exec("postgres",
		"CREATE SUBSCRIPTION sub_back CONNECTION '"+pub("subok")+"' PUBLICATION pub_back WITH (create_slot = false, slot_name = 'sub_back')")
	exec("suberr",
		"CREATE TABLE t_err (id int PRIMARY KEY)", "INSERT INTO t_err VALUES (1)",
		"CREATE SUBSCRIPTION sub_err CONNECTION '"+pub("postgres")+"' PUBLICATION pub_err WITH (create_slot = false, slot_name = 'sub_err', copy_data = false)",
		// Nothing listens on port 1: the worker never gets going.
		"CREATE SUBSCRIPTION sub_dead CONNECTION 'host=127.0.0.1 port=1 user=postgres dbname=postgres password="+secret+"' PUBLICATION pub_ok WITH (connect = false)",
		"ALTER SUBSCRIPTION sub_dead ENABLE")
	// The conflict: a row the subscriber already has.
	exec("postgres", "INSERT INTO t_err VALUES (1)", "INSERT INTO t_ok VALUES (1)", "INSERT INTO t_back VALUES (7)")

	var d logicalDoc
	var raw string
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, code := runCLI(t, "--config", c.ConfigPath, "status", "-o", "json")
		if code != 0 {
			t.Fatalf("status exit %d:\n%s", code, out)
		}
		if strings.Contains(out, secret) {
			t.Fatalf("password in status output:\n%s", out)
		}
		d, raw = logicalDoc{}, out
		if err := json.Unmarshal([]byte(out), &d); err != nil {
			t.Fatal(err)
		}
		if d.ready() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for the subscriptions' states:\n%s", raw)
		}
		time.Sleep(500 * time.Millisecond)
	}

	n := d.Nodes[0]
	if n.Name != "pg1" {
		t.Fatalf("first node %s", n.Name)
	}
	found := false
	for _, sl := range n.Slots {
		if sl.Name == "cdc" {
			found = true
			if sl.Type != "logical" || sl.Active || derefStr(sl.Plugin) != "test_decoding" || derefStr(sl.Database) != "postgres" ||
				sl.ConfirmedFlushLSN == nil || sl.RetainedBytes == nil || derefStr(sl.WALStatus) == "" {
				t.Errorf("cdc slot: %+v", sl)
			}
		}
	}
	if !found {
		t.Errorf("no cdc slot on pg1: %+v", n.Slots)
	}
	var pubs []string
	for _, p := range n.Publications {
		pubs = append(pubs, p.Name+"/"+p.Database+"/"+strconv.Itoa(p.Tables))
	}
	// pub_back lives in subok, which the probe does not connect to.
	if strings.Join(pubs, " ") != "pub_err/postgres/1 pub_ok/postgres/1" {
		t.Errorf("publications %v", pubs)
	}
	subs := map[string]int{}
	for i, s := range n.Subscriptions {
		subs[s.Name] = i
	}
	get := func(name string) int {
		i, ok := subs[name]
		if !ok {
			t.Fatalf("no subscription %s: %+v", name, n.Subscriptions)
		}
		return i
	}
	ok, back, errS, dead := n.Subscriptions[get("sub_ok")], n.Subscriptions[get("sub_back")], n.Subscriptions[get("sub_err")], n.Subscriptions[get("sub_dead")]
	if ok.Database != "subok" || derefStr(ok.PublisherNode) != "pg1" || ok.Kind != "internal" || derefStr(ok.PublisherDB) != "postgres" ||
		derefStr(ok.PublisherPort) != strconv.Itoa(pg1.Port) || derefStr(ok.BidirectionalWith) != "pg1/postgres/sub_back" || ok.WorkerState != "running" {
		t.Errorf("sub_ok: %+v", ok)
	}
	if derefStr(back.BidirectionalWith) != "pg1/subok/sub_ok" {
		t.Errorf("sub_back: %+v", back)
	}
	v15 := n.VersionNum >= 150000
	if v15 && (errS.ApplyErrorCount == nil || *errS.ApplyErrorCount == 0) || !v15 && errS.ApplyErrorCount != nil || errS.BidirectionalWith != nil {
		t.Errorf("sub_err: %+v", errS)
	}
	if dead.Kind != "external" || dead.PublisherNode != nil || dead.WorkerState != "not running" || dead.ReceivedLSN != nil {
		t.Errorf("sub_dead: %+v", dead)
	}
	wants := []string{"logical_slot:pg1:cdc", "subscription_not_running:pg1:sub_dead", "logical_failover:pg1:cdc", "logical_failover:pg1:sub_ok"}
	if v15 {
		wants = append(wants, "subscription_errors:pg1:sub_err")
	}
	for _, want := range wants {
		parts := strings.SplitN(want, ":", 3)
		code, node, what := parts[0], parts[1], parts[2]
		if !d.warned(code, node, what) {
			t.Errorf("no %s warning on %s about %s: %+v", code, node, what, d.Warnings)
		}
	}
	for _, w := range d.Warnings {
		if w.Code == "unmanaged_replica" || w.Code == "slot" {
			t.Errorf("a logical walsender or slot taken for a replica's: %+v", w)
		}
	}

	// The table shows a logical section, passwords scrubbed.
	out, code := runCLI(t, "--config", c.ConfigPath, "status")
	if code != 0 || strings.Contains(out, secret) || !strings.Contains(out, "LOGICAL") ||
		!strings.Contains(out, "bidirectional with pg1/postgres/sub_back") {
		t.Errorf("status table (exit %d):\n%s", code, out)
	}
	t.Logf("status:\n%s", out)
	for _, name := range []string{"logical_slots", "subscriptions", "logical_failover"} {
		if code := checkCode(t, c.ConfigPath, name); code != 1 {
			t.Errorf("check %s: exit %d, want 1 (WARNING)", name, code)
		}
	}
	// The switchover's plan says what it would do to each logical slot.
	out, code = runCLI(t, "--config", c.ConfigPath, "promote", "pg2", "--dry-run")
	t.Logf("promote --dry-run: exit %d\n%s", code, out)
	for _, slot := range []string{"cdc (test_decoding, database postgres)", "sub_ok (pgoutput, database postgres)"} {
		if !strings.Contains(out, "logical slot "+slot+" on pg1: handed over to pg2") {
			t.Errorf("the dry-run does not say slot %s is handed over:\n%s", slot, out)
		}
	}
	out, code = runCLI(t, "--config", c.ConfigPath, "promote", "pg2", "--dry-run", "--logical-slots", "drop")
	t.Logf("promote --dry-run --logical-slots drop: exit %d\n%s", code, out)
	for _, slot := range []string{"cdc (test_decoding, database postgres)", "sub_ok (pgoutput, database postgres)"} {
		if !strings.Contains(out, "logical slot "+slot+" on pg1: LOST by this promotion (") {
			t.Errorf("the dry-run does not say slot %s is lost:\n%s", slot, out)
		}
	}
	if !strings.Contains(out, "subscription sub_ok (database subok) consumes from pg1 itself") || strings.Contains(out, secret) {
		t.Errorf("the dry-run does not name the subscription that would still follow pg1:\n%s", out)
	}

	// A monitoring role (pg_monitor, not superuser) may not read
	// subconninfo: the probe still works, publishers unknown, not guessed.
	exec("postgres", "CREATE ROLE mon LOGIN", "GRANT pg_monitor TO mon")
	st := topology.PgProber{Timeout: 5 * time.Second}.Probe(ctx, config.Node{Name: "pg1", DSN: pg1.DSN + " user=mon"})
	if !st.Reachable || len(st.Subscriptions) != 4 || len(st.Slots) != 5 || len(st.Publications) != 2 {
		t.Fatalf("probe as pg_monitor: %+v", st)
	}
	for _, su := range st.Subscriptions {
		// 13 lets only superusers read pg_subscription.oid: the worker
		// cannot be matched, its state is unknown ("").
		if su.PublisherHost != nil || (su.WorkerState == "") != (n.VersionNum < 140000) {
			t.Errorf("pg_monitor probe, subscription %+v", su)
		}
	}

	// Once the conflict is gone and the counters reset, subscriptions is OK
	// but for the dead publisher; dropping that leaves nothing to report.
	reset := func() {
		if v15 {
			exec("suberr", "SELECT pg_stat_reset_subscription_stats(NULL)")
		}
	}
	exec("suberr", "DELETE FROM t_err",
		"ALTER SUBSCRIPTION sub_dead DISABLE", "ALTER SUBSCRIPTION sub_dead SET (slot_name = NONE)", "DROP SUBSCRIPTION sub_dead")
	reset()
	deadline = time.Now().Add(30 * time.Second)
	for checkCode(t, c.ConfigPath, "subscriptions") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("subscriptions still not OK after the conflict was resolved")
		}
		time.Sleep(time.Second)
		// An error the worker hit just before the DELETE may be counted late.
		reset()
	}
}

// ready reports whether the subscriptions have reached the states the test
// asserts: the good ones streaming, the failing one counted an error.
func (d *logicalDoc) ready() bool {
	if len(d.Nodes) == 0 {
		return false
	}
	want := map[string]bool{}
	for _, s := range d.Nodes[0].Subscriptions {
		switch s.Name {
		case "sub_ok", "sub_back":
			want[s.Name] = s.WorkerState == "running" && s.ReceivedLSN != nil
		case "sub_err":
			// Error counts came with 15; before, the failing worker shows
			// as not running between its retries.
			want[s.Name] = s.ApplyErrorCount != nil && *s.ApplyErrorCount > 0 ||
				d.Nodes[0].VersionNum < 150000 && s.WorkerState == "not running"
		case "sub_dead":
			want[s.Name] = s.WorkerState == "not running"
		}
	}
	// The standby's catalog copies, which the switchover's plan reads.
	return len(want) == 4 && want["sub_ok"] && want["sub_back"] && want["sub_err"] && want["sub_dead"] &&
		len(d.Nodes) > 1 && len(d.Nodes[1].Subscriptions) == 4
}

// warned reports a warning with the code on the node whose message names what.
func (d *logicalDoc) warned(code, node, what string) bool {
	for _, w := range d.Warnings {
		if w.Code == code && w.Node == node && strings.Contains(w.Message, " "+what+" ") {
			return true
		}
	}
	return false
}

func derefStr(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// TestIntegrationLogicalFailoverSlots runs on PostgreSQL 17 (skipped when
// that build has not been fetched: make deps PG=17): a failover slot on the
// primary, synchronised to the standby, is reported as kept by a
// promotion, and not once the standby stops synchronising it.
func TestIntegrationLogicalFailoverSlots(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL")
	}
	bin := testenv.RequirePG(t, 17)
	t.Parallel()
	ctx := t.Context()
	c := testenv.Start(t, testenv.Options{Replicas: 1, NoEtcd: true, Logical: true, PGBinDir: bin})
	must := func(node, sql string) {
		t.Helper()
		if err := c.Exec(ctx, node, sql); err != nil {
			t.Fatal(err)
		}
	}
	must("pg1", "SELECT pg_create_logical_replication_slot('fo', 'test_decoding', false, false, true)")
	must("pg1", "ALTER SYSTEM SET synchronized_standby_slots = 'pg2'")
	must("pg1", "SELECT pg_reload_conf()")
	var conninfo string
	if err := c.QueryRow(ctx, "pg2", "SHOW primary_conninfo").Scan(&conninfo); err != nil {
		t.Fatal(err)
	}
	// The slot sync worker needs a database to connect to on the primary.
	for _, sql := range []string{"ALTER SYSTEM SET primary_conninfo = '" + conninfo + " dbname=postgres'",
		"ALTER SYSTEM SET hot_standby_feedback = on", "ALTER SYSTEM SET sync_replication_slots = on", "SELECT pg_reload_conf()"} {
		must("pg2", sql)
	}
	synced := func(d *logicalDoc) bool {
		for _, n := range d.Nodes {
			if n.Name == "pg2" {
				for _, sl := range n.Slots {
					if sl.Name == "fo" && sl.Synced != nil && *sl.Synced && !sl.Temporary {
						return true
					}
				}
			}
		}
		return false
	}
	deadline := time.Now().Add(90 * time.Second)
	var d logicalDoc
	for {
		// A synced copy becomes persistent only once the primary's slot
		// has moved past where the copy started: consume some changes.
		if err := c.Write(ctx, 10); err != nil {
			t.Fatal(err)
		}
		must("pg1", "SELECT count(*) FROM pg_logical_slot_get_changes('fo', NULL, NULL)")
		out, code := runCLI(t, "--config", c.ConfigPath, "status", "-o", "json")
		d = logicalDoc{}
		if code != 0 || json.Unmarshal([]byte(out), &d) != nil {
			t.Fatalf("status exit %d:\n%s", code, out)
		}
		if synced(&d) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pg2 never got a synced copy of fo:\n%s", out)
		}
		time.Sleep(time.Second)
	}
	if code := checkCode(t, c.ConfigPath, "logical_failover"); code != 0 {
		t.Errorf("check logical_failover with fo synced to pg2: exit %d, want 0", code)
	}
	// The primary's fo has no consumer connected (the test reads it over
	// SQL), the standby's copy never has one and is not reported.
	for _, w := range d.Warnings {
		if w.Node == "pg2" {
			t.Errorf("warning about the synced copy on pg2: %+v", w)
		}
	}
	must("pg2", "ALTER SYSTEM SET sync_replication_slots = off")
	must("pg2", "SELECT pg_reload_conf()")
	deadline = time.Now().Add(30 * time.Second)
	for {
		out, code := runCLI(t, "--config", c.ConfigPath, "check", "logical_failover")
		if code == 1 && strings.Contains(out, "promotion of pg2 (sync_replication_slots is not on)") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("check logical_failover with sync off on pg2: exit %d\n%s", code, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestIntegrationLogicalDrill: a switchover drill on PostgreSQL before 17
// measures logical_slots_kept == 1: the switchover hands the slot over
// (its consumer, idle, has confirmed everything), and the report says so.
func TestIntegrationLogicalDrill(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL and etcd")
	}
	t.Parallel()
	ctx := t.Context()
	c := testenv.Start(t, testenv.Options{Replicas: 1, Logical: true})
	// 17+ keeps failover slots (TestIntegrationLogicalFailoverSlots).
	if v, _ := strconv.Atoi(strings.SplitN(c.PGVersion, ".", 2)[0]); v >= 17 {
		t.Skipf("PostgreSQL %s keeps failover slots: this drill is about earlier versions", c.PGVersion)
	}
	if err := c.Exec(ctx, "pg1", "SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rb := filepath.Join(dir, "logical.yaml")
	if err := os.WriteFile(rb, []byte(`name: logical-switchover
cluster: demo
steps:
  - id: switchover
    promote: planned
    candidate: auto
  - wait: replicas_streaming
    timeout: 60s
  - assert:
      - "primary != initial_primary"
      - "logical_slots_kept == 1"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	rj := filepath.Join(dir, "report.json")
	out, errOut, code := runIO(t, "--config", c.ConfigPath, "runbook", "run", rb, "--yes", "--report-json", rj)
	if code != 0 {
		t.Fatalf("drill exit %d\n%s\n%s", code, out, errOut)
	}
	rep := readReport(t, rj)
	if rep.Metrics.LogicalSlotsKept == nil || *rep.Metrics.LogicalSlotsKept != 1 || rep.FinalPrimary != "pg2" {
		t.Fatalf("report metrics %+v, final primary %s", rep.Metrics, rep.FinalPrimary)
	}
	// What the metric measured, read from PostgreSQL itself.
	var n int
	if err := c.QueryRow(ctx, "pg2", "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'cdc'").Scan(&n); err != nil || n != 1 {
		t.Fatalf("slot cdc on the new primary pg2: %d (%v)", n, err)
	}
}

// TestIntegrationLogicalEmergency: an emergency failover's plan cannot read
// the dead primary's logical slots, and says they are lost rather than
// claiming anything survived.
func TestIntegrationLogicalEmergency(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL")
	}
	t.Parallel()
	ctx := t.Context()
	c := testenv.Start(t, testenv.Options{Replicas: 2, NoEtcd: true, Logical: true})
	if err := c.Exec(ctx, "pg1", "SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')"); err != nil {
		t.Fatal(err)
	}
	if err := c.KillNode(ctx, "pg1"); err != nil {
		t.Fatal(err)
	}
	var out string
	deadline := time.Now().Add(30 * time.Second)
	for {
		var code int
		out, code = runCLI(t, "--config", c.ConfigPath, "promote", "--emergency", "--dry-run", "--allow-data-loss")
		if strings.Contains(out, "Plan (") || time.Now().After(deadline) {
			t.Logf("promote --emergency --dry-run: exit %d\n%s", code, out)
			break
		}
		time.Sleep(time.Second)
	}
	if !strings.Contains(out, "pg1 cannot be read: every logical slot it had without a synced copy on pg") ||
		strings.Contains(out, ": kept:") {
		t.Fatalf("the emergency plan does not say the logical slots are lost:\n%s", out)
	}
}
