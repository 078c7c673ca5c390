package cache

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestFileObjects(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir)
	b, d := chunk(1, 10<<20+7)
	if f, ok, err := c.OpenFile(d); f != nil || ok || err != nil {
		t.Fatalf("OpenFile before PutFile: %v, %v", ok, err)
	}
	if err := c.PutFile(d, int64(len(b)), bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	readAll := func() []byte {
		t.Helper()
		f, ok, err := c.OpenFile(d)
		if err != nil || !ok {
			t.Fatalf("OpenFile: %v, %v", ok, err)
		}
		defer f.Close()
		got, err := io.ReadAll(f)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if !bytes.Equal(readAll(), b) {
		t.Fatal("OpenFile: wrong content")
	}
	// One namespace: Get reads the same object.
	mustGet(t, c, d, b)
	if s := c.Stats(); s.Entries != 1 || s.Bytes != int64(len(b)) {
		t.Fatalf("Stats = %+v", s)
	}

	// After a restart, OpenFile verifies first.
	c.Close()
	c = open(t, dir)
	if !bytes.Equal(readAll(), b) {
		t.Fatal("OpenFile after restart: wrong content")
	}
	if s := c.Stats(); s.Unverified != 0 {
		t.Fatalf("not verified: %+v", s)
	}
	c.Close()
	p := filepath.Join(dir, algo, d.Encoded()[:2], d.Encoded())
	damaged := append([]byte(nil), b...)
	damaged[len(b)/2] ^= 0x80
	if err := os.WriteFile(p, damaged, 0o600); err != nil {
		t.Fatal(err)
	}
	c = open(t, dir)
	if f, ok, err := c.OpenFile(d); f != nil || ok || err != nil {
		t.Fatalf("OpenFile of a damaged object: %v, %v", ok, err)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("damaged object not removed: %v", err)
	}
	if s := c.Stats(); s.VerifyFailures != 1 || s.Entries != 0 {
		t.Fatalf("Stats = %+v", s)
	}
}

func TestPutFileRefuses(t *testing.T) {
	c := open(t, t.TempDir())
	b, d := chunk(1, 100<<10)
	other, _ := chunk(2, 100<<10)
	for _, tc := range []struct {
		name string
		size int64
		r    io.Reader
		want error
	}{
		{"other bytes", int64(len(b)), bytes.NewReader(other), ErrDigest},
		{"short reader", int64(len(b)), bytes.NewReader(b[:1000]), io.ErrUnexpectedEOF},
		{"short size", int64(len(b) - 1), bytes.NewReader(b), ErrDigest},
		{"reader fails", int64(len(b)), io.MultiReader(bytes.NewReader(b[:10]), iotestErr{}), errRead},
	} {
		if err := c.PutFile(d, tc.size, tc.r); !errors.Is(err, tc.want) {
			t.Errorf("%s: PutFile: %v, want %v", tc.name, err, tc.want)
		}
	}
	if c.Has(d) {
		t.Fatal("stored")
	}
	if objs, temps := files(t, c.Dir()); len(objs)+len(temps) != 0 {
		t.Fatalf("files left: %v %v", objs, temps)
	}
	if s := c.Stats(); s.Bytes != 0 || s.WriteErrors != 4 {
		t.Fatalf("Stats = %+v", s)
	}
}

var errRead = errors.New("read failed")

type iotestErr struct{}

func (iotestErr) Read([]byte) (int, error) { return 0, errRead }
