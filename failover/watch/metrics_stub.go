package watch

import (
	"net/http"
	"time"
)

// Temporary: replaced by metrics.go from the exporter branch.
type Input struct {
	Cluster            string
	PrimaryKnown       bool
	PrimaryUnreachable bool
	FailoversTotal     map[string]float64
	LastFailover       time.Time
	Watch              *WatchInput
	Paused             bool
	LockHeld           bool
}
type WatchInput struct{ IsLeader bool }
type Exporter struct{}

func (e *Exporter) Set(Input) {}

func NewExporter() *Exporter                                          { return &Exporter{} }
func Handler(e *Exporter, healthy func() (bool, string)) http.Handler { return http.NewServeMux() }
