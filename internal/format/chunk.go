package format

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

// ChunkDecoder decompresses and verifies chunks. It keeps its gzip and
// zstd decoders for reuse. The zero value is ready to use, and it is safe
// for concurrent use; one per process (or per layer set) is plenty.
type ChunkDecoder struct {
	gz   sync.Pool // *gzipState
	zstd sync.Pool // *zstdState
}

type gzipState struct {
	br      bytes.Reader
	zr      gzip.Reader
	scratch [4096]byte
}

type zstdState struct {
	br      bytes.Reader
	zr      *zstd.Decoder
	scratch [4096]byte
}

// DecodeChunk decodes chunk c of a layer of the given kind. src holds the
// blob's compressed bytes from c.Offset on, at least up to c.End (bytes
// beyond are ignored); dst, of length c.Size, receives the chunk's bytes.
// The chunk is verified against c.Digest when it has one. Errors wrap
// ErrFormat for corrupt or short data and ErrDigest for a mismatch.
func (d *ChunkDecoder) DecodeChunk(kind Kind, src []byte, c Chunk, dst []byte) error {
	if int64(len(dst)) != c.Size {
		return fmt.Errorf("format: chunk of %d bytes decoded into a buffer of %d", c.Size, len(dst))
	}
	if n := c.End - c.Offset; n <= 0 || int64(len(src)) < n {
		return fmt.Errorf("%w: chunk at %d: %d compressed bytes, want [%d, %d)", ErrFormat, c.Offset, len(src), c.Offset, c.End)
	} else {
		src = src[:n]
	}
	var err error
	switch kind {
	case KindGzip, KindLegacyGzip:
		err = d.gunzip(src, c.InnerOffset, dst)
	case KindZstdChunked, KindZstdChunkedPodman:
		err = d.unzstd(src, c.InnerOffset, dst)
	default:
		return fmt.Errorf("%w: unknown layer kind %v", ErrFormat, kind)
	}
	if err != nil {
		return fmt.Errorf("%w: chunk at %d+%d: %v", ErrFormat, c.Offset, c.InnerOffset, err)
	}
	if c.Digest != "" {
		return verify(c.Digest, dst)
	}
	return nil
}

// DecodeChunk decodes one chunk with decoders of its own: see
// ChunkDecoder.DecodeChunk, which reuses them and is faster.
func DecodeChunk(kind Kind, src []byte, c Chunk, dst []byte) error {
	var d ChunkDecoder
	return d.DecodeChunk(kind, src, c, dst)
}

func (d *ChunkDecoder) gunzip(src []byte, skip int64, dst []byte) error {
	return d.withGunzip(src, func(r io.Reader, scratch []byte) error { return readSkip(r, skip, dst, scratch) })
}

// withGunzip runs read on a reader of the one gzip member at src's start.
// A member of stored blocks only (incompressible data) is read straight
// from src.
func (d *ChunkDecoder) withGunzip(src []byte, read func(r io.Reader, scratch []byte) error) error {
	st, _ := d.gz.Get().(*gzipState)
	if st == nil {
		st = new(gzipState)
	}
	defer func() {
		st.br.Reset(nil)
		d.gz.Put(st)
	}()
	if sr, err := newStoredReader(src); err == nil {
		if err := read(sr, st.scratch[:]); !errors.Is(err, errNotStored) {
			return err
		}
	}
	st.br.Reset(src)
	if err := st.zr.Reset(&st.br); err != nil {
		return err
	}
	st.zr.Multistream(false)
	return read(&st.zr, st.scratch[:])
}

func (d *ChunkDecoder) unzstd(src []byte, skip int64, dst []byte) error {
	return d.withUnzstd(src, func(r io.Reader, scratch []byte) error { return readSkip(r, skip, dst, scratch) })
}

// withUnzstd runs read on a reader of the zstd frame at src's start.
func (d *ChunkDecoder) withUnzstd(src []byte, read func(r io.Reader, scratch []byte) error) error {
	st, _ := d.zstd.Get().(*zstdState)
	if st == nil {
		zr, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(zstdMaxWindow))
		if err != nil {
			return err
		}
		st = &zstdState{zr: zr}
	}
	defer func() {
		st.br.Reset(nil)
		if st.zr.Reset(nil) == nil {
			d.zstd.Put(st)
		}
	}()
	st.br.Reset(src)
	if err := st.zr.Reset(&st.br); err != nil {
		return err
	}
	return read(st.zr, st.scratch[:])
}

// readSkip discards skip bytes from r, then fills dst. It reads the
// skipped bytes into scratch, or dst when that is larger.
func readSkip(r io.Reader, skip int64, dst, scratch []byte) error {
	if skip > 0 {
		buf := scratch
		if len(dst) > len(buf) {
			buf = dst // dst is overwritten below anyway
		}
		for skip > 0 {
			n := min(int64(len(buf)), skip)
			if _, err := io.ReadFull(r, buf[:n]); err != nil {
				return shortRead(err)
			}
			skip -= n
		}
	}
	if _, err := io.ReadFull(r, dst); err != nil {
		return shortRead(err)
	}
	return nil
}

func shortRead(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// verify checks b against want.
func verify(want digest.Digest, b []byte) error {
	if want.Algorithm() == digest.SHA256 {
		sum := sha256.Sum256(b)
		var hexSum [2 * sha256.Size]byte
		hex.Encode(hexSum[:], sum[:])
		if want.Encoded() == string(hexSum[:]) {
			return nil
		}
		return fmt.Errorf("%w: chunk is sha256:%s, want %s", ErrDigest, hexSum[:], want)
	}
	if !want.Algorithm().Available() {
		return fmt.Errorf("%w: unavailable digest algorithm in %q", ErrFormat, want)
	}
	if got := want.Algorithm().FromBytes(b); got != want {
		return fmt.Errorf("%w: chunk is %s, want %s", ErrDigest, got, want)
	}
	return nil
}
