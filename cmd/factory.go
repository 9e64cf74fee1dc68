package cmd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mattn/go-isatty"

	"github.com/replctl/replctl/config"
	"github.com/replctl/replctl/failover"
	"github.com/replctl/replctl/failover/pgctl"
)

// IOStreams are the command's standard streams and what they are attached to.
type IOStreams struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer
	// StdinTTY and StdoutTTY say whether someone can be asked, and whether
	// output may be decorated.
	StdinTTY  bool
	StdoutTTY bool
}

// SystemIO returns the process's streams.
func SystemIO() *IOStreams {
	return &IOStreams{
		In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr,
		StdinTTY:  isatty.IsTerminal(os.Stdin.Fd()),
		StdoutTTY: isatty.IsTerminal(os.Stdout.Fd()),
	}
}

// Factory holds what commands share: streams, global flags and lazy
// constructors. It has no package-level state so tests build their own.
type Factory struct {
	IO *IOStreams
	// Global flags.
	ConfigPath string
	Output     string
	Timeout    time.Duration
	Verbose    bool
	// Now is the clock, injected for tests.
	Now func() time.Time
	// Executable re-executes this binary (testenv helpers).
	Executable func() (string, error)
	// Controller returns what an operation changes nodes through, each
	// call bounded by call, and a function that closes its connections.
	// Tests wrap it to inject faults at a chosen step.
	Controller func(cfg *config.Config, call time.Duration) (failover.Controller, func())

	cfgOnce sync.Once
	cfg     *config.Config
	cfgErr  error
}

// NewFactory returns a factory on the given streams.
func NewFactory(io *IOStreams) *Factory {
	return &Factory{IO: io, Now: time.Now, Executable: os.Executable, Timeout: 3 * time.Second, Output: "table", Controller: pgController}
}

// pgController is the real Controller: pgx connections and node commands.
func pgController(cfg *config.Config, call time.Duration) (failover.Controller, func()) {
	pg := pgctl.NewPG(cfg, call)
	return pg, pg.Close
}

// Config loads the configuration once.
func (f *Factory) Config() (*config.Config, error) {
	f.cfgOnce.Do(func() { f.cfg, f.cfgErr = config.Load(f.ConfigPath) })
	return f.cfg, f.cfgErr
}

// Logf prints a diagnostic line on stderr when -v is set.
func (f *Factory) Logf(format string, a ...any) {
	if f.Verbose {
		fmt.Fprintf(f.IO.ErrOut, format+"\n", a...)
	}
}

// errNoConfirm is returned when a change needs confirmation and nobody can give it.
var errNoConfirm = errors.New("no terminal to confirm on: pass --yes to proceed without confirmation")

// Confirm asks a yes/no question on the terminal, unless yes was given. It
// never proceeds silently when there is no terminal.
func (s *IOStreams) Confirm(question string, yes bool) error {
	if yes {
		return nil
	}
	if !s.StdinTTY {
		return &ExitError{Code: ExitUsage, Err: errNoConfirm}
	}
	fmt.Fprintf(s.ErrOut, "%s [y/N] ", question)
	line, _ := bufio.NewReader(s.In).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return &ExitError{Code: ExitFailed, Err: errors.New("not confirmed: nothing was changed")}
}
