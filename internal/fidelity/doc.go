// Package fidelity holds the end-to-end fidelity tests of image mounts
// (issue 4): an image mounted by nibble must equal the same image
// unpacked by a reference extractor, umoci from Debian.
//
// The package has no code of its own outside its tests. The tests push
// images to the real Debian docker-registry (package registrytest), mount
// them with package mount (layer filesystems over FUSE, overlayfs on top),
// unpack them with `umoci unpack`, and compare the two trees: every path,
// its type, permission bits (setuid, setgid and sticky included), owner,
// size, modification time to the second, extended attributes, symlink
// target, device number, hard-link grouping and every byte of content
// (DESIGN.md, "Tests that matter"). On a difference they print one line
// per path and field.
//
// Two fields are compared with care:
//
//   - The modification times of directories are compared only for
//     directories that the image names with an entry of their own: an
//     extractor stamps the directories that layers only imply with the
//     time of extraction.
//   - Extended attributes named trusted.overlay.* are left out: nibble
//     filters the image's (DESIGN.md, decision 9), and overlayfs hides its
//     own.
//
// Other tests here measure a mount rather than compare it: how many bytes
// reading one small file of a 60 MB layer moves on the wire (through
// package linkproxy), and that reading every file of the sample image
// through a proxy that damages responses never yields wrong bytes.
//
// Every test mounts, so every test needs root; without root (or without
// umoci or the registry) tests skip, and fail instead where services are
// required (registrytest.ServicesRequired), as in CI.
package fidelity
