package testenv

import (
	"strings"
	"testing"
)

// Report turns go test -json into per-package lines with counts, the
// output of failed tests, the slowest tests and a closing count line.
func TestReport(t *testing.T) {
	t.Parallel()
	in := strings.Join([]string{
		`{"Action":"run","Package":"a","Test":"TestOK"}`,
		`{"Action":"output","Package":"a","Test":"TestOK","Output":"=== RUN   TestOK\n"}`,
		`{"Action":"pass","Package":"a","Test":"TestOK","Elapsed":1.5}`,
		`{"Action":"run","Package":"a","Test":"TestBad"}`,
		`{"Action":"output","Package":"a","Test":"TestBad","Output":"    a_test.go:9: boom\n"}`,
		`{"Action":"pass","Package":"a","Test":"TestBad/sub","Elapsed":0.1}`,
		`{"Action":"fail","Package":"a","Test":"TestBad","Elapsed":0.2}`,
		`{"Action":"skip","Package":"a","Test":"TestSkip","Elapsed":0}`,
		`{"Action":"output","Package":"a","Output":"FAIL\n"}`,
		`{"Action":"fail","Package":"a","Elapsed":2.1}`,
		`{"Action":"output","Package":"b","Output":"?   \tb\t[no test files]\n"}`,
		`{"Action":"skip","Package":"b","Elapsed":0}`,
		`# c`,
		`c/x.go:1:1: syntax error`,
	}, "\n")
	var out strings.Builder
	failed, err := Report(strings.NewReader(in), &out)
	if err != nil || failed != 1 {
		t.Fatalf("failed %d, err %v", failed, err)
	}
	got := out.String()
	for _, want := range []string{
		"--- FAIL: TestBad (a)\n    " + "    a_test.go:9: boom\n",
		"FAIL\ta\t2.100s\t(1 passed, 1 failed, 1 skipped)\n",
		"?   \tb\t[no test files]\n",
		"c/x.go:1:1: syntax error\n",
		"slowest tests:\n",
		"1.5s  a TestOK",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
	if !strings.HasSuffix(got, "1 passed, 1 failed, 1 skipped\n") {
		t.Errorf("closing line:\n%s", got)
	}
}
