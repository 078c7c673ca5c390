package mount

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// table is a mount table with two image mounts of nibble's (one by the
// new mount API, one by lowerdir=, with escapes), a plain overlay, and a
// mount stacked on an image mount.
const table = `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
90 22 0:50 / /var/lib/nibble/m/1/0 ro,nosuid,nodev,relatime shared:40 - fuse.nibble nibble ro,user_id=0,group_id=0,default_permissions,allow_other
91 22 0:51 / /var/lib/nibble/m/1/1 ro,nosuid,nodev,relatime shared:41 - fuse.nibble nibble ro,user_id=0,group_id=0,default_permissions,allow_other
92 22 0:52 / /srv/app\040one ro,relatime shared:42 - overlay none ro,lowerdir+=/var/lib/nibble/m/1/1,lowerdir+=/var/lib/nibble/m/1/0,redirect_dir=on
93 22 0:53 / /r\134x/m/2/0 ro,relatime shared:43 - fuse.nibble nibble ro
94 22 0:54 / /mnt/b ro,relatime shared:44 - overlay none ro,lowerdir=/r\134x/m/2/0:/r\134x/m/2/empty
95 22 0:55 / /mnt/plain rw,relatime shared:45 - overlay overlay rw,lowerdir=/a:/b,upperdir=/u,workdir=/w
96 22 0:56 / /var/lib/nibble/m/3/0 ro,relatime shared:46 - fuse.nibble nibble ro
97 22 0:57 / /mnt/c ro,relatime shared:47 - overlay none ro,lowerdir+=/var/lib/nibble/m/3/0,lowerdir+=/var/lib/nibble/m/3/empty
98 97 0:58 / /mnt/c rw,relatime shared:48 - tmpfs tmpfs rw
`

func TestFindOrphan(t *testing.T) {
	mounts, err := parseMountInfo(strings.NewReader(table))
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != 10 {
		t.Fatalf("%d mounts, want 10", len(mounts))
	}
	dead := func(string) bool { return false }
	for _, tc := range []struct {
		target, state string
		layers        []string
	}{
		{"/srv/app one", "/var/lib/nibble/m/1", []string{"/var/lib/nibble/m/1/1", "/var/lib/nibble/m/1/0"}},
		{`/mnt/b`, `/r\x/m/2`, []string{`/r\x/m/2/0`}},
		{"/mnt/plain", "", nil}, // not nibble's
		{"/mnt/c", "", nil},     // something else is mounted on top
		{"/var/lib/nibble/m/1/0", "", nil},
		{"/nowhere", "", nil},
	} {
		o, err := findOrphan(mounts, tc.target, dead)
		if err != nil {
			t.Errorf("%s: %v", tc.target, err)
			continue
		}
		if tc.state == "" {
			if o != nil {
				t.Errorf("%s: orphan %+v, want none", tc.target, o)
			}
			continue
		}
		if o == nil || o.Target != tc.target || o.State != tc.state || !slices.Equal(o.Layers, tc.layers) {
			t.Errorf("%s: %+v, want state %s, layers %q", tc.target, o, tc.state, tc.layers)
		}
	}
	alive := func(dir string) bool { return dir == "/var/lib/nibble/m/1/0" }
	if o, err := findOrphan(mounts, "/srv/app one", alive); !errors.Is(err, ErrServed) {
		t.Errorf("a mount whose layer answers: %+v, %v, want ErrServed", o, err)
	}
}

func TestParseMountInfoMalformed(t *testing.T) {
	for _, line := range []string{
		"22 1 8:1 / / rw,relatime shared:1 ext4 /dev/vda1 rw", // no separator
		"22 1 8:1 / / rw -",          // no type
		"22 1 8:1 / -",               // too short
		"22 1 8:1 / / rw - ",         // no type either
		"22 1 8:1 / / rw shared:1 -", // no type after the optional fields
	} {
		if ms, err := parseMountInfo(strings.NewReader(line + "\n")); err == nil {
			t.Errorf("%q: %+v, want an error", line, ms)
		}
	}
}

func FuzzParseMountInfo(f *testing.F) {
	f.Add(table)
	f.Add("1 2 3:4 / /a\\ rw - overlay x lowerdir=\\1:,lowerdir+=\\0777\n")
	f.Fuzz(func(t *testing.T, s string) {
		mounts, err := parseMountInfo(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, m := range mounts {
			if m.fsType == "" {
				t.Fatalf("mount without a type: %+v", m)
			}
			overlayLowers(m.superOpts)
			if _, err := findOrphan(mounts, m.point, func(string) bool { return false }); err != nil {
				t.Fatal(err)
			}
		}
	})
}
