package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const validYAML = `cluster: demo
etcd:
  endpoints: ["127.0.0.1:2379"]
nodes:
  - name: pg1
    dsn: "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    zone: a
  - name: pg2
    dsn: "postgres://postgres@127.0.0.1:5433/postgres"
    priority: 0
    commands:
      stop: "pg_ctl stop"
`

func TestParseValid(t *testing.T) {
	c, err := Parse("replctl.yaml", []byte(validYAML))
	if err != nil {
		t.Fatal(err)
	}
	if c.Cluster != "demo" || len(c.Nodes) != 2 {
		t.Fatalf("got %+v", c)
	}
	if c.Etcd.Prefix != DefaultPrefix || c.Etcd.DialTimeout != DefaultDialTimeout || c.Lock.TTL != DefaultLockTTL || c.History.Keep != 500 {
		t.Errorf("defaults not applied: %+v %+v %+v", c.Etcd, c.Lock, c.History)
	}
	if c.Nodes[0].Prio() != 100 || c.Nodes[1].Prio() != 0 {
		t.Errorf("priorities: %d %d", c.Nodes[0].Prio(), c.Nodes[1].Prio())
	}
	if c.Thresholds.LagWarning != 16<<20 || c.Thresholds.LagCritical != 256<<20 || c.Thresholds.DelayWarning != 30*time.Second ||
		c.Thresholds.DelayCritical != 5*time.Minute || c.Thresholds.SlotRetainedWarning != 1<<30 || *c.Thresholds.MinReplicas != 2 {
		t.Errorf("threshold defaults: %+v", c.Thresholds)
	}
	if c.Nodes[1].Commands.Stop != "pg_ctl stop" {
		t.Errorf("commands: %+v", c.Nodes[1].Commands)
	}
}

func TestParseOptionalSections(t *testing.T) {
	y := `cluster: c1
nodes:
  - name: a
    dsn: "host=10.0.0.1"
thresholds:
  lag_warning: 1MB
  lag_critical: 2GB
  delay_warning: 10s
  delay_critical: 1m
  slot_retained_warning: 512kB
  min_replicas: 0
lock: {ttl: 20s}
history: {keep: 10}
`
	c, err := Parse("f.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if c.Etcd.Configured() {
		t.Error("etcd should be optional")
	}
	if c.Thresholds.LagWarning != 1<<20 || c.Thresholds.LagCritical != 2<<30 || c.Thresholds.SlotRetainedWarning != 512<<10 || *c.Thresholds.MinReplicas != 0 {
		t.Errorf("thresholds: %+v", c.Thresholds)
	}
	if c.Lock.TTL != 20*time.Second || c.History.Keep != 10 {
		t.Errorf("lock/history: %+v %+v", c.Lock, c.History)
	}
}

// Every error names the file, the key and what to do.
func TestParseErrors(t *testing.T) {
	cases := []struct {
		name string
		yaml string
		want []string
	}{
		{"unknown top-level key", "cluster: x\nnodez: []\n", []string{"f.yaml:2", "nodez: unknown key", `did you mean "nodes"`}},
		{"unknown node key", "cluster: x\nnodes:\n  - name: pg1\n    dsnn: host=a\n", []string{"f.yaml:4", "nodes[0] (pg1).dsnn: unknown key", "known keys here are"}},
		{"unknown etcd key", "cluster: x\netcd:\n  endpoint: [a]\nnodes: [{name: a, dsn: host=a}]\n", []string{"f.yaml:3", "etcd.endpoint: unknown key", `"endpoints"`}},
		{"unknown command", "cluster: x\nnodes:\n  - name: a\n    dsn: host=a\n    commands: {stpo: x}\n", []string{"nodes[0] (a).commands.stpo: unknown key"}},
		{"no nodes", "cluster: x\n", []string{"f.yaml: nodes: no nodes configured", "list at least one node"}},
		{"empty nodes", "cluster: x\nnodes: []\n", []string{"nodes: no nodes configured"}},
		{"missing cluster", "nodes: [{name: a, dsn: host=a}]\n", []string{"cluster: missing"}},
		{"duplicate names", "cluster: x\nnodes:\n  - {name: a, dsn: host=a}\n  - {name: a, dsn: host=b}\n", []string{"nodes[1] (a).name: duplicate node name \"a\" (also nodes[0])", "unique"}},
		{"missing name", "cluster: x\nnodes:\n  - {dsn: host=a}\n", []string{"nodes[0].name: missing"}},
		{"empty dsn", "cluster: x\nnodes:\n  - {name: a, dsn: \"\"}\n", []string{"nodes[0] (a).dsn: empty", "libpq connection string"}},
		{"unparsable dsn", "cluster: x\nnodes:\n  - {name: a, dsn: \"host=a port=notaport password=hunter22\"}\n", []string{"nodes[0] (a).dsn: cannot parse", "keyword=value"}},
		{"bad url dsn", "cluster: x\nnodes:\n  - {name: a, dsn: \"postgres://u:s3cretpw@h:99999999/db\"}\n", []string{"nodes[0] (a).dsn: cannot parse"}},
		{"negative priority", "cluster: x\nnodes:\n  - {name: a, dsn: host=a, priority: -1}\n", []string{"nodes[0] (a).priority: -1 is negative"}},
		{"duration without unit", "cluster: x\nnodes: [{name: a, dsn: host=a}]\nlock: {ttl: 10}\n", []string{"f.yaml", "lock.ttl", "has no unit"}},
		{"bad duration", "cluster: x\nnodes: [{name: a, dsn: host=a}]\nthresholds: {delay_warning: soon}\n", []string{"delay_warning", "invalid duration \"soon\""}},
		{"bad size", "cluster: x\nnodes: [{name: a, dsn: host=a}]\nthresholds: {lag_warning: lots}\n", []string{"lag_warning", "invalid size \"lots\""}},
		{"lock ttl too short", "cluster: x\nnodes: [{name: a, dsn: host=a}]\nlock: {ttl: 1s}\n", []string{"lock.ttl: 1s is too short"}},
		{"critical below warning", "cluster: x\nnodes: [{name: a, dsn: host=a}]\nthresholds: {lag_warning: 1GB}\n", []string{"thresholds.lag_critical", "below lag_warning"}},
		{"bad yaml", "cluster: [x\n", []string{"f.yaml", "not valid YAML"}},
		{"empty file", "", []string{"f.yaml", "empty"}},
		{"nodes not a list", "cluster: x\nnodes: {name: a}\n", []string{"nodes: expected a list"}},
		{"credentials without endpoints", "cluster: x\nnodes: [{name: a, dsn: host=a}]\netcd: {username: u}\n", []string{"etcd.endpoints", "without endpoints"}},
		{"relative prefix", "cluster: x\nnodes: [{name: a, dsn: host=a}]\netcd: {endpoints: [a:1], prefix: replctl}\n", []string{"etcd.prefix", "does not start with /"}},
		{"cluster with slash", "cluster: a/b\nnodes: [{name: a, dsn: host=a}]\n", []string{"cluster:", "slash"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("f.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatal("expected an error")
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("want *config.Error, got %T: %v", err, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			for _, secret := range []string{"hunter22", "s3cretpw"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error leaks a password: %q", err)
				}
			}
		})
	}
}

func TestFindOrder(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	t.Setenv("HOME", dir)
	t.Setenv(EnvConfig, "")
	if _, err := Find(""); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Fatalf("want a hint naming --config, got %v", err)
	}
	home := filepath.Join(dir, ".config", "replctl")
	must(t, os.MkdirAll(home, 0o755))
	must(t, os.WriteFile(filepath.Join(home, "replctl.yaml"), []byte(validYAML), 0o644))
	if p, _ := Find(""); p != filepath.Join(home, "replctl.yaml") {
		t.Errorf("home config not found: %q", p)
	}
	must(t, os.WriteFile("replctl.yaml", []byte(validYAML), 0o644))
	if p, _ := Find(""); p != "replctl.yaml" {
		t.Errorf("./replctl.yaml should win over home: %q", p)
	}
	t.Setenv(EnvConfig, "/env.yaml")
	if p, _ := Find(""); p != "/env.yaml" {
		t.Errorf("$REPLCTL_CONFIG should win: %q", p)
	}
	if p, _ := Find("/flag.yaml"); p != "/flag.yaml" {
		t.Errorf("--config should win: %q", p)
	}
	_, err := Load("/does/not/exist.yaml")
	if err == nil || !strings.Contains(err.Error(), "/does/not/exist.yaml: file does not exist") {
		t.Errorf("missing file: %v", err)
	}
}

func TestEnvOverrides(t *testing.T) {
	t.Setenv("REPLCTL_CLUSTER", "fromenv")
	t.Setenv("REPLCTL_ETCD_ENDPOINTS", "10.0.0.1:2379,10.0.0.2:2379")
	t.Setenv("REPLCTL_LOCK_TTL", "30s")
	t.Setenv("REPLCTL_THRESHOLDS_LAG_WARNING", "2MB")
	c, err := Parse("f.yaml", []byte("cluster: x\nnodes: [{name: a, dsn: host=a}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Cluster != "fromenv" || len(c.Etcd.Endpoints) != 2 || c.Lock.TTL != 30*time.Second || c.Thresholds.LagWarning != 2<<20 {
		t.Errorf("env not applied: %q %v %v %v", c.Cluster, c.Etcd.Endpoints, c.Lock.TTL, c.Thresholds.LagWarning)
	}
	t.Setenv("REPLCTL_LOCK_TTL", "ten")
	if _, err := Parse("f.yaml", []byte("cluster: x\nnodes: [{name: a, dsn: host=a}]\n")); err == nil || !strings.Contains(err.Error(), "ttl") {
		t.Errorf("bad env value should name the key: %v", err)
	}
}

func TestRedactDSN(t *testing.T) {
	cases := map[string]string{
		"host=a password=secret123 user=u":                     "host=a user=u",
		"host=a password='se cret' user=u":                     "host=a user=u",
		"postgres://u:secret123@h:5432/db?sslmode=disable":     "postgres://u@h:5432/db?sslmode=disable",
		"postgres://u@h/db?password=secret123&sslmode=require": "postgres://u@h/db?sslmode=require",
		"host=a user=u": "host=a user=u",
	}
	for in, want := range cases {
		if got := RedactDSN(in); got != want {
			t.Errorf("RedactDSN(%q) = %q, want %q", in, got, want)
		}
		if strings.Contains(RedactDSN(in), "secret") {
			t.Errorf("leak in %q", RedactDSN(in))
		}
	}
	msg := Scrub(`failed to connect to "user=u password=secret123": bad`, "host=a password=secret123")
	if strings.Contains(msg, "secret123") {
		t.Errorf("Scrub leaked: %q", msg)
	}
}

func TestSecretNeverPrints(t *testing.T) {
	s := Secret("hunter22")
	b, _ := s.MarshalText()
	if s.String() == "hunter22" || string(b) == "hunter22" {
		t.Fatal("secret printed")
	}
}

func TestSize(t *testing.T) {
	for in, want := range map[string]Size{"16MB": 16 << 20, "1GB": 1 << 30, "512kB": 512 << 10, "0": 0, "4096": 4096, "1.5GB": 3 << 29, "2 MiB": 2 << 20} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "-1MB", "MB"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) should fail", bad)
		}
	}
	for b, want := range map[uint64]string{0: "0 B", 8192: "8192 B", 16 << 20: "16 MB", 1536 << 20: "1.5 GB"} {
		if got := HumanBytes(b); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", b, got, want)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
