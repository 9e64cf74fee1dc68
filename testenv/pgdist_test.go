package testenv

import (
	"archive/tar"
	"compress/gzip"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

func TestPinnedPG(t *testing.T) {
	t.Parallel()
	for _, major := range MatrixMajors {
		v, err := PinnedPG(major)
		if err != nil || !regexp.MustCompile(fmt.Sprintf(`^%d\.\d+\.\d+`, major)).MatchString(v) {
			t.Errorf("major %d: %q, %v", major, v, err)
		}
	}
	if _, err := PinnedPG(12); err == nil {
		t.Error("12 is not pinned")
	}
}

func TestUnpackPackage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tgz := filepath.Join(dir, "p.tgz")
	f, err := os.Create(tgz)
	if err != nil {
		t.Fatal(err)
	}
	zw := gzip.NewWriter(f)
	tw := tar.NewWriter(zw)
	add := func(name string, mode int64, body string) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	add("package/native/bin/initdb", 0o700, "#!/bin/sh\n")
	add("package/native/lib/libpq.so.5.13", 0o600, "lib")
	add("package/native/pg-symlinks.json", 0o600,
		`[{"source":"native/lib/libpq.so.5.13","target":"native/lib/libpq.so.5"},{"source":"native/lib/libpq.so.5.13","target":"native/lib/libpq.so"}]`)
	add("package/../escape", 0o644, "no")
	add("other/file", 0o644, "no")
	for _, c := range []interface{ Close() error }{tw, zw, f} {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	tree := filepath.Join(dir, "tree")
	if err := untarPackage(tgz, tree); err != nil {
		t.Fatal(err)
	}
	if err := hydrateSymlinks(tree); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(tree, "native/bin/initdb"))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("initdb: %v %v (want 0755: the postgres user runs it)", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(tree, "native/lib/libpq.so.5.13")); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("lib: %v %v (want 0644)", fi, err)
	}
	for _, l := range []string{"libpq.so.5", "libpq.so"} {
		if got, err := os.Readlink(filepath.Join(tree, "native/lib", l)); err != nil || got != "libpq.so.5.13" {
			t.Errorf("%s -> %q, %v", l, got, err)
		}
	}
	for _, p := range []string{filepath.Join(dir, "escape"), filepath.Join(tree, "escape"), filepath.Join(tree, "other")} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s unpacked", p)
		}
	}
}
