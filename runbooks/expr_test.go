package runbooks

import (
	"strings"
	"testing"
	"time"
)

func TestParseAssertion(t *testing.T) {
	t.Parallel()
	nodes := []string{"pg1", "pg2"}
	for _, tc := range []struct {
		in     string
		metric string
		op     Op
		typ    MetricType
		n      int64
		ref    Ref
	}{
		{"write_outage < 2s", MetricWriteOutage, "<", TypeDuration, int64(2 * time.Second), Ref{}},
		{"write_outage<=500ms", MetricWriteOutage, "<=", TypeDuration, int64(500 * time.Millisecond), Ref{}},
		{"  lost_writes == 0 ", MetricLostWrites, "==", TypeInt, 0, Ref{}},
		{"replicas_streaming >= 2", MetricReplicasStreaming, ">=", TypeInt, 2, Ref{}},
		{"replica_lag < 16MB", MetricReplicaLag, "<", TypeSize, 16 << 20, Ref{}},
		{"replica_lag != 0", MetricReplicaLag, "!=", TypeSize, 0, Ref{}},
		{"write_outage == 0", MetricWriteOutage, "==", TypeDuration, 0, Ref{}},
		{"switch_back.duration > 1m30s", "switch_back.duration", ">", TypeDuration, int64(90 * time.Second), Ref{}},
		{"primary == initial_primary", MetricPrimary, "==", TypeNode, 0, Ref{Kind: RefInitialPrimary}},
		{"primary != pg2", MetricPrimary, "!=", TypeNode, 0, Ref{Kind: RefNode, Node: "pg2"}},
		{"timeline > 1", MetricTimeline, ">", TypeInt, 1, Ref{}},
	} {
		a, err := ParseAssertion(tc.in, nodes)
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if a.Metric != tc.metric || a.Op != tc.op || a.Type != tc.typ || a.Value.N != tc.n || a.Value.Ref != tc.ref {
			t.Errorf("%q: got %+v", tc.in, a)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"", "empty assertion"},
		{"< 2s", "does not start with a metric name"},
		{"outage < 2s", `unknown metric "outage"`},
		{"write_outage 2s", "expected a comparison"},
		{"write_outage = 2s", "use == to compare"},
		{"write_outage <", "no value after <"},
		{"write_outage < 2", "duration 2 has no unit"},
		{"write_outage < soon", `invalid duration "soon"`},
		{"lost_writes == 0.5", `invalid number "0.5"`},
		{"lost_writes == -1", `invalid number "-1"`},
		{"replica_lag < big", `invalid size "big"`},
		{"primary < pg1", "compare it with == or !="},
		{"primary == pg9", `"pg9" is not a configured node`},
		{"primary == auto", "auto names no node here"},
	} {
		_, err := ParseAssertion(tc.in, nodes)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: want error containing %q, got %v", tc.in, tc.want, err)
		}
	}
}

func TestEval(t *testing.T) {
	t.Parallel()
	dur := func(d time.Duration) Value { return Value{Type: TypeDuration, N: int64(d)} }
	node := func(n string) Value { return Value{Type: TypeNode, Node: n} }
	for _, tc := range []struct {
		expr  string
		got   Value
		bound Value
		want  bool
	}{
		{"write_outage < 2s", dur(time.Second), Value{}, true},
		{"write_outage < 2s", dur(2 * time.Second), Value{}, false},
		{"write_outage <= 2s", dur(2 * time.Second), Value{}, true},
		{"write_outage > 2s", dur(3 * time.Second), Value{}, true},
		{"write_outage >= 2s", dur(time.Second), Value{}, false},
		{"lost_writes == 0", Value{Type: TypeInt, N: 0}, Value{}, true},
		{"lost_writes != 0", Value{Type: TypeInt, N: 0}, Value{}, false},
		{"primary == pg1", node("pg1"), node("pg1"), true},
		{"primary == pg1", node(""), node("pg1"), false},
		{"primary != pg1", node("pg2"), node("pg1"), true},
		{"primary != pg1", node(""), node("pg1"), true},
	} {
		a, err := ParseAssertion(tc.expr, nil)
		if err != nil {
			t.Fatal(err)
		}
		bound := a.Value
		if a.Type == TypeNode {
			bound = tc.bound
		}
		if got := a.Eval(tc.got, bound); got != tc.want {
			t.Errorf("%s with %s: %v, want %v", tc.expr, tc.got, got, tc.want)
		}
	}
}

func TestValueString(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		v    Value
		want string
	}{
		{Value{Type: TypeDuration, N: int64(128581763 * time.Nanosecond)}, "129ms"},
		{Value{Type: TypeDuration, N: int64(12345 * time.Millisecond)}, "12.3s"},
		{Value{Type: TypeSize, N: 16 << 20}, "16 MB"},
		{Value{Type: TypeInt, N: 2}, "2"},
		{Value{Type: TypeNode, Node: "pg1"}, "pg1"},
		{Value{Type: TypeNode}, "(none)"},
	} {
		if got := tc.v.String(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.v, got, tc.want)
		}
	}
}
