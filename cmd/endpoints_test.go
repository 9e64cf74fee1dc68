package cmd

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/topology"
)

func TestEndpoints(t *testing.T) {
	t.Parallel()
	cfg := fixtureConfig(t, true)
	run := func(scen string, o EndpointsOptions) (string, error) {
		p, rec := scenario(scen)
		var out bytes.Buffer
		o.IO, o.Timeout, o.Prober, o.Record = &IOStreams{Out: &out}, time.Second, p, rec
		o.Config = func() (*config.Config, error) { return cfg, nil }
		if o.Role == "" {
			o.Role = "replica"
		}
		err := runEndpoints(t.Context(), &o)
		if strings.Contains(out.String(), fixtureSecret) {
			t.Fatalf("password in output: %s", out.String())
		}
		return out.String(), err
	}
	out, err := run("healthy", EndpointsOptions{Output: "libpq", MaxLag: 16 << 20})
	want := "host=127.0.0.1,127.0.0.1,127.0.0.1 port=5433,5435,5434 user=replctl dbname=postgres target_session_attrs=standby\n"
	if err != nil || out != want {
		t.Fatalf("libpq: %v\n%q\nwant\n%q", err, out, want)
	}
	// pg4 is 96 bytes behind: a tight bound leaves it out.
	out, err = run("healthy", EndpointsOptions{Output: "libpq", MaxLag: 10, FallbackPrimary: true})
	want = "host=127.0.0.1,127.0.0.1,127.0.0.1 port=5433,5434,5432 user=replctl dbname=postgres target_session_attrs=prefer-standby\n"
	if err != nil || out != want {
		t.Fatalf("fallback: %v\n%q", err, out)
	}
	out, err = run("healthy", EndpointsOptions{Output: "libpq", Role: "primary"})
	if err != nil || !strings.HasPrefix(out, "host=127.0.0.1 port=5432 ") || !strings.Contains(out, "read-write") {
		t.Fatalf("primary: %v %q", err, out)
	}
	// Paused pg2 is 20 MB behind, pg4 (not streaming) 19 MB.
	out, err = run("degraded", EndpointsOptions{Output: "table", MaxLag: 20<<20 - 1})
	if err != nil || !strings.Contains(out, "pg4") || strings.Contains(out, "pg2") || strings.Contains(out, "other") {
		t.Fatalf("degraded: %v\n%s", err, out)
	}
	if _, err := run("split", EndpointsOptions{Output: "table", Role: "primary"}); exitCode(err) != ExitFailed {
		t.Fatalf("split brain must not hand out a writer: %v", err)
	}
	if _, err := run("degraded", EndpointsOptions{Output: "json", MaxLag: 100}); exitCode(err) != ExitFailed {
		t.Fatalf("no replica within bound: %v", err)
	}
}

func TestEndpointsUnknownLagLeftOut(t *testing.T) {
	t.Parallel()
	cfg := fixtureConfig(t, false)
	s := &topology.Snapshot{Primary: "pg1", Nodes: []*topology.Node{
		{NodeStatus: topology.NodeStatus{Name: "pg1", Reachable: true}, Role: topology.RolePrimary},
		{NodeStatus: topology.NodeStatus{Name: "pg2", Reachable: true, InRecovery: true}, Role: topology.RoleReplica},
	}}
	if r, err := selectEndpoints(cfg, s, "replica", 1<<30, false); err == nil {
		t.Fatalf("a replica of unknown lag was handed out: %+v", r)
	}
}

func TestLibpqHelpers(t *testing.T) {
	t.Parallel()
	got := parseKeywordDSN(`host=h port = 5432 application_name='my app' password='a\'b' options='-c x=1'`)
	if len(got) != 5 || got[2][1] != "my app" || got[3][1] != "a'b" || got[4][1] != "-c x=1" {
		t.Fatalf("%q", got)
	}
	if libpqQuote("a b") != `'a b'` || libpqQuote("plain") != "plain" || libpqQuote("") != "''" || libpqQuote(`x'\`) != `'x\'\\'` {
		t.Fatal("quote")
	}
}
