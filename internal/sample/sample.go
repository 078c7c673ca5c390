// Package sample generates a realistic container image, deterministically:
// the same options always give the same bytes and digests.
//
// The image looks like a small Linux distribution with Python and an
// application on top: thousands of files in nested directories, text that
// compresses like source code and documentation, a few binaries of a few
// megabytes, symlinks (relative and absolute), a hard link, and three
// layers, the upper two of which delete files of the lower ones with a
// whiteout and an opaque directory. It is used by `nibble demo`, by tests
// and by benchmarks; generation takes about a second at the default size.
package sample

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"path"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"golang.org/x/sync/errgroup"
)

// DefaultSize is the default total uncompressed size of the layers' files.
const DefaultSize = 48 << 20

// Option configures Image and Index.
type Option func(*config)

type config struct {
	size     int64
	seed     uint64
	platform v1.Platform
	docker   bool
}

// WithSize sets the approximate total uncompressed size of the files
// (default DefaultSize). File counts scale with it; at least a few dozen
// files are always written.
func WithSize(n int64) Option {
	return func(c *config) { c.size = max(n, 64<<10) }
}

// WithSeed changes the generated contents (default 1).
func WithSeed(seed uint64) Option {
	return func(c *config) { c.seed = seed }
}

// WithPlatform sets the platform in the image config (default linux/amd64).
// It also changes the contents, as a different build would.
func WithPlatform(p v1.Platform) Option {
	return func(c *config) { c.platform = p }
}

// WithDockerMediaTypes writes a Docker schema2 image instead of an OCI one.
func WithDockerMediaTypes() Option {
	return func(c *config) { c.docker = true }
}

func makeConfig(opts []Option) config {
	c := config{size: DefaultSize, seed: 1, platform: v1.Platform{OS: "linux", Architecture: "amd64"}}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// epoch is the time stamped on every file and history entry.
var epoch = time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)

// Image generates the sample image.
func Image(opts ...Option) (v1.Image, error) {
	c := makeConfig(opts)
	seed := c.seed
	for _, b := range []byte(c.platform.String()) {
		seed = seed*1099511628211 + uint64(b)
	}
	gens := []func(*gen){baseLayer, pythonLayer, appLayer}
	shares := []float64{0.55, 0.40, 0.05}
	layers := make([]*memLayer, len(gens))
	var g errgroup.Group
	for i := range gens {
		g.Go(func() error {
			gn := newGen(seed+uint64(i)*7919, int64(float64(c.size)*shares[i]))
			gens[i](gn)
			l, err := newMemLayer(gn.finish(), c.docker)
			if err != nil {
				return fmt.Errorf("sample: layer %d: %w", i, err)
			}
			layers[i] = l
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	base := empty.Image
	if !c.docker {
		base = mutate.MediaType(base, types.OCIManifestSchema1)
		base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	}
	comments := []string{"base system", "python3.11 runtime", "application"}
	adds := make([]mutate.Addendum, len(layers))
	for i, l := range layers {
		adds[i] = mutate.Addendum{
			Layer: l,
			History: v1.History{
				Created:   v1.Time{Time: epoch},
				CreatedBy: "nibble sample: " + comments[i],
				Comment:   comments[i],
			},
			MediaType: l.mediaType,
		}
	}
	img, err := mutate.Append(base, adds...)
	if err != nil {
		return nil, fmt.Errorf("sample: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("sample: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: epoch}
	cf.OS = c.platform.OS
	cf.Architecture = c.platform.Architecture
	cf.Variant = c.platform.Variant
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1"}
	cf.Config.Entrypoint = []string{"/usr/bin/python3", "/app/main.py"}
	cf.Config.Cmd = []string{"--serve"}
	cf.Config.WorkingDir = "/app"
	cf.Config.User = "1000:1000"
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":       "nibble sample",
		"org.opencontainers.image.description": "a generated image for nibble's demo and tests",
	}
	cf.Config.ExposedPorts = map[string]struct{}{"8080/tcp": {}}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("sample: %w", err)
	}
	return img, nil
}

// Index generates a multi-platform index with one sample image per
// platform (contents differ per platform).
func Index(platforms []v1.Platform, opts ...Option) (v1.ImageIndex, error) {
	c := makeConfig(opts)
	var idx v1.ImageIndex = empty.Index
	if c.docker {
		idx = mutate.IndexMediaType(idx, types.DockerManifestList)
	} else {
		idx = mutate.IndexMediaType(idx, types.OCIImageIndex)
	}
	var adds []mutate.IndexAddendum
	for _, p := range platforms {
		img, err := Image(append(opts, WithPlatform(p))...)
		if err != nil {
			return nil, err
		}
		mt, err := img.MediaType()
		if err != nil {
			return nil, err
		}
		p := p
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{MediaType: mt, Platform: &p}})
	}
	return mutate.AppendManifests(idx, adds...), nil
}

// memLayer is a gzip layer held in memory with precomputed digests.
type memLayer struct {
	tar, gz        []byte
	digest, diffID v1.Hash
	mediaType      types.MediaType
}

func newMemLayer(tarBytes []byte, docker bool) (*memLayer, error) {
	var buf bytes.Buffer
	buf.Grow(len(tarBytes)/2 + 4096)
	zw, err := gzip.NewWriterLevel(&buf, 6)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(tarBytes); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	mt := types.OCILayer
	if docker {
		mt = types.DockerLayer
	}
	return &memLayer{
		tar:       tarBytes,
		gz:        buf.Bytes(),
		digest:    sha(buf.Bytes()),
		diffID:    sha(tarBytes),
		mediaType: mt,
	}, nil
}

func sha(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", s[:])}
}

func (l *memLayer) Digest() (v1.Hash, error) { return l.digest, nil }
func (l *memLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }
func (l *memLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.gz)), nil
}
func (l *memLayer) Uncompressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.tar)), nil
}
func (l *memLayer) Size() (int64, error)                { return int64(len(l.gz)), nil }
func (l *memLayer) MediaType() (types.MediaType, error) { return l.mediaType, nil }

var _ v1.Layer = (*memLayer)(nil)

// gen writes one layer's tar.
type gen struct {
	r      *rand.Rand
	budget int64 // bytes of file content left to write
	buf    bytes.Buffer
	tw     *tar.Writer
	dirs   map[string]bool
	names  map[string]bool // regular files written
	files  int
	err    error
}

func newGen(seed uint64, budget int64) *gen {
	g := &gen{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), budget: budget, dirs: map[string]bool{}, names: map[string]bool{}}
	g.buf.Grow(int(budget + budget/8 + 1<<20))
	g.tw = tar.NewWriter(&g.buf)
	return g
}

func (g *gen) finish() []byte {
	if err := g.tw.Close(); err != nil && g.err == nil {
		g.err = err
	}
	if g.err != nil {
		panic(fmt.Sprintf("sample: writing tar to memory: %v", g.err))
	}
	return g.buf.Bytes()
}

func (g *gen) header(h *tar.Header) {
	if g.err != nil {
		return
	}
	if h.ModTime.IsZero() {
		h.ModTime = epoch.Add(-time.Duration(g.r.IntN(400*24)) * time.Hour)
	}
	if h.Uname == "" && h.Uid == 0 {
		h.Uname, h.Gname = "root", "root"
	}
	h.Format = tar.FormatPAX
	g.err = g.tw.WriteHeader(h)
}

// dir writes name and its missing parents.
func (g *gen) dir(name string) {
	if name == "." || name == "/" || g.dirs[name] {
		return
	}
	g.dir(path.Dir(name))
	g.dirs[name] = true
	g.header(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o755, ModTime: epoch})
}

func (g *gen) file(name string, mode int64, data []byte) {
	g.dir(path.Dir(name))
	g.names[name] = true
	g.header(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))})
	if g.err == nil {
		_, g.err = g.tw.Write(data)
	}
	g.budget -= int64(len(data))
	g.files++
}

func (g *gen) symlink(name, target string) {
	g.dir(path.Dir(name))
	g.header(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777})
}

func (g *gen) hardlink(name, target string) {
	g.dir(path.Dir(name))
	g.header(&tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o755})
}

// whiteout deletes name of a lower layer.
func (g *gen) whiteout(name string) {
	g.file(path.Join(path.Dir(name), ".wh."+path.Base(name)), 0o644, nil)
}

// opaque hides everything that lower layers have in dir.
func (g *gen) opaque(dir string) {
	g.file(path.Join(dir, ".wh..wh..opq"), 0o644, nil)
}

// pick returns an index in [0, n) skewed towards small values, as word
// frequencies are.
func (g *gen) pick(n int) int {
	return int(g.r.ExpFloat64()*float64(n)/6) % n
}

func (g *gen) sizeAround(mean int) int {
	return int(g.r.ExpFloat64()*float64(mean)) + 16
}

// text returns n bytes of text in the given style.
func (g *gen) text(n int, vocab []string, code bool) []byte {
	b := make([]byte, 0, n+64)
	col, indent := 0, 0
	for len(b) < n {
		w := vocab[g.pick(len(vocab))]
		if code && g.r.IntN(9) == 0 {
			w = fmt.Sprintf("%s_%d", w, g.r.IntN(40))
		}
		b = append(b, w...)
		col += len(w) + 1
		switch {
		case col > 60+g.r.IntN(20):
			b = append(b, '\n')
			if code {
				indent = g.r.IntN(4) * 4
				for range indent {
					b = append(b, ' ')
				}
			}
			col = indent
		case code && g.r.IntN(7) == 0:
			b = append(b, "()."[g.r.IntN(3)])
			b = append(b, ' ')
		default:
			b = append(b, ' ')
		}
	}
	return b[:n]
}

// binary returns n bytes that compress roughly like machine code: skewed
// opcodes, small immediates, runs of zeros and embedded strings.
func (g *gen) binary(n int) []byte {
	b := make([]byte, 0, n+64)
	b = append(b, 0x7f, 'E', 'L', 'F', 2, 1, 1, 0)
	for len(b) < n {
		switch k := g.r.IntN(100); {
		case k < 70:
			op := opcodes[g.pick(len(opcodes))]
			b = append(b, op...)
		case k < 85:
			v := g.r.Uint32() & 0xffff
			b = append(b, byte(v), byte(v>>8), 0, 0)
		case k < 93:
			b = append(b, byte(g.r.Uint32()), byte(g.r.Uint32()), byte(g.r.Uint32()), byte(g.r.Uint32()))
		case k < 97:
			b = append(b, make([]byte, 8+g.r.IntN(24))...)
		default:
			b = append(b, proseWords[g.pick(len(proseWords))]...)
			b = append(b, 0)
		}
	}
	return b[:n]
}

var opcodes = func() [][]byte {
	r := rand.New(rand.NewPCG(42, 42))
	ops := make([][]byte, 512)
	for i := range ops {
		op := make([]byte, 1+r.IntN(6))
		for j := range op {
			op[j] = byte(r.Uint32())
		}
		ops[i] = op
	}
	return ops
}()

// pkgs are the names of the base layer's pretend packages.
var pkgs = []string{
	"adduser", "apt", "base-files", "bash", "bsdutils", "coreutils", "dash", "debconf", "debianutils",
	"diffutils", "dpkg", "e2fsprogs", "findutils", "gcc-12-base", "gpgv", "grep", "gzip", "hostname",
	"init-system-helpers", "libacl1", "libapt-pkg6.0", "libattr1", "libaudit1", "libblkid1", "libbz2-1.0",
	"libc-bin", "libc6", "libcap-ng0", "libcom-err2", "libcrypt1", "libdb5.3", "libdebconfclient0",
	"libexpat1", "libffi8", "libgcc-s1", "libgcrypt20", "libgmp10", "libgnutls30", "libgpg-error0",
	"libhogweed6", "libidn2-0", "liblz4-1", "liblzma5", "libmd0", "libmount1", "libncursesw6",
	"libnettle8", "libp11-kit0", "libpam0g", "libpcre2-8-0", "libreadline8", "libseccomp2",
	"libselinux1", "libsemanage2", "libsepol2", "libsmartcols1", "libsqlite3-0", "libss2", "libssl3",
	"libstdc++6", "libsystemd0", "libtasn1-6", "libtinfo6", "libudev1", "libunistring2", "libuuid1",
	"libxxhash0", "libzstd1", "login", "logsave", "mawk", "mount", "ncurses-base", "ncurses-bin",
	"openssl", "passwd", "perl-base", "readline-common", "sed", "sysvinit-utils", "tar", "tzdata",
	"usrmerge", "util-linux", "zlib1g", "ca-certificates", "netbase", "media-types",
}

func baseLayer(g *gen) {
	total := g.budget
	for _, d := range []string{"bin", "lib", "lib64", "sbin"} {
		g.symlink(d, "usr/"+d)
	}
	for _, d := range []string{"dev", "proc", "sys", "root", "home", "run", "mnt", "opt", "srv", "var/log", "var/lib/dpkg", "usr/local/bin"} {
		g.dir(d)
	}
	g.header(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777, ModTime: epoch})
	g.dirs["tmp"] = true
	g.file("etc/hostname", 0o644, []byte("sample\n"))
	g.file("etc/motd", 0o644, []byte("Welcome to the nibble sample image.\n"))
	g.file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/bash\napp:x:1000:1000::/app:/bin/sh\n"))
	g.file("etc/group", 0o644, []byte("root:x:0:\napp:x:1000:\n"))
	g.file("etc/shadow", 0o640, []byte("root:*:19000:0:99999:7:::\napp:!:19000:0:99999:7:::\n"))
	g.file("etc/os-release", 0o644, []byte("PRETTY_NAME=\"nibble sample\"\nID=sample\nVERSION_ID=\"1\"\n"))
	g.symlink("etc/localtime", "/usr/share/zoneinfo/Etc/UTC")
	g.symlink("etc/mtab", "../proc/self/mounts")
	for i := range 40 {
		g.file(fmt.Sprintf("etc/conf.d/%s.conf", pkgs[i%len(pkgs)]), 0o644, g.text(g.sizeAround(900), confWords, false))
	}
	for i := range 6 {
		g.file(fmt.Sprintf("var/cache/app/stale-%d.bin", i), 0o644, g.binary(g.sizeAround(4<<10)))
	}

	// A few large binaries, one of them hard-linked, then shared libraries.
	bigs := []string{"usr/bin/bash", "usr/bin/perl", "usr/lib/x86_64-linux-gnu/libcrypto.so.3", "usr/bin/coreutils"}
	for i, name := range bigs {
		n := int(min(max(total/8, 64<<10), 6<<20)) * (4 - i) / 3
		g.file(name, 0o755, g.binary(n))
	}
	g.hardlink("usr/bin/perl5.36.0", "usr/bin/perl")
	for _, tool := range []string{"ls", "cp", "mv", "cat", "head", "tail", "sort", "uniq", "wc", "env"} {
		g.symlink("usr/bin/"+tool, "coreutils")
	}
	g.file("usr/bin/passwd", 0o4755, g.binary(8<<10))
	for _, p := range pkgs {
		if g.budget < total*45/100 {
			break
		}
		if len(p) > 3 && p[:3] == "lib" {
			so := fmt.Sprintf("usr/lib/x86_64-linux-gnu/%s.so.1.0.0", p)
			g.file(so, 0o644, g.binary(g.sizeAround(120<<10)))
			g.symlink(fmt.Sprintf("usr/lib/x86_64-linux-gnu/%s.so.1", p), path.Base(so))
		} else if g.r.IntN(2) == 0 {
			g.file("usr/bin/"+p, 0o755, g.binary(g.sizeAround(60<<10)))
		}
	}
	// Documentation: many text files.
	for i := 0; g.budget > 0; i++ {
		p := pkgs[i%len(pkgs)]
		var name string
		switch i / len(pkgs) {
		case 0:
			name = fmt.Sprintf("usr/share/doc/%s/copyright", p)
		case 1:
			name = fmt.Sprintf("usr/share/doc/%s/changelog", p)
		default:
			name = fmt.Sprintf("usr/share/man/man%d/%s-%d.%d", 1+i%8, p, i/len(pkgs), 1+i%8)
		}
		g.file(name, 0o644, g.text(g.sizeAround(6<<10), proseWords, false))
	}
	g.file("var/lib/dpkg/status", 0o644, g.text(64<<10, confWords, false))
}

var pyModules = []string{
	"asyncio", "collections", "concurrent", "ctypes", "email", "encodings", "html", "http", "importlib",
	"json", "logging", "multiprocessing", "sqlite3", "test", "tomllib", "unittest", "urllib", "xml",
	"xmlrpc", "zoneinfo", "site-packages/requests", "site-packages/urllib3", "site-packages/idna",
	"site-packages/certifi", "site-packages/charset_normalizer", "site-packages/pip/_internal",
}

func pythonLayer(g *gen) {
	total := g.budget
	g.file("usr/bin/python3.11", 0o755, g.binary(int(min(max(total/8, 64<<10), 6<<20))))
	g.symlink("usr/bin/python3", "python3.11")
	g.symlink("usr/local/bin/python", "/usr/bin/python3")
	g.whiteout("etc/motd")
	g.opaque("var/cache/app")
	g.file("var/cache/app/fresh.json", 0o644, []byte(`{"generation": 2}`+"\n"))
	g.file("usr/lib/python3.11/config-3.11/libpython3.11.a", 0o644, g.binary(int(min(max(total/10, 32<<10), 4<<20))))
	for i := 0; g.budget > 0; i++ {
		mod := pyModules[i%len(pyModules)]
		dir := "usr/lib/python3.11/" + mod
		if i/len(pyModules)%5 == 4 {
			dir += fmt.Sprintf("/sub%d", i%3)
		}
		name := fmt.Sprintf("%s/%s.py", dir, pyWords[(i*7+i/len(pyModules))%len(pyWords)])
		if i < len(pyModules) {
			name = dir + "/__init__.py"
		}
		if g.names[name] {
			continue
		}
		g.file(name, 0o644, g.text(g.sizeAround(5<<10), pyWords, true))
	}
	// Non-ASCII names and a long path.
	g.file("usr/share/locale/fr/LC_MESSAGES/résumé.txt", 0o644, []byte("déjà vu\n"))
	g.file("usr/lib/python3.11/site-packages/pip/_internal/a/very/deeply/nested/package/with/a/long/path/that/exceeds/one/hundred/bytes/of/name/module.py", 0o644, g.text(2048, pyWords, true))
}

func appLayer(g *gen) {
	g.header(&tar.Header{Typeflag: tar.TypeDir, Name: "app/", Mode: 0o755, Uid: 1000, Gid: 1000, Uname: "app", Gname: "app", ModTime: epoch})
	g.dirs["app"] = true
	g.file("app/main.py", 0o755, g.text(3<<10, pyWords, true))
	g.whiteout("usr/lib/python3.11/test")
	names := make([]string, 0, 64)
	for i := 0; g.budget > 0; i++ {
		name := fmt.Sprintf("app/%s/%s_%d.py", pyModules[i%6], pyWords[i%len(pyWords)], i)
		names = append(names, name)
		g.file(name, 0o644, g.text(g.sizeAround(3<<10), pyWords, true))
	}
	sort.Strings(names)
	g.file("app/static/logo.bin", 0o644, g.binary(32<<10))
	g.file("app/empty", 0o644, nil)
	g.symlink("app/config", "/etc/conf.d")
}

var proseWords = splitWords(`the of and to a in is that for it as was with be by on not he I this are or his from at which
but have an they you were her she there been one all we their has would when if so no will more can other its
who into two time may only some could new them these than first also any my over such our then made most what
after about software license copyright permission notice provided without warranty including limitation rights
distribute modify merchantability fitness particular purpose holders contributors liable damages whether contract
tort otherwise arising use redistribution source binary forms conditions following disclaimer documentation
materials package version release changes fixed bug upload urgency maintainer debian closes option file directory`)

var confWords = splitWords(`# = yes no true false enable disable default path /etc /usr/lib /var/lib /run user group
timeout 30 60 120 0 1 2 on off include mode level debug info warn error log file socket port listen address
127.0.0.1 localhost umask 022 limit max min size cache dir home shell /bin/sh /bin/bash name value key`)

var pyWords = splitWords(`def class self return if else elif for in while import from as with try except finally
raise None True False and or not is lambda yield pass break continue assert global async await
__init__ __name__ __main__ args kwargs value key data result name path os sys re json typing
Optional List Dict Any str int bytes len range isinstance append items get set update format
logger log info debug error request response session headers url params timeout encoding
buffer stream read write close open file line lines text parser node tree module package
config options default callback handler event loop task future queue thread lock manager`)

func splitWords(s string) []string {
	var out []string
	start := -1
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ' ' || s[i] == '\n' || s[i] == '\t' {
			if start >= 0 {
				out = append(out, s[start:i])
				start = -1
			}
		} else if start < 0 {
			start = i
		}
	}
	return out
}
