package main

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nibble.dev/nibble/internal/imageref"
	"nibble.dev/nibble/internal/registrytest"
	"nibble.dev/nibble/internal/sample"
	"nibble.dev/nibble/internal/tartest"
)

// TestCatLs converts the sample image into a registry, then reads it back
// with cat and ls and compares with the source layers merged.
func TestCatLs(t *testing.T) {
	bin := buildNibble(t)
	reg := registrytest.StartInProcess(t)
	img, err := sample.Image(sample.WithSize(8 << 20))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	src := "oci:" + filepath.Join(dir, "src") + ":sample"
	if err := imageref.Write(context.Background(), imageref.MustParse(src), imageref.Artifact{Image: img}); err != nil {
		t.Fatal(err)
	}
	ref := reg.Host() + "/sample:lazy"
	if _, stderr, err := run(t, bin, nil, "convert", src, ref); err != nil {
		t.Fatalf("convert: %v\n%s", err, stderr)
	}
	// The oracle applies the source layers as overlayfs does (the last of
	// duplicate entries wins, as in tar).
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var layers [][]tartest.Entry
	for _, l := range ls {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		es, err := tartest.Entries(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, es)
	}
	want := tartest.Merge(layers...)
	env := []string{"NIBBLE_ROOT=" + filepath.Join(dir, "root")}

	// Every regular file of the flattened image, read with cat.
	files := 0
	for name, e := range want {
		if e.Type != tar.TypeReg || strings.Contains(name, ".wh.") {
			continue
		}
		files++
		if files > 40 {
			break
		}
		stdout, stderr, err := run(t, bin, env, "cat", ref, "/"+name)
		if err != nil {
			t.Fatalf("cat %s: %v\n%s", name, err, stderr)
		}
		if got := sha(stdout); got != e.SHA256 {
			t.Errorf("cat %s: content differs (%d bytes, want %d)", name, len(stdout), e.Size)
		}
	}
	if files == 0 {
		t.Fatal("the sample image has no regular files")
	}

	// The root listing holds exactly the top-level names.
	stdout, stderr, err := run(t, bin, env, "ls", ref)
	if err != nil {
		t.Fatalf("ls: %v\n%s", err, stderr)
	}
	var top []string
	for name := range want {
		if name != "" && !strings.Contains(name, "/") && !strings.HasPrefix(name, ".wh.") {
			top = append(top, name)
		}
	}
	got := strings.Fields(stdout)
	if len(got) != len(top) {
		t.Errorf("ls / lists %q, want %d names %q", got, len(top), top)
	}
	for _, name := range top {
		if !strings.Contains("\n"+stdout, "\n"+name+"\n") {
			t.Errorf("ls / misses %q", name)
		}
	}
	// ls -l shows symlink targets.
	for name, e := range want {
		if e.Type != tar.TypeSymlink {
			continue
		}
		stdout, stderr, err := run(t, bin, env, "ls", "-l", ref, name)
		if err != nil {
			t.Fatalf("ls -l %s: %v\n%s", name, err, stderr)
		}
		if !strings.HasPrefix(stdout, "l") || !strings.HasSuffix(strings.TrimSpace(stdout), "-> "+e.Linkname) {
			t.Errorf("ls -l %s = %q, want a symlink to %q", name, stdout, e.Linkname)
		}
		break
	}

	// Clear one-line errors.
	closed := closedPort(t)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"cat", ref, "/no/such/file"}, "no such file or directory"},
		{[]string{"ls", ref, "/no/such/dir"}, "no such file or directory"},
		{[]string{"cat", ref, "/"}, "is a directory"},
		{[]string{"cat", reg.Host() + "/sample:missing", "/x"}, "not found"},
		{[]string{"ls", closed + "/sample:lazy"}, closed},
	} {
		start := time.Now()
		_, stderr, err := run(t, bin, env, tt.args...)
		if err == nil {
			t.Errorf("%q succeeded", tt.args)
			continue
		}
		if !strings.HasPrefix(stderr, "nibble: ") || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tt.want) {
			t.Errorf("%q: stderr %q, want one line mentioning %q", tt.args, stderr, tt.want)
		}
		if d := time.Since(start); d > time.Minute {
			t.Errorf("%q took %v to fail", tt.args, d)
		}
	}
}

// closedPort returns a loopback address that nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
