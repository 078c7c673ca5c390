package registrytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

var kinds = []struct {
	name  string
	start func(testing.TB) *Registry
}{
	{"docker-registry", func(t testing.TB) *Registry { return Start(t) }},
	{"in-process", StartInProcess},
}

// TestPushPullRange pushes a random image, reads it back whole, and reads a
// byte range of one of its blobs, against both kinds of registry.
func TestPushPullRange(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			r := k.start(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()

			ref, err := name.ParseReference(r.Repo("registrytest/img") + ":v1")
			if err != nil {
				t.Fatal(err)
			}
			if got := ref.Context().Registry.Scheme(); got != "http" {
				t.Fatalf("scheme of %s = %s, want http", ref, got)
			}
			img, err := random.Image(64<<10, 3)
			if err != nil {
				t.Fatal(err)
			}
			if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
				t.Fatalf("push: %v", err)
			}

			got, err := remote.Image(ref, remote.WithContext(ctx))
			if err != nil {
				t.Fatalf("pull: %v", err)
			}
			wantDigest, err := img.Digest()
			if err != nil {
				t.Fatal(err)
			}
			gotDigest, err := got.Digest()
			if err != nil {
				t.Fatal(err)
			}
			if gotDigest != wantDigest {
				t.Fatalf("pulled manifest %s, pushed %s", gotDigest, wantDigest)
			}
			layers, err := got.Layers()
			if err != nil {
				t.Fatal(err)
			}
			if len(layers) != 3 {
				t.Fatalf("pulled %d layers, want 3", len(layers))
			}
			layer := layers[1]
			rc, err := layer.Compressed() // verifies digest and size at EOF
			if err != nil {
				t.Fatal(err)
			}
			blob, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatalf("read layer: %v", err)
			}
			d, err := layer.Digest()
			if err != nil {
				t.Fatal(err)
			}

			blobURL := fmt.Sprintf("%s/v2/registrytest/img/blobs/%s", r.URL(), d)
			for _, rg := range []struct{ from, to int }{
				{0, 0},
				{100, 4195},
				{len(blob) - 10, len(blob) - 1},
			} {
				part := getRange(ctx, t, blobURL, rg.from, rg.to)
				if want := blob[rg.from : rg.to+1]; !bytes.Equal(part, want) {
					t.Errorf("range %d-%d: got %d bytes that differ from the blob's %d", rg.from, rg.to, len(part), len(want))
				}
			}
		})
	}
}

func getRange(ctx context.Context, t *testing.T, url string, from, to int) []byte {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", from, to))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent {
		t.Fatalf("GET %s range %d-%d: %s, want 206", url, from, to, resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStopped checks that a registry no longer answers once its test ends.
func TestStopped(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			var url string
			t.Run("use", func(t *testing.T) {
				r := k.start(t)
				url = r.URL() + "/v2/"
				resp, err := http.Get(url)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("GET %s: %s", url, resp.Status)
				}
			})
			if url == "" {
				t.Fatal("registry did not start")
			}
			client := &http.Client{Timeout: 5 * time.Second}
			resp, err := client.Get(url)
			if err == nil {
				resp.Body.Close()
				t.Fatalf("GET %s after cleanup: %s, want connection refused", url, resp.Status)
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("GET %s after cleanup: %v, want connection refused", url, err)
			}
		})
	}
}

// TestDir checks that the real registry stores pushed blobs in Dir.
func TestDir(t *testing.T) {
	r := Start(t)
	ref, err := name.ParseReference(r.Repo("registrytest/dir") + ":v1")
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push: %v", err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(r.Dir(), "docker/registry/v2/blobs/sha256", d.Hex[:2], d.Hex, "data")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("manifest blob not in storage dir: %v", err)
	}
}

func TestServicesRequired(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want bool
	}{
		{map[string]string{}, false},
		{map[string]string{"CI": "true"}, true},
		{map[string]string{"CI": "1"}, true},
		{map[string]string{"CI": "false"}, false},
		{map[string]string{"CI": "yes-please"}, false},
		{map[string]string{"NIBBLE_REQUIRE_SERVICES": "1"}, true},
		{map[string]string{"NIBBLE_REQUIRE_SERVICES": "0", "CI": ""}, false},
		{map[string]string{"NIBBLE_REQUIRE_SERVICES": "true", "CI": "false"}, true},
	} {
		got := servicesRequired(func(k string) string { return tc.env[k] })
		if got != tc.want {
			t.Errorf("servicesRequired(%v) = %v, want %v", tc.env, got, tc.want)
		}
	}
}

func TestMissingBinary(t *testing.T) {
	_, err := findBinary(filepath.Join(t.TempDir(), "no-such-registry"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("findBinary(missing) = %v, want ErrNotExist", err)
	}
	notExec := filepath.Join(t.TempDir(), "registry")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := findBinary(notExec); err == nil {
		t.Fatal("findBinary(not executable) succeeded")
	}
}

// TestMissingBinarySkipOrFail runs Start with a missing binary in a child
// test process: it must skip there unless services are required, and fail
// when they are.
func TestMissingBinarySkipOrFail(t *testing.T) {
	if os.Getenv("REGISTRYTEST_CHILD") == "1" {
		Start(t, WithBinary("/nonexistent/docker-registry"))
		t.Fatal("Start returned without a registry")
	}
	for _, tc := range []struct {
		env      []string
		wantFail bool
	}{
		{[]string{"CI=", "NIBBLE_REQUIRE_SERVICES="}, false},
		{[]string{"CI=true", "NIBBLE_REQUIRE_SERVICES="}, true},
		{[]string{"CI=", "NIBBLE_REQUIRE_SERVICES=1"}, true},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMissingBinarySkipOrFail$", "-test.v")
		cmd.Env = append(os.Environ(), "REGISTRYTEST_CHILD=1")
		cmd.Env = append(cmd.Env, tc.env...)
		out, err := cmd.CombinedOutput()
		failed := err != nil
		if failed != tc.wantFail {
			t.Errorf("%v: child failed = %v, want %v; output:\n%s", tc.env, failed, tc.wantFail, out)
		}
		if !tc.wantFail && !bytes.Contains(out, []byte("--- SKIP")) {
			t.Errorf("%v: child did not skip; output:\n%s", tc.env, out)
		}
	}
}
