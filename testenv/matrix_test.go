package testenv

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMatrixReport(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	f13 := write("pg13.json", `{"Action":"pass","Package":"m/cmd","Test":"TestA","Elapsed":1}
{"Action":"skip","Package":"m/cmd","Test":"TestB","Elapsed":0}
{"Action":"pass","Package":"m/cmd","Test":"TestA/sub","Elapsed":1}
{"Action":"pass","Package":"m/cmd","Elapsed":61.2}
{"Action":"pass","Package":"m/topology","Test":"TestP","Elapsed":1}
{"Action":"pass","Package":"m/topology","Elapsed":2}
`)
	f18 := write("pg18.json", `{"Action":"fail","Package":"m/cmd","Test":"TestA","Elapsed":1}
{"Action":"fail","Package":"m/cmd","Elapsed":3}
`)
	var b bytes.Buffer
	failed, err := MatrixReport([]string{f18, f13}, &b)
	if err != nil || failed != 1 {
		t.Fatalf("failed %d, %v\n%s", failed, err, &b)
	}
	out := b.String()
	for _, want := range []string{"PG 13.23 ", "PG 18.4\n", "m/cmd", "ok 1/0/1 1m1s", "FAIL 0/1/0 3s", "ok 1/0/0 2s", "-", "total"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
	if strings.Index(out, "PG 13") > strings.Index(out, "PG 18") {
		t.Errorf("majors out of order:\n%s", out)
	}
	if _, err := MatrixReport([]string{write("x.json", "")}, &b); err == nil {
		t.Error("a file not named pgN.json must be refused")
	}
}
