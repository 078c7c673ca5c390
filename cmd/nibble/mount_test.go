package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/mount/mounttest"
	"nibble.dev/nibble/internal/registrytest"
	"nibble.dev/nibble/internal/server"
	"nibble.dev/nibble/internal/tartest"
)

// TestMount mounts an image with nibble mount, reads it, checks nibble
// status, refuses a hostile image, and unmounts with nibble umount, after
// which nothing is mounted and the serving process has exited.
func TestMount(t *testing.T) {
	if os.Geteuid() != 0 {
		registrytest.SkipOrFatal(t, "nibble mount needs root")
	}
	bin := buildNibble(t)
	reg := registrytest.StartInProcess(t)
	tars := tartest.ThreeLayers(t)
	ref := reg.Repo("three:v1")
	mounttest.Push(t, ref, mounttest.Convert(t, tars[0], format.WithChunkSize(64<<10)),
		mounttest.Gzip(t, tars[1]), mounttest.Convert(t, tars[2]))
	hostile := reg.Repo("hostile:v1")
	mounttest.Push(t, hostile, mounttest.Hostile(t))

	root := t.TempDir()
	env := []string{"NIBBLE_ROOT=" + root, server.EnvAddress + "=" + filepath.Join(root, "nibble.sock")}
	dir, dir2 := t.TempDir(), t.TempDir()
	pid := 0
	t.Cleanup(func() {
		// Last resorts, for a test that failed half way.
		run(t, bin, env, "umount", "--force", dir)
		mounttest.Detach(t, dir)
		mounttest.Detach(t, root)
		if pid > 0 && alive(pid) {
			syscall.Kill(pid, syscall.SIGTERM)
		}
	})

	stdout, stderr, err := run(t, bin, env, "mount", "--no-background", ref, dir)
	if err != nil || stdout != "" || stderr != "" {
		t.Fatalf("mount: %v\nstdout %q\nstderr %q", err, stdout, stderr)
	}
	if _, err := os.ReadFile(filepath.Join(dir, "etc/hostname")); err != nil {
		t.Fatal(err)
	}

	st := status(t, bin, env, dir)
	pid = st.PID
	if len(st.Mounts) != 1 || len(st.Mounts[0].Layers) != 3 || st.Root != root {
		t.Fatalf("status: %+v", st)
	}
	m := st.Mounts[0]
	if m.Dir != dir || m.Ref != ref || m.FetchedBytes <= 0 || m.FetchedBytes >= m.TotalBytes || m.Complete {
		t.Errorf("after reading one file: %+v", m)
	}
	// Layer 1 is local, so complete; layer 0 is lazy and mostly unread;
	// layer 2 is one small member, complete or not.
	for i, l := range m.Layers {
		if l.Lazy != (i != 1) || (i < 2 && l.Complete != !l.Lazy) || !strings.HasPrefix(l.Digest, "sha256:") || l.TotalBytes <= 0 {
			t.Errorf("layer %d: %+v", i, l)
		}
	}
	if !strings.Contains(m.Layers[1].NotLazyReason, "not seekable") {
		t.Errorf("layer 2 not lazy because %q", m.Layers[1].NotLazyReason)
	}

	stdout, _, err = run(t, bin, env, "status")
	if err != nil || !strings.Contains(stdout, dir) || !strings.Contains(stdout, "no: not seekable") {
		t.Errorf("status: %v\n%s", err, stdout)
	}
	t.Logf("nibble status:\n%s", stdout)

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"mount", hostile, dir2}, "escapes the layer root"},
		{[]string{"mount", ref, dir}, "already mounted"},
		{[]string{"mount", ref, filepath.Join(dir2, "missing")}, "no such file"},
		{[]string{"umount", dir2}, "not mounted by nibble"},
	} {
		stdout, stderr, err := run(t, bin, env, tc.args...)
		if err == nil || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: %v\nstdout %q\nstderr %q, want one line with %q", tc.args, err, stdout, stderr, tc.want)
		}
	}

	mounttest.Compare(t, dir, tars)
	// Compare read every file of the merged view; the top layer's files
	// are all in it, the bottom layer's not (later layers hide some).
	if m := status(t, bin, env, dir).Mounts[0]; m.Complete || m.Layers[0].Complete || !m.Layers[2].Complete {
		t.Errorf("after reading every file: %+v", m)
	}
	// A second mount of the image, fetching in the background, completes
	// it; the first mount's layers share the node's cache.
	if _, stderr, err := run(t, bin, env, "mount", ref, dir2); err != nil {
		t.Fatalf("mount: %v\n%s", err, stderr)
	}
	deadline := time.Now().Add(time.Minute)
	for !status(t, bin, env, dir2).Mounts[0].Complete {
		if time.Now().After(deadline) {
			t.Fatalf("not complete a minute after a mount with background fetching: %+v", status(t, bin, env, dir2))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if m := status(t, bin, env, dir).Mounts[0]; !m.Complete {
		t.Errorf("the first mount is not complete once the second is: %+v", m)
	}
	if stdout, _, err := run(t, bin, env, "status", dir); err != nil || !strings.Contains(stdout, "; complete (all in the cache)") {
		t.Errorf("status %s: %v\n%s", dir, err, stdout)
	}
	if _, stderr, err := run(t, bin, env, "umount", dir2); err != nil {
		t.Fatalf("umount: %v\n%s", err, stderr)
	}

	if _, stderr, err := run(t, bin, env, "umount", dir); err != nil {
		t.Fatalf("umount: %v\n%s", err, stderr)
	}
	if ms := append(mounttest.Mounted(t, dir), mounttest.Mounted(t, root)...); len(ms) > 0 {
		t.Errorf("still mounted after umount: %q", ms)
	}
	deadline = time.Now().Add(15 * time.Second)
	for alive(pid) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if alive(pid) {
		t.Errorf("the server (pid %d) did not exit after its last unmount", pid)
	}
	if stdout, _, err := run(t, bin, env, "status"); err != nil || !strings.Contains(stdout, "no images mounted") {
		t.Errorf("status after umount: %v %q", err, stdout)
	}
	if b, err := os.ReadFile(filepath.Join(root, "nibble.log")); err != nil || !strings.Contains(string(b), `"msg":"mounted"`) {
		t.Errorf("log: %v\n%s", err, b)
	}
}

// alive reports whether process pid exists (and is not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] != "Z"
}

// status runs nibble status --json [DIR].
func status(t *testing.T, bin string, env []string, dir string) *server.Status {
	t.Helper()
	args := []string{"status", "--json"}
	if dir != "" {
		args = append(args, dir)
	}
	stdout, stderr, err := run(t, bin, env, args...)
	if err != nil {
		t.Fatalf("status: %v\n%s", err, stderr)
	}
	var st server.Status
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, stdout)
	}
	return &st
}

// TestOrphan: a serving process killed with SIGKILL leaves its mount
// orphaned. nibble status lists it; nibble mount at the same directory
// replaces it rather than stacking on it; nibble umount releases one, and
// nothing stays mounted.
func TestOrphan(t *testing.T) {
	if os.Geteuid() != 0 {
		registrytest.SkipOrFatal(t, "nibble mount needs root")
	}
	bin := buildNibble(t)
	reg := registrytest.StartInProcess(t)
	tars := tartest.ThreeLayers(t)
	ref := reg.Repo("one:v1")
	mounttest.Push(t, ref, mounttest.Convert(t, tars[0]))
	root := t.TempDir()
	env := []string{"NIBBLE_ROOT=" + root, server.EnvAddress + "=" + filepath.Join(root, "nibble.sock")}
	dir := t.TempDir()
	t.Cleanup(func() {
		run(t, bin, env, "umount", "--force", dir)
		mounttest.Detach(t, dir)
		mounttest.Detach(t, root)
	})
	// kill mounts the image at dir and kills its server.
	kill := func() {
		t.Helper()
		if _, stderr, err := run(t, bin, env, "mount", "--no-background", ref, dir); err != nil {
			t.Fatalf("mount: %v\n%s", err, stderr)
		}
		if n := len(mounttest.Mounted(t, dir)); n != 1 {
			t.Fatalf("%d mounts at %s, want 1", n, dir)
		}
		pid := status(t, bin, env, "").PID
		syscall.Kill(pid, syscall.SIGKILL)
		for alive(pid) {
			time.Sleep(10 * time.Millisecond)
		}
	}

	kill()
	if _, err := os.ReadDir(dir); !errors.Is(err, syscall.ENOTCONN) && !errors.Is(err, syscall.ECONNABORTED) {
		t.Fatalf("reading an orphaned mount: %v, want ENOTCONN or ECONNABORTED", err)
	}
	st := status(t, bin, env, "")
	if st.PID != 0 || len(st.Orphans) != 1 || st.Orphans[0].Dir != dir || filepath.Dir(st.Orphans[0].State) != filepath.Join(root, "m") {
		t.Fatalf("status with an orphan: %+v", st)
	}
	if stdout, _, err := run(t, bin, env, "status"); err != nil || !strings.Contains(stdout, dir+": orphaned") {
		t.Errorf("status: %v\n%s", err, stdout)
	}
	if _, stderr, err := run(t, bin, env, "status", dir); err == nil || !strings.Contains(stderr, dir+": orphaned") {
		t.Errorf("status %s: %v\n%s", dir, err, stderr)
	}

	// A new mount at dir replaces the orphan: kill checks that dir has
	// one mount, and the orphan's layer is gone too.
	kill()
	if ms := mounttest.Mounted(t, filepath.Join(root, "m")); len(ms) != 1 {
		t.Errorf("layer mounts %q, want the new mount's one layer", ms)
	}

	_, stderr, err := run(t, bin, env, "umount", dir)
	if err != nil || !strings.Contains(stderr, "released the orphaned mount") {
		t.Fatalf("umount of an orphan: %v\n%s", err, stderr)
	}
	if ms := append(mounttest.Mounted(t, dir), mounttest.Mounted(t, root)...); len(ms) > 0 {
		t.Errorf("still mounted after umount: %q", ms)
	}
	if des, err := os.ReadDir(filepath.Join(root, "m")); err != nil || len(des) != 0 {
		t.Errorf("state directories left: %v %v", des, err)
	}
	if _, stderr, err := run(t, bin, env, "umount", dir); err == nil || !strings.Contains(stderr, "not mounted by nibble") {
		t.Errorf("umount again: %v\n%s", err, stderr)
	}
}
