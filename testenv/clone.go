package testenv

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Server builds without client programs (the npm builds of pgdist.go carry
// only initdb, pg_ctl and postgres) need two things done in Go that the
// sandbox otherwise leaves to pg_basebackup and pg_rewind:
//
//   - a replica is cloned with the low-level backup API over one SQL
//     session ("Making a Base Backup Using the Low Level API" in the
//     PostgreSQL documentation): create the replica's slot with its WAL
//     reserved, start a non-exclusive backup, copy the data directory
//     without the files the documentation says to leave out, stop the
//     backup and write the backup_label (and tablespace_map) it returns
//     into the copy;
//   - the sandbox's rejoin command, without pg_rewind, re-clones the node
//     from the new primary the same way: `replctl testenv clone`, which a
//     test binary also answers (see init below).

// cloneTool says whether prog, in the server's bin directory, can be used
// against the server: it must be there and not older than the server's
// major (an older pg_basebackup refuses a newer server).
func (in *install) hasTool(prog string) bool {
	toolMu.Lock()
	defer toolMu.Unlock()
	key := in.binDir + "\x00" + prog
	if ok, seen := toolOK[key]; seen {
		return ok
	}
	ok := false
	if isFile(in.bin(prog)) {
		out, err := exec.Command(in.bin(prog), "--version").Output()
		if m := regexp.MustCompile(`\(PostgreSQL\) (\d+)`).FindSubmatch(out); err == nil && m != nil {
			v, _ := strconv.Atoi(string(m[1]))
			ok = v >= in.major
		}
	}
	toolOK[key] = ok
	return ok
}

var (
	toolMu sync.Mutex
	toolOK = map[string]bool{}
)

// cloneNode makes n.DataDir (which must not exist) a copy of the server
// reached by upstream (a libpq conninfo without dbname), configured as a
// standby of it with the slot named after n: with pg_basebackup when the
// server's own is there, else with the low-level backup API.
func (in *install) cloneNode(ctx context.Context, n *Node, upstream string) error {
	if in.hasTool("pg_basebackup") {
		err := in.run(ctx, "pg_basebackup", "-d", upstream,
			"-D", n.DataDir, "-X", "stream", "-c", "fast", "--no-sync", "-C", "-S", n.Name)
		if err != nil {
			return err
		}
	} else if err := in.backupCopy(ctx, n, upstream, n.Name); err != nil {
		return err
	}
	return in.configureStandby(n.DataDir, n, upstream)
}

// backupCopy clones the server at upstream into n.DataDir with the
// low-level backup API, creating (or re-reserving) slot there first, so
// that the WAL the copy needs from the backup's start is kept for it.
func (in *install) backupCopy(ctx context.Context, n *Node, upstream, slot string) (err error) {
	conn, err := pgx.Connect(ctx, upstream+" dbname=postgres application_name=replctl_testenv_clone")
	if err != nil {
		return fmt.Errorf("clone %s: connect: %w", n.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var vnum int
	var srcDir string
	if err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, current_setting('data_directory')`).Scan(&vnum, &srcDir); err != nil {
		return fmt.Errorf("clone %s: %w", n.Name, err)
	}
	if err := ensureReservedSlot(ctx, conn, slot); err != nil {
		return fmt.Errorf("clone %s: slot %s: %w", n.Name, slot, err)
	}
	label := "replctl testenv clone " + n.Name
	start, stop := `SELECT pg_backup_start($1, true)`, `SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)`
	if vnum < 150000 {
		// Non-exclusive (third argument false): the backup belongs to this
		// session, and ends with it if anything below fails.
		start, stop = `SELECT pg_start_backup($1, true, false)`, `SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)`
	}
	if _, err := conn.Exec(ctx, start, label); err != nil {
		return fmt.Errorf("clone %s: start backup: %w", n.Name, err)
	}
	if err := in.copyDataDir(ctx, srcDir, n.DataDir); err != nil {
		return fmt.Errorf("clone %s: %w", n.Name, err)
	}
	var lsn, labelFile string
	var spcmap *string
	if err := conn.QueryRow(ctx, stop).Scan(&lsn, &labelFile, &spcmap); err != nil {
		return fmt.Errorf("clone %s: stop backup: %w", n.Name, err)
	}
	if err := in.writeFile(filepath.Join(n.DataDir, "backup_label"), []byte(labelFile)); err != nil {
		return fmt.Errorf("clone %s: %w", n.Name, err)
	}
	if spcmap != nil && *spcmap != "" {
		if err := in.writeFile(filepath.Join(n.DataDir, "tablespace_map"), []byte(*spcmap)); err != nil {
			return fmt.Errorf("clone %s: %w", n.Name, err)
		}
	}
	return nil
}

// ensureReservedSlot creates a physical slot that reserves WAL at once. An
// existing slot is kept unless it reserves nothing (restart_lsn null, as
// created without immediately_reserve) and is idle: then it is made anew.
func ensureReservedSlot(ctx context.Context, conn *pgx.Conn, slot string) error {
	var exists, reserved, active bool
	err := conn.QueryRow(ctx, `SELECT true, restart_lsn IS NOT NULL, active FROM pg_replication_slots WHERE slot_name = $1`, slot).
		Scan(&exists, &reserved, &active)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	if exists && (reserved || active) {
		return nil
	}
	if exists {
		if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot); err != nil {
			return err
		}
	}
	_, err = conn.Exec(ctx, `SELECT pg_create_physical_replication_slot($1, true)`, slot)
	return err
}

// Left out of a copy, after the documentation's list (and basebackup.c):
// the directories whose content is not copied (the directories themselves
// are), and files not copied wherever they are.
var (
	cloneEmptyDirs = map[string]bool{
		"pg_wal": true, "pg_replslot": true, "pg_dynshmem": true, "pg_notify": true, "pg_serial": true,
		"pg_snapshots": true, "pg_stat_tmp": true, "pg_subtrans": true,
	}
	cloneSkipTop = map[string]bool{
		"postmaster.pid": true, "postmaster.opts": true, "backup_label": true, "tablespace_map": true,
		"backup_label.old": true, "backup_manifest": true, "current_logfiles": true,
		"postgresql.auto.conf.tmp": true, "standby.signal": true, "recovery.signal": true,
	}
)

// copyDataDir copies a running server's data directory for a backup:
// files that vanish while it walks (temporary files, dropped relations)
// are skipped, as the documentation allows; every copy belongs to the
// postgres user, directories 0700 and files 0600.
func (in *install) copyDataDir(ctx context.Context, src, dst string) error {
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		base := d.Name()
		if rel != "." {
			if strings.HasPrefix(base, "pgsql_tmp") || base == "pg_internal.init" ||
				!strings.Contains(rel, string(filepath.Separator)) && cloneSkipTop[rel] {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			if parent := filepath.Dir(rel); cloneEmptyDirs[parent] {
				// pg_wal/archive_status (and summaries, 17+) are made empty.
				if d.IsDir() && parent == "pg_wal" {
					if err := in.mkdirOwned(filepath.Join(dst, rel)); err != nil {
						return err
					}
					return filepath.SkipDir
				}
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return in.mkdirOwned(target)
		case d.Type()&fs.ModeSymlink != 0:
			// pg_tblspc entries, a pg_wal elsewhere: the sandbox makes none,
			// and a link to the source's storage is kept as it is.
			link, err := os.Readlink(p)
			if err != nil {
				return ignoreGone(err)
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
			if in.user != nil {
				return os.Lchown(target, int(in.user.uid), int(in.user.gid))
			}
			return nil
		case d.Type().IsRegular():
			return in.copyFile(p, target)
		}
		return nil // sockets and the like
	})
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	// pg_wal/archive_status must exist even if the walk found none.
	for _, d := range []string{"pg_wal", filepath.Join("pg_wal", "archive_status")} {
		if err := in.mkdirOwned(filepath.Join(dst, d)); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	return nil
}

func ignoreGone(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

func (in *install) copyFile(src, dst string) error {
	r, err := os.Open(src)
	if err != nil {
		return ignoreGone(err)
	}
	defer r.Close()
	w, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(w, r)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return in.own(dst, 0o600)
}

// reexecEnv makes any binary that links this package (replctl, a test
// binary) run the clone command instead of its main: the sandbox's rejoin
// command sets it, so that a cluster built by a test is rejoined by the
// test binary itself, which has no `testenv clone` subcommand of its own.
const reexecEnv = "REPLCTL_TESTENV_REEXEC"

func init() {
	if os.Getenv(reexecEnv) != "clone" {
		return
	}
	os.Unsetenv(reexecEnv)
	args := os.Args[1:]
	for len(args) > 0 && (args[0] == "testenv" || args[0] == "clone") {
		args = args[1:]
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := RunClone(ctx, args, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "rejoin:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// cloneRejoinCommand is the node's rejoin command when the server's bin
// directory has no pg_rewind: this executable's `testenv clone`. It runs
// as the caller (root: the copy is chowned to postgres, and the servers
// are run as postgres, by the same code as Up). Empty with pg_rewind, and
// for a bin directory that holds no server (rendered configurations).
func cloneRejoinCommand(in *install, n *Node) string {
	if !isFile(in.bin("pg_ctl")) || in.hasTool("pg_rewind") {
		return ""
	}
	self, err := os.Executable()
	if err != nil {
		return ""
	}
	return reexecEnv + "=clone " + shQuote(self) + " testenv clone --bindir " + shQuote(in.binDir) +
		" --pgdata " + shQuote(n.DataDir) + " --port " + strconv.Itoa(n.Port)
}

// RunClone is `replctl testenv clone --bindir DIR --pgdata DATA --port P
// [--name NODE] [--slot SLOT]`: it stops the node in DATA if it runs,
// removes DATA, clones the server named by $REPLCTL_PRIMARY_CONNINFO into
// it with the low-level backup API (the slot: --slot, else
// $REPLCTL_PRIMARY_SLOT, else the node's name), makes it a standby of that
// server on port P and starts it. The node's name defaults to
// $REPLCTL_NODE; its log is DATA/../server.log.
func RunClone(ctx context.Context, args []string, log io.Writer) error {
	fset := flag.NewFlagSet("testenv clone", flag.ContinueOnError)
	fset.SetOutput(log)
	binDir := fset.String("bindir", "", "PostgreSQL server binaries")
	data := fset.String("pgdata", "", "the node's data directory")
	port := fset.Int("port", 0, "the node's port")
	name := fset.String("name", os.Getenv("REPLCTL_NODE"), "the node's name (slot, application_name)")
	slot := fset.String("slot", os.Getenv("REPLCTL_PRIMARY_SLOT"), "the slot on the primary (default: the name)")
	if err := fset.Parse(args); err != nil {
		return err
	}
	upstream := os.Getenv("REPLCTL_PRIMARY_CONNINFO")
	switch {
	case *binDir == "" || *data == "" || *port == 0:
		return errors.New("testenv clone: --bindir, --pgdata and --port are required")
	case *name == "" || !nodeName.MatchString(*name):
		return fmt.Errorf("testenv clone: node name %q (--name or $REPLCTL_NODE): use lower-case letters, digits and _", *name)
	case upstream == "":
		return errors.New("testenv clone: REPLCTL_PRIMARY_CONNINFO is not set")
	}
	if *slot == "" {
		*slot = *name
	}
	in, err := findInstallIn(ctx, *binDir)
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(*data)
	if err != nil {
		return err
	}
	n := &Node{Name: *name, Port: *port, DataDir: abs, LogPath: filepath.Join(filepath.Dir(abs), "server.log")}
	fmt.Fprintf(log, "rejoin: no pg_rewind in %s: re-cloning %s from the new primary with the low-level backup API\n", in.binDir, n.Name)
	begin := time.Now()
	if err := in.stopServer(ctx, n, "fast"); err != nil {
		return err
	}
	if err := os.RemoveAll(n.DataDir); err != nil {
		return err
	}
	if err := in.backupCopy(ctx, n, upstream, *slot); err != nil {
		return err
	}
	// The slot is the primary's, whatever the node's name.
	if err := in.configureStandby(n.DataDir, n, upstream); err != nil {
		return err
	}
	if *slot != n.Name {
		if err := in.setAutoConf(n.DataDir, []setting{{"primary_slot_name", *slot}}); err != nil {
			return err
		}
	}
	if err := in.startServer(ctx, n); err != nil {
		return err
	}
	fmt.Fprintf(log, "rejoin: %s re-cloned and started as a standby in %s\n", n.Name, time.Since(begin).Round(time.Millisecond))
	return nil
}
