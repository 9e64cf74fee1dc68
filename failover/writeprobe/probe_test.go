package writeprobe

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/testenv"
)

func TestSummarize(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	for _, tc := range []struct {
		name     string
		acks     []ack
		longest  time.Duration
		from, to time.Time
	}{
		{name: "none"},
		{name: "one", acks: []ack{{1, at(0)}}},
		{name: "steady then a gap", acks: []ack{{1, at(0)}, {2, at(10)}, {5, at(350)}, {6, at(360)}},
			longest: 340 * time.Millisecond, from: at(10), to: at(350)},
		{name: "first of two equal gaps wins", acks: []ack{{1, at(0)}, {2, at(100)}, {3, at(200)}},
			longest: 100 * time.Millisecond, from: at(0), to: at(100)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := summarize(tc.acks, len(tc.acks)+2, 2, "boom")
			if r.Acked != len(tc.acks) || r.Attempts != len(tc.acks)+2 || r.Failed != 2 || r.LastError != "boom" {
				t.Errorf("counts %+v", r)
			}
			if r.LongestOutage != tc.longest || !r.OutageFrom.Equal(tc.from) || !r.OutageTo.Equal(tc.to) {
				t.Errorf("outage %s %s..%s, want %s %s..%s", r.LongestOutage, r.OutageFrom, r.OutageTo, tc.longest, tc.from, tc.to)
			}
		})
	}
}

func TestDSNFromConfig(t *testing.T) {
	t.Parallel()
	cfg := &config.Config{Nodes: []config.Node{
		{Name: "pg1", DSN: "host=10.0.0.1 port=5432 user=app dbname=shop password='s3cr et' sslmode=disable"},
		{Name: "pg2", DSN: "postgres://other@10.0.0.2:5433/ignored"},
		{Name: "pg3", DSN: "host=10.0.0.3 user=app dbname=shop"},
		{Name: "pg1-again", DSN: "host=10.0.0.1 port=5432"},
	}}
	dsn, err := DSNFromConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("%s: %v", config.RedactDSN(dsn), err)
	}
	got := []string{net.JoinHostPort(pc.Host, strconv.Itoa(int(pc.Port)))}
	for _, fb := range pc.Fallbacks {
		got = append(got, net.JoinHostPort(fb.Host, strconv.Itoa(int(fb.Port))))
	}
	if want := "10.0.0.1:5432 10.0.0.2:5433 10.0.0.3:5432"; strings.Join(got, " ") != want {
		t.Errorf("hosts %v, want %s", got, want)
	}
	if pc.User != "app" || pc.Database != "shop" || pc.Password != "s3cr et" || pc.TLSConfig != nil {
		t.Errorf("user %q db %q password set %v tls %v", pc.User, pc.Database, pc.Password != "", pc.TLSConfig != nil)
	}
	if pc.ValidateConnect == nil {
		t.Error("no target_session_attrs=read-write")
	}
	if red := config.RedactDSN(dsn); strings.Contains(red, "s3cr") {
		t.Errorf("redacted DSN shows the password: %s", red)
	}
	if _, err := DSNFromConfig(&config.Config{}); err == nil {
		t.Error("no nodes: no error")
	}
	if _, err := DSNFromConfig(&config.Config{Nodes: []config.Node{{Name: "x", DSN: "host=h port=notaport password=hunter22"}}}); err == nil || strings.Contains(err.Error(), "hunter22") {
		t.Errorf("bad dsn: %v", err)
	}
}

// The probe connects as securely as the nodes' DSNs say: a verify-full
// cluster does not get a probe that trusts any certificate.
func TestDSNFromConfigTLS(t *testing.T) {
	t.Parallel()
	cfg := &config.Config{Nodes: []config.Node{
		{Name: "pg1", DSN: "host=db1 user=app sslmode=verify-full sslrootcert=system sslsni='0' sslpassword=hunter22"},
		{Name: "pg2", DSN: "host=db2 user=app sslmode=verify-full"},
	}}
	dsn, err := DSNFromConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := `host=db1,db2 port=5432,5432 user=app sslmode=verify-full sslrootcert=system sslsni=0 sslpassword=hunter22 target_session_attrs=read-write`
	if dsn != want {
		t.Errorf("DSN\n got %s\nwant %s", dsn, want)
	}
	if red := config.RedactDSN(dsn); strings.Contains(red, "hunter22") {
		t.Errorf("redacted DSN shows the key's password: %s", red)
	}
}

func TestStartErrorHidesPassword(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().(*net.TCPAddr)
	l.Close() // nothing listens there now
	_, err = Start(t.Context(), Options{DSN: "host=127.0.0.1 port=" + strconv.Itoa(addr.Port) + " user=u password=hunter22 sslmode=disable", WriteTimeout: time.Second})
	if err == nil || strings.Contains(err.Error(), "hunter22") {
		t.Fatalf("error %v", err)
	}
}

// TestProbeRestartedPrimary writes through a restart of the primary: the
// outage is seen, nothing acknowledged is lost, and a deleted row is.
func TestProbeRestartedPrimary(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs PostgreSQL")
	}
	t.Parallel()
	ctx := t.Context()
	c := testenv.Start(t, testenv.Options{Replicas: 1, NoEtcd: true})
	cfg, err := config.Load(c.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	dsn, err := DSNFromConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Start(ctx, Options{DSN: dsn, Table: "public.probe"})
	if err != nil {
		t.Fatal(err)
	}
	waitAcked(t, p, 10)
	if err := c.StopNode(ctx, "pg1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if err := c.StartNode(ctx, "pg1"); err != nil {
		t.Fatal(err)
	}
	n := len(p.Acked())
	waitAcked(t, p, n+10)
	r := p.Stop()
	t.Logf("report %+v", r)
	if r.Failed == 0 || r.Acked != len(p.Acked()) || r.Attempts < r.Acked+r.Failed || r.LongestOutage < 100*time.Millisecond || !r.OutageTo.After(r.OutageFrom) {
		t.Errorf("report %+v", r)
	}
	if again := p.Stop(); again != r {
		t.Errorf("second Stop %+v", again)
	}
	missing, err := p.Verify(ctx)
	if err != nil || len(missing) != 0 {
		t.Fatalf("missing %v, %v", missing, err)
	}
	// A second probe continues the numbering in the same table.
	p2, err := Start(ctx, Options{DSN: dsn, Table: "public.probe"})
	if err != nil {
		t.Fatal(err)
	}
	waitAcked(t, p2, 3)
	p2.Stop()
	if first, last := p2.Acked()[0], p.Acked()[len(p.Acked())-1]; first <= last {
		t.Errorf("second probe started at %d, first ended at %d", first, last)
	}
	// Verify notices a lost acknowledged write.
	lost := p.Acked()[5]
	if err := c.Exec(ctx, "pg1", "DELETE FROM public.probe WHERE id = $1", lost); err != nil {
		t.Fatal(err)
	}
	missing, err = p.Verify(ctx)
	if err != nil || len(missing) != 1 || missing[0] != lost {
		t.Fatalf("missing %v, %v; want [%d]", missing, err, lost)
	}
}

func waitAcked(t *testing.T, p *Probe, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for len(p.Acked()) < n {
		select {
		case <-ctx.Done():
			t.Fatalf("only %d writes acknowledged, want %d", len(p.Acked()), n)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
