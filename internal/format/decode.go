package format

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

// Limits bound the resources that decoding an untrusted TOC may use. The
// zero value of a field means "use the default".
type Limits struct {
	// MaxTOCCompressed bounds the compressed TOC's length.
	MaxTOCCompressed int64
	// MaxTOCJSON bounds the decompressed TOC JSON's length (decompression
	// bombs stop there).
	MaxTOCJSON int64
	// MaxEntries bounds the number of TOC entries, chunk entries included.
	MaxEntries int
	// MaxNameLen bounds an entry's name and link name, in bytes.
	MaxNameLen int
	// MaxXattrBytes bounds the total size of an entry's xattr names and
	// values.
	MaxXattrBytes int
	// MaxFileSize bounds a regular file's size.
	MaxFileSize int64
}

// Default limits. A TOC as eStargz writers produce it costs about 300-400
// bytes of JSON per entry and compresses about 6:1, so a layer of one
// million files with a few large ones (a chunk entry per 4 MiB) stays well
// within them, while a hostile TOC cannot make a reader hold more than
// about 1 GiB of JSON or 4 Mi entries.
const (
	DefaultMaxTOCCompressed = 256 << 20
	DefaultMaxTOCJSON       = 1 << 30
	DefaultMaxEntries       = 4 << 20
	DefaultMaxNameLen       = 4096
	DefaultMaxXattrBytes    = 256 << 10
	DefaultMaxFileSize      = 1 << 40
)

// DefaultLimits returns the default limits (see the Default* constants).
func DefaultLimits() Limits {
	return Limits{
		MaxTOCCompressed: DefaultMaxTOCCompressed,
		MaxTOCJSON:       DefaultMaxTOCJSON,
		MaxEntries:       DefaultMaxEntries,
		MaxNameLen:       DefaultMaxNameLen,
		MaxXattrBytes:    DefaultMaxXattrBytes,
		MaxFileSize:      DefaultMaxFileSize,
	}
}

// withDefaults fills zero fields with the defaults.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxTOCCompressed <= 0 {
		l.MaxTOCCompressed = d.MaxTOCCompressed
	}
	if l.MaxTOCJSON <= 0 {
		l.MaxTOCJSON = d.MaxTOCJSON
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = d.MaxEntries
	}
	if l.MaxNameLen <= 0 {
		l.MaxNameLen = d.MaxNameLen
	}
	if l.MaxXattrBytes <= 0 {
		l.MaxXattrBytes = d.MaxXattrBytes
	}
	if l.MaxFileSize <= 0 {
		l.MaxFileSize = d.MaxFileSize
	}
	return l
}

// CheckFooter tells whether the TOC that f points at is within l, so
// that a caller can refuse it before fetching it. DecodeTOC checks the
// same again.
func (l Limits) CheckFooter(f Footer) error {
	l = l.withDefaults()
	if f.TOCLength > l.MaxTOCCompressed {
		return fmt.Errorf("%w: compressed TOC of %d bytes exceeds %d", ErrTooLarge, f.TOCLength, l.MaxTOCCompressed)
	}
	if f.TOCUncompressedLength > l.MaxTOCJSON {
		return fmt.Errorf("%w: TOC JSON of %d bytes exceeds %d", ErrTooLarge, f.TOCUncompressedLength, l.MaxTOCJSON)
	}
	return nil
}

// zstdMaxWindow bounds the window (and so the memory) a zstd frame may
// ask a decoder for. eStargz and zstd:chunked writers use windows of a
// few MiB at most.
const zstdMaxWindow = 64 << 20

// DecodeTOC decodes the TOC held in compressed, the blob's bytes
// [f.TOCOffset, f.TOCOffset+f.TOCLength) (longer input is cut there): for
// gzip kinds a gzip member holding a tar whose entry stargz.index.json is
// the JSON, for zstd kinds a zstd frame of the JSON.
//
// It returns the TOC and the digest of the uncompressed JSON: the value of
// the containerd.io/snapshot/stargz/toc.digest annotation. The
// zstd:chunked manifest-checksum annotations are the digest of compressed
// instead; VerifyTOC checks whichever annotations a layer carries.
//
// Entries are decoded one at a time and checked against lim as they come,
// so memory stays bounded however the TOC is built. Writers omit userName
// and groupName when they repeat an earlier entry's for the same uid or
// gid; DecodeTOC carries them forward. Names are not cleaned yet: call
// Validate before using the TOC.
//
// DecodeTOC holds every entry at once; ReadTOC hands them to a Handler
// one at a time instead, which a reader of large TOCs should prefer.
func DecodeTOC(f Footer, compressed []byte, lim Limits) (*TOC, digest.Digest, error) {
	toc := &TOC{}
	version, d, err := scanTOC(f, compressed, lim, func(e *Entry) error {
		toc.Entries = append(toc.Entries, *e)
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	toc.Version = version
	return toc, d, nil
}

// scanTOC decodes the TOC in compressed (see DecodeTOC) and calls fn with
// each entry in turn, checked against lim and with user and group names
// carried forward. The entry is reused: it is valid only during the call.
// An error from fn ends the scan and is returned as it is. scanTOC returns
// the TOC's version and the digest of its JSON.
func scanTOC(f Footer, compressed []byte, lim Limits, fn func(*Entry) error) (int, digest.Digest, error) {
	lim = lim.withDefaults()
	if f.TOCLength > 0 && int64(len(compressed)) > f.TOCLength {
		compressed = compressed[:f.TOCLength]
	}
	if int64(len(compressed)) > lim.MaxTOCCompressed {
		return 0, "", fmt.Errorf("%w: compressed TOC of %d bytes exceeds %d", ErrTooLarge, len(compressed), lim.MaxTOCCompressed)
	}
	if err := lim.CheckFooter(f); err != nil {
		return 0, "", err
	}
	if f.TOCLength > 0 && int64(len(compressed)) < f.TOCLength {
		return 0, "", fmt.Errorf("%w: TOC: got %d bytes, footer says %d", ErrFormat, len(compressed), f.TOCLength)
	}
	var (
		r    io.Reader
		size int64 = -1 // JSON length, when known
	)
	switch f.Kind {
	case KindGzip, KindLegacyGzip:
		zr, err := gzip.NewReader(bytes.NewReader(compressed))
		if err != nil {
			return 0, "", fmt.Errorf("%w: TOC gzip header: %v", ErrFormat, err)
		}
		defer zr.Close()
		zr.Multistream(false)
		// The tar around the JSON adds a header or a few (PAX), bounded by
		// archive/tar itself; cut decompression at the JSON limit plus that.
		tr := tar.NewReader(io.LimitReader(zr, lim.MaxTOCJSON+1<<20))
		h, err := tr.Next()
		if err != nil {
			return 0, "", fmt.Errorf("%w: TOC tar header: %v", ErrFormat, err)
		}
		if h.Name != TOCTarName {
			return 0, "", fmt.Errorf("%w: TOC tar entry %q, want %q", ErrFormat, h.Name, TOCTarName)
		}
		if h.Size > lim.MaxTOCJSON {
			return 0, "", fmt.Errorf("%w: TOC JSON of %d bytes exceeds %d", ErrTooLarge, h.Size, lim.MaxTOCJSON)
		}
		r, size = tr, h.Size
	case KindZstdChunked, KindZstdChunkedPodman:
		zr, err := zstd.NewReader(bytes.NewReader(compressed),
			zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(zstdMaxWindow))
		if err != nil {
			return 0, "", fmt.Errorf("%w: TOC zstd: %v", ErrFormat, err)
		}
		defer zr.Close()
		r = zr
		if f.TOCUncompressedLength > 0 {
			size = f.TOCUncompressedLength
		}
	default:
		return 0, "", fmt.Errorf("%w: unknown layer kind %v", ErrFormat, f.Kind)
	}
	return decodeTOCJSON(r, size, lim, fn)
}

// countingReader hashes and counts what passes through it, and fails once
// more than max bytes have.
type countingReader struct {
	r      io.Reader
	h      hash.Hash
	n      int64
	max    int64
	errMax error // returned once more than max bytes were read
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	if c.n > c.max {
		return n, c.errMax
	}
	return n, err
}

// handlerError carries an error of scanTOC's fn through the decoder
// untouched.
type handlerError struct{ err error }

func (e *handlerError) Error() string { return e.err.Error() }

// decodeTOCJSON decodes TOC JSON of size bytes (-1: unknown, up to EOF)
// from r, entry by entry, and digests it whole.
func decodeTOCJSON(r io.Reader, size int64, lim Limits, fn func(*Entry) error) (int, digest.Digest, error) {
	cr := &countingReader{r: r, h: sha256.New(), max: lim.MaxTOCJSON,
		errMax: fmt.Errorf("%w: TOC JSON exceeds %d bytes", ErrTooLarge, lim.MaxTOCJSON)}
	if size >= 0 {
		cr.max, cr.errMax = size, fmt.Errorf("%w: TOC JSON longer than its recorded %d bytes", ErrFormat, size)
	}
	// decodeTOCObject reads up to EOF (only whitespace may follow the
	// object), so cr has digested the whole JSON when it returns.
	version, err := decodeTOCObject(json.NewDecoder(cr), lim, fn)
	if err != nil {
		var he *handlerError
		if errors.As(err, &he) {
			return 0, "", he.err
		}
		if errors.Is(err, ErrTooLarge) || errors.Is(err, ErrFormat) {
			return 0, "", err
		}
		return 0, "", fmt.Errorf("%w: TOC: %v", ErrFormat, err)
	}
	if size >= 0 && cr.n != size {
		return 0, "", fmt.Errorf("%w: TOC JSON of %d bytes, expected %d", ErrFormat, cr.n, size)
	}
	return version, digest.NewDigestFromBytes(digest.SHA256, cr.h.Sum(nil)), nil
}

// decodeTOCObject reads {"version":N,"entries":[...]} token by token,
// decoding one entry at a time into the same Entry and handing it to fn.
// Unknown keys are skipped.
func decodeTOCObject(dec *json.Decoder, lim Limits, fn func(*Entry) error) (version int, err error) {
	if err := expectDelim(dec, '{'); err != nil {
		return 0, err
	}
	seenEntries := false
	st := carryState{uname: map[int]string{}, gname: map[int]string{}}
	var e Entry
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return 0, err
		}
		key, _ := t.(string)
		switch key {
		case "version":
			if err := dec.Decode(&version); err != nil {
				return 0, err
			}
		case "entries":
			if seenEntries {
				return 0, fmt.Errorf("%w: TOC: entries given twice", ErrFormat)
			}
			seenEntries = true
			t, err := dec.Token()
			if err != nil {
				return 0, err
			}
			if t == nil {
				continue // "entries": null
			}
			if d, ok := t.(json.Delim); !ok || d != '[' {
				return 0, fmt.Errorf("%w: TOC: entries is not an array", ErrFormat)
			}
			for n := 0; dec.More(); n++ {
				if n >= lim.MaxEntries {
					return 0, fmt.Errorf("%w: TOC has more than %d entries", ErrTooLarge, lim.MaxEntries)
				}
				e = Entry{}
				if err := dec.Decode(&e); err != nil {
					return 0, fmt.Errorf("entry %d: %w", n, err)
				}
				if err := checkEntryBounds(&e, lim); err != nil {
					return 0, fmt.Errorf("entry %d: %w", n, err)
				}
				st.carry(&e)
				if err := fn(&e); err != nil {
					return 0, &handlerError{err}
				}
			}
			if err := expectDelim(dec, ']'); err != nil {
				return 0, err
			}
		default:
			if err := skipValue(dec); err != nil {
				return 0, err
			}
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return 0, err
	}
	if _, err := dec.Token(); err != io.EOF {
		if err == nil {
			return 0, fmt.Errorf("%w: TOC: data after the JSON object", ErrFormat)
		}
		return 0, err
	}
	return version, nil
}

// carryState carries user and group names forward per uid and gid, as
// writers omit them when they repeat.
type carryState struct {
	uname, gname map[int]string
}

func (s *carryState) carry(e *Entry) {
	if e.Type == TypeChunk {
		return
	}
	if e.Uname != "" {
		s.uname[e.UID] = e.Uname
	} else {
		e.Uname = s.uname[e.UID]
	}
	if e.Gname != "" {
		s.gname[e.GID] = e.Gname
	} else {
		e.Gname = s.gname[e.GID]
	}
}

// checkEntryBounds rejects an entry whose strings or xattrs exceed lim.
func checkEntryBounds(e *Entry, lim Limits) error {
	if len(e.Name) > lim.MaxNameLen || len(e.LinkName) > lim.MaxNameLen {
		return fmt.Errorf("%w: name of %d bytes or link name of %d exceeds %d", ErrTooLarge, len(e.Name), len(e.LinkName), lim.MaxNameLen)
	}
	if len(e.Uname) > lim.MaxNameLen || len(e.Gname) > lim.MaxNameLen {
		return fmt.Errorf("%w: user or group name exceeds %d bytes", ErrTooLarge, lim.MaxNameLen)
	}
	n := 0
	for k, v := range e.Xattrs {
		n += len(k) + len(v)
	}
	if n > lim.MaxXattrBytes {
		return fmt.Errorf("%w: %d bytes of xattrs exceed %d", ErrTooLarge, n, lim.MaxXattrBytes)
	}
	if e.Size > lim.MaxFileSize {
		return fmt.Errorf("%w: size %d exceeds %d", ErrTooLarge, e.Size, lim.MaxFileSize)
	}
	return nil
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := t.(json.Delim); !ok || d != want {
		return fmt.Errorf("%w: TOC: got %v, want %q", ErrFormat, t, string(want))
	}
	return nil
}

// skipValue skips one JSON value token by token, so that an unknown key
// costs no more memory than its largest string.
func skipValue(dec *json.Decoder) error {
	depth := 0
	for {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		if d, ok := t.(json.Delim); ok {
			if d == '{' || d == '[' {
				depth++
			} else {
				depth--
			}
		}
		if depth == 0 {
			return nil
		}
	}
}

// VerifyTOC checks a TOC against the digest annotations of its layer's
// descriptor: containerd.io/snapshot/stargz/toc.digest against jsonDigest
// (as DecodeTOC returns it), and the zstd:chunked manifest-checksum
// annotations (both variants) against the digest of compressed. It
// returns an error wrapping ErrDigest on a mismatch, and ErrNoTOCDigest
// when no annotation is there to check.
func VerifyTOC(annotations map[string]string, compressed []byte, jsonDigest digest.Digest) error {
	checked := false
	if want, ok := annotations[TOCDigestAnnotation]; ok {
		if digest.Digest(want) != jsonDigest {
			return fmt.Errorf("%w: TOC digest %s, annotation says %s", ErrDigest, jsonDigest, want)
		}
		checked = true
	}
	var compressedDigest digest.Digest
	for _, key := range []string{ZstdChunkedManifestChecksumAnnotation, PodmanManifestChecksumAnnotation} {
		want, ok := annotations[key]
		if !ok {
			continue
		}
		if compressedDigest == "" {
			compressedDigest = digest.FromBytes(compressed)
		}
		if digest.Digest(want) != compressedDigest {
			return fmt.Errorf("%w: compressed TOC digest %s, %s says %s", ErrDigest, compressedDigest, key, want)
		}
		checked = true
	}
	if !checked {
		return ErrNoTOCDigest
	}
	return nil
}

// ErrNoTOCDigest reports a layer whose descriptor carries no TOC digest
// annotation, so that its TOC cannot be trusted.
var ErrNoTOCDigest = errors.New("format: no TOC digest annotation")
