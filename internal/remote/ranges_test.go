package remote

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
)

var update = flag.Bool("update", false, "rewrite the fuzz seed corpus in testdata")

func TestParseContentRange(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want contentRange
		ok   bool
	}{
		{"bytes 0-0/1", contentRange{0, 0, 1}, true},
		{"bytes 10-19/100", contentRange{10, 19, 100}, true},
		{"bytes 10-19/*", contentRange{10, 19, -1}, true},
		{"bytes 0-9223372036854775806/9223372036854775807", contentRange{0, 9223372036854775806, 9223372036854775807}, true},
		{"bytes 0-9/10", contentRange{0, 9, 10}, true},
		{"bytes 0-10/10", contentRange{}, false},
		{"bytes 5-4/10", contentRange{}, false},
		{"bytes */10", contentRange{}, false},
		{"bytes -1-5/10", contentRange{}, false},
		{"bytes +1-5/10", contentRange{}, false},
		{"bytes 1-+5/10", contentRange{}, false},
		{"bytes  1-5/10", contentRange{}, false},
		{"bytes 1-5/10 ", contentRange{}, false},
		{"bytes 1-5", contentRange{}, false},
		{"bytes 1/10", contentRange{}, false},
		{"items 1-5/10", contentRange{}, false},
		{"bytes 0-99999999999999999999/*", contentRange{}, false},
		{"bytes 0-9223372036854775808/*", contentRange{}, false},
		{"", contentRange{}, false},
	} {
		got, err := parseContentRange(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseContentRange(%q) = %v, %v; want %v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
		if err == nil && got.String() != tc.in {
			t.Errorf("%q formats back as %q", tc.in, got.String())
		}
	}
}

func TestScatter(t *testing.T) {
	blob := []byte("0123456789abcdefghijklmnopqrstuvwxyz")
	mk := func(off, n int) *piece { return &piece{off: int64(off), buf: make([]byte, n)} }
	for _, tc := range []struct {
		name        string
		first, last int64
		pieces      []*piece
		filled      []bool
		err         bool
	}{
		{"exact", 3, 9, []*piece{mk(3, 7)}, []bool{true}, false},
		{"gaps", 0, 35, []*piece{mk(1, 2), mk(10, 5), mk(30, 6)}, []bool{true, true, true}, false},
		{"partly outside", 5, 20, []*piece{mk(0, 7), mk(8, 3), mk(18, 5)}, []bool{false, true, false}, false},
		{"resumes", 0, 35, []*piece{{off: 4, buf: []byte("45\x00\x00"), n: 2}}, []bool{true}, false},
		{"short stream", 0, 40, []*piece{mk(30, 10)}, []bool{false}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := iotest.HalfReader(bytes.NewReader(blob[tc.first:min(tc.last+1, int64(len(blob)))]))
			err := scatter(r, tc.first, tc.last, tc.pieces)
			if (err != nil) != tc.err {
				t.Errorf("err = %v, want error %v", err, tc.err)
			}
			for i, p := range tc.pieces {
				if p.done() != tc.filled[i] {
					t.Errorf("piece %d filled %v, want %v", i, p.done(), tc.filled[i])
				}
				if p.done() && !bytes.Equal(p.buf, blob[p.off:p.end()]) {
					t.Errorf("piece %d = %q", i, p.buf)
				}
			}
		})
	}
}

func TestReadPart(t *testing.T) {
	blob := []byte("0123456789abcdefghijklmnopqrstuvwxyz")
	for _, tc := range []struct {
		name       string
		cr         contentRange
		stream     io.Reader
		keepPrefix bool
		wantN      int
		err        bool
	}{
		{"exact", contentRange{4, 13, 36}, bytes.NewReader(blob[4:14]), false, 10, false},
		{"longer than claimed", contentRange{4, 13, 36}, bytes.NewReader(blob[4:15]), true, 0, true},
		{"ends early, prefix kept", contentRange{4, 13, 36}, bytes.NewReader(blob[4:10]), true, 6, true},
		{"ends early, dropped", contentRange{4, 13, 36}, bytes.NewReader(blob[4:10]), false, 0, true},
		{"breaks, prefix kept", contentRange{4, 13, 36},
			io.MultiReader(bytes.NewReader(blob[4:8]), iotest.ErrReader(errors.New("reset"))), true, 4, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &piece{off: 4, buf: make([]byte, 10)}
			err := readPart(tc.stream, tc.cr, []*piece{p}, tc.keepPrefix)
			if (err != nil) != tc.err || p.n != tc.wantN {
				t.Errorf("err %v, n %d; want error %v, n %d", err, p.n, tc.err, tc.wantN)
			}
			if !bytes.Equal(p.buf[:p.n], blob[4:4+p.n]) {
				t.Errorf("bytes %q", p.buf[:p.n])
			}
		})
	}
}

// FuzzMultipart feeds untrusted multipart/byteranges bodies to the
// parser. Whatever the body, it must not panic, must report faults as
// transient, and must keep every piece within its buffer. Its seed corpus
// is in testdata/fuzz/FuzzMultipart (refresh: go test -run TestFuzzSeeds
// -update).
func FuzzMultipart(f *testing.F) {
	for _, s := range multipartSeeds() {
		f.Add(s.body, s.boundary)
	}
	f.Fuzz(func(t *testing.T, body []byte, boundary string) {
		const size = 1000
		pieces := []*piece{
			{off: 0, buf: make([]byte, 10)},
			{off: 100, buf: make([]byte, 50)},
			{off: 500, buf: make([]byte, 1)},
			{off: 990, buf: make([]byte, 10)},
		}
		err := readMultipart(bytes.NewReader(body), boundary, size, pieces)
		if err != nil && !errors.Is(err, ErrTransient) {
			t.Fatalf("error not marked transient: %v", err)
		}
		for i, p := range pieces {
			if p.n < 0 || p.n > len(p.buf) {
				t.Fatalf("piece %d: n = %d of %d", i, p.n, len(p.buf))
			}
		}
	})
}

// FuzzContentRange checks that what parseContentRange accepts has
// first <= last < size, and parses back the same once formatted.
func FuzzContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-0/1", "bytes 10-19/*", "bytes 5-4/10", "bytes 1-2/3x", "bytes */5", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseContentRange(s)
		if err != nil {
			return
		}
		if c.first < 0 || c.first > c.last || (c.size >= 0 && c.last >= c.size) || c.size < -1 {
			t.Fatalf("%q parsed as %+v", s, c)
		}
		if again, err := parseContentRange(c.String()); err != nil || again != c {
			t.Fatalf("%q formats as %q, which parses as %+v, %v", s, c.String(), again, err)
		}
	})
}

type multipartSeed struct {
	body     []byte
	boundary string
}

// multipartSeeds are well-formed and damaged answers for FuzzMultipart's
// blob (byte i is i mod 251).
func multipartSeeds() []multipartSeed {
	blob := make([]byte, 1000)
	for i := range blob {
		blob[i] = byte(i % 251)
	}
	build := func(parts ...contentRange) multipartSeed {
		var b strings.Builder
		for _, cr := range parts {
			b.WriteString("--B\r\nContent-Type: application/octet-stream\r\nContent-Range: " + cr.String() + "\r\n\r\n")
			b.Write(blob[cr.first : cr.last+1])
			b.WriteString("\r\n")
		}
		b.WriteString("--B--\r\n")
		return multipartSeed{[]byte(b.String()), "B"}
	}
	good := build(contentRange{0, 9, 1000}, contentRange{100, 149, 1000}, contentRange{500, 500, 1000}, contentRange{990, 999, 1000})
	return []multipartSeed{
		good,
		build(contentRange{0, 999, 1000}),
		build(contentRange{990, 999, 1000}, contentRange{0, 149, 1000}),
		build(contentRange{0, 9, 999}),
		{good.body[:len(good.body)/2], "B"},
		{good.body, ""},
		{good.body, "other"},
		{[]byte("--B\r\nContent-Range: bytes 0-9/1000\r\n\r\n0123\r\n--B--\r\n"), "B"},
	}
}

// TestFuzzSeeds checks that testdata/fuzz/FuzzMultipart holds the seeds of
// multipartSeeds; -update rewrites it.
func TestFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzMultipart")
	if *update {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range multipartSeeds() {
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nstring(%q)\n", s.body, s.boundary)
		path := filepath.Join(dir, fmt.Sprintf("seed-%02d", i))
		if *update {
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != want {
			t.Errorf("%s is stale or missing (%v); run go test -run TestFuzzSeeds -update", path, err)
		}
	}
}
