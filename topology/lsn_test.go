package topology

import (
	"encoding/json"
	"testing"
)

func TestParseLSN(t *testing.T) {
	t.Parallel()
	good := map[string]LSN{
		"0/0":               0,
		"0/3000060":         0x3000060,
		"16/B374D848":       0x16B374D848,
		"FFFFFFFF/FFFFFFFF": 0xFFFFFFFFFFFFFFFF,
		" 1/0 ":             1 << 32,
		"a/b":               0xA0000000B,
	}
	for in, want := range good {
		got, err := ParseLSN(in)
		if err != nil || got != want {
			t.Errorf("ParseLSN(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "/", "1/", "/1", "x/1", "1/1/1", "100000000/0", "0/100000000", "-1/0", "1 / 2"} {
		if v, err := ParseLSN(in); err == nil {
			t.Errorf("ParseLSN(%q) = %v, want an error", in, v)
		}
	}
}

func TestLSNStringAndJSON(t *testing.T) {
	t.Parallel()
	l := LSN(0x16B374D848)
	if l.String() != "16/B374D848" {
		t.Fatalf("String = %s", l)
	}
	b, err := json.Marshal(struct {
		L *LSN `json:"l"`
		N *LSN `json:"n"`
	}{L: &l})
	if err != nil || string(b) != `{"l":"16/B374D848","n":null}` {
		t.Fatalf("json = %s, %v", b, err)
	}
	var back struct{ L *LSN }
	if err := json.Unmarshal([]byte(`{"L":"16/B374D848"}`), &back); err != nil || *back.L != l {
		t.Fatalf("unmarshal = %v, %v", back.L, err)
	}
	if err := json.Unmarshal([]byte(`{"L":"nonsense"}`), &back); err == nil {
		t.Fatal("unmarshal of a bad LSN succeeded")
	}
}

func TestLagMath(t *testing.T) {
	t.Parallel()
	a, b := LSN(1000), LSN(400)
	if a.Sub(b) != 600 || b.Sub(a) != -600 {
		t.Errorf("Sub: %d %d", a.Sub(b), b.Sub(a))
	}
	if LagBytes(a, b) != 600 || LagBytes(b, a) != 0 || LagBytes(a, a) != 0 || Distance(a, b) != 600 || Distance(b, a) != 600 {
		t.Errorf("LagBytes: %d %d", LagBytes(a, b), LagBytes(b, a))
	}
	if Lag(nil, &b) != nil || Lag(&a, nil) != nil {
		t.Error("Lag with an unknown side must be unknown")
	}
	if v := Lag(&a, &b); v == nil || *v != 600 {
		t.Errorf("Lag = %v", v)
	}
	// A replica sampled after the primary may look ahead: clamp, never wrap.
	if v := Lag(&b, &a); v == nil || *v != 0 {
		t.Errorf("Lag clamped = %v", v)
	}
}

func TestTimelineFromWALFile(t *testing.T) {
	t.Parallel()
	if tli, err := timelineFromWALFile("0000000A0000000000000003"); err != nil || tli != 10 {
		t.Errorf("got %d, %v", tli, err)
	}
	for _, bad := range []string{"", "00000000000000000000000", "000000000000000000000003", "zzzzzzzz0000000000000003"} {
		if _, err := timelineFromWALFile(bad); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

func TestVersionNum(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int{"15.18 (Debian 15.18-0+deb12u1)": 150018, "17beta1": 170000, "13.2": 130002, "": 0, "x": 0} {
		if got := versionNum(in); got != want {
			t.Errorf("versionNum(%q) = %d, want %d", in, got, want)
		}
	}
}
