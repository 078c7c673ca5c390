package size

import "testing"

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  bool
	}{
		{"4194304", 4 << 20, false},
		{"4MiB", 4 << 20, false},
		{"4mib", 4 << 20, false},
		{"4M", 4 << 20, false},
		{"512k", 512 << 10, false},
		{"512 KiB", 512 << 10, false},
		{"1GiB", 1 << 30, false},
		{"2MB", 2000000, false},
		{"1.5MiB", 3 << 19, false},
		{"0", 0, false},
		{"", 0, true},
		{"MiB", 0, true},
		{"12XB", 0, true},
		{"-1", 0, true},
		{"99999999999999999999", 0, true},
	} {
		got, err := Parse(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("Parse(%q) = %d, %v", tc.in, got, err)
		}
	}
}
