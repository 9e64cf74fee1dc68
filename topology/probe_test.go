package topology

import (
	"strings"
	"testing"

	"github.com/replctl/replctl/config"
)

func TestDecodeProbe(t *testing.T) {
	t.Parallel()
	node := config.Node{Name: "pg2", DSN: "host=x password=s3cret"}
	doc := `{"server_time":"2026-11-27T01:32:31.114478+00:00","server_version_num":150018,"server_version":"15.18",
	"system_identifier":"7712658080426914185","checkpoint_timeline":1,"in_recovery":true,"current_lsn":null,"walfile":null,
	"receive_lsn":"0/3000100","replay_lsn":"0/3000000","replay_pause_state":"paused","last_xact_replay_timestamp":null,
	"wal_receiver":{"pid":1,"status":"streaming","sender_host":"localhost","sender_port":55432,"slot_name":"pg2","received_tli":2,
	  "conninfo":"user=postgres password=s3cret host=localhost"},
	"replication":null,
	"slots":[{"slot_name":"pg4","slot_type":"physical","temporary":false,"active":false,"active_pid":null,"restart_lsn":"0/3000000","wal_status":"reserved","safe_wal_size":null}],
	"settings":{"synchronous_standby_names":"ANY 1 (a, b)","primary_conninfo":"host=p password=s3cret",
	  "wal_receiver_timeout":"1min","wal_sender_timeout":"0","synchronous_commit":null}}`
	st := NodeStatus{Name: "pg2"}
	if err := decodeProbe([]byte(doc), node, &st); err != nil {
		t.Fatal(err)
	}
	if st.Name != "pg2" || st.SystemID != "7712658080426914185" || *st.Timeline != 2 || *st.CheckpointTimeline != 1 || !st.ReplayPaused() {
		t.Fatalf("%+v", st)
	}
	if *st.Slots[0].RetainedBytes != 0x100 {
		t.Fatalf("retained %d", *st.Slots[0].RetainedBytes)
	}
	if strings.Contains(*st.Settings.PrimaryConninfo, "s3cret") || strings.Contains(*st.WALReceiver.Conninfo, "s3cret") {
		t.Fatal("password leaked")
	}
	if *st.Settings.WALReceiverTimeoutMS != 60000 || *st.Settings.WALSenderTimeoutMS != 0 || st.Settings.SynchronousCommit != nil {
		t.Fatalf("settings %+v", st.Settings)
	}
	if ss := st.Settings.SyncStandbys; ss == nil || ss.Method != SyncAny || ss.Num != 1 {
		t.Fatalf("sync %+v", ss)
	}

	// A primary: the timeline comes from the WAL file, not the checkpoint.
	st = NodeStatus{}
	doc = `{"in_recovery":false,"current_lsn":"0/5000000","walfile":"000000030000000000000005","checkpoint_timeline":2,"settings":null}`
	if err := decodeProbe([]byte(doc), node, &st); err != nil || *st.Timeline != 3 {
		t.Fatalf("timeline %v, %v", st.Timeline, err)
	}
	if err := decodeProbe([]byte(`{"current_lsn":"junk"}`), node, &st); err == nil {
		t.Fatal("a bad LSN must be an error")
	}
}
