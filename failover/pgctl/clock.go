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
