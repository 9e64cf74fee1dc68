package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"
)

// StateFile is the name of the state file in the cluster directory.
const StateFile = "testenv.json"

// TempPrefix starts the names of the directories Start and Up create in
// os.TempDir(); ReapStale looks for it.
const TempPrefix = "replctl-testenv-"

var (
	// ErrAlreadyUp is returned by Up and UpDetached when the directory
	// already holds a running cluster.
	ErrAlreadyUp = errors.New("testenv is already up")
	// ErrNotUp is returned by Status and Down when the directory holds no
	// cluster (Down: or nothing was left to do).
	ErrNotUp = errors.New("no testenv is up")
)

// State is the content of DIR/testenv.json. Its JSON field names are a
// stable contract: `replctl testenv status -o json` shows them.
type State struct {
	Cluster   string      `json:"cluster"`
	Dir       string      `json:"dir"`
	Config    string      `json:"config"`
	BinDir    string      `json:"pg_bindir"`
	PGVersion string      `json:"pg_version"`
	OSUser    string      `json:"os_user"`
	CreatedAt time.Time   `json:"created_at"`
	Owner     *Process    `json:"owner,omitempty"`
	Nodes     []NodeState `json:"nodes"`
	Etcd      *EtcdState  `json:"etcd,omitempty"`
	// TLS lists the certificate files of a cluster built with
	// Options.TLS (never the CA's key, which is not kept).
	TLS *TLSFiles `json:"tls,omitempty"`
}

// Process names one process for good: a PID and its start time (clock
// ticks after boot, from /proc), so that a reused PID is not mistaken for it.
type Process struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start_ticks"`
}

// Alive reports whether the process still runs.
func (p *Process) Alive() bool { return p != nil && sameProcess(p.PID, p.Start) }

// NodeState describes a node as created.
type NodeState struct {
	Name     string `json:"name"`
	Port     int    `json:"port"`
	DataDir  string `json:"data_dir"`
	Log      string `json:"log"`
	Role     Role   `json:"role"`
	Upstream string `json:"upstream,omitempty"`
	Managed  bool   `json:"managed"`
	PID      int    `json:"pid"`
}

// EtcdState describes the cluster's etcd. An in-process etcd (Up, Start)
// lives and dies with Process; a detached one (UpDetached) is Process. Its
// fields describe the first member, the only one by default.
type EtcdState struct {
	Endpoint   string  `json:"endpoint"`
	ClientPort int     `json:"client_port"`
	PeerPort   int     `json:"peer_port"`
	DataDir    string  `json:"data_dir"`
	InProcess  bool    `json:"in_process"`
	Process    Process `json:"process"`
	// Members lists every member, the first included, of an etcd of more
	// than one (Options.EtcdMembers); it is empty for a single member, so
	// that its state reads as it always did.
	Members []EtcdMemberState `json:"members,omitempty"`
}

// EtcdMemberState describes one member of a multi-member etcd. A detached
// member is Process (zero once stopped or killed by testenv); an
// in-process one lives with the process that built the cluster.
type EtcdMemberState struct {
	Name       string  `json:"name"`
	Endpoint   string  `json:"endpoint"`
	ClientPort int     `json:"client_port"`
	PeerPort   int     `json:"peer_port"`
	DataDir    string  `json:"data_dir"`
	Log        string  `json:"log,omitempty"`
	Process    Process `json:"process"`
}

// processes lists the process of every member: one for a single member.
func (e *EtcdState) processes() []Process {
	if e == nil {
		return nil
	}
	if len(e.Members) == 0 {
		return []Process{e.Process}
	}
	ps := make([]Process, len(e.Members))
	for i, m := range e.Members {
		ps[i] = m.Process
	}
	return ps
}

// detachedAlive reports whether a process of a detached etcd still runs.
func (e *EtcdState) detachedAlive() bool {
	if e == nil || e.InProcess {
		return false
	}
	for _, p := range e.processes() {
		if p.Alive() {
			return true
		}
	}
	return false
}

// StatusReport is what Status finds running.
type StatusReport struct {
	State *State          `json:"state"`
	Nodes []ProcessStatus `json:"nodes"`
	// Etcd is the first etcd member, the only one by default.
	Etcd *ProcessStatus `json:"etcd,omitempty"`
	// EtcdMembers is every member of a multi-member etcd, in order; empty
	// for a single member.
	EtcdMembers []ProcessStatus `json:"etcd_members,omitempty"`
}

// ProcessStatus tells whether one process of the cluster runs. For a node,
// PID is the one in postmaster.pid when it runs (it may have been restarted
// since creation), else the PID recorded at creation.
type ProcessStatus struct {
	Name    string `json:"name"`
	PID     int    `json:"pid"`
	Running bool   `json:"running"`
}

// Running reports whether any process of the cluster runs.
func (r *StatusReport) Running() bool {
	for _, n := range r.Nodes {
		if n.Running {
			return true
		}
	}
	for _, m := range r.EtcdMembers {
		if m.Running {
			return true
		}
	}
	return r.Etcd != nil && r.Etcd.Running
}

// ReadState reads DIR/testenv.json; ErrNotUp when there is none.
func ReadState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", dir, ErrNotUp)
	}
	if err != nil {
		return nil, err
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, StateFile), err)
	}
	return &st, nil
}

// writeState replaces the state file atomically, because Status and
// ReapStale may read it at any moment.
func writeState(dir string, st *State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.%d.tmp", StateFile, os.Getpid()))
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, StateFile))
}

// Status reports, for the cluster in dir, which processes run. A process
// counts as running only if its PID is alive and still names the same
// process: postmaster.pid names it and it works in the node's data
// directory; for etcd, its start time matches the recorded one.
func Status(dir string) (*StatusReport, error) {
	st, err := ReadState(dir)
	if err != nil {
		return nil, err
	}
	r := &StatusReport{State: st}
	for _, n := range st.Nodes {
		ps := ProcessStatus{Name: n.Name, PID: n.PID}
		if pid := postmasterPID(n.DataDir); pid != 0 {
			ps.PID, ps.Running = pid, true
		}
		r.Nodes = append(r.Nodes, ps)
	}
	if st.Etcd != nil {
		p := st.Etcd.Process
		r.Etcd = &ProcessStatus{Name: "etcd", PID: p.PID, Running: p.Alive()}
		for _, m := range st.Etcd.Members {
			r.EtcdMembers = append(r.EtcdMembers, ProcessStatus{Name: m.Name, PID: m.Process.PID, Running: m.Process.Alive()})
		}
	}
	return r, nil
}

// Down stops every process of the cluster in dir and, unless keep, removes
// dir. Servers stop with pg_ctl stop -m fast, then SIGKILL for the PID in
// postmaster.pid if still alive; every member of a detached etcd gets
// SIGTERM, then SIGKILL after 10 s. It returns an error wrapping ErrNotUp when dir holds no
// cluster, or when keep is set and nothing ran: nothing was done.
func Down(dir string, keep bool) error {
	st, err := ReadState(dir)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	in := &install{binDir: st.BinDir}
	if os.Geteuid() == 0 {
		if in.user, err = ensureUser(ctx); err != nil {
			return err
		}
	}
	var (
		mu      sync.Mutex
		errs    []error
		stopped int
		wg      sync.WaitGroup
	)
	for _, data := range dataDirs(dir, st) {
		if postmasterPID(data) == 0 {
			continue
		}
		stopped++
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := &Node{Name: filepath.Base(filepath.Dir(data)), DataDir: data}
			if err := in.stopServer(ctx, n, "fast"); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	if e := st.Etcd; e != nil && !e.InProcess {
		// Together: members stopped one by one would each wait for the
		// quorum the others already took away.
		for _, p := range e.processes() {
			if !p.Alive() {
				continue
			}
			stopped++
			wg.Go(func() {
				if !stopPID(p.PID, p.Start, 10*time.Second) {
					mu.Lock()
					errs = append(errs, fmt.Errorf("stop etcd (pid %d): still running", p.PID))
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("testenv down %s: %w", dir, err)
	}
	if keep {
		if stopped == 0 {
			return fmt.Errorf("%s: nothing running: %w", dir, ErrNotUp)
		}
		return nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("testenv down: %w", err)
	}
	return nil
}

// dataDirs lists the data directories of dir: those recorded, and any other
// DIR/*/data, for a node created after the state file was last written.
func dataDirs(dir string, st *State) []string {
	seen := map[string]bool{}
	var out []string
	if st != nil {
		for _, n := range st.Nodes {
			if !seen[n.DataDir] {
				seen[n.DataDir] = true
				out = append(out, n.DataDir)
			}
		}
	}
	found, _ := filepath.Glob(filepath.Join(dir, "*", "data"))
	for _, d := range found {
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	sort.Strings(out)
	return out
}

// ReapStale cleans up after test processes that died before their cleanup
// ran (go test kills a binary at its timeout): for every
// os.TempDir()/replctl-testenv-* whose owning process is gone, it stops the
// postmasters named by postmaster.pid in its data directories and the
// detached etcd members recorded in testenv.json, by those PIDs only, then
// removes the directory, and the port claims of dead processes (see
// claimPort). A directory whose owner still runs is left alone,
// so it is safe while other tests run. Clusters made by UpDetached are
// owned by their etcd processes (while any member runs: a fault test may
// have killed the first), so a CLI should not keep them under os.TempDir()
// with this prefix.
func ReapStale() error {
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), TempPrefix+"*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, dir := range dirs {
		st, err := ReadState(dir)
		switch {
		case errors.Is(err, ErrNotUp):
			// A directory without state may be one being set up right now.
			if fi, err := os.Stat(dir); err != nil || time.Since(fi.ModTime()) < 10*time.Minute {
				continue
			}
			st = nil
		case err != nil:
			errs = append(errs, err)
			continue
		case st.Owner.Alive() || st.Etcd.detachedAlive():
			continue
		case st.Owner == nil && !st.Etcd.hasProcess() && recent(dir):
			// A detached cluster being set up: no etcd child started yet.
			continue
		}
		for _, data := range dataDirs(dir, st) {
			if err := killPostmaster(data, syscall.SIGQUIT, 10*time.Second); err != nil {
				errs = append(errs, err)
			}
		}
		if st != nil && st.Etcd != nil && !st.Etcd.InProcess {
			for _, p := range st.Etcd.processes() {
				if !stopPID(p.PID, p.Start, 10*time.Second) {
					errs = append(errs, fmt.Errorf("reap %s: etcd (pid %d) still running", dir, p.PID))
				}
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := ReapPortClaims(); err != nil {
		errs = append(errs, fmt.Errorf("reap port claims: %w", err))
	}
	return errors.Join(errs...)
}

// hasProcess reports whether the state records an etcd process at all.
func (e *EtcdState) hasProcess() bool {
	if e == nil {
		return false
	}
	for _, p := range e.processes() {
		if p.PID != 0 {
			return true
		}
	}
	return false
}

// recent reports whether dir was modified in the last 10 minutes.
func recent(dir string) bool {
	fi, err := os.Stat(dir)
	return err == nil && time.Since(fi.ModTime()) < 10*time.Minute
}
