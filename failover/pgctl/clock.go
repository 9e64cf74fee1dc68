package pgctl

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Clock is the time the waits read and sleep on, so that tests can run
// them on a clock of their own. Deadlines still come from ctx: a step's
// timeout is the executor's, in real time.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives once d has passed.
	After(d time.Duration) <-chan time.Time
}

// RealClock is the wall clock.
type RealClock struct{}

// Now is time.Now.
func (RealClock) Now() time.Time { return time.Now() }

// After is time.After.
func (RealClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// ClockOr is c, or the wall clock when c is nil.
func ClockOr(c Clock) Clock {
	if c == nil {
		return RealClock{}
	}
	return c
}

// PollUntil calls cond every interval of clock until it is true or ctx
// ends; on timeout it fails with msg and the last error seen.
func PollUntil(ctx context.Context, clock Clock, interval time.Duration, cond func(context.Context) (bool, error), msg string) error {
	clock = ClockOr(clock)
	var last error
	for {
		ok, err := cond(ctx)
		if err == nil && ok {
			return nil
		}
		var fe *fatalError
		if errors.As(err, &fe) {
			return fe.err
		}
		last = err
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				if last != nil {
					return fmt.Errorf("%s (last error: %v)", msg, last)
				}
				return errors.New(msg)
			}
			return context.Cause(ctx)
		case <-clock.After(interval):
		}
	}
}

// Fatal marks an error of a PollUntil condition that waiting cannot mend:
// PollUntil returns it (unmarked) at once instead of polling on.
func Fatal(err error) error { return &fatalError{err: err} }

type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }
func (e *fatalError) Unwrap() error { return e.err }
