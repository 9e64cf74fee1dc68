package testenv

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// matrixFile names the `go test -json` output of one major in the
// version matrix: pg13.json, pg14.json, ...
var matrixFile = regexp.MustCompile(`^pg(\d+)\.json$`)

// MatrixReport reads the `go test -json` output of one run per major
// (files named pgN.json, as make test-matrix writes them) and writes the
// matrix as a table, one row per package and one column per major; each
// cell is the package's outcome, its passed/failed/skipped top-level test
// counts and its time. A package missing from a run (the run stopped
// before it) is "-". It returns the number of failed tests and packages.
func MatrixReport(files []string, w io.Writer) (failed int, err error) {
	type column struct {
		major   int
		version string
		pkgs    map[string]*pkgResult
	}
	var cols []column
	var pkgs []string
	for _, f := range files {
		m := matrixFile.FindStringSubmatch(filepath.Base(f))
		if m == nil {
			return 0, fmt.Errorf("testenv matrix: %s: want files named pgN.json", f)
		}
		major, _ := strconv.Atoi(m[1])
		r, err := os.Open(f)
		if err != nil {
			return 0, err
		}
		n, results, err := report(r, io.Discard)
		r.Close()
		if err != nil {
			return 0, fmt.Errorf("testenv matrix: %s: %w", f, err)
		}
		failed += n
		col := column{major: major, version: strconv.Itoa(major), pkgs: map[string]*pkgResult{}}
		if v, err := PinnedPG(major); err == nil {
			// 13.23.0-beta.16 is PostgreSQL 13.23.
			parts := strings.Split(strings.SplitN(v, "-", 2)[0], ".")
			col.version = strings.Join(parts[:min(2, len(parts))], ".")
		}
		for _, p := range results {
			col.pkgs[p.name] = p
			if !slices.Contains(pkgs, p.name) {
				pkgs = append(pkgs, p.name)
			}
		}
		cols = append(cols, col)
	}
	slices.SortFunc(cols, func(a, b column) int { return a.major - b.major })
	slices.Sort(pkgs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "PACKAGE")
	for _, c := range cols {
		fmt.Fprintf(tw, "\tPG %s", c.version)
	}
	fmt.Fprintln(tw)
	totals := make([][3]int, len(cols))
	for _, name := range pkgs {
		fmt.Fprint(tw, strings.TrimPrefix(name, "github.com/replctl/replctl/"))
		for i, c := range cols {
			p := c.pkgs[name]
			if p == nil {
				fmt.Fprint(tw, "\t-")
				continue
			}
			totals[i][0] += p.passed
			totals[i][1] += p.failed
			totals[i][2] += p.skiped
			fmt.Fprintf(tw, "\t%s", matrixCell(p))
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprint(tw, "total")
	for _, t := range totals {
		fmt.Fprintf(tw, "\t%d/%d/%d", t[0], t[1], t[2])
	}
	fmt.Fprintln(tw)
	if err := tw.Flush(); err != nil {
		return failed, err
	}
	fmt.Fprintln(w, "cells: outcome passed/failed/skipped (top-level tests) time")
	return failed, nil
}

func matrixCell(p *pkgResult) string {
	outcome := p.outcome
	switch {
	case outcome == "":
		outcome = "INCOMPLETE"
	case outcome == "?" && p.passed+p.failed+p.skiped == 0:
		return "no tests"
	case outcome == "?":
		outcome = "ok"
	}
	d := time.Duration(p.elapsed * float64(time.Second)).Round(time.Second)
	return fmt.Sprintf("%s %d/%d/%d %s", outcome, p.passed, p.failed, p.skiped, d)
}
