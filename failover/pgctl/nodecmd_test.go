package pgctl

import (
	"strings"
	"testing"
	"time"

	"github.com/replctl/replctl/config"
)

func TestRunNodeCommand(t *testing.T) {
	t.Parallel()
	n := config.Node{Name: "pg9", DSN: "host=a password=topsecret", Commands: config.NodeCommands{
		Stop:   `echo "stopping $REPLCTL_NODE via $REPLCTL_PRIMARY_CONNINFO"`,
		Start:  "echo oops topsecret >&2; exit 3",
		Kill:   "sleep 30",
		Rejoin: "",
	}}
	res, err := RunNodeCommand(t.Context(), n, ActionStop, 5*time.Second, map[string]string{"REPLCTL_PRIMARY_CONNINFO": "host=b"})
	if err != nil || !strings.Contains(res.Output, "stopping pg9 via host=b") || res.ExitCode != 0 {
		t.Fatalf("stop: %v %+v", err, res)
	}
	res, err = RunNodeCommand(t.Context(), n, ActionStart, 5*time.Second, nil)
	if err == nil || res.ExitCode != 3 || !strings.Contains(err.Error(), "exit 3") {
		t.Fatalf("start: %v %+v", err, res)
	}
	if strings.Contains(res.Output+err.Error(), "topsecret") {
		t.Errorf("password leaked: %q %q", res.Output, err)
	}
	start := time.Now()
	_, err = RunNodeCommand(t.Context(), n, ActionKill, 300*time.Millisecond, nil)
	if err == nil || !strings.Contains(err.Error(), "timed out") || time.Since(start) > 10*time.Second {
		t.Fatalf("kill: %v after %s", err, time.Since(start))
	}
	if _, err = RunNodeCommand(t.Context(), n, ActionRejoin, time.Second, nil); err == nil || !strings.Contains(err.Error(), "no commands.rejoin") {
		t.Fatalf("rejoin: %v", err)
	}
}
