package imageref

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	specs "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in             string
		kind           Kind
		dir, tag, name string
		err            bool
	}{
		{in: "oci:/tmp/img", kind: Layout, dir: "/tmp/img"},
		{in: "oci:/tmp/img:v1", kind: Layout, dir: "/tmp/img", tag: "v1"},
		{in: "oci:rel/dir:latest", kind: Layout, dir: "rel/dir", tag: "latest"},
		{in: "oci:a:b/c", kind: Layout, dir: "a:b/c"},
		{in: "oci:./x:my-tag.1", kind: Layout, dir: "./x", tag: "my-tag.1"},
		{in: "oci:", err: true},
		{in: "oci::tag", err: true},
		{in: "oci:/tmp/img:", err: true},
		{in: "127.0.0.1:5000/repo:tag", kind: Registry, name: "127.0.0.1:5000/repo:tag"},
		{in: "localhost:5000/a/b", kind: Registry, name: "localhost:5000/a/b:latest"},
		{in: "registry.example.com/team/app@sha256:" + strings.Repeat("a", 64), kind: Registry, name: "registry.example.com/team/app@sha256:" + strings.Repeat("a", 64)},
		{in: "[::1]:5000/repo:v2", kind: Registry, name: "[::1]:5000/repo:v2"},
		{in: "debian", kind: Registry, name: "index.docker.io/library/debian:latest"},
		{in: "", err: true},
		{in: "https://example.com/repo", err: true},
		{in: "Upper/Case", err: true},
		{in: "host/repo:bad tag", err: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			l, err := Parse(tc.in)
			if tc.err {
				if !errors.Is(err, ErrLocation) {
					t.Fatalf("Parse(%q) = %v, %v; want ErrLocation", tc.in, l, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if l.Kind() != tc.kind || l.Dir() != tc.dir || l.Tag() != tc.tag {
				t.Errorf("Parse(%q) = kind %v dir %q tag %q", tc.in, l.Kind(), l.Dir(), l.Tag())
			}
			if tc.kind == Registry && l.Ref().Name() != tc.name {
				t.Errorf("Parse(%q) ref %q, want %q", tc.in, l.Ref().Name(), tc.name)
			}
			if again, err := Parse(l.String()); err != nil || again.String() != l.String() {
				t.Errorf("String() %q does not parse back: %v", l.String(), err)
			}
		})
	}
}

func TestIsLoopback(t *testing.T) {
	for host, want := range map[string]bool{
		"localhost": true, "localhost:5000": true, "127.0.0.1:80": true, "127.1.2.3": true,
		"[::1]:5000": true, "::1": true, "10.0.0.1:5000": false, "192.168.1.1": false,
		"example.com": false, "localhost.example.com:5000": false,
	} {
		if got := IsLoopback(host); got != want {
			t.Errorf("IsLoopback(%q) = %v", host, got)
		}
	}
}

func TestSchemeGuard(t *testing.T) {
	called := 0
	next := roundTripFunc(func(*http.Request) (*http.Response, error) {
		called++
		return &http.Response{StatusCode: 200, Body: http.NoBody}, nil
	})
	for _, tc := range []struct {
		url   string
		plain bool
		ok    bool
	}{
		{"https://10.0.0.1/v2/", false, true},
		{"http://10.0.0.1/v2/", false, false},
		{"http://registry.example.com/v2/", false, false},
		{"http://registry.example.com/v2/", true, true},
		{"http://127.0.0.1:5000/v2/", false, true},
		{"http://[::1]:5000/v2/", false, true},
	} {
		req, _ := http.NewRequest("GET", tc.url, nil)
		before := called
		_, err := schemeGuard{next: next, plainHTTP: tc.plain}.RoundTrip(req)
		if (err == nil) != tc.ok || (called > before) != tc.ok {
			t.Errorf("%s plain=%v: err %v, passed on %v", tc.url, tc.plain, err, called > before)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func randomImage(t *testing.T) v1.Image {
	t.Helper()
	img, err := random.Image(2048, 2)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestLayoutTags(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "new", "layout")
	a, b := randomImage(t), randomImage(t)
	if err := Write(ctx, MustParse("oci:"+dir+":a"), Artifact{Image: a}); err != nil {
		t.Fatal(err)
	}
	// The only image is found without a tag.
	got, err := Read(ctx, MustParse("oci:"+dir))
	if err != nil {
		t.Fatal(err)
	}
	if digest(t, got) != digest(t, Artifact{Image: a}) {
		t.Error("untagged read found another image")
	}
	if err := Write(ctx, MustParse("oci:"+dir+":b"), Artifact{Image: b}); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(ctx, MustParse("oci:"+dir)); !errors.Is(err, ErrNotFound) {
		t.Errorf("untagged read of two images: %v", err)
	}
	// Rewriting tag a replaces its entry.
	if err := Write(ctx, MustParse("oci:"+dir+":a"), Artifact{Image: b}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var im v1.IndexManifest
	if err := json.Unmarshal(raw, &im); err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 2 {
		t.Fatalf("index.json has %d entries, want 2", len(im.Manifests))
	}
	for _, tag := range []string{"a", "b"} {
		got, err := Read(ctx, MustParse("oci:"+dir+":"+tag))
		if err != nil {
			t.Fatal(err)
		}
		if digest(t, got) != digest(t, Artifact{Image: b}) {
			t.Errorf("tag %s: wrong image", tag)
		}
	}
	if _, err := Read(ctx, MustParse("oci:"+dir+":c")); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing tag: %v", err)
	}
	if im.Manifests[0].Annotations[specs.AnnotationRefName] != "b" {
		t.Errorf("entries %+v", im.Manifests)
	}
	// No temporary files are left.
	entries, _ := filepath.Glob(filepath.Join(dir, "*", "*", ".tmp-*"))
	top, _ := filepath.Glob(filepath.Join(dir, ".tmp-*"))
	if len(entries)+len(top) > 0 {
		t.Errorf("temporary files left: %v %v", entries, top)
	}
}

func digest(t *testing.T, a Artifact) v1.Hash {
	t.Helper()
	d, err := a.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestRegistryRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := httptest.NewServer(registry.New())
	defer s.Close()
	host := strings.TrimPrefix(s.URL, "http://")
	img := randomImage(t)
	loc := MustParse(host + "/r/img:v1")
	if err := Write(ctx, loc, Artifact{Image: img}); err != nil {
		t.Fatal(err)
	}
	got, err := Read(ctx, loc)
	if err != nil {
		t.Fatal(err)
	}
	if got.Image == nil || digest(t, got) != digest(t, Artifact{Image: img}) {
		t.Fatal("read back another image")
	}
	// Registry to layout and back through an index.
	idx, err := random.Index(1024, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := Write(ctx, MustParse(host+"/r/idx:v1"), Artifact{Index: idx}); err != nil {
		t.Fatal(err)
	}
	got, err = Read(ctx, MustParse(host+"/r/idx:v1"))
	if err != nil || got.Index == nil {
		t.Fatalf("read index: %v", err)
	}
	lay := MustParse("oci:" + t.TempDir() + ":idx")
	if err := Write(ctx, lay, got); err != nil {
		t.Fatal(err)
	}
	back, err := Read(ctx, lay)
	if err != nil || back.Index == nil || digest(t, back) != digest(t, Artifact{Index: idx}) {
		t.Fatalf("layout index: %v", err)
	}
	if _, err := Read(ctx, MustParse(host+"/r/missing:v1")); err == nil {
		t.Error("read a missing image")
	}
}
