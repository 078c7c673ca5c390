package fidelity

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/mount/mounttest"
	"nibble.dev/nibble/internal/registrytest"
	"nibble.dev/nibble/internal/tartest"
)

// TestFidelityCLI mounts an image with `nibble mount` (the binary, built
// without the race detector, and its background serving process) and
// compares it with umoci's extraction: the three-layer image with the
// layer of every entry kind on top, converted by nibble.
func TestFidelityCLI(t *testing.T) {
	needRoot(t)
	umociBinary(t)
	bin := nibbleBinary(t)
	reg := registrytest.Start(t)
	tars := append(tartest.ThreeLayers(t), tartest.AllKinds(t, chunkSize))
	var layers []*blobLayer
	for _, src := range tars {
		layers = append(layers, nibbleLayer(t, src, format.WithChunkSize(chunkSize)))
	}
	ref := reg.Repo("fidelity/cli:latest")
	push(t, ref, buildImage(t, layers...))

	root := t.TempDir()
	target := filepath.Join(t.TempDir(), "rootfs")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	address := filepath.Join(root, "nibble.sock")
	run := func(args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = append(os.Environ(), "NIBBLE_ROOT="+root, "NIBBLE_ADDRESS="+address)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("nibble %s: %w\n%s", strings.Join(args, " "), err, out.Bytes())
		}
		return nil
	}
	unmounted := false
	t.Cleanup(func() {
		if !unmounted {
			if err := run("umount", "--force", target); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		if left := mounttest.Mounted(t, root); len(left) > 0 {
			t.Errorf("still mounted after umount: %q", left)
			mounttest.Detach(t, root)
		}
		if left := mounttest.Mounted(t, target); len(left) > 0 {
			t.Errorf("still mounted after umount: %q", left)
			mounttest.Detach(t, target)
		}
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(root, "nibble.log")); err == nil {
				t.Logf("nibble.log:\n%s", b)
			}
		}
	})
	if err := run("mount", ref, target); err != nil {
		t.Fatal(err)
	}

	rootfs := unpackReference(t, ref)
	reference := snapshot(t, rootfs, skipOverlayXattrs)
	dropFormatFiles(t, reference)
	got := snapshot(t, target, skipOverlayXattrs)
	requireSame(t, reference, got, compareOptions{dirTimes: explicitDirs(t, tars)})
	t.Logf("%d paths compared", len(reference))

	if err := run("umount", target); err != nil {
		t.Fatal(err)
	}
	unmounted = true
}

// nibbleBinary builds the nibble command (without the race detector: it is
// the product as users run it) into a temporary directory.
func nibbleBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "nibble")
	out, err := exec.Command("go", "build", "-o", bin, "nibble.dev/nibble/cmd/nibble").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}
