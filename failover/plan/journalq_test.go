package plan

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"
)

// journalGuard is a guard with a journal that records each write as one
// batch, and can hold a write back or fail it.
type journalGuard struct {
	fakeGuard
	mu      sync.Mutex
	batches [][]string
	// hold, when set, is called with each batch before it is recorded.
	hold func(batch []string) error
}

func (g *journalGuard) Journal(_ context.Context, events ...Event) error {
	var batch []string
	for _, e := range events {
		batch = append(batch, fmt.Sprintf("%s %s", e.StepID, e.Type))
	}
	if g.hold != nil {
		if err := g.hold(batch); err != nil {
			return err
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.batches = append(g.batches, batch)
	return nil
}

func (g *journalGuard) written() (all []string, batches [][]string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, b := range g.batches {
		all = append(all, b...)
	}
	return all, g.batches
}

// A step's end and a step that changes nothing are journaled in the
// background: the next step does not wait for etcd. A mutating step's start
// is written synchronously together with everything before it, in order.
func TestExecuteJournalsInTheBackground(t *testing.T) {
	t.Parallel()
	bRan := make(chan struct{})
	g := &journalGuard{}
	g.hold = func(batch []string) error {
		for _, e := range batch {
			if e == "a done" {
				// Held until b has run: with a synchronous journal b
				// would wait for this write.
				select {
				case <-bRan:
				case <-time.After(10 * time.Second):
					return errors.New("step b did not run while a's end was being journaled")
				}
			}
		}
		return nil
	}
	step := func(id string, mutates bool, run func()) Step {
		return Step{ID: id, Description: "do " + id, Mutates: mutates, Budget: time.Second,
			Run: func(context.Context) error { run(); return nil }}
	}
	p := &Plan{Steps: []Step{step("a", false, func() {}), step("b", false, func() { close(bRan) }), step("c", true, func() {})}}
	res := Execute(t.Context(), p, g, nil, nil)
	if res.Outcome != OutcomeSucceeded || len(res.Warnings) > 0 {
		t.Fatalf("outcome %s, err %v, warnings %v", res.Outcome, res.Err, res.Warnings)
	}
	all, batches := g.written()
	want := []string{" plan", "a started", "a done", "b started", "b done", "c started", "c done"}
	if !reflect.DeepEqual(all, want) {
		t.Errorf("journal %q, want %q", all, want)
	}
	// c's start went in one write with whatever was still queued.
	for _, b := range batches {
		for i, e := range b {
			if e == "c started" && i != len(b)-1 {
				t.Errorf("c's start is not the last of its write: %q", b)
			}
		}
	}
}

// A background write that fails is a warning, and what follows is still
// journaled.
func TestExecuteWarnsOfAFailedBackgroundWrite(t *testing.T) {
	t.Parallel()
	tried := make(chan struct{})
	g := &journalGuard{}
	g.hold = func(batch []string) error {
		for _, e := range batch {
			if e == "a done" {
				close(tried)
				return errors.New("etcd unreachable")
			}
		}
		return nil
	}
	p := &Plan{Steps: []Step{
		{ID: "a", Description: "do a", Run: func(context.Context) error { return nil }},
		// b waits until a's end has been tried, so that b's events are
		// written apart from it.
		{ID: "b", Description: "do b", Run: func(context.Context) error {
			select {
			case <-tried:
				return nil
			case <-time.After(10 * time.Second):
				return errors.New("a's end was never written")
			}
		}},
	}}
	res := Execute(t.Context(), p, g, nil, nil)
	if res.Outcome != OutcomeSucceeded {
		t.Fatalf("outcome %s, err %v", res.Outcome, res.Err)
	}
	if len(res.Warnings) != 1 {
		t.Fatalf("warnings %q, want the one failed write", res.Warnings)
	}
	all, _ := g.written()
	if last := all[len(all)-1]; last != "b done" {
		t.Errorf("journal ends with %q, want b's end: %q", last, all)
	}
}
