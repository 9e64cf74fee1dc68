package faultcheck

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Outcome is one row of the fault matrix: a case, what became of it, and
// the checker's complaints (empty: the case passed the checks).
type Outcome struct {
	Case, Result string
	Violations   []string
}

// Table prints the matrix as plain aligned text, one row per case with its
// violation count, each violation indented on a line of its own below its
// case, then a closing count ("N cases, M violations") for the README.
//
// The columns are padded by hand rather than with text/tabwriter, because
// tabwriter realigns every block of lines between two untabbed lines, and
// the violation lines would break the table into differently aligned parts.
func Table(w io.Writer, rows []Outcome) error {
	head := []string{"CASE", "RESULT", "VIOLATIONS"}
	wCase, wRes := utf8.RuneCountInString(head[0]), utf8.RuneCountInString(head[1])
	total, failed := 0, 0
	for _, r := range rows {
		wCase = max(wCase, utf8.RuneCountInString(r.Case))
		wRes = max(wRes, utf8.RuneCountInString(r.Result))
		total += len(r.Violations)
		if len(r.Violations) > 0 {
			failed++
		}
	}
	pad := func(s string, n int) string { return s + strings.Repeat(" ", n-utf8.RuneCountInString(s)) }
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %s  %s\n", pad(head[0], wCase), pad(head[1], wRes), head[2])
	for _, r := range rows {
		fmt.Fprintf(&b, "%s  %s  %d\n", pad(r.Case, wCase), pad(r.Result, wRes), len(r.Violations))
		for _, v := range r.Violations {
			fmt.Fprintf(&b, "    - %s\n", strings.ReplaceAll(v, "\n", "\n      "))
		}
	}
	fmt.Fprintf(&b, "\n%d cases, %d violations", len(rows), total)
	if failed > 0 {
		fmt.Fprintf(&b, " in %d cases", failed)
	}
	b.WriteString("\n")
	_, err := io.WriteString(w, b.String())
	return err
}
