package linkproxy

import (
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Rate
		ok   bool
	}{
		{"1gbit", Gbit, true},
		{"1GBit", Gbit, true},
		{"100mbit", 100 * Mbit, true},
		{"2.5gbit", 2500 * Mbit, true},
		{"64kbit", 64 * Kbit, true},
		{"125mbps", Gbit, true},
		{"10kbps", 80 * Kbit, true},
		{"1000", 1000, true},
		{"0", 0, true},
		{" 1 gbit ", Gbit, true},
		{"", 0, false},
		{"fast", 0, false},
		{"-1mbit", 0, false},
		{"1gb", 0, false},
		{"1e20bit", 0, false},
	} {
		got, err := ParseRate(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if tc.ok && tc.want != 0 {
			back, err := ParseRate(got.String())
			if err != nil || back != got {
				t.Errorf("ParseRate(%q.String() = %q) = %v, %v", tc.in, got.String(), back, err)
			}
		}
	}
}

// TestBucket checks the virtual clock: bytes are sent back to back at the
// rate, an idle link earns no credit, and senders wait only when they run
// more than the burst ahead.
func TestBucket(t *testing.T) {
	b := newBucket(8 * Mbit) // 1 MB/s: a microsecond per byte
	now := time.Now()
	sent, wait := b.reserve(now, 1000)
	if want := now.Add(time.Millisecond); !sent.Equal(want) || !wait.Equal(want.Add(-burstFor)) {
		t.Fatalf("first reserve: sent %v, wait %v", sent.Sub(now), wait.Sub(now))
	}
	sent, _ = b.reserve(now, 2000)
	if want := now.Add(3 * time.Millisecond); !sent.Equal(want) {
		t.Errorf("second reserve sent at %v, want 3ms", sent.Sub(now))
	}
	later := now.Add(time.Second)
	sent, _ = b.reserve(later, 500)
	if want := later.Add(500 * time.Microsecond); !sent.Equal(want) {
		t.Errorf("after idling, sent at %v, want 500µs", sent.Sub(later))
	}
	if newBucket(0) != nil {
		t.Error("a zero rate has a bucket")
	}
}
