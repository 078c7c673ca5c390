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
// What the reference shows and a mount must not, or shows differently for
// reasons of its own, is set aside, each rule with its reason:
//
//   - Directory modification times are not taken from umoci: an extractor
//     stamps a directory it creates for a child (an implied directory, or
//     one whose entry comes after its contents) with the time of
//     extraction, and umoci 0.4.7 sets a directory time past the year
//     2262 to -2^31. The mount's directories that the image names with an
//     entry of their own are checked against the layer tars instead.
//   - Extended attributes named trusted.overlay.* are left out: nibble
//     filters the image's (DESIGN.md, decision 9), and overlayfs hides its
//     own. Every other xattr, security.* included, is compared.
//   - The format's own files at the root of a layer's tar stream
//     (stargz.index.json and the prefetch landmarks) are dropped from the
//     reference: readers hide them.
//   - Layers from the upstream builder carry TOC times rounded to the
//     second, where the tar keeps nanoseconds (which stat truncates), so
//     for them a time one second later than the reference's is accepted
//     when the reference's is at least half a second past its second.
//   - Link counts are compared only where no layer deletes a hard link:
//     overlayfs reports the lower file's own count.
//   - umoci 0.4.7 (Debian 12) reads tar and tar+gzip layers only: a zstd
//     layer goes into its layout decompressed, as a tar layer with the
//     same diff ID, so it extracts exactly the stream the zstd blob holds.
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
