package format

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Kind identifies the layout of a seekable layer, as told by its footer.
type Kind int

const (
	// KindGzip is gzip eStargz: a 51-byte footer, an empty gzip member
	// whose Extra field holds subfield "SG" = "%016xSTARGZ" (TOC offset).
	KindGzip Kind = iota + 1
	// KindLegacyGzip is the original stargz: a 47-byte footer whose Extra
	// field is the 22-byte "%016xSTARGZ" string alone. Its TOC usually has
	// no chunk digests.
	KindLegacyGzip
	// KindZstdChunked is zstd:chunked as stargz-snapshotter writes it: the
	// blob ends with a skippable frame (8-byte header) holding 40 bytes:
	// LE uint64 TOC offset, compressed TOC length, uncompressed TOC length,
	// manifest type (1), then the magic "GnUlInUx".
	KindZstdChunked
	// KindZstdChunkedPodman is zstd:chunked as containers/storage (Podman,
	// Buildah, CRI-O) writes it. The blob ends with three skippable frames:
	// the zstd-compressed TOC ("manifest"), the zstd-compressed tar-split
	// JSON lines, and a footer frame (8-byte header, 64-byte payload) of
	// LE uint64 values: manifest offset, compressed length, uncompressed
	// length, manifest type (1), tar-split offset, compressed length,
	// uncompressed length, then the magic "GNUlInUx". Offsets point past
	// each frame's own 8-byte skippable header. Its layer annotations are
	// io.github.containers.zstd-chunked.{manifest,tarsplit}-{checksum,position};
	// each regular file's payload is one or more zstd frames of its own
	// ([offset, endOffset) in the TOC), tar headers in frames between them.
	KindZstdChunkedPodman
)

func (k Kind) String() string {
	switch k {
	case KindGzip:
		return "gzip"
	case KindLegacyGzip:
		return "legacy-gzip"
	case KindZstdChunked:
		return "zstd-chunked"
	case KindZstdChunkedPodman:
		return "zstd-chunked-podman"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// IsZstd tells whether the layer's members are zstd frames.
func (k Kind) IsZstd() bool { return k == KindZstdChunked || k == KindZstdChunkedPodman }

// Footer sizes not declared in toc.go.
const (
	// PodmanFooterSize is the size of the containers/storage zstd:chunked
	// footer: an 8-byte skippable-frame header and a 64-byte payload.
	PodmanFooterSize = 72
	// MaxFooterSize is how many bytes a caller must fetch from the end of
	// a blob (or the whole blob, if smaller) to parse any footer.
	MaxFooterSize = PodmanFooterSize

	// skippableHeaderSize is the size of a zstd skippable frame's header:
	// a 4-byte magic and a 4-byte little-endian length.
	skippableHeaderSize = 8
	// manifestTypeCRFS is the only manifest type that zstd:chunked defines.
	manifestTypeCRFS = 1
	// skippableMagicLow and skippableMagicHigh bound the magic numbers of
	// zstd skippable frames (RFC 8878, 3.1.2).
	skippableMagicLow  = 0x184D2A50
	skippableMagicHigh = 0x184D2A5F
)

// Annotations of the containers/storage zstd:chunked variant.
const (
	// PodmanManifestChecksumAnnotation carries the digest of the
	// compressed TOC (manifest) of a containers/storage zstd:chunked layer.
	PodmanManifestChecksumAnnotation = "io.github.containers.zstd-chunked.manifest-checksum"
	// PodmanManifestPositionAnnotation carries
	// "offset:compressedLength:uncompressedLength:type" of the TOC.
	PodmanManifestPositionAnnotation = "io.github.containers.zstd-chunked.manifest-position"
	// PodmanTarSplitPositionAnnotation carries
	// "offset:compressedLength:uncompressedLength" of the tar-split data.
	PodmanTarSplitPositionAnnotation = "io.github.containers.zstd-chunked.tarsplit-position"
)

var (
	// zstdChunkedMagic ends a stargz-snapshotter zstd:chunked footer.
	zstdChunkedMagic = [8]byte{'G', 'n', 'U', 'l', 'I', 'n', 'U', 'x'}
	// podmanMagic ends a containers/storage zstd:chunked footer.
	podmanMagic = [8]byte{'G', 'N', 'U', 'l', 'I', 'n', 'U', 'x'}
)

// Footer describes where a layer's TOC lies, as read from its footer.
type Footer struct {
	// Kind is the layer's layout.
	Kind Kind
	// TOCOffset is where the TOC begins: the TOC's gzip member, or the
	// TOC's zstd frame (just after its skippable-frame header).
	TOCOffset int64
	// TOCLength is the compressed TOC's length. For gzip kinds the TOC
	// runs from TOCOffset up to the footer.
	TOCLength int64
	// TOCUncompressedLength is the TOC JSON's length as the footer records
	// it (zstd kinds only; 0 for gzip).
	TOCUncompressedLength int64
	// TarSplitOffset, TarSplitLength and TarSplitUncompressedLength locate
	// the zstd-compressed tar-split data (KindZstdChunkedPodman only).
	TarSplitOffset             int64
	TarSplitLength             int64
	TarSplitUncompressedLength int64
	// Size is the footer's own length in bytes.
	Size int64
}

// DataEnd returns the offset where the file members end: the TOC's gzip
// member, or the skippable-frame header in front of the TOC's zstd frame.
func (f Footer) DataEnd() int64 {
	if f.Kind.IsZstd() {
		return f.TOCOffset - skippableHeaderSize
	}
	return f.TOCOffset
}

// ParseFooter parses the footer at the end of a blob of blobSize bytes.
// tail holds the blob's last min(MaxFooterSize, blobSize) bytes (more is
// accepted: only its end is read). It returns an error wrapping ErrFormat
// when no supported footer is there or when it points outside the blob.
func ParseFooter(tail []byte, blobSize int64) (Footer, error) {
	if blobSize < 0 || int64(len(tail)) > blobSize {
		return Footer{}, fmt.Errorf("%w: footer: tail of %d bytes for a blob of %d", ErrFormat, len(tail), blobSize)
	}
	if len(tail) < LegacyFooterSize {
		return Footer{}, fmt.Errorf("%w: footer: blob too short (%d bytes)", ErrFormat, len(tail))
	}
	var (
		f   Footer
		err error
	)
	switch magic := [8]byte(tail[len(tail)-8:]); magic {
	case podmanMagic:
		f, err = parsePodmanFooter(tail)
	case zstdChunkedMagic:
		f, err = parseZstdFooter(tail)
	default:
		f, err = parseGzipFooter(tail)
	}
	if err != nil {
		return Footer{}, err
	}
	if err := f.check(blobSize); err != nil {
		return Footer{}, err
	}
	return f, nil
}

// check verifies that the TOC (and tar-split data) lie inside the blob,
// before the footer, and leave room for at least the TOC itself.
func (f *Footer) check(blobSize int64) error {
	end := blobSize - f.Size
	if end < 0 {
		return fmt.Errorf("%w: footer: blob of %d bytes is shorter than its %s footer", ErrFormat, blobSize, f.Kind)
	}
	if f.Kind.IsZstd() {
		if f.TOCOffset < skippableHeaderSize || f.TOCLength <= 0 || f.TOCUncompressedLength <= 0 ||
			f.TOCLength > end-f.TOCOffset {
			return fmt.Errorf("%w: footer: TOC at %d+%d outside blob data [8, %d)", ErrFormat, f.TOCOffset, f.TOCLength, end)
		}
		if f.Kind == KindZstdChunkedPodman {
			tocEnd := f.TOCOffset + f.TOCLength
			if f.TarSplitOffset < tocEnd+skippableHeaderSize || f.TarSplitLength < 0 ||
				f.TarSplitUncompressedLength < 0 || f.TarSplitLength > end-f.TarSplitOffset {
				return fmt.Errorf("%w: footer: tar-split at %d+%d outside [%d, %d)", ErrFormat, f.TarSplitOffset, f.TarSplitLength, tocEnd, end)
			}
		}
		return nil
	}
	if f.TOCOffset < 0 || f.TOCOffset >= end {
		return fmt.Errorf("%w: footer: TOC offset %d outside blob data [0, %d)", ErrFormat, f.TOCOffset, end)
	}
	f.TOCLength = end - f.TOCOffset
	return nil
}

// parseGzipFooter parses a 51-byte eStargz or a 47-byte legacy footer at
// the end of tail. Like other readers it checks the gzip header and the
// Extra field, not the (empty) compressed body.
func parseGzipFooter(tail []byte) (Footer, error) {
	if len(tail) >= FooterSize {
		p := tail[len(tail)-FooterSize:]
		if xlen, ok := gzipExtraLen(p); ok && xlen == 26 {
			extra := p[12 : 12+26]
			if extra[0] == 'S' && extra[1] == 'G' && binary.LittleEndian.Uint16(extra[2:4]) == 22 {
				off, err := parseStargzOffset(extra[4:])
				if err != nil {
					return Footer{}, err
				}
				return Footer{Kind: KindGzip, TOCOffset: off, Size: FooterSize}, nil
			}
		}
	}
	p := tail[len(tail)-LegacyFooterSize:]
	if xlen, ok := gzipExtraLen(p); ok && xlen == 22 {
		off, err := parseStargzOffset(p[12 : 12+22])
		if err != nil {
			return Footer{}, err
		}
		return Footer{Kind: KindLegacyGzip, TOCOffset: off, Size: LegacyFooterSize}, nil
	}
	return Footer{}, fmt.Errorf("%w: footer: no eStargz, stargz or zstd:chunked footer", ErrFormat)
}

// gzipExtraLen checks that p starts with a gzip header whose only flag is
// FEXTRA and returns the Extra field's length.
func gzipExtraLen(p []byte) (int, bool) {
	const fextra = 1 << 2
	if len(p) < 12 || p[0] != 0x1f || p[1] != 0x8b || p[2] != 8 || p[3] != fextra {
		return 0, false
	}
	return int(binary.LittleEndian.Uint16(p[10:12])), true
}

// parseStargzOffset parses "%016xSTARGZ".
func parseStargzOffset(s []byte) (int64, error) {
	if len(s) != 22 || string(s[16:]) != "STARGZ" {
		return 0, fmt.Errorf("%w: footer: no STARGZ magic", ErrFormat)
	}
	var v uint64
	for _, c := range s[:16] {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, fmt.Errorf("%w: footer: TOC offset %q is not hexadecimal", ErrFormat, s[:16])
		}
		v = v<<4 | uint64(d)
	}
	if v > math.MaxInt64 {
		return 0, fmt.Errorf("%w: footer: TOC offset %#x out of range", ErrFormat, v)
	}
	return int64(v), nil
}

// readSkippableFooter checks the skippable-frame header in front of a
// footer payload of n bytes at the end of tail and returns the payload's
// little-endian uint64 fields (all but the magic).
func readSkippableFooter(tail []byte, n int, kind Kind) ([]int64, error) {
	if len(tail) < skippableHeaderSize+n {
		return nil, fmt.Errorf("%w: footer: blob too short for a %s footer", ErrFormat, kind)
	}
	p := tail[len(tail)-skippableHeaderSize-n:]
	magic := binary.LittleEndian.Uint32(p[0:4])
	if magic < skippableMagicLow || magic > skippableMagicHigh {
		return nil, fmt.Errorf("%w: footer: %s footer is not in a skippable frame", ErrFormat, kind)
	}
	if size := binary.LittleEndian.Uint32(p[4:8]); size != uint32(n) {
		return nil, fmt.Errorf("%w: footer: %s footer frame of %d bytes, want %d", ErrFormat, kind, size, n)
	}
	p = p[skippableHeaderSize:]
	vals := make([]int64, 0, n/8-1)
	for i := 0; i+8 < n; i += 8 {
		v := binary.LittleEndian.Uint64(p[i:])
		if v > math.MaxInt64 {
			return nil, fmt.Errorf("%w: footer: %s footer field %d out of range", ErrFormat, kind, i/8)
		}
		vals = append(vals, int64(v))
	}
	return vals, nil
}

func parseZstdFooter(tail []byte) (Footer, error) {
	v, err := readSkippableFooter(tail, ZstdFooterSize-skippableHeaderSize, KindZstdChunked)
	if err != nil {
		return Footer{}, err
	}
	if v[3] != manifestTypeCRFS {
		return Footer{}, fmt.Errorf("%w: footer: manifest type %d, want %d", ErrFormat, v[3], manifestTypeCRFS)
	}
	return Footer{
		Kind:                  KindZstdChunked,
		TOCOffset:             v[0],
		TOCLength:             v[1],
		TOCUncompressedLength: v[2],
		Size:                  ZstdFooterSize,
	}, nil
}

func parsePodmanFooter(tail []byte) (Footer, error) {
	v, err := readSkippableFooter(tail, PodmanFooterSize-skippableHeaderSize, KindZstdChunkedPodman)
	if err != nil {
		return Footer{}, err
	}
	if v[3] != manifestTypeCRFS {
		return Footer{}, fmt.Errorf("%w: footer: manifest type %d, want %d", ErrFormat, v[3], manifestTypeCRFS)
	}
	return Footer{
		Kind:                       KindZstdChunkedPodman,
		TOCOffset:                  v[0],
		TOCLength:                  v[1],
		TOCUncompressedLength:      v[2],
		TarSplitOffset:             v[4],
		TarSplitLength:             v[5],
		TarSplitUncompressedLength: v[6],
		Size:                       PodmanFooterSize,
	}, nil
}

// AppendGzipFooter appends the 51-byte eStargz footer pointing at
// tocOffset to b, byte for byte as other eStargz writers produce it: a
// gzip header with FEXTRA (mtime 0, OS 255) whose Extra holds subfield
// "SG" = "%016xSTARGZ", an empty stored deflate block, a zero CRC and size.
func AppendGzipFooter(b []byte, tocOffset int64) []byte {
	b = append(b, 0x1f, 0x8b, 8, 1<<2, 0, 0, 0, 0, 0, 255)
	b = binary.LittleEndian.AppendUint16(b, 26)
	b = append(b, 'S', 'G')
	b = binary.LittleEndian.AppendUint16(b, 22)
	b = fmt.Appendf(b, "%016xSTARGZ", tocOffset)
	b = append(b, 1, 0, 0, 0xff, 0xff)
	return append(b, 0, 0, 0, 0, 0, 0, 0, 0)
}

// AppendZstdFooter appends the 48-byte stargz-snapshotter zstd:chunked
// footer to b. tocOffset is where the TOC's zstd frame starts, just after
// its own skippable-frame header.
func AppendZstdFooter(b []byte, tocOffset, compressedLen, uncompressedLen int64) []byte {
	b = binary.LittleEndian.AppendUint32(b, skippableMagicLow)
	b = binary.LittleEndian.AppendUint32(b, ZstdFooterSize-skippableHeaderSize)
	b = binary.LittleEndian.AppendUint64(b, uint64(tocOffset))
	b = binary.LittleEndian.AppendUint64(b, uint64(compressedLen))
	b = binary.LittleEndian.AppendUint64(b, uint64(uncompressedLen))
	b = binary.LittleEndian.AppendUint64(b, manifestTypeCRFS)
	return append(b, zstdChunkedMagic[:]...)
}
