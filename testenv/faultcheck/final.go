package faultcheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// finalWriteTimeout bounds the write that tells whether a node out of
// recovery accepts writes at the end. The end state is static, so a
// generous bound costs nothing on a healthy primary (and two seconds on a
// fenced one) and keeps a loaded CI machine from failing a healthy case.
const finalWriteTimeout = 2 * time.Second

// etcdTimeout bounds the etcd reads of Final.
const etcdTimeout = 5 * time.Second

// nodeState is what one node says about itself at the end.
type nodeState struct {
	Node
	err        error
	inRecovery bool
	conninfo   string
	slotName   string
	// WAL receiver (pg_stat_wal_receiver); nil when it is not running.
	recvStatus *string
	recvTLI    *int32
	senderHost *string
	senderPort *int32
	// Out of recovery only.
	writeErr error
	timeline uint32
	slots    []string // physical slots
	slotsErr error
}

func (n *nodeState) writable() bool { return n.err == nil && !n.inRecovery && n.writeErr == nil }

// probeAll asks every node concurrently what it is; with writeTest, every
// node out of recovery also gets a test write.
func probeAll(ctx context.Context, t Target, writeTest bool) ([]*nodeState, error) {
	out := make([]*nodeState, len(t.Nodes))
	var wg sync.WaitGroup
	for i, n := range t.Nodes {
		st := &nodeState{Node: n}
		out[i] = st
		cfg, err := connConfig(n.DSN)
		if err != nil {
			st.err = err
			continue
		}
		wg.Go(func() { probeNode(ctx, cfg, st, writeTest) })
	}
	wg.Wait()
	return out, ctx.Err()
}

func probeNode(ctx context.Context, cfg *pgx.ConnConfig, st *nodeState, writeTest bool) {
	st.err = queryNode(ctx, cfg, queryTimeout, func(ctx context.Context, c *pgx.Conn) error {
		// pg_stat_wal_receiver has at most one row; the outer join gives
		// NULLs when the receiver is not running.
		return c.QueryRow(ctx, `SELECT pg_is_in_recovery(), current_setting('primary_conninfo'), current_setting('primary_slot_name'),
			r.status, r.received_tli, r.sender_host, r.sender_port
			FROM (SELECT 1) one LEFT JOIN pg_stat_wal_receiver r ON true`).
			Scan(&st.inRecovery, &st.conninfo, &st.slotName, &st.recvStatus, &st.recvTLI, &st.senderHost, &st.senderPort)
	})
	if st.err != nil || st.inRecovery {
		return
	}
	st.slotsErr = queryNode(ctx, cfg, queryTimeout, func(ctx context.Context, c *pgx.Conn) error {
		var walfile string
		err := c.QueryRow(ctx, `SELECT pg_walfile_name(pg_current_wal_lsn()),
			ARRAY(SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY 1)`).Scan(&walfile, &st.slots)
		if err != nil {
			return err
		}
		// The first 8 hex digits of a WAL file name are its timeline: read
		// from the WAL position, it is current at once after a promotion,
		// unlike pg_control_checkpoint() before the next checkpoint.
		tli, err := strconv.ParseUint(walfile[:min(8, len(walfile))], 16, 32)
		st.timeline = uint32(tli)
		return err
	})
	if writeTest {
		st.writeErr = testWrite(ctx, cfg, st.Node)
	}
}

// testWrite tries one probe write, over a session of its own with the
// notice handler, so that a commit let through by a cancelled synchronous
// wait does not count.
func testWrite(ctx context.Context, cfg *pgx.ConnConfig, n Node) error {
	s := newSession(n, cfg)
	defer s.close()
	if err := s.connect(ctx, queryTimeout); err != nil {
		return err
	}
	return s.write(ctx, finalWriteTimeout, probeSQL, n.Name)
}

// endpoint is a host and port a node is reached at.
type endpoint struct {
	host string
	port uint16
}

func (e endpoint) String() string { return net.JoinHostPort(e.host, strconv.Itoa(int(e.port))) }

// endpoints lists the addresses a connection string names (libpq fallbacks
// included).
func endpoints(conninfo string) ([]endpoint, error) {
	pc, err := pgconn.ParseConfig(conninfo)
	if err != nil {
		return nil, err
	}
	eps := []endpoint{{pc.Host, pc.Port}}
	for _, fb := range pc.Fallbacks {
		eps = append(eps, endpoint{fb.Host, fb.Port})
	}
	return eps, nil
}

// sameHost compares host names as loopback-aware strings: a replica's
// sender_host is the host as written in its primary_conninfo, which may say
// localhost where replctl.yaml says 127.0.0.1.
func sameHost(a, b string) bool {
	if strings.EqualFold(a, b) {
		return true
	}
	norm := func(h string) net.IP {
		if strings.EqualFold(h, "localhost") {
			return net.IPv4(127, 0, 0, 1)
		}
		ip := net.ParseIP(h)
		if ip != nil && ip.IsLoopback() {
			return net.IPv4(127, 0, 0, 1)
		}
		return ip
	}
	ia, ib := norm(a), norm(b)
	return ia != nil && ib != nil && ia.Equal(ib)
}

// nodeAt returns the configured node reached at e, or nil.
func nodeAt(nodes []*nodeState, e endpoint) *nodeState {
	for _, n := range nodes {
		eps, err := endpoints(n.DSN)
		if err != nil {
			continue
		}
		for _, ne := range eps {
			if ne.port == e.port && sameHost(ne.host, e.host) {
				return n
			}
		}
	}
	return nil
}

// primaryOf returns the one writable node, or a sentence saying why there
// is none.
func primaryOf(nodes []*nodeState) (*nodeState, string) {
	var writable []string
	var p *nodeState
	var refused []string
	answered := 0
	for _, n := range nodes {
		switch {
		case n.err != nil:
		case n.writable():
			writable = append(writable, n.Name)
			p = n
		case !n.inRecovery:
			refused = append(refused, fmt.Sprintf("%s is out of recovery but did not accept a write (%s)", n.Name, short(n.writeErr)))
		}
		if n.err == nil {
			answered++
		}
	}
	switch {
	case answered == 0:
		var why []string
		for _, n := range nodes {
			why = append(why, fmt.Sprintf("%s: %s", n.Name, short(n.err)))
		}
		return nil, "no node answered: " + strings.Join(why, "; ")
	case len(writable) == 0:
		msg := "no writable primary"
		if len(refused) > 0 {
			msg += ": " + strings.Join(refused, "; ")
		}
		return nil, msg
	case len(writable) > 1:
		return nil, fmt.Sprintf("%d writable primaries (split brain): %s", len(writable), strings.Join(writable, ", "))
	}
	return p, ""
}

// Final checks the cluster's end state and returns every problem as a
// sentence; none means healthy:
//   - exactly one node is out of recovery and accepts a write (with session
//     defaults, acknowledged within a short timeout);
//   - every other reachable node is in recovery, its WAL receiver streams
//     from that primary (sender host and port) on the primary's timeline;
//   - every replica's primary_conninfo names the primary (a configured
//     node) and its primary_slot_name a physical slot that exists there;
//   - the primary has no orphaned physical slot (one that no replica's
//     primary_slot_name names);
//   - with etcd configured: the lock is free and the newest operation record
//     is not "running".
//
// Nodes that do not answer are not complaints in themselves (after an
// emergency failover the old primary may rightly stay down); the caller
// decides which nodes must be up. A slot named after such a node is not
// called orphaned, since replctl names slots after nodes and a down node's
// slot is what lets it rejoin. Lost writes are Lost's business, since an
// emergency failover of an asynchronous cluster may lose some legitimately.
func (r *Report) Final(ctx context.Context, t Target) []string {
	nodes, err := probeAll(ctx, t, true)
	if err != nil {
		return []string{fmt.Sprintf("probe: %v", err)}
	}
	var out []string
	p, why := primaryOf(nodes)
	if p == nil {
		out = append(out, why)
	} else {
		out = append(out, replicaProblems(nodes, p)...)
	}
	if len(t.EtcdEndpoints) > 0 {
		out = append(out, etcdProblems(ctx, t)...)
	}
	return out
}

// replicaProblems checks every other node against the primary p.
func replicaProblems(nodes []*nodeState, p *nodeState) []string {
	var out []string
	if p.slotsErr != nil {
		out = append(out, fmt.Sprintf("%s (primary): cannot read its timeline and slots: %s", p.Name, short(p.slotsErr)))
	}
	pEps, _ := endpoints(p.DSN)
	fromPrimary := func(host string, port int32) bool {
		for _, e := range pEps {
			if int32(e.port) == port && sameHost(e.host, host) {
				return true
			}
		}
		return false
	}
	named := map[string]bool{}
	for _, n := range nodes {
		if n == p || n.err != nil {
			continue
		}
		if !n.inRecovery {
			out = append(out, fmt.Sprintf("%s: out of recovery but not the primary %s (%s)", n.Name, p.Name, short(n.writeErr)))
			continue
		}
		named[n.slotName] = true
		switch {
		case n.recvStatus == nil:
			out = append(out, fmt.Sprintf("%s: no WAL receiver running, want streaming from the primary %s", n.Name, p.Name))
		case *n.recvStatus != "streaming":
			out = append(out, fmt.Sprintf("%s: WAL receiver is %s, want streaming from the primary %s", n.Name, *n.recvStatus, p.Name))
		case n.senderHost == nil || n.senderPort == nil:
			out = append(out, fmt.Sprintf("%s: cannot read its WAL receiver's sender (needs superuser or pg_read_all_stats)", n.Name))
		case !fromPrimary(*n.senderHost, *n.senderPort):
			from := endpoint{*n.senderHost, uint16(*n.senderPort)}
			who := "no configured node"
			if o := nodeAt(nodes, from); o != nil {
				who = o.Name
			}
			out = append(out, fmt.Sprintf("%s: streams from %s (%s), not from the primary %s", n.Name, from, who, p.Name))
		}
		if n.recvTLI != nil && p.slotsErr == nil && uint32(*n.recvTLI) != p.timeline {
			out = append(out, fmt.Sprintf("%s: receives timeline %d, the primary %s is on timeline %d", n.Name, *n.recvTLI, p.Name, p.timeline))
		}
		out = append(out, conninfoProblems(nodes, n, p)...)
		switch {
		case n.slotName == "":
			out = append(out, fmt.Sprintf("%s: primary_slot_name is empty: it holds no slot on the primary %s", n.Name, p.Name))
		case p.slotsErr == nil && !slices.Contains(p.slots, n.slotName):
			out = append(out, fmt.Sprintf("%s: primary_slot_name %q names no physical slot on the primary %s (slots: %s)",
				n.Name, n.slotName, p.Name, list(p.slots)))
		}
	}
	for _, n := range nodes {
		if n.err != nil {
			named[n.Name] = true
		}
	}
	for _, s := range p.slots {
		if !named[s] {
			out = append(out, fmt.Sprintf("%s (primary): orphaned physical slot %q: no replica's primary_slot_name names it", p.Name, s))
		}
	}
	return out
}

// conninfoProblems checks that replica n's primary_conninfo names the
// primary. Only host and port are shown: the rest may hold a password.
func conninfoProblems(nodes []*nodeState, n, p *nodeState) []string {
	if strings.TrimSpace(n.conninfo) == "" {
		return []string{fmt.Sprintf("%s: primary_conninfo is empty", n.Name)}
	}
	eps, err := endpoints(n.conninfo)
	if err != nil {
		return []string{fmt.Sprintf("%s: primary_conninfo does not parse", n.Name)}
	}
	o := nodeAt(nodes, eps[0])
	switch {
	case o == nil:
		return []string{fmt.Sprintf("%s: primary_conninfo names %s, which is no configured node", n.Name, eps[0])}
	case o != p:
		return []string{fmt.Sprintf("%s: primary_conninfo names %s (%s), not the primary %s", n.Name, o.Name, eps[0], p.Name)}
	}
	return nil
}

// Operation is the part of a replctl operation record (history) the checker
// reads.
type Operation struct {
	Key     string
	ID      string
	Kind    string
	Outcome string
	Steps   []OperationStep
}

// OperationStep is one step of an operation record.
type OperationStep struct {
	ID, Description, Outcome string
}

type rawOperation struct {
	ID      json.RawMessage `json:"id"`
	Kind    string          `json:"kind"`
	Outcome string          `json:"outcome"`
	Steps   []struct {
		ID          string `json:"id"`
		Description string `json:"description"`
		Outcome     string `json:"outcome"`
	} `json:"steps"`
}

// keyRoot is <prefix>/<cluster>, under which replctl keeps a cluster's keys.
func keyRoot(t Target) string {
	p := strings.TrimSuffix(t.Prefix, "/")
	if p == "" {
		p = "/replctl"
	}
	return p + "/" + t.Cluster
}

func etcdClient(t Target) (*clientv3.Client, error) {
	if t.Cluster == "" {
		return nil, errors.New("Target.Cluster is empty")
	}
	return clientv3.New(clientv3.Config{Endpoints: t.EtcdEndpoints, DialTimeout: etcdTimeout})
}

// NewestOperation reads the newest operation record in etcd (record keys
// are zero-padded numbers, so key order is creation order); nil when there
// is none.
func NewestOperation(ctx context.Context, t Target) (*Operation, error) {
	cli, err := etcdClient(t)
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	defer cli.Close()
	return newestOperation(ctx, cli, t)
}

func newestOperation(ctx context.Context, cli *clientv3.Client, t Target) (*Operation, error) {
	ctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	resp, err := cli.Get(ctx, keyRoot(t)+"/history/", clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(1))
	if err != nil {
		return nil, fmt.Errorf("etcd: read history: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	kv := resp.Kvs[0]
	var raw rawOperation
	if err := json.Unmarshal(kv.Value, &raw); err != nil {
		return nil, fmt.Errorf("etcd: %s does not decode: %w", kv.Key, err)
	}
	op := &Operation{Key: string(kv.Key), ID: strings.Trim(string(raw.ID), `"`), Kind: raw.Kind, Outcome: raw.Outcome}
	for _, s := range raw.Steps {
		op.Steps = append(op.Steps, OperationStep{ID: s.ID, Description: s.Description, Outcome: s.Outcome})
	}
	return op, nil
}

// etcdProblems checks that the lock is free and the newest record finished.
func etcdProblems(ctx context.Context, t Target) []string {
	cli, err := etcdClient(t)
	if err != nil {
		return []string{fmt.Sprintf("etcd: %v", err)}
	}
	defer cli.Close()
	var out []string
	lctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	// The trailing slash: the contender keys are <root>/lock/<lease>, and
	// a bare prefix would also match a key such as <root>/locked.
	resp, err := cli.Get(lctx, keyRoot(t)+"/lock/", clientv3.WithPrefix())
	switch {
	case err != nil:
		out = append(out, fmt.Sprintf("etcd: read the lock: %v", err))
	case len(resp.Kvs) > 0:
		for _, kv := range resp.Kvs {
			out = append(out, fmt.Sprintf("etcd: the lock is held: %s = %s", kv.Key, truncate(string(kv.Value), 200)))
		}
	}
	op, err := newestOperation(ctx, cli, t)
	switch {
	case err != nil:
		out = append(out, err.Error())
	case op != nil && op.Outcome == "running":
		last := "no step begun"
		if n := len(op.Steps); n > 0 {
			s := op.Steps[n-1]
			last = fmt.Sprintf("last step %s (%s) %s", s.ID, s.Description, s.Outcome)
		}
		out = append(out, fmt.Sprintf("etcd: the newest operation %s (%s) is still recorded as running; %s", op.ID, op.Kind, last))
	}
	return out
}

// Lost returns the acknowledged writer ids missing from faultcheck_writes on
// the final primary, in increasing order. It is an error when there is not
// exactly one writable primary to ask. A planned operation must lose none;
// an emergency failover of an asynchronous cluster may lose the tail.
func (r *Report) Lost(ctx context.Context, t Target) ([]int64, error) {
	// Only when more than one node is out of recovery does it take a test
	// write (which may wait out its timeout on a fenced node) to tell which
	// one is the primary.
	nodes, err := probeAll(ctx, t, false)
	if err != nil {
		return nil, fmt.Errorf("faultcheck: %w", err)
	}
	var out []*nodeState
	for _, n := range nodes {
		if n.err == nil && !n.inRecovery {
			out = append(out, n)
		}
	}
	if len(out) > 1 {
		var wg sync.WaitGroup
		for _, n := range out {
			cfg, err := connConfig(n.DSN)
			if err != nil {
				return nil, err
			}
			wg.Go(func() { n.writeErr = testWrite(ctx, cfg, n.Node) })
		}
		wg.Wait()
	}
	p, why := primaryOf(nodes)
	if p == nil {
		return nil, fmt.Errorf("faultcheck: lost writes: %s", why)
	}
	ids := make([]int64, 0, len(r.Acked))
	for _, w := range r.Acked {
		ids = append(ids, w.ID)
	}
	cfg, err := connConfig(p.DSN)
	if err != nil {
		return nil, err
	}
	var lost []int64
	err = queryNode(ctx, cfg, queryTimeout, func(ctx context.Context, c *pgx.Conn) error {
		return c.QueryRow(ctx, `SELECT coalesce(array_agg(a.id ORDER BY a.id), '{}') FROM unnest($1::bigint[]) a(id)
			WHERE NOT EXISTS (SELECT 1 FROM `+WritesTable+` w WHERE w.id = a.id)`, ids).Scan(&lost)
	})
	if err != nil {
		return nil, fmt.Errorf("faultcheck: lost writes on %s: %w", p.Name, err)
	}
	return lost, nil
}

func short(err error) string {
	if err == nil {
		return "no error"
	}
	return truncate(err.Error(), 200)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func list(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
