// Package readpath holds end-to-end tests of the lazy read path (issue 3):
// the real docker-registry, the link-emulation proxy between it and nibble,
// and nibble's remote, cache, fetch, layer and image packages or the nibble
// binary itself. It has no code of its own besides the tests.
package readpath
