package testenv

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Etcd is a single-member etcd on 127.0.0.1 in this process, for tests that
// need etcd and no PostgreSQL. Stop and Start restart it on the same ports
// and data directory, to test what happens while it is down.
type Etcd struct {
	// Endpoint is the client address, host:port.
	Endpoint string

	dir                  string
	clientPort, peerPort int

	mu sync.Mutex
	x  *embeddedEtcd
}

// StartEtcd starts an etcd for the test, stopped by t.Cleanup. It picks
// free ports and moves to others if they are taken before etcd binds them.
func StartEtcd(t testing.TB) *Etcd {
	t.Helper()
	base := t.TempDir()
	var last error
	for attempt := range portAttempts {
		cp, err1 := freePort()
		pp, err2 := freePort()
		if err := errors.Join(err1, err2); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		// A half-made member remembers its peer URL: each attempt gets a
		// fresh data directory.
		dir := filepath.Join(base, fmt.Sprintf("etcd-%d", attempt))
		x, err := startEmbedded(context.Background(), memberConfig{dir: dir, clientPort: cp, peerPort: pp})
		if err == nil {
			e := &Etcd{Endpoint: etcdEndpoint(cp), dir: dir, clientPort: cp, peerPort: pp, x: x}
			t.Cleanup(func() { _ = e.Stop() })
			return e
		}
		last = err
		if !errors.Is(err, errPortInUse) && !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	t.Fatalf("testenv: %v", last)
	return nil
}

// Stop stops etcd; the data stays for Start. Stopping a stopped etcd does
// nothing.
func (e *Etcd) Stop() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.x != nil {
		e.x.close()
		e.x = nil
	}
	return nil
}

// Start starts a stopped etcd again on the same ports and data. Starting a
// running etcd does nothing. It fails if another process took a port
// meanwhile.
func (e *Etcd) Start() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.x != nil {
		return nil
	}
	x, err := startEmbedded(context.Background(), memberConfig{dir: e.dir, clientPort: e.clientPort, peerPort: e.peerPort})
	if err != nil {
		return fmt.Errorf("testenv: restart etcd: %w", err)
	}
	e.x = x
	return nil
}
