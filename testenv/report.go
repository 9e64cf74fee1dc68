package testenv

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// testEvent is one line of `go test -json` (test2json).
type testEvent struct {
	Action  string  `json:"Action"`
	Package string  `json:"Package"`
	Test    string  `json:"Test"`
	Elapsed float64 `json:"Elapsed"`
	Output  string  `json:"Output"`
}

// pkgResult is what one package's tests did.
type pkgResult struct {
	name                   string
	passed, failed, skiped int
	outcome                string // ok, FAIL, ? (no test files)
	elapsed                float64
}

type testTime struct {
	name    string
	elapsed float64
}

// Report reads `go test -json` from r and writes what a CI log needs to w,
// as the packages finish: go test's own line per package ("ok  pkg  1.2s",
// "FAIL pkg", "?  pkg [no test files]") with its passed, failed and skipped
// counts, the whole output of every failed test, then the slowest tests
// and a closing "N passed, N failed, N skipped" line. Lines that are not
// JSON (build errors) are passed through. It returns the number of failed
// tests and packages, so that a caller can tell a broken stream from a
// green one; the exit code of go test itself stays the caller's.
func Report(r io.Reader, w io.Writer) (failed int, err error) {
	failed, _, err = report(r, w)
	return failed, err
}

// report is Report, also returning each package's result in the order
// the packages finished (for the version matrix's table).
func report(r io.Reader, w io.Writer) (failed int, results []*pkgResult, err error) {
	pkgs := map[string]*pkgResult{}
	var order []string
	out := map[string][]string{} // package/test -> output lines
	var tests []testTime
	var passed, skipped int
	pkg := func(name string) *pkgResult {
		p := pkgs[name]
		if p == nil {
			p = &pkgResult{name: name}
			pkgs[name] = p
			order = append(order, name)
		}
		return p
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		var e testEvent
		if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &e) != nil {
			fmt.Fprintln(w, line)
			continue
		}
		key := e.Package + "\x00" + e.Test
		switch e.Action {
		case "build-output":
			io.WriteString(w, e.Output)
		case "output":
			// A package's own lines (a panic, a timeout) are kept for
			// its failure; its PASS/ok/FAIL summary lines are rewritten.
			if e.Test != "" || !packageSummary(e.Output) {
				out[key] = append(out[key], e.Output)
			}
		case "pass", "fail", "skip":
			p := pkg(e.Package)
			if e.Test == "" {
				p.elapsed = e.Elapsed
				switch e.Action {
				case "pass":
					p.outcome = "ok"
				case "fail":
					p.outcome = "FAIL"
				default:
					p.outcome = "?"
				}
				writePackage(w, p, out[key])
				if p.outcome == "FAIL" && p.failed == 0 {
					failed++ // a build failure, a panic outside a test, a timeout
				}
				continue
			}
			if strings.Contains(e.Test, "/") {
				continue // subtests count with their test
			}
			switch e.Action {
			case "pass":
				p.passed++
				passed++
			case "skip":
				p.skiped++
				skipped++
			case "fail":
				p.failed++
				failed++
				fmt.Fprintf(w, "--- FAIL: %s (%s)\n", e.Test, e.Package)
				for _, l := range out[key] {
					io.WriteString(w, "    "+l)
				}
			}
			tests = append(tests, testTime{e.Package + " " + e.Test, e.Elapsed})
			delete(out, key)
		}
	}
	for _, name := range order {
		results = append(results, pkgs[name])
	}
	if err := sc.Err(); err != nil {
		return failed, results, err
	}
	slices.SortFunc(tests, func(a, b testTime) int {
		switch {
		case a.elapsed > b.elapsed:
			return -1
		case a.elapsed < b.elapsed:
			return 1
		}
		return strings.Compare(a.name, b.name)
	})
	if len(tests) > 0 {
		fmt.Fprintln(w, "slowest tests:")
		for _, t := range tests[:min(8, len(tests))] {
			fmt.Fprintf(w, "  %8s  %s\n", (time.Duration(t.elapsed * float64(time.Second))).Round(10*time.Millisecond), t.name)
		}
	}
	fmt.Fprintf(w, "%d passed, %d failed, %d skipped\n", passed, failed, skipped)
	return failed, results, nil
}

func writePackage(w io.Writer, p *pkgResult, extra []string) {
	switch p.outcome {
	case "?":
		if p.passed+p.failed+p.skiped == 0 {
			fmt.Fprintf(w, "?   \t%s\t[no test files]\n", p.name)
			return
		}
		fmt.Fprintf(w, "ok  \t%s\t%.3fs\t(%d passed, %d failed, %d skipped)\n", p.name, p.elapsed, p.passed, p.failed, p.skiped)
	case "ok":
		fmt.Fprintf(w, "ok  \t%s\t%.3fs\t(%d passed, %d failed, %d skipped)\n", p.name, p.elapsed, p.passed, p.failed, p.skiped)
	default:
		for _, l := range extra {
			io.WriteString(w, l)
		}
		fmt.Fprintf(w, "FAIL\t%s\t%.3fs\t(%d passed, %d failed, %d skipped)\n", p.name, p.elapsed, p.passed, p.failed, p.skiped)
	}
}

// packageSummary reports whether a package-level output line is one of go
// test's own summary lines, which Report prints in its own form.
func packageSummary(l string) bool {
	for _, p := range []string{"PASS", "FAIL", "ok  \t", "ok \t", "?   \t"} {
		if strings.HasPrefix(l, p) {
			return true
		}
	}
	return false
}
