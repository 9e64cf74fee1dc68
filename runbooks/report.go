package runbooks

import (
	"encoding/xml"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/replctl/replctl/checks"
	"github.com/replctl/replctl/failover/pgctl"
	"github.com/replctl/replctl/failover/plan"
)

// Outcome is how a step or a drill ended.
type Outcome string

// Outcomes.
const (
	Passed Outcome = "passed"
	Failed Outcome = "failed"
	// Skipped is a step that had nothing to do (the candidate already is
	// the primary) or could not run (the lock was lost), and a drill that
	// did not start because another operation held the lock.
	Skipped Outcome = "skipped"
	// NotRun is a step after a failure, or an on_failure step of a drill
	// that did not fail.
	NotRun Outcome = "not_run"
)

// Report is a drill's result. Its JSON field names are a stable contract
// (replctl runbook run --report-json).
type Report struct {
	Runbook     string `json:"runbook"`
	Description string `json:"description,omitempty"`
	File        string `json:"file"`
	Cluster     string `json:"cluster"`
	// OperationID is the drill's history record; Token the fencing token
	// it held.
	OperationID     string    `json:"operation_id,omitempty"`
	Token           int64     `json:"fencing_token,omitempty"`
	Started         time.Time `json:"started"`
	Finished        time.Time `json:"finished"`
	DurationSeconds float64   `json:"duration_seconds"`
	// Outcome is passed only when every step and assertion passed.
	Outcome Outcome `json:"outcome"`
	Error   string  `json:"error,omitempty"`
	// Refused is set when the drill stopped at a step refused as unsafe
	// (a failed check, a promotion's preflight) before it changed anything.
	Refused bool `json:"refused"`
	// NeedsAttention is set when the cluster may not be as the drill or its
	// on_failure steps meant to leave it: an on_failure step failed, a
	// promotion is partly done, or the lock was lost with steps left.
	NeedsAttention bool           `json:"needs_attention"`
	InitialPrimary string         `json:"initial_primary"`
	FinalPrimary   string         `json:"final_primary"`
	Steps          []*StepReport  `json:"steps"`
	Metrics        MetricsSummary `json:"metrics"`
	Probe          *ProbeSummary  `json:"probe,omitempty"`
}

// StepReport is one step's result.
type StepReport struct {
	ID          string `json:"id"`
	Kind        Kind   `json:"kind"`
	Phase       Phase  `json:"phase"`
	Description string `json:"description"`
	// Node is the node the step acted on, its references resolved (the
	// promoted candidate, the node stopped...).
	Node            string     `json:"node,omitempty"`
	Outcome         Outcome    `json:"outcome"`
	Started         *time.Time `json:"started,omitempty"`
	DurationSeconds float64    `json:"duration_seconds"`
	Error           string     `json:"error,omitempty"`
	// Hint says what the operator should do about a failure.
	Hint    string `json:"hint,omitempty"`
	Refused bool   `json:"refused,omitempty"`
	// Measured are the values the step measured, as text ("412ms").
	Measured   map[string]string `json:"measured,omitempty"`
	Assertions []AssertionResult `json:"assertions,omitempty"`
	// Checks are the problems a check step found, or the failed preflight
	// of a refused promotion.
	Checks []checks.Result `json:"checks,omitempty"`
	// Plan is the executed promotion or rejoin, step by step.
	Plan    *plan.Result         `json:"plan_result,omitempty"`
	Command *pgctl.CommandResult `json:"command,omitempty"`

	duration time.Duration
}

// Duration is how long the step ran.
func (s *StepReport) Duration() time.Duration { return s.duration }

func (s *StepReport) measure(k, v string) {
	if s.Measured == nil {
		s.Measured = map[string]string{}
	}
	s.Measured[k] = v
}

// AssertionResult is one evaluated assertion.
type AssertionResult struct {
	Expr   string `json:"expr"`
	Passed bool   `json:"passed"`
	// Actual is the measured value, "" when it was not measured.
	Actual string `json:"actual"`
	Error  string `json:"error,omitempty"`
}

// MetricsSummary are the drill's measurements at its end. Null is not
// measured.
type MetricsSummary struct {
	WriteOutageSeconds   *float64 `json:"write_outage_seconds"`
	LostWrites           *int64   `json:"lost_writes"`
	WritesAcked          *int64   `json:"writes_acked"`
	WritesFailed         *int64   `json:"writes_failed"`
	WritesAttempted      *int64   `json:"writes_attempted"`
	PromoteOutageSeconds *float64 `json:"promote_outage_seconds"`
	ReplicasStreaming    *int64   `json:"replicas_streaming"`
	ReplicaLagBytes      *int64   `json:"replica_lag_bytes"`
	Primary              *string  `json:"primary"`
	Timeline             *int64   `json:"timeline"`
	// LogicalSlotsKept is logical_slots_kept at the end.
	LogicalSlotsKept *int64 `json:"logical_slots_kept"`
}

// ProbeSummary describes the write probe's run.
type ProbeSummary struct {
	Table    string `json:"table"`
	Database string `json:"database,omitempty"`
	// DSN is the multi-host DSN the probe wrote through, without password.
	DSN                  string  `json:"dsn"`
	Attempts             int64   `json:"attempts"`
	Acked                int64   `json:"acked"`
	Failed               int64   `json:"failed"`
	LongestOutageSeconds float64 `json:"longest_outage_seconds"`
	// Missing lists acknowledged write IDs not found afterwards (the first
	// 100); MissingCount counts them all.
	Missing      []int64 `json:"missing,omitempty"`
	MissingCount int64   `json:"missing_count"`
	Verified     bool    `json:"verified"`
	VerifyError  string  `json:"verify_error,omitempty"`
}

// Counts returns how many steps (and assertions) passed, failed, were
// skipped or did not run.
func (r *Report) Counts() (passed, failed, skipped int) {
	for _, s := range r.Steps {
		switch s.Outcome {
		case Passed:
			passed++
		case Failed:
			failed++
		default:
			skipped++
		}
	}
	return
}

// JUnit XML, the dialect Jenkins, GitLab and GitHub test reporters read.
type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Errors   int          `xml:"errors,attr"`
	Skipped  int          `xml:"skipped,attr"`
	Time     string       `xml:"time,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name       string          `xml:"name,attr"`
	Tests      int             `xml:"tests,attr"`
	Failures   int             `xml:"failures,attr"`
	Errors     int             `xml:"errors,attr"`
	Skipped    int             `xml:"skipped,attr"`
	Time       string          `xml:"time,attr"`
	Timestamp  string          `xml:"timestamp,attr"`
	Properties []junitProperty `xml:"properties>property"`
	Cases      []junitCase     `xml:"testcase"`
	SystemOut  string          `xml:"system-out,omitempty"`
}

type junitProperty struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitFailure `xml:"failure,omitempty"`
	Skipped   *junitSkipped `xml:"skipped,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitFailure struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Text    string `xml:",chardata"`
}

type junitSkipped struct {
	Message string `xml:"message,attr,omitempty"`
}

// JUnitCaseName is the test case name of a step: "<id>: <description>";
// an assertion's is "<id>: assert <expr>".
func JUnitCaseName(s *StepReport) string { return s.ID + ": " + s.Description }

// WriteJUnit writes the report as JUnit XML: one test suite for the drill,
// one test case per step and one per assertion, so that a CI system shows
// which assertion failed without opening the report.
func WriteJUnit(w io.Writer, r *Report) error {
	suite := junitSuite{Name: "runbook " + r.Runbook, Time: secs(r.DurationSeconds), Timestamp: r.Started.UTC().Format(time.RFC3339)}
	suite.Properties = []junitProperty{{"cluster", r.Cluster}, {"file", r.File}, {"outcome", string(r.Outcome)},
		{"initial_primary", r.InitialPrimary}, {"final_primary", r.FinalPrimary}}
	if r.OperationID != "" {
		suite.Properties = append(suite.Properties, junitProperty{"operation_id", r.OperationID})
	}
	class := "runbook." + r.Runbook
	for _, s := range r.Steps {
		c := junitCase{Name: JUnitCaseName(s), Classname: class + "." + string(s.Phase), Time: secs(s.DurationSeconds)}
		switch s.Outcome {
		case Failed:
			msg := s.Error
			if msg == "" {
				msg = "failed"
			}
			text := msg
			if s.Hint != "" {
				text += "\nhint: " + s.Hint
			}
			for _, ck := range s.Checks {
				text += fmt.Sprintf("\n%s %s %s: %s", strings.ToUpper(ck.Level.String()), ck.Name, ck.Node, ck.Message)
			}
			c.Failure = &junitFailure{Message: firstLine(msg), Type: string(s.Kind), Text: text}
		case Skipped, NotRun:
			msg := string(s.Outcome)
			if s.Error != "" {
				msg += ": " + s.Error
			}
			c.Skipped = &junitSkipped{Message: msg}
		}
		if len(s.Measured) > 0 {
			var parts []string
			for _, k := range sortedKeys(s.Measured) {
				parts = append(parts, k+"="+s.Measured[k])
			}
			c.SystemOut = strings.Join(parts, "\n")
		}
		suite.Cases = append(suite.Cases, c)
		for _, a := range s.Assertions {
			ac := junitCase{Name: s.ID + ": assert " + a.Expr, Classname: class + "." + string(s.Phase) + ".assert", Time: "0"}
			if s.Outcome == NotRun || s.Outcome == Skipped {
				ac.Skipped = &junitSkipped{Message: string(s.Outcome)}
				suite.Cases = append(suite.Cases, ac)
				continue
			}
			if !a.Passed {
				msg := fmt.Sprintf("%s: measured %s", a.Expr, orDash(a.Actual))
				if a.Error != "" {
					msg = a.Expr + ": " + a.Error
				}
				ac.Failure = &junitFailure{Message: msg, Type: "assertion", Text: msg}
			} else {
				ac.SystemOut = "measured " + a.Actual
			}
			suite.Cases = append(suite.Cases, ac)
		}
	}
	for _, c := range suite.Cases {
		suite.Tests++
		switch {
		case c.Failure != nil:
			suite.Failures++
		case c.Skipped != nil:
			suite.Skipped++
		}
	}
	if r.Error != "" {
		suite.SystemOut = r.Error
	}
	doc := junitSuites{Name: "replctl runbook", Tests: suite.Tests, Failures: suite.Failures, Skipped: suite.Skipped,
		Time: suite.Time, Suites: []junitSuite{suite}}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

func secs(f float64) string { return fmt.Sprintf("%.3f", f) }

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "nothing (not measured)"
	}
	return s
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
