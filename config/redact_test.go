package config

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

// A scrubbed error hides the password and still unwraps to the original,
// so that errors.Is and errors.As (a SQLSTATE, a deadline) work through
// the controller.
func TestScrubErrorKeepsUnwrap(t *testing.T) {
	t.Parallel()
	dsn := "host=db1 user=replctl password=s3cr3t-pw"
	orig := &os.PathError{Op: "open", Path: "/tmp/x", Err: context.DeadlineExceeded}
	err := ScrubError(fmt.Errorf("connect with %s: %w", dsn, orig), "pg1", dsn)
	if strings.Contains(err.Error(), "s3cr3t-pw") || !strings.HasPrefix(err.Error(), "pg1: ") {
		t.Errorf("text %q", err)
	}
	var pe *os.PathError
	if !errors.As(err, &pe) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("%v does not unwrap to the original", err)
	}
	if ScrubError(nil, "pg1") != nil {
		t.Error("nil must stay nil")
	}
}
