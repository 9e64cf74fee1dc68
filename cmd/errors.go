package cmd

import (
	"errors"
	"fmt"
	"strings"

	"github.com/replctl/replctl/config"
)

// Exit codes, the same for every command but check (see checkExit*). They are
// a contract with scripts and documented in the README.
const (
	ExitOK      = 0 // success
	ExitFailed  = 1 // the operation failed
	ExitUsage   = 2 // usage or configuration error
	ExitUnsafe  = 4 // refused as unsafe (a preflight check failed, or a dry-run would be refused)
	ExitLocked  = 5 // another operation holds the cluster lock
	ExitPartial = 6 // partly done: the output says what remains
)

// ExitError carries an exit code with the error that caused it.
type ExitError struct {
	Code int
	Err  error
	// Quiet means the command already printed everything worth saying.
	Quiet bool
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// withCode wraps err so that it exits with code.
func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &ExitError{Code: code, Err: err}
}

// usageError marks a wrong flag or argument.
func usageError(format string, a ...any) error {
	return &ExitError{Code: ExitUsage, Err: fmt.Errorf(format, a...)}
}

// exitCode decides, in one place, the exit code for an error.
func exitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	var ce *config.Error
	if errors.As(err, &ce) {
		return ExitUsage
	}
	msg := err.Error()
	// cobra reports argument and command mistakes as plain errors.
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "accepts ", "requires at least", "requires at most", "invalid argument", "flag needs an argument", "required flag"} {
		if strings.HasPrefix(msg, p) {
			return ExitUsage
		}
	}
	return ExitFailed
}
