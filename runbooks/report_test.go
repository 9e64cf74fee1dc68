package runbooks

import (
	"bytes"
	"encoding/xml"
	"strings"
	"testing"
	"time"

	"github.com/replctl/replctl/checks"
)

// junitDoc is what CI systems read of JUnit XML.
type junitDoc struct {
	XMLName  xml.Name `xml:"testsuites"`
	Tests    int      `xml:"tests,attr"`
	Failures int      `xml:"failures,attr"`
	Skipped  int      `xml:"skipped,attr"`
	Suites   []struct {
		Name     string `xml:"name,attr"`
		Tests    int    `xml:"tests,attr"`
		Failures int    `xml:"failures,attr"`
		Cases    []struct {
			Name      string `xml:"name,attr"`
			Classname string `xml:"classname,attr"`
			Time      string `xml:"time,attr"`
			Failure   *struct {
				Message string `xml:"message,attr"`
				Text    string `xml:",chardata"`
			} `xml:"failure"`
			Skipped *struct{} `xml:"skipped"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

func TestWriteJUnit(t *testing.T) {
	t.Parallel()
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	rep := &Report{Runbook: "drill", Cluster: "demo", File: "d.yaml", Started: start, DurationSeconds: 3.5, Outcome: Failed,
		Steps: []*StepReport{
			{ID: "step1", Kind: KindCheck, Description: "check <all> & more", Outcome: Passed, DurationSeconds: 0.01, Measured: map[string]string{"worst": "ok"}},
			{ID: "step2", Kind: KindAssert, Description: "assert write_outage < 2s, lost_writes == 0", Outcome: Failed, Error: "1 of 2 assertions failed",
				Assertions: []AssertionResult{{Expr: "write_outage < 2s", Passed: true, Actual: "1s"}, {Expr: "lost_writes == 0", Actual: "3"}}},
			{ID: "step3", Kind: KindCheck, Description: "check lag", Outcome: Failed, Error: "1 failed", Hint: "wait",
				Checks: []checks.Result{{Name: "lag", Level: checks.Critical, Node: "pg2", Message: "behind"}}},
			{ID: "step4", Kind: KindAssert, Description: "assert elapsed < 1h", Outcome: NotRun, Assertions: []AssertionResult{{Expr: "elapsed < 1h", Error: "not run"}}},
			{ID: "on_failure1", Kind: KindPromote, Phase: PhaseOnFailure, Description: "promote", Outcome: Skipped, Error: "lock lost"},
		}}
	var buf bytes.Buffer
	if err := WriteJUnit(&buf, rep); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(buf.String(), `<?xml version="1.0" encoding="UTF-8"?>`) {
		t.Errorf("no XML header:\n%s", buf.String())
	}
	var doc junitDoc
	if err := xml.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatalf("not well-formed: %v\n%s", err, buf.String())
	}
	// One case per step and one per assertion.
	if doc.Tests != 8 || doc.Failures != 3 || doc.Skipped != 3 || len(doc.Suites) != 1 || len(doc.Suites[0].Cases) != 8 {
		t.Fatalf("counts: %+v", doc)
	}
	cs := doc.Suites[0].Cases
	want := []string{"step1: check <all> & more", "step2: assert write_outage < 2s, lost_writes == 0", "step2: assert write_outage < 2s",
		"step2: assert lost_writes == 0", "step3: check lag", "step4: assert elapsed < 1h", "step4: assert elapsed < 1h", "on_failure1: promote"}
	for i, w := range want {
		if cs[i].Name != w {
			t.Errorf("case %d: %q, want %q", i, cs[i].Name, w)
		}
	}
	if cs[2].Failure != nil || cs[3].Failure == nil || cs[3].Failure.Message != "lost_writes == 0: measured 3" {
		t.Errorf("assertion cases: %+v %+v", cs[2], cs[3].Failure)
	}
	if !strings.Contains(cs[4].Failure.Text, "CRITICAL lag pg2: behind") || !strings.Contains(cs[4].Failure.Text, "hint: wait") {
		t.Errorf("check failure text: %q", cs[4].Failure.Text)
	}
	if cs[5].Skipped == nil || cs[6].Skipped == nil || cs[7].Skipped == nil || cs[0].Time != "0.010" || doc.Suites[0].Name != "runbook drill" {
		t.Errorf("%+v", cs)
	}
}
