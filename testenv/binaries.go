package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrNoBinaries is returned when no PostgreSQL server binaries can be found.
var ErrNoBinaries = errors.New("PostgreSQL server binaries not found: install them (Debian/Ubuntu: apt-get install postgresql) or set PG_BINDIR")

// pgUser is the OS user PostgreSQL programs run as. It is only set when this
// process is root, because the server refuses to start as root.
const pgUser = "postgres"

// install is a PostgreSQL installation and the OS user to run it as.
type install struct {
	binDir  string
	version string // "15.18"
	major   int
	user    *osUser // nil: the current user
}

type osUser struct {
	name     string
	uid, gid uint32
	home     string
}

// findInstall locates the server binaries and, when root, the OS user.
func findInstall(ctx context.Context) (*install, error) { return findInstallIn(ctx, "") }

// findInstallIn is findInstall with the binaries in binDir (Options.PGBinDir),
// or found as findInstall does when binDir is empty.
func findInstallIn(ctx context.Context, binDir string) (*install, error) {
	dir, err := binDir, error(nil)
	if dir == "" {
		dir, err = findBinDir(ctx)
	} else if !isFile(filepath.Join(dir, "initdb")) {
		err = fmt.Errorf("testenv: %s has no initdb: %w", dir, ErrNoBinaries)
	}
	if err != nil {
		return nil, err
	}
	in := &install{binDir: dir}
	// pg_ctl rather than postgres: see reaper.go.
	out, err := exec.CommandContext(ctx, filepath.Join(dir, "pg_ctl"), "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("testenv: %s/pg_ctl --version: %w", dir, err)
	}
	// "pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
	m := regexp.MustCompile(`\(PostgreSQL\) (\d+)(\.\d+)?`).FindSubmatch(out)
	if m == nil {
		return nil, fmt.Errorf("testenv: cannot parse pg_ctl --version output %q", strings.TrimSpace(string(out)))
	}
	in.version = string(m[1]) + string(m[2])
	in.major, _ = strconv.Atoi(string(m[1]))
	if os.Geteuid() == 0 {
		if in.user, err = ensureUser(ctx); err != nil {
			return nil, err
		}
	}
	return in, nil
}

func findBinDir(ctx context.Context) (string, error) {
	if d := os.Getenv("PG_BINDIR"); d != "" {
		if !isFile(filepath.Join(d, "initdb")) {
			return "", fmt.Errorf("testenv: PG_BINDIR=%s has no initdb: %w", d, ErrNoBinaries)
		}
		return d, nil
	}
	// pg_config may belong to a client-only package, so its answer is
	// only trusted when the server binaries really are there.
	if out, err := exec.CommandContext(ctx, "pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if isFile(filepath.Join(d, "initdb")) {
			return d, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		return versionLess(filepath.Base(filepath.Dir(dirs[i])), filepath.Base(filepath.Dir(dirs[j])))
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if isFile(filepath.Join(dirs[i], "initdb")) {
			return dirs[i], nil
		}
	}
	return "", ErrNoBinaries
}

// versionLess compares dotted versions numerically, so that "9.6" < "10".
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		x, errx := strconv.Atoi(as[i])
		y, erry := strconv.Atoi(bs[i])
		if errx != nil || erry != nil {
			if as[i] != bs[i] {
				return as[i] < bs[i]
			}
			continue
		}
		if x != y {
			return x < y
		}
	}
	return len(as) < len(bs)
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

// userMu serialises useradd among parallel tests of one process; other
// processes racing us are handled by looking the user up again.
var userMu sync.Mutex

func ensureUser(ctx context.Context) (*osUser, error) {
	userMu.Lock()
	defer userMu.Unlock()
	u, err := user.Lookup(pgUser)
	if err != nil {
		var unknown user.UnknownUserError
		if !errors.As(err, &unknown) {
			return nil, fmt.Errorf("testenv: look up OS user %s: %w", pgUser, err)
		}
		out, aerr := exec.CommandContext(ctx, "useradd", "--system", "--user-group",
			"--home-dir", "/var/lib/postgresql", "--shell", "/bin/bash", pgUser).CombinedOutput()
		if u, err = user.Lookup(pgUser); err != nil {
			return nil, fmt.Errorf("testenv: create OS user %s: %v: %s", pgUser, aerr, bytes.TrimSpace(out))
		}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("testenv: OS user %s: %w", pgUser, err)
	}
	return &osUser{name: u.Username, uid: uint32(uid), gid: uint32(gid), home: u.HomeDir}, nil
}

// prefix is what generated shell commands put in front of a PostgreSQL
// program so that it runs as the right OS user.
func (in *install) prefix() string {
	if in.user == nil {
		return ""
	}
	return "runuser -u " + shQuote(in.user.name) + " -- "
}

func (in *install) userName() string {
	if in.user != nil {
		return in.user.name
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return strconv.Itoa(os.Getuid())
}

func (in *install) bin(prog string) string { return filepath.Join(in.binDir, prog) }

// command prepares a PostgreSQL program. libpq variables of the caller's
// environment are dropped so that they cannot redirect the programs to
// another server, and the working directory is "/" because the caller's
// may not be readable by the postgres user.
func (in *install) command(ctx context.Context, prog string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, in.bin(prog), args...)
	cmd.Dir = "/"
	cmd.WaitDelay = 10 * time.Second
	env := []string{"LC_ALL=C"}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") {
			continue
		}
		if in.user != nil && (strings.HasPrefix(kv, "HOME=") || strings.HasPrefix(kv, "USER=") || strings.HasPrefix(kv, "LOGNAME=")) {
			continue
		}
		env = append(env, kv)
	}
	if in.user != nil {
		env = append(env, "HOME="+in.user.home, "USER="+in.user.name, "LOGNAME="+in.user.name)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{
			Uid: in.user.uid, Gid: in.user.gid, Groups: []uint32{in.user.gid},
		}}
	}
	cmd.Env = env
	return cmd
}

// run runs a PostgreSQL program; the error carries the end of its output.
func (in *install) run(ctx context.Context, prog string, args ...string) error {
	out, err := in.command(ctx, prog, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", prog, err, tail(out, 15))
	}
	return nil
}

// own gives a path to the postgres user (when root) with the given mode.
func (in *install) own(path string, mode os.FileMode) error {
	if in.user != nil {
		if err := os.Chown(path, int(in.user.uid), int(in.user.gid)); err != nil {
			return err
		}
	}
	return os.Chmod(path, mode)
}

// mkdirOwned creates a directory for the postgres user.
func (in *install) mkdirOwned(path string) error {
	if err := os.Mkdir(path, 0o700); err != nil {
		return err
	}
	return in.own(path, 0o700)
}

// tail returns the last n lines of b, for error messages.
func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// fileTail returns the last n lines of a file, or a note when unreadable.
func fileTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	return tail(b, n)
}
