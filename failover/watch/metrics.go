package watch

import (
	"bytes"
	"io"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"

	"github.com/replctl/replctl/config"
)

// Input is one look at the cluster as the metrics report it.
type Input struct {
	Cluster string
	Nodes   []NodeInput
	// PrimaryKnown: exactly one reachable writable primary.
	PrimaryKnown bool
	// PrimaryUnreachable: the watcher cannot reach the primary but replicas
	// still stream from it ("unreachable, not dead").
	PrimaryUnreachable bool
	// FailoversTotal counts operations by kind (switchover, failover,
	// automatic) from the history.
	FailoversTotal map[string]float64
	// LastFailover is the end of the newest failover or switchover (zero:
	// none).
	LastFailover time.Time
	// Watch is nil outside a watcher (status -o prometheus): the watch
	// gauges are then omitted, except watch_paused which comes from etcd.
	Watch    *WatchInput
	Paused   bool
	LockHeld bool
	// EtcdUnread means etcd was not read (not configured, or it did not
	// answer): what comes from it (lock_held, watch_paused, failovers_total,
	// last_failover_timestamp_seconds) is then omitted, since a 0 would say
	// "lock free, not paused, no failover" when nobody knows. The zero value
	// reports them, so an Input built by hand needs no extra field.
	EtcdUnread bool
}

// WatchInput is what only a running watcher knows.
type WatchInput struct {
	// IsLeader: this watcher holds the election and may act.
	IsLeader bool
}

// NodeInput is one node.
type NodeInput struct {
	Name      string
	Up        bool
	IsPrimary bool
	// LagBytes is nil when unknown or the node is not a replica: the metric
	// is then omitted for this node.
	LagBytes *float64
	// ReplayDelaySeconds is nil when unknown or not a replica (omitted).
	ReplayDelaySeconds *float64
	// Timeline is nil when unknown, e.g. the node is down (omitted).
	Timeline *float64
}

// The metrics, with the labels each carries after cluster. Their names
// and labels are a contract with dashboards and alerts (README, Metrics).
var (
	descNodeUp = prometheus.NewDesc("replctl_node_up",
		"1 when the node answered replctl's SQL probe, 0 when it could not be reached.",
		[]string{"cluster", "node"}, nil)
	descNodeIsPrimary = prometheus.NewDesc("replctl_node_is_primary",
		"1 for the node replctl takes as the primary (the one writable member not marked fenced; in a split brain the one the cluster record names), else 0.",
		[]string{"cluster", "node"}, nil)
	descLagBytes = prometheus.NewDesc("replctl_replication_lag_bytes",
		"Bytes of WAL the replica has yet to replay: its primary's current LSN minus its replay LSN. Absent when unknown or not a replica.",
		[]string{"cluster", "node"}, nil)
	descReplayDelay = prometheus.NewDesc("replctl_replay_delay_seconds",
		"How far the replica's replay is behind in time: 0 once it has replayed everything its primary wrote (so an idle primary shows 0), else the age of its last replayed transaction on the primary's clock. Absent when unknown or not a replica.",
		[]string{"cluster", "node"}, nil)
	descTimeline = prometheus.NewDesc("replctl_timeline",
		"The node's PostgreSQL timeline ID; every promotion starts a new one. Absent when the node is down.",
		[]string{"cluster", "node"}, nil)
	descPrimaryKnown = prometheus.NewDesc("replctl_primary_known",
		"1 when the cluster has exactly one reachable, writable primary (the single_primary check passes), else 0: no primary, split brain, or a fenced node writable again.",
		[]string{"cluster"}, nil)
	descPrimaryUnreachable = prometheus.NewDesc("replctl_primary_unreachable",
		"1 when replctl cannot reach the primary but replicas still stream WAL from it: unreachable, not dead, so no failover. Else 0.",
		[]string{"cluster"}, nil)
	descFailoversTotal = prometheus.NewDesc("replctl_failovers_total",
		"Operations that promoted a node, by kind (switchover, failover, automatic), as the etcd history records them; the history keeps the newest history.keep operations.",
		[]string{"cluster", "kind"}, nil)
	descLastFailover = prometheus.NewDesc("replctl_last_failover_timestamp_seconds",
		"Unix time at which the newest switchover or failover in the history ended. Absent when there is none.",
		[]string{"cluster"}, nil)
	descWatchIsLeader = prometheus.NewDesc("replctl_watch_is_leader",
		"1 when this watcher holds the election and may act, 0 when it only observes.",
		[]string{"cluster"}, nil)
	descWatchPaused = prometheus.NewDesc("replctl_watch_paused",
		"1 while maintenance mode is on (replctl pause): watchers observe and report but never act.",
		[]string{"cluster"}, nil)
	descLockHeld = prometheus.NewDesc("replctl_lock_held",
		"1 while an operation holds the cluster's fencing lock in etcd, else 0.",
		[]string{"cluster"}, nil)
)

// Exporter is a prometheus.Collector reporting the latest Input given to
// Set. It is safe for concurrent use: the watcher calls Set every interval
// while /metrics is scraped. It lives in its own registry, never the global
// default one, so that nothing else (another package's collectors, Go
// runtime metrics) mixes into what status -o prometheus writes.
type Exporter struct {
	reg *prometheus.Registry
	mu  sync.Mutex
	in  Input
	set bool
}

// NewExporter returns an Exporter registered in a registry of its own. It
// reports nothing until the first Set: before the first look at the cluster
// there is nothing true to say.
func NewExporter() *Exporter {
	e := &Exporter{reg: prometheus.NewRegistry()}
	e.reg.MustRegister(e)
	return e
}

// Set replaces the reported state with in. The exporter keeps its own copy
// of everything in it, so the caller may reuse what it passed.
func (e *Exporter) Set(in Input) {
	in.Nodes = slices.Clone(in.Nodes)
	for i := range in.Nodes {
		n := &in.Nodes[i]
		n.LagBytes, n.ReplayDelaySeconds, n.Timeline = clone(n.LagBytes), clone(n.ReplayDelaySeconds), clone(n.Timeline)
	}
	in.FailoversTotal = maps.Clone(in.FailoversTotal)
	if in.Watch != nil {
		w := *in.Watch
		in.Watch = &w
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.in, e.set = in, true
}

// Describe implements prometheus.Collector.
func (e *Exporter) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descNodeUp, descNodeIsPrimary, descLagBytes, descReplayDelay, descTimeline,
		descPrimaryKnown, descPrimaryUnreachable, descFailoversTotal, descLastFailover,
		descWatchIsLeader, descWatchPaused, descLockHeld} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (e *Exporter) Collect(ch chan<- prometheus.Metric) {
	e.mu.Lock()
	in, set := e.in, e.set
	e.mu.Unlock()
	if !set {
		return
	}
	emit := func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		m, err := prometheus.NewConstMetric(d, t, v, append([]string{in.Cluster}, labels...)...)
		if err != nil {
			// A label value that is not UTF-8: the scrape reports it
			// rather than the process panicking.
			m = prometheus.NewInvalidMetric(d, err)
		}
		ch <- m
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) { emit(d, prometheus.GaugeValue, v, labels...) }
	for _, n := range in.Nodes {
		gauge(descNodeUp, b2f(n.Up), n.Name)
		gauge(descNodeIsPrimary, b2f(n.IsPrimary), n.Name)
		if n.LagBytes != nil {
			gauge(descLagBytes, *n.LagBytes, n.Name)
		}
		if n.ReplayDelaySeconds != nil {
			gauge(descReplayDelay, *n.ReplayDelaySeconds, n.Name)
		}
		if n.Timeline != nil {
			gauge(descTimeline, *n.Timeline, n.Name)
		}
	}
	gauge(descPrimaryKnown, b2f(in.PrimaryKnown))
	gauge(descPrimaryUnreachable, b2f(in.PrimaryUnreachable))
	if in.Watch != nil {
		gauge(descWatchIsLeader, b2f(in.Watch.IsLeader))
	}
	if in.EtcdUnread {
		return
	}
	for kind, v := range in.FailoversTotal {
		emit(descFailoversTotal, prometheus.CounterValue, v, kind)
	}
	if !in.LastFailover.IsZero() {
		gauge(descLastFailover, float64(in.LastFailover.UnixNano())/1e9)
	}
	gauge(descWatchPaused, b2f(in.Paused))
	gauge(descLockHeld, b2f(in.LockHeld))
}

func clone(p *float64) *float64 {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// WriteText writes in in the Prometheus text exposition format, through the
// same Collector as /metrics, for node_exporter's textfile collector.
// Families are sorted by name and samples by label values, so the output is
// stable. Nothing is written when gathering fails.
func WriteText(w io.Writer, in Input) error {
	e := NewExporter()
	e.Set(in)
	mfs, err := e.reg.Gather()
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
			return err
		}
	}
	_, err = w.Write(buf.Bytes())
	return err
}

// Handler serves /metrics from e's registry and /healthz: 200 "ok" while
// healthy says so, else 503 with its reason (passwords masked: a reason may
// quote a driver's error). A nil healthy is always healthy.
func Handler(e *Exporter, healthy func() (bool, string)) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if healthy != nil {
			if ok, reason := healthy(); !ok {
				if reason == "" {
					reason = "unhealthy"
				}
				http.Error(w, config.Scrub(reason), http.StatusServiceUnavailable)
				return
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux
}
