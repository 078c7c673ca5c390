// Package imageref names where an image lives and moves images there and
// back: a registry reference (HOST[:PORT]/REPO[:TAG|@DIGEST]) or a local OCI
// image layout (oci:DIR[:TAG]).
//
// Reads return an Artifact, which holds either one image or one index.
// Writes never leave a half-written result behind: a layout gets every blob
// first (each through a temporary file and a rename) and its index.json is
// replaced atomically last; a registry gets its manifest only after every
// blob it references.
//
// Registries are reached over HTTPS with certificate verification, except
// loopback hosts (localhost, 127.0.0.0/8, ::1), which use plain HTTP. Plain
// HTTP to any other host needs WithPlainHTTP. Credentials come from the
// docker config and its credential helpers (authn.DefaultKeychain).
package imageref

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// Kind tells what a Location points at.
type Kind int

const (
	// Registry is an image in a registry.
	Registry Kind = iota + 1
	// Layout is an image in a local OCI image layout directory.
	Layout
)

// LayoutPrefix starts a location that names an OCI image layout.
const LayoutPrefix = "oci:"

// ErrLocation reports a location string that cannot be parsed.
var ErrLocation = errors.New("imageref: bad location")

// ErrNotFound reports a location that holds no image or index, or a layout
// tag that is absent or ambiguous.
var ErrNotFound = errors.New("imageref: not found")

// Location is a parsed image location. The zero value is invalid; use Parse.
type Location struct {
	kind Kind
	// ref is set for Registry locations.
	ref name.Reference
	// dir and tag are set for Layout locations; tag may be empty.
	dir string
	tag string
}

// Parse parses "oci:DIR[:TAG]" or a registry reference
// "HOST[:PORT]/REPO[:TAG|@DIGEST]". A registry reference without a host
// refers to Docker Hub, as with docker pull; one without tag or digest
// means the tag "latest".
//
// In "oci:DIR:TAG" the tag is the text after the last colon when that
// text holds no "/"; "oci:a:b/c" is the directory "a:b/c".
func Parse(s string) (Location, error) {
	if rest, ok := strings.CutPrefix(s, LayoutPrefix); ok {
		dir, tag := rest, ""
		if i := strings.LastIndexByte(rest, ':'); i >= 0 && !strings.Contains(rest[i+1:], "/") {
			dir, tag = rest[:i], rest[i+1:]
			if tag == "" {
				return Location{}, fmt.Errorf("%w %q: empty tag after ':'", ErrLocation, s)
			}
		}
		if dir == "" {
			return Location{}, fmt.Errorf("%w %q: empty directory", ErrLocation, s)
		}
		if strings.ContainsRune(tag, 0) || strings.ContainsRune(dir, 0) {
			return Location{}, fmt.Errorf("%w %q: NUL byte", ErrLocation, s)
		}
		return Location{kind: Layout, dir: dir, tag: tag}, nil
	}
	if s == "" {
		return Location{}, fmt.Errorf("%w: empty", ErrLocation)
	}
	if strings.Contains(s, "://") {
		return Location{}, fmt.Errorf("%w %q: write a registry reference without a scheme (HOST[:PORT]/REPO[:TAG])", ErrLocation, s)
	}
	ref, err := name.ParseReference(s)
	if err != nil {
		return Location{}, fmt.Errorf("%w %q: %w", ErrLocation, s, err)
	}
	return Location{kind: Registry, ref: ref}, nil
}

// MustParse is Parse for constants in tests and examples; it panics on
// error.
func MustParse(s string) Location {
	l, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return l
}

// Kind tells whether l is a registry reference or a layout.
func (l Location) Kind() Kind { return l.kind }

// Ref is the registry reference of a Registry location, nil otherwise.
func (l Location) Ref() name.Reference { return l.ref }

// Dir is the directory of a Layout location.
func (l Location) Dir() string { return l.dir }

// Tag is the tag of a Layout location (the org.opencontainers.image.ref.name
// annotation), or "" when none was given.
func (l Location) Tag() string { return l.tag }

// String formats l the way Parse reads it.
func (l Location) String() string {
	switch l.kind {
	case Layout:
		if l.tag == "" {
			return LayoutPrefix + l.dir
		}
		return LayoutPrefix + l.dir + ":" + l.tag
	case Registry:
		return l.ref.Name()
	}
	return "<invalid location>"
}

// IsLoopback reports whether host (a registry name, with or without a
// port) is a loopback host: localhost, 127.0.0.0/8 or ::1.
func IsLoopback(host string) bool {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
