package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"

	"nibble.dev/nibble/internal/imageref"
)

func openLayout(ctx context.Context, loc imageref.Location, c *config) (*Image, error) {
	a, err := imageref.Read(ctx, loc)
	if err != nil {
		if errors.Is(err, imageref.ErrNotFound) {
			return nil, fmt.Errorf("remote: %w: %w", ErrNotFound, err)
		}
		return nil, fmt.Errorf("remote: %w", err)
	}
	dir := loc.Dir()
	im, err := resolve(ctx, loc, a, c.wantPlatform(), func(d digest.Digest, size int64) Blob {
		return &layoutBlob{path: filepath.Join(dir, "blobs", d.Algorithm().String(), d.Encoded()), d: d, size: size}
	})
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && !errors.Is(err, ErrNotFound) {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, fmt.Errorf("remote: %s: %w", loc, err)
	}
	return im, nil
}

// layoutBlob is a blob in an OCI image layout, read with ReadAt.
type layoutBlob struct {
	path string
	d    digest.Digest
	size int64
}

var _ Blob = (*layoutBlob)(nil)

func (b *layoutBlob) Digest() digest.Digest { return b.d }
func (b *layoutBlob) Size() int64           { return b.size }

func (b *layoutBlob) ReadRanges(ctx context.Context, rs []Range) ([][]byte, error) {
	pieces, out, err := checkRanges(rs, b.size)
	if err != nil {
		return nil, fmt.Errorf("remote: blob %s: %w", b.d, err)
	}
	if err := b.read(ctx, pieces); err != nil {
		return nil, fmt.Errorf("remote: blob %s: %w", b.d, err)
	}
	return out, nil
}

func (b *layoutBlob) read(ctx context.Context, pieces []*piece) error {
	f, err := os.Open(b.path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", b.path)
	}
	if fi.Size() != b.size {
		return fmt.Errorf("%s holds %d bytes; its descriptor says %d", b.path, fi.Size(), b.size)
	}
	for _, p := range pieces {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := f.ReadAt(p.buf, p.off)
		if n < len(p.buf) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("bytes %d-%d: %w", p.off, p.end()-1, err)
		}
		p.n = n
	}
	return nil
}
