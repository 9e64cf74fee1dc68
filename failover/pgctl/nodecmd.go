package pgctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/replctl/replctl/config"
)

// Node command actions, the keys of a node's commands section.
const (
	ActionStop   = "stop"
	ActionStart  = "start"
	ActionKill   = "kill"
	ActionFence  = "fence"
	ActionRejoin = "rejoin"
)

// CommandFor returns the configured shell command for an action, or "".
func CommandFor(n config.Node, action string) string {
	switch action {
	case ActionStop:
		return n.Commands.Stop
	case ActionStart:
		return n.Commands.Start
	case ActionKill:
		return n.Commands.Kill
	case ActionFence:
		return n.Commands.Fence
	case ActionRejoin:
		return n.Commands.Rejoin
	}
	return ""
}

// CommandResult is what a node command did, kept for the report.
type CommandResult struct {
	Node     string        `json:"node"`
	Action   string        `json:"action"`
	Command  string        `json:"command"`
	Output   string        `json:"output,omitempty"`
	ExitCode int           `json:"exit_code"`
	Duration time.Duration `json:"duration_ns"`
}

// maxOutput bounds the captured output kept in reports and history.
const maxOutput = 8 << 10

// RunNodeCommand runs a node's configured command for action with sh -c on
// this machine, bounded by timeout. The environment carries REPLCTL_NODE and
// any extra variables (REPLCTL_PRIMARY_CONNINFO for rejoin). On timeout the
// whole process group is killed, so an ssh or pg_ctl it started does not
// linger.
func RunNodeCommand(ctx context.Context, n config.Node, action string, timeout time.Duration, extraEnv map[string]string) (CommandResult, error) {
	line := CommandFor(n, action)
	if line == "" {
		return CommandResult{Node: n.Name, Action: action, ExitCode: -1}, fmt.Errorf("%s %s: node has no commands.%s configured", action, n.Name, action)
	}
	return runShell(ctx, action+" "+n.Name, line, n, action, timeout, extraEnv)
}

// RunHook runs hooks.NAME (line) like a node command, for node n: the
// environment carries REPLCTL_NODE (n) and the extra variables.
func RunHook(ctx context.Context, name, line string, n config.Node, timeout time.Duration, extraEnv map[string]string) (CommandResult, error) {
	return runShell(ctx, "hooks."+name, line, n, "hook "+name, timeout, extraEnv)
}

// runShell runs line with sh -c for n; what names it in errors.
func runShell(ctx context.Context, what, line string, n config.Node, action string, timeout time.Duration, extraEnv map[string]string) (CommandResult, error) {
	res := CommandResult{Node: n.Name, Action: action, Command: line, ExitCode: -1}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", line)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	cmd.Env = append(os.Environ(), "REPLCTL_NODE="+n.Name)
	for k, v := range extraEnv {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	start := time.Now()
	// Killed with replctl (RunTied): a node command must not act on the
	// cluster unsupervised after the operation died. What it already set
	// off inside PostgreSQL (a shutdown, a promotion) completes; the
	// journal shows its step as begun, and recover treats it as possibly
	// done.
	err := RunTied(cmd)
	res.Duration = time.Since(start)
	res.Output = tail(config.Scrub(out.String(), n.DSN), maxOutput)
	if cmd.ProcessState != nil {
		res.ExitCode = cmd.ProcessState.ExitCode()
	}
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return res, fmt.Errorf("%s: command timed out after %s (commands run with command_timeout): %s", what, timeout, lastLine(res.Output))
		}
		return res, fmt.Errorf("%s: command failed (exit %d): %s", what, res.ExitCode, lastLine(res.Output))
	}
	res.ExitCode = 0
	return res, nil
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if s == "" {
		return "no output"
	}
	return s
}
