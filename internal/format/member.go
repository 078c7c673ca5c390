package format

import (
	"fmt"
	"io"
)

// DecodeChunks decodes every chunk in cs, which all live in the one member
// (gzip) or frame (zstd) that starts at cs[0].Offset, in a single pass: the
// member is decompressed once however many small files share it. cs must
// be sorted by InnerOffset and must not overlap; dsts[i] receives cs[i] and
// has length cs[i].Size. src holds the compressed bytes from the member's
// start up to at least cs[0].End. Each chunk is verified as DecodeChunk
// does; the first failure is returned.
func (d *ChunkDecoder) DecodeChunks(kind Kind, src []byte, cs []Chunk, dsts [][]byte) error {
	if len(cs) == 0 {
		return nil
	}
	if len(cs) == 1 {
		return d.DecodeChunk(kind, src, cs[0], dsts[0])
	}
	off, end := cs[0].Offset, cs[0].End
	if n := end - off; n <= 0 || int64(len(src)) < n {
		return fmt.Errorf("%w: member at %d: %d compressed bytes, want [%d, %d)", ErrFormat, off, len(src), off, end)
	}
	src = src[:end-off]
	if err := checkMember(cs, dsts); err != nil {
		return err
	}
	var err error
	switch kind {
	case KindGzip, KindLegacyGzip:
		err = d.withGunzip(src, func(r io.Reader, scratch []byte) error { return readChunks(r, cs, dsts, scratch) })
	case KindZstdChunked, KindZstdChunkedPodman:
		err = d.withUnzstd(src, func(r io.Reader, scratch []byte) error { return readChunks(r, cs, dsts, scratch) })
	default:
		return fmt.Errorf("%w: unknown layer kind %v", ErrFormat, kind)
	}
	if err != nil {
		return fmt.Errorf("%w: member at %d: %v", ErrFormat, off, err)
	}
	for i, c := range cs {
		if c.Digest != "" {
			if err := verify(c.Digest, dsts[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

func readChunks(r io.Reader, cs []Chunk, dsts [][]byte, scratch []byte) error {
	var pos int64
	for i, c := range cs {
		if err := readSkip(r, c.InnerOffset-pos, dsts[i], scratch); err != nil {
			return err
		}
		pos = c.InnerOffset + c.Size
	}
	return nil
}
