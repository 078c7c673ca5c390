package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"nibble.dev/nibble/internal/imageref"
	"nibble.dev/nibble/internal/sample"
)

// buildNibble builds the binary into a temporary directory.
func buildNibble(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "nibble")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func run(t *testing.T, bin string, env []string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

var digestLine = regexp.MustCompile(`^sha256:[0-9a-f]{64}\n$`)

func TestCLI(t *testing.T) {
	bin := buildNibble(t)
	dir := t.TempDir()
	img, err := sample.Image(sample.WithSize(16 << 20))
	if err != nil {
		t.Fatal(err)
	}
	src := "oci:" + filepath.Join(dir, "src") + ":sample"
	if err := imageref.Write(context.Background(), imageref.MustParse(src), imageref.Artifact{Image: img}); err != nil {
		t.Fatal(err)
	}

	t.Run("reproducible across GOMAXPROCS", func(t *testing.T) {
		var digests []string
		for i, procs := range []string{"1", "2"} {
			dst := "oci:" + filepath.Join(dir, "out"+procs)
			stdout, stderr, err := run(t, bin, []string{"GOMAXPROCS=" + procs}, "convert", "--chunk-size", "256KiB", src, dst)
			if err != nil {
				t.Fatalf("GOMAXPROCS=%s: %v\n%s", procs, err, stderr)
			}
			if !digestLine.MatchString(stdout) || stderr != "" {
				t.Fatalf("GOMAXPROCS=%s: stdout %q stderr %q", procs, stdout, stderr)
			}
			a, err := imageref.Read(context.Background(), imageref.MustParse(dst))
			if err != nil {
				t.Fatal(err)
			}
			d, _ := a.Digest()
			if d.String() != strings.TrimSpace(stdout) {
				t.Errorf("printed %s, wrote %s", stdout, d)
			}
			digests = append(digests, strings.TrimSpace(stdout))
			if i > 0 && digests[i] != digests[0] {
				t.Errorf("GOMAXPROCS=1 gave %s, GOMAXPROCS=%s gave %s", digests[0], procs, digests[i])
			}
		}
	})

	t.Run("options", func(t *testing.T) {
		list := filepath.Join(dir, "prefetch.txt")
		os.WriteFile(list, []byte("# start-up files\napp/main.py\n\nusr/bin/python3.11\n"), 0o644)
		for _, args := range [][]string{
			{"--prefetch-list", list},
			{"--no-prefetch", "--chunk-size", "1MiB"},
			{"--zstd", "--compression-level", "1"},
			{"--platform", "linux/amd64"},
		} {
			dst := "oci:" + filepath.Join(dir, "opts") + ":" + strings.TrimLeft(args[0], "-")
			stdout, stderr, err := run(t, bin, nil, append([]string{"convert", src, dst}, args...)...)
			if err != nil || !digestLine.MatchString(stdout) {
				t.Errorf("%v: %v\nstdout %q\nstderr %q", args, err, stdout, stderr)
			}
		}
	})

	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"convert", "oci:" + filepath.Join(dir, "nothing"), "oci:" + filepath.Join(dir, "x")}, "no OCI image layout"},
			{[]string{"convert", src, "oci:" + filepath.Join(dir, "x"), "--chunk-size", "12XB"}, "size"},
			{[]string{"convert", src, "oci:" + filepath.Join(dir, "x"), "--platform", "linux/s390x"}, "platform"},
			{[]string{"convert", src}, "accepts 2 arg"},
			{[]string{"convert", src, "Not A Ref"}, "bad location"},
			{[]string{"convert", src, "oci:" + filepath.Join(dir, "x"), "--no-prefetch", "--prefetch-list", "f"}, "none of the others"},
			{[]string{"frobnicate"}, "unknown command"},
		} {
			stdout, stderr, err := run(t, bin, nil, tc.args...)
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Errorf("%v: exit %v", tc.args, err)
			}
			if stdout != "" || !strings.HasPrefix(stderr, "nibble: ") || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tc.want) {
				t.Errorf("%v: stdout %q, stderr %q; want one line with %q", tc.args, stdout, stderr, tc.want)
			}
		}
		if _, err := os.Stat(filepath.Join(dir, "x")); !os.IsNotExist(err) {
			t.Errorf("failed conversions created their destination: %v", err)
		}
	})

	t.Run("help", func(t *testing.T) {
		stdout, _, err := run(t, bin, nil, "convert", "--help")
		if err != nil || !strings.Contains(stdout, "--prefetch-list") || !strings.Contains(stdout, "oci:DIR[:TAG]") {
			t.Errorf("help: %v\n%s", err, stdout)
		}
	})

	t.Run("demo", func(t *testing.T) {
		stdout, stderr, err := run(t, bin, nil, "demo", "--size", "4MiB")
		if err != nil {
			t.Fatalf("demo: %v\n%s", err, stderr)
		}
		for _, want := range []string{"127.0.0.1:", "TOC digest", "total", "manifest  sha256:"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("demo output lacks %q:\n%s", want, stdout)
			}
		}
		t.Logf("demo:\n%s", stdout)
	})
}
