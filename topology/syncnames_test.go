package topology

import (
	"reflect"
	"testing"
)

func TestParseSyncStandbyNames(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want SyncStandbys
	}{
		{"", SyncStandbys{}},
		{"   ", SyncStandbys{}},
		{"*", SyncStandbys{SyncFirst, 1, []string{"*"}}},
		{"a", SyncStandbys{SyncFirst, 1, []string{"a"}}},
		{"a, b,c", SyncStandbys{SyncFirst, 1, []string{"a", "b", "c"}}},
		{"2 (a, b, c)", SyncStandbys{SyncFirst, 2, []string{"a", "b", "c"}}},
		{"FIRST 2 (a, b)", SyncStandbys{SyncFirst, 2, []string{"a", "b"}}},
		{"first 1(a)", SyncStandbys{SyncFirst, 1, []string{"a"}}},
		{"ANY 2 (n1, n2, n3)", SyncStandbys{SyncAny, 2, []string{"n1", "n2", "n3"}}},
		{`any 1 ("Node A", "x""y", b)`, SyncStandbys{SyncAny, 1, []string{"Node A", `x"y`, "b"}}},
		{`"first"`, SyncStandbys{SyncFirst, 1, []string{"first"}}},
		{"s1, 2", SyncStandbys{SyncFirst, 1, []string{"s1", "2"}}},
	}
	for _, tt := range tests {
		got, err := ParseSyncStandbyNames(tt.in)
		if err != nil {
			t.Errorf("%q: %v", tt.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%q = %+v, want %+v", tt.in, got, tt.want)
		}
	}
	for _, bad := range []string{"ANY", "ANY (a)", "FIRST 2 a, b", "2 (a, b", "0 (a)", "a,,b", "a b", "(a)", `"a`, "ANY 1 ()", "a,"} {
		if got, err := ParseSyncStandbyNames(bad); err == nil {
			t.Errorf("%q = %+v, want an error", bad, got)
		}
	}
}

func TestSyncStandbysMatches(t *testing.T) {
	t.Parallel()
	s := SyncStandbys{SyncAny, 1, []string{"Node1"}}
	if !s.Matches("node1") || s.Matches("node2") {
		t.Error("names compare case-insensitively")
	}
	if !(SyncStandbys{SyncFirst, 1, []string{"*"}}).Matches("anything") {
		t.Error("* matches any standby")
	}
	if s.String() != "ANY 1 (Node1)" {
		t.Error(s.String())
	}
}
