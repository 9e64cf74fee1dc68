package topology

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/replctl/replctl/config"
)

// pg15Logical is a primary's probe document in the shape PostgreSQL 15
// returns it (names and positions from a TestIntegrationLogical run,
// columns trimmed to those the test reads):
// an inactive test_decoding slot, a subscriber's active pgoutput slot and
// its walsender, a publication and two subscriptions.
const pg15Logical = `{"server_version_num":150018,"in_recovery":false,"current_lsn":"0/387D830","walfile":"000000010000000000000003",
"replication":[{"pid":4242,"application_name":"sub_ok","client_addr":"127.0.0.1","state":"streaming","sync_state":"async","database":"postgres"},
 {"pid":4243,"application_name":"pg_16418_sync_16396_7714287724182614346","state":"startup","database":"postgres"},
 {"pid":4100,"application_name":"pg2","state":"streaming","database":null}],
"slots":[
 {"slot_name":"cdc","slot_type":"logical","temporary":false,"active":false,"active_pid":null,"restart_lsn":"0/383E848","wal_status":"reserved",
  "safe_wal_size":null,"plugin":"test_decoding","confirmed_flush_lsn":"0/383E880","database":"postgres","two_phase":false},
 {"slot_name":"sub_ok","slot_type":"logical","temporary":false,"active":true,"active_pid":4242,"restart_lsn":"0/387D2C0","wal_status":"reserved",
  "safe_wal_size":null,"plugin":"pgoutput","confirmed_flush_lsn":"0/387D830","database":"postgres","two_phase":false},
 {"slot_name":"pg2","slot_type":"physical","temporary":false,"active":true,"active_pid":4100,"restart_lsn":"0/387D830","wal_status":"reserved",
  "safe_wal_size":null,"plugin":null,"confirmed_flush_lsn":null,"database":null,"two_phase":false}],
"database":"postgres",
"publications":[{"name":"pub_ok","database":"postgres","all_tables":false,"tables":1}],
"subscriptions":[
 {"name":"sub_back","database":"postgres","enabled":true,"slot_name":"sub_back","publications":["pub_back"],"worker_pid":4300,"sync_workers":0,
  "received_lsn":"0/387D830","latest_end_lsn":"0/387D830","last_msg_receipt_time":"2026-12-01T12:42:50.1+00:00","apply_error_count":0,"sync_error_count":0},
 {"name":"sub_err","database":"suberr","enabled":true,"slot_name":"sub_err","publications":["pub_err"],"worker_pid":null,"sync_workers":0,
  "received_lsn":null,"latest_end_lsn":null,"last_msg_receipt_time":null,"apply_error_count":3,"sync_error_count":0}],
"subconninfo_wanted":true,
"settings":{"wal_level":"logical","hot_standby_feedback":"off","sync_replication_slots":null,"synchronized_standby_slots":null}}`

// pg17Standby is a PostgreSQL 17 standby's probe document with a synced
// copy of its primary's failover slot, written by hand after the 17
// columns of pg_replication_slots (failover, synced, invalidation_reason):
// the sandbox runs 15.
const pg17Standby = `{"server_version_num":170010,"in_recovery":true,"receive_lsn":"0/5000100","replay_lsn":"0/5000100",
"slots":[{"slot_name":"cdc","slot_type":"logical","temporary":false,"active":false,"active_pid":null,"restart_lsn":"0/5000000",
  "wal_status":"reserved","safe_wal_size":null,"plugin":"pgoutput","confirmed_flush_lsn":"0/5000080","database":"app",
  "two_phase":false,"conflicting":false,"invalidation_reason":null,"failover":true,"synced":true}],
"database":"postgres","publications":[],
"subscriptions":[{"name":"sub_x","database":"app","enabled":true,"slot_name":"sub_x","publications":["p"],"worker_pid":null,
  "sync_workers":0,"received_lsn":null,"latest_end_lsn":null,"last_msg_receipt_time":null,"apply_error_count":0,"sync_error_count":0,"origin":"none"}],
"settings":{"wal_level":"logical","hot_standby_feedback":"on","sync_replication_slots":"on","synchronized_standby_slots":""}}`

func TestDecodeLogical(t *testing.T) {
	t.Parallel()
	node := config.Node{Name: "pg1", DSN: "host=127.0.0.1 port=5432"}
	var st NodeStatus
	if err := decodeProbe([]byte(pg15Logical), node, &st); err != nil {
		t.Fatal(err)
	}
	cdc := st.Slots[0]
	if !cdc.Logical() || *cdc.Plugin != "test_decoding" || *cdc.Database != "postgres" || cdc.ConfirmedFlushLSN.String() != "0/383E880" ||
		*cdc.RetainedBytes != 0x387D830-0x383E848 || cdc.Failover != nil || cdc.Synced != nil {
		t.Fatalf("cdc %+v", cdc)
	}
	if st.Slots[2].Logical() || st.Slots[2].Plugin != nil {
		t.Fatalf("physical slot %+v", st.Slots[2])
	}
	if st.Replication[0].LogicalSlot == nil || *st.Replication[0].LogicalSlot != "sub_ok" || !st.Replication[0].Logical() {
		t.Fatalf("the subscriber's walsender is not marked logical: %+v", st.Replication[0])
	}
	// A table synchronisation copying holds no slot yet: its database
	// says it is logical. The replica's walsender connects to none.
	if r := st.Replication[1]; !r.Logical() || r.LogicalSlot != nil || st.Replication[2].Logical() {
		t.Fatalf("walsenders %+v", st.Replication)
	}
	if st.Database != "postgres" || len(st.Publications) != 1 || st.Publications[0].Tables != 1 {
		t.Fatalf("publications %+v", st.Publications)
	}
	if a, b := st.Subscriptions[0], st.Subscriptions[1]; a.WorkerState != WorkerRunning || b.WorkerState != WorkerNotRunning ||
		*b.ApplyErrorCount != 3 || a.Origin != nil || a.PublisherHost != nil {
		t.Fatalf("subscriptions %+v", st.Subscriptions)
	}
	if *st.Settings.WALLevel != "logical" || st.Settings.SyncReplicationSlots != nil {
		t.Fatalf("settings %+v", st.Settings)
	}

	// The second round trip's connection strings give the publishers,
	// and nothing else of them is kept.
	ApplySubConninfo(&st, []SubConninfo{
		{Database: "postgres", Name: "sub_back", Conninfo: "host=127.0.0.1 port=5432 user=postgres password=s3cret dbname=subok"},
		{Database: "suberr", Name: "sub_err", Conninfo: "postgresql://rep:s3cret@db1.example.com:6432/app?sslmode=require"},
		{Database: "other", Name: "sub_err", Conninfo: "host=wrong"},
	})
	if a := st.Subscriptions[0]; *a.PublisherHost != "127.0.0.1" || *a.PublisherPort != "5432" || *a.PublisherDB != "subok" {
		t.Fatalf("sub_back publisher %+v", a)
	}
	if b := st.Subscriptions[1]; *b.PublisherHost != "db1.example.com" || *b.PublisherPort != "6432" || *b.PublisherDB != "app" {
		t.Fatalf("sub_err publisher %+v", b)
	}
	doc, _ := json.Marshal(st)
	if strings.Contains(string(doc), "s3cret") {
		t.Fatalf("password in %s", doc)
	}

	// PostgreSQL 17: failover and synced; a standby's subscription is a
	// catalog copy, its worker "standby".
	st = NodeStatus{}
	if err := decodeProbe([]byte(pg17Standby), node, &st); err != nil {
		t.Fatal(err)
	}
	if sl := st.Slots[0]; !*sl.Failover || !*sl.Synced || sl.InvalidationReason != nil || *sl.RetainedBytes != 0x100 {
		t.Fatalf("17 slot %+v", sl)
	}
	if su := st.Subscriptions[0]; su.WorkerState != WorkerStandby || *su.Origin != "none" {
		t.Fatalf("17 subscription %+v", su)
	}
	if *st.Settings.SyncReplicationSlots != "on" {
		t.Fatalf("17 settings %+v", st.Settings)
	}
}

func TestProbeQueryLogicalColumns(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		version     int
		has, hasNot []string
	}{
		{130000, []string{"confirmed_flush_lsn", "'plugin'", "pg_stat_get_subscription(NULL) w"}, []string{"apply_error_count", "suborigin", "leader_pid", "'failover'"}},
		{150000, []string{"ss.apply_error_count", "pg_stat_get_subscription_stats(su.oid) ss"}, []string{"suborigin", "leader_pid", "'synced'"}},
		{160000, []string{"su.suborigin", "w.leader_pid IS NULL"}, []string{"'failover'"}},
		{170000, []string{"'failover', failover", "'synced', synced", "sync_replication_slots"}, nil},
	} {
		q := probeQuery(tc.version)
		if !strings.Contains(q, "'subscription_workers', true") {
			t.Errorf("%d: the full query does not say it reads workers", tc.version)
		}
		for _, s := range tc.has {
			if !strings.Contains(q, s) {
				t.Errorf("%d: query lacks %q", tc.version, s)
			}
		}
		for _, s := range tc.hasNot {
			if strings.Contains(q, s) {
				t.Errorf("%d: query has %q, which this version has not", tc.version, s)
			}
		}
	}
}

func TestPublisherOf(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, host, port, db string }{
		{"host=h1 port=5433 dbname=app password=x", "h1", "5433", "app"},
		{"hostaddr=10.0.0.1 dbname='my db'", "10.0.0.1", "", "my db"},
		{"host=a,b port=5432,5433 dbname=d", "a,b", "5432,5433", "d"},
		{"postgres://u:pw@h:7000/db", "h", "7000", "db"},
		{"postgresql://h1:1,h2:2/db", "h1,h2", "1,2", "db"},
		{"postgresql:///db?host=/tmp&port=5555", "/tmp", "5555", "db"},
		{"postgresql://[::1]/db", "::1", "", "db"},
	} {
		h, p, d := publisherOf(tc.in)
		if h != tc.host || p != tc.port || d != tc.db {
			t.Errorf("%q: %q %q %q, want %q %q %q", tc.in, h, p, d, tc.host, tc.port, tc.db)
		}
	}
}

func TestClassifySubscriptions(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "pg1", "pg2", "other")
	sub := func(name, db, host string, port int, pubdb string) Subscription {
		return Subscription{Name: name, Database: db, Enabled: true, WorkerState: WorkerRunning,
			PublisherHost: ptr(host), PublisherPort: ptr(strconv.Itoa(port)), PublisherDB: ptr(pubdb)}
	}
	p1 := primary("pg1", 0x3000000, walsender("pg2", 0x3000000), walsender("sub_a", 0x3000000))
	p1.Slots = []Slot{{Name: "sub_a", Type: "logical", Active: true, ActivePID: ptr(7)}}
	p1.Replication[1].PID, p1.Replication[1].LogicalSlot = ptr(7), ptr("sub_a")
	p1.Subscriptions = []Subscription{
		sub("sub_a", "a", "localhost", port(0), "b"), // a <- pg1/b
		sub("sub_b", "b", "127.0.0.1", port(1), "a"), // b <- pg2 (same cluster)/a
		sub("sub_x", "a", "db9", 5432, "x"),          // external
		sub("sub_o", "b", "127.0.0.1", port(2), "z"), // other (another cluster) /z
	}
	p1.Subscriptions = append(p1.Subscriptions, Subscription{Name: "sub_u", Database: "a"}) // conninfo unreadable
	r2 := replica("pg2", port(0), 0x3000000, 0x3000000)
	r2.Subscriptions = []Subscription{sub("sub_a", "a", "localhost", port(0), "b")} // a standby's catalog copy
	other := primary("other", 0x1000000)
	other.SystemID = sysB
	other.Subscriptions = []Subscription{sub("sub_back", "z", "127.0.0.1", port(0), "b")} // z <- pg1/b
	in := []NodeStatus{p1, r2, other}
	s := Classify(cfg, in, nil)

	got := map[string]string{}
	for _, n := range s.Nodes {
		for _, su := range n.Subscriptions {
			bi := "-"
			if su.BidirectionalWith != nil {
				bi = *su.BidirectionalWith
			}
			got[n.Name+"/"+su.Name] = su.Kind + " " + string(su.PublisherNode) + " " + bi
		}
	}
	want := map[string]string{
		"pg1/sub_a":      "internal pg1 pg1/b/sub_b",
		"pg1/sub_b":      "internal pg2 pg1/a/sub_a",
		"pg1/sub_x":      "external  -",
		"pg1/sub_o":      "internal other other/z/sub_back",
		"pg1/sub_u":      "  -",
		"pg2/sub_a":      "internal pg1 -",
		"other/sub_back": "internal pg1 pg1/b/sub_o",
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %q, want %q", k, got[k], w)
		}
	}
	if in[0].Subscriptions[0].Kind != "" {
		t.Error("Classify changed the probe's own slice")
	}
	// The subscriber's walsender on pg1 is not an unmanaged replica.
	if len(s.Unmanaged) != 0 {
		t.Errorf("unmanaged %+v", s.Unmanaged)
	}
}

// On PostgreSQL 13 a role other than a superuser may not name
// pg_subscription.oid: the query it gets does not, and says so.
func TestProbeQueryWithoutSubscriptionOID(t *testing.T) {
	t.Parallel()
	q := probeQueryFor(130000, false)
	if strings.Contains(q, "su.oid") || strings.Contains(q, "su.subconninfo") || !strings.Contains(q, "'subscription_workers', false") {
		t.Fatalf("query:\n%s", q)
	}
	doc := `{"in_recovery":false,"subscription_workers":false,"subscriptions":[
	  {"name":"a","database":"d","enabled":true},{"name":"b","database":"d","enabled":false}]}`
	var st NodeStatus
	if err := decodeProbe([]byte(doc), config.Node{}, &st); err != nil {
		t.Fatal(err)
	}
	if st.Subscriptions[0].WorkerState != "" || st.Subscriptions[1].WorkerState != WorkerDisabled {
		t.Fatalf("%+v", st.Subscriptions)
	}
}

// LinkPeers marks a subscription whose publisher is a node of a peer
// cluster as Kind peer, naming that cluster and node, and pairs it with the
// peer's subscription that replicates the other way; a one-way one stays
// unpaired, and a standby's catalog copy on either side never pairs.
func TestLinkPeers(t *testing.T) {
	t.Parallel()
	west := testConfig(t, "pg1", "pg2")
	east, err := config.Parse("east.yaml", []byte("cluster: east\nnodes:\n  - name: e1\n    dsn: host=127.0.0.1 port=45432 user=postgres\n  - name: e2\n    dsn: host=127.0.0.1 port=55432 user=postgres\n"))
	if err != nil {
		t.Fatal(err)
	}
	sub := func(name, db string, port int, pubdb string) Subscription {
		return Subscription{Name: name, Database: db, Enabled: true, WorkerState: WorkerRunning,
			PublisherHost: ptr("127.0.0.1"), PublisherPort: ptr(strconv.Itoa(port)), PublisherDB: ptr(pubdb)}
	}
	w1 := primary("pg1", 0x3000000, walsender("pg2", 0x3000000))
	w1.Subscriptions = []Subscription{
		sub("from_east", "app", 45432, "app"), // app <- e1/app, and e1/app <- pg1/app: a pair
		sub("one_way", "logs", 55432, "logs"), // logs <- e2/logs, nothing back
	}
	w2 := replica("pg2", port(0), 0x3000000, 0x3000000)
	w2.Subscriptions = []Subscription{sub("from_east", "app", 45432, "app")}
	ws := Classify(west, []NodeStatus{w1, w2}, nil)

	e1 := primary("e1", 0x1000000, walsender("e2", 0x1000000))
	e1.SystemID = sysB
	e1.Subscriptions = []Subscription{sub("from_west", "app", port(0), "app")}
	e2 := replica("e2", 45432, 0x1000000, 0x1000000)
	e2.SystemID = sysB
	es := Classify(east, []NodeStatus{e1, e2}, nil)

	LinkPeers(west, ws, []Peer{{Cfg: east, Snap: es}})
	got := map[string]string{}
	for _, n := range ws.Nodes {
		for _, su := range n.Subscriptions {
			bi := "-"
			if su.BidirectionalWith != nil {
				bi = *su.BidirectionalWith
			}
			got[n.Name+"/"+su.Name] = fmt.Sprintf("%s %s/%s %s", su.Kind, su.PublisherCluster, su.PublisherNode, bi)
		}
	}
	want := map[string]string{
		"pg1/from_east": "peer east/e1 east/e1/app/from_west",
		"pg1/one_way":   "peer east/e2 -",
		"pg2/from_east": "external / -", // a standby's copy: left as Classify saw it
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %q, want %q", k, got[k], w)
		}
	}
	// The peer's own snapshot is read, never changed.
	if es.Node("e1").Subscriptions[0].Kind == SubscriptionPeer {
		t.Errorf("LinkPeers changed the peer's snapshot")
	}
}
