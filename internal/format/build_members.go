package format

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
)

// A member is one independently compressed unit of the layer: a gzip
// member or a zstd frame. Members are cut deterministically from the
// uncompressed stream by the planner (one goroutine), compressed in
// parallel by workers, and written in order by the writer.
type member struct {
	seq  int
	data []byte // uncompressed
	out  []byte // compressed, set by a worker
	refs []chunkRef
	// big is set once the member holds a chunk of a file that is not
	// packed: later small files do not join it.
	big  bool
	done chan struct{}
}

// chunkRef ties a payload region of a member to its TOC entry. Workers
// fill in the digest.
type chunkRef struct {
	entry      int
	inner      int64
	size       int64
	fileDigest bool // the chunk is the whole file: its digest is the file's
	digest     digest.Digest
}

type builder struct {
	cfg *buildConfig

	// Planner state.
	toc       []Entry
	cur       *member
	seq       int
	unames    map[int]string
	gnames    map[int]string
	fileHash  hash.Hash
	bufs      sync.Pool
	emptyFile digest.Digest
}

func newBuilder(cfg *buildConfig) *builder {
	b := &builder{
		cfg:       cfg,
		unames:    make(map[int]string),
		gnames:    make(map[int]string),
		fileHash:  sha256.New(),
		emptyFile: digest.FromBytes(nil),
	}
	b.cur = b.newMember()
	return b
}

func (b *builder) newMember() *member {
	m := &member{seq: b.seq, done: make(chan struct{})}
	b.seq++
	if p, ok := b.bufs.Get().(*[]byte); ok {
		m.data = (*p)[:0]
	}
	return m
}

func (b *builder) release(m *member) {
	if cap(m.data) > 0 {
		d := m.data[:0]
		b.bufs.Put(&d)
	}
	m.data = nil
}

// memberOut is what the writer keeps of a member after writing it.
type memberOut struct {
	offset int64
	refs   []chunkRef
}

func (b *builder) run(ctx context.Context, in entrySource, dst io.Writer) (*Result, error) {
	workers := b.cfg.workers
	work := make(chan *member, workers)
	ordered := make(chan *member, 2*workers)
	g, gctx := errgroup.WithContext(ctx)

	send := func(m *member) error {
		select {
		case ordered <- m:
		case <-gctx.Done():
			return gctx.Err()
		}
		select {
		case work <- m:
		case <-gctx.Done():
			return gctx.Err()
		}
		return nil
	}
	g.Go(func() error {
		defer close(work)
		defer close(ordered)
		return b.plan(gctx, in, send)
	})
	for range workers {
		g.Go(func() error { return b.compressLoop(work) })
	}
	cw := &countingWriter{w: dst, h: sha256.New()}
	diff := sha256.New()
	var usize int64
	var outs []memberOut
	g.Go(func() error {
		for m := range ordered {
			select {
			case <-m.done:
			case <-gctx.Done():
				return gctx.Err()
			}
			if m.out == nil {
				return errors.New("format: member was not compressed")
			}
			outs = append(outs, memberOut{offset: cw.n, refs: m.refs})
			if _, err := cw.Write(m.out); err != nil {
				return fmt.Errorf("format: writing layer: %w", err)
			}
			diff.Write(m.data)
			usize += int64(len(m.data))
			b.release(m)
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, o := range outs {
		for _, r := range o.refs {
			e := &b.toc[r.entry]
			e.Offset, e.InnerOffset = o.offset, r.inner
			e.ChunkDigest = r.digest.String()
			if r.fileDigest {
				e.Digest = e.ChunkDigest
			}
		}
	}
	return b.finish(cw, diff, usize)
}

// plan reads entries and cuts the uncompressed stream into members.
func (b *builder) plan(ctx context.Context, in entrySource, send func(*member) error) error {
	if len(b.cfg.prefetch) == 0 {
		if err := b.addLandmark(send, NoPrefetchLandmark); err != nil {
			return err
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		e, err := in.next()
		if err == io.EOF {
			break
		}
		if err == errLandmark {
			err = b.addLandmark(send, PrefetchLandmark)
		} else if err == nil {
			err = b.addEntry(e, send)
		}
		if err != nil {
			return err
		}
	}
	if b.cfg.compression == Zstd {
		// zstd:chunked has no TOC entry in the tar stream; end the
		// archive here so the decompressed layer is a whole tar.
		b.cur.data = append(b.cur.data, make([]byte, 2*blockSize)...)
	}
	if len(b.cur.data) > 0 {
		return send(b.cur)
	}
	return nil
}

func (b *builder) addLandmark(send func(*member) error, name string) error {
	h := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		Mode:     0o644,
		Size:     1,
		ModTime:  time.Unix(0, 0),
		Format:   tar.FormatUSTAR,
	}
	raw, err := headerBytes(h)
	if err != nil {
		return err
	}
	e := &srcEntry{hdr: h, name: name, raw: raw, payload: bytes.NewReader([]byte{LandmarkContents})}
	return b.writeEntry(e, send, true)
}

func (b *builder) addEntry(e *srcEntry, send func(*member) error) error {
	return b.writeEntry(e, send, false)
}

// writeEntry appends one entry to the stream and its TOC entries to the
// TOC. forceMember starts a new member at the payload (landmarks do, so
// that a landmark's offset is where prefetching stops).
func (b *builder) writeEntry(e *srcEntry, send func(*member) error, forceMember bool) error {
	h := e.hdr
	b.cur.data = append(b.cur.data, e.raw...)
	ent := Entry{
		Name:        h.Name,
		Mode:        h.Mode,
		UID:         h.Uid,
		GID:         h.Gid,
		Uname:       nameIfChanged(b.unames, h.Uid, h.Uname),
		Gname:       nameIfChanged(b.gnames, h.Gid, h.Gname),
		ModTime3339: formatModTime(h.ModTime),
		Xattrs:      xattrsOf(h),
	}
	switch h.Typeflag {
	case tar.TypeDir:
		ent.Type = TypeDir
	case tar.TypeSymlink:
		ent.Type, ent.LinkName = TypeSymlink, h.Linkname
	case tar.TypeLink:
		ent.Type, ent.LinkName = TypeHardlink, h.Linkname
	case tar.TypeChar, tar.TypeBlock:
		ent.Type = TypeChar
		if h.Typeflag == tar.TypeBlock {
			ent.Type = TypeBlock
		}
		ent.DevMajor, ent.DevMinor = int(h.Devmajor), int(h.Devminor)
	case tar.TypeFifo:
		ent.Type = TypeFifo
	case tar.TypeReg:
		ent.Type, ent.Size = TypeReg, h.Size
	default:
		return fmt.Errorf("%w: %q: unsupported type %q", ErrInput, h.Name, h.Typeflag)
	}
	if ent.Type != TypeReg || ent.Size == 0 {
		if ent.Type == TypeReg {
			ent.Digest = b.emptyFile.String()
		}
		b.toc = append(b.toc, ent)
		return nil
	}
	return b.writePayload(ent, e.payload, send, forceMember)
}

func (b *builder) writePayload(ent Entry, payload io.Reader, send func(*member) error, forceMember bool) error {
	size := ent.Size
	cs := b.cfg.chunkSize
	small := b.cfg.packSize > 0 && size < b.cfg.packSize
	multi := size > cs
	if multi {
		b.fileHash.Reset()
	}
	// A payload starts a new member unless it is small and the current
	// member still has room. Member 0 never holds a payload, so that no
	// payload has offset 0 (readers take offset 0 as "no payload").
	if !small || forceMember || b.cur.seq == 0 || b.cur.big || int64(len(b.cur.data)) >= b.cfg.packSize {
		if err := b.cut(send); err != nil {
			return err
		}
	}
	first := len(b.toc)
	for off := int64(0); off < size; off += cs {
		n := min(cs, size-off)
		if off > 0 {
			if err := b.cut(send); err != nil {
				return err
			}
			ent = Entry{Name: ent.Name, Type: TypeChunk}
		}
		ent.ChunkOffset = off
		if multi && off+n < size {
			ent.ChunkSize = n
		}
		m := b.cur
		inner := int64(len(m.data))
		m.data = growBy(m.data, int(n))
		chunk := m.data[inner:]
		if _, err := io.ReadFull(payload, chunk); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%w: %q: truncated payload", ErrInput, ent.Name)
			}
			return err
		}
		if multi {
			b.fileHash.Write(chunk)
		}
		if !small {
			m.big = true
		}
		m.refs = append(m.refs, chunkRef{entry: len(b.toc), inner: inner, size: n, fileDigest: !multi})
		b.toc = append(b.toc, ent)
	}
	if multi {
		b.toc[first].Digest = digest.NewDigest(digest.SHA256, b.fileHash).String()
	}
	if pad := -size & (blockSize - 1); pad > 0 {
		b.cur.data = append(b.cur.data, make([]byte, pad)...)
	}
	return nil
}

// cut ends the current member, if it holds anything, and starts another.
func (b *builder) cut(send func(*member) error) error {
	if len(b.cur.data) == 0 {
		return nil
	}
	m := b.cur
	b.cur = b.newMember()
	return send(m)
}

func growBy(b []byte, n int) []byte {
	if cap(b)-len(b) < n {
		nb := make([]byte, len(b), len(b)+n+64<<10)
		copy(nb, b)
		b = nb
	}
	return b[:len(b)+n]
}

// compressLoop is one worker: it digests each member's chunks and
// compresses the member.
func (b *builder) compressLoop(work <-chan *member) error {
	var (
		gz  *gzip.Writer
		zw  *zstd.Encoder
		buf bytes.Buffer
		err error
	)
	switch b.cfg.compression {
	case Gzip:
		gz, err = gzip.NewWriterLevel(&buf, b.cfg.level)
	case Zstd:
		zw, err = zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(b.cfg.level)),
			zstd.WithEncoderConcurrency(1))
	}
	if err != nil {
		return fmt.Errorf("format: compressor: %w", err)
	}
	for m := range work {
		for i := range m.refs {
			r := &m.refs[i]
			r.digest = digest.FromBytes(m.data[r.inner : r.inner+r.size])
		}
		switch {
		case gz != nil:
			buf.Reset()
			gz.Reset(&buf)
			if _, err := gz.Write(m.data); err != nil {
				return fmt.Errorf("format: compressing: %w", err)
			}
			if err := gz.Close(); err != nil {
				return fmt.Errorf("format: compressing: %w", err)
			}
			m.out = append(make([]byte, 0, buf.Len()), buf.Bytes()...)
		default:
			m.out = zw.EncodeAll(m.data, make([]byte, 0, len(m.data)/2+64))
		}
		close(m.done)
	}
	return nil
}

// finish writes the TOC and the footer after the last member.
func (b *builder) finish(cw *countingWriter, diff hash.Hash, usize int64) (*Result, error) {
	tocJSON, err := json.Marshal(TOC{Version: 1, Entries: b.toc})
	if err != nil {
		return nil, fmt.Errorf("format: encoding TOC: %w", err)
	}
	res := &Result{
		TOCDigest:   digest.FromBytes(tocJSON),
		Compression: b.cfg.compression,
		Entries:     len(b.toc),
		Annotations: map[string]string{},
	}
	tocOff := cw.n
	switch b.cfg.compression {
	case Gzip:
		var tarBuf bytes.Buffer
		tw := tar.NewWriter(&tarBuf)
		if err := tw.WriteHeader(&tar.Header{
			Typeflag: tar.TypeReg,
			Name:     TOCTarName,
			Mode:     0o644,
			Size:     int64(len(tocJSON)),
			ModTime:  time.Unix(0, 0),
			Format:   tar.FormatUSTAR,
		}); err != nil {
			return nil, fmt.Errorf("format: encoding TOC: %w", err)
		}
		tw.Write(tocJSON)
		if err := tw.Close(); err != nil {
			return nil, fmt.Errorf("format: encoding TOC: %w", err)
		}
		diff.Write(tarBuf.Bytes())
		usize += int64(tarBuf.Len())
		// The TOC is small and read first: compress it as well as gzip can.
		gz, err := gzip.NewWriterLevel(cw, gzip.BestCompression)
		if err != nil {
			return nil, fmt.Errorf("format: compressor: %w", err)
		}
		if _, err := gz.Write(tarBuf.Bytes()); err != nil {
			return nil, fmt.Errorf("format: writing TOC: %w", err)
		}
		if err := gz.Close(); err != nil {
			return nil, fmt.Errorf("format: writing TOC: %w", err)
		}
		if _, err := cw.Write(AppendGzipFooter(nil, tocOff)); err != nil {
			return nil, fmt.Errorf("format: writing footer: %w", err)
		}
	case Zstd:
		zw, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(b.cfg.level)), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("format: compressor: %w", err)
		}
		ctoc := zw.EncodeAll(tocJSON, nil)
		frame := skippableFrame(ctoc)
		if _, err := cw.Write(frame); err != nil {
			return nil, fmt.Errorf("format: writing TOC: %w", err)
		}
		pos := tocOff + 8
		if _, err := cw.Write(AppendZstdFooter(nil, pos, int64(len(ctoc)), int64(len(tocJSON)))); err != nil {
			return nil, fmt.Errorf("format: writing footer: %w", err)
		}
		res.Annotations[ZstdChunkedManifestChecksumAnnotation] = digest.FromBytes(ctoc).String()
		res.Annotations[ZstdChunkedManifestPositionAnnotation] = fmt.Sprintf("%d:%d:%d:1", pos, len(ctoc), len(tocJSON))
	}
	res.Digest = digest.NewDigest(digest.SHA256, cw.h)
	res.Size = cw.n
	res.DiffID = digest.NewDigest(digest.SHA256, diff)
	res.UncompressedSize = usize
	res.Annotations[TOCDigestAnnotation] = res.TOCDigest.String()
	res.Annotations[UncompressedSizeAnnotation] = strconv.FormatInt(usize, 10)
	return res, nil
}

func skippableFrame(payload []byte) []byte {
	b := make([]byte, 0, 8+len(payload))
	b = binary.LittleEndian.AppendUint32(b, skippableMagicLow)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

type countingWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	return n, err
}

func headerBytes(h *tar.Header) ([]byte, error) {
	var buf bytes.Buffer
	if err := tar.NewWriter(&buf).WriteHeader(h); err != nil {
		return nil, fmt.Errorf("format: encoding header %q: %w", h.Name, err)
	}
	return buf.Bytes(), nil
}

// nameIfChanged returns name unless it is what the previous entry with the
// same id carried; readers carry names forward per id.
func nameIfChanged(last map[int]string, id int, name string) string {
	if name == "" || last[id] == name {
		return ""
	}
	last[id] = name
	return name
}

// formatModTime renders a time as a TOC modtime: RFC 3339, UTC, whole
// seconds (truncated, as stat shows an extracted file's time).
// The epoch, the zero time and years RFC 3339 cannot hold are left out; the
// tar header keeps the exact value.
func formatModTime(t time.Time) string {
	if t.IsZero() || t.Unix() == 0 {
		return ""
	}
	t = t.UTC().Truncate(time.Second)
	if y := t.Year(); y < 0 || y > 9999 {
		return ""
	}
	return t.Format(time.RFC3339)
}

const xattrPrefix = "SCHILY.xattr."

func xattrsOf(h *tar.Header) map[string][]byte {
	var x map[string][]byte
	for k, v := range h.PAXRecords {
		if len(k) > len(xattrPrefix) && k[:len(xattrPrefix)] == xattrPrefix {
			if x == nil {
				x = make(map[string][]byte)
			}
			x[k[len(xattrPrefix):]] = []byte(v)
		}
	}
	return x
}
