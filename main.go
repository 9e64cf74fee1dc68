// Command replctl discovers, reports on and safely promotes PostgreSQL
// replication clusters, fenced by an etcd lease lock.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/replctl/replctl/cmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cmd.Main(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
