package plan

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// journalQueue writes an operation's journal for the executor: events that
// gate a change synchronously, the others in the background, all in order.
// A synchronous write carries every event queued before it, so the journal
// never shows a step started before the end of the one before it.
type journalQueue struct {
	j   Journaler
	ctx context.Context // background writes: not cancelled with the operation

	wmu sync.Mutex // held for a write: one at a time, in order

	mu       sync.Mutex
	pending  []Event
	warnings []string

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
}

func newJournalQueue(ctx context.Context, j Journaler) *journalQueue {
	q := &journalQueue{j: j, ctx: context.WithoutCancel(ctx),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go q.run()
	return q
}

func (q *journalQueue) run() {
	defer close(q.done)
	for {
		select {
		case <-q.wake:
			q.write(q.ctx)
		case <-q.stop:
			return
		}
	}
}

// later queues e for a background write.
func (q *journalQueue) later(e Event) {
	q.mu.Lock()
	q.pending = append(q.pending, e)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Journal writes the queued events and events now, returning the write's
// error: a gate's caller must not go on when its intent is not on record.
func (q *journalQueue) Journal(ctx context.Context, events ...Event) error {
	q.wmu.Lock()
	defer q.wmu.Unlock()
	q.mu.Lock()
	batch := append(q.take(), events...)
	q.mu.Unlock()
	return q.j.Journal(ctx, batch...)
}

// now writes e with the queued events at once, and keeps a failure as a
// warning: for events that must be on record before what follows (an undo
// about to begin) but whose loss does not stop it.
func (q *journalQueue) now(e Event) {
	if err := q.Journal(q.ctx, e); err != nil {
		q.warn(e, err)
	}
}

// write writes whatever is queued.
func (q *journalQueue) write(ctx context.Context) {
	q.wmu.Lock()
	defer q.wmu.Unlock()
	q.mu.Lock()
	batch := q.take()
	q.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	if err := q.j.Journal(ctx, batch...); err != nil {
		q.warn(batch[len(batch)-1], err)
	}
}

// take empties the queue; q.mu is held.
func (q *journalQueue) take() []Event {
	b := q.pending
	q.pending = nil
	return b
}

func (q *journalQueue) warn(e Event, err error) {
	if errors.Is(err, ErrLockLost) {
		return // the record says so through Finish
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.warnings = append(q.warnings, fmt.Sprintf("journal %s %s: %v", e.StepID, e.Type, err))
}

// close writes what is left and returns the warnings of failed writes.
func (q *journalQueue) close() []string {
	close(q.stop)
	<-q.done
	q.write(q.ctx)
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.warnings
}
