package linkproxy

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Rate is a bandwidth in bits per second, the unit links are quoted in.
type Rate int64

// Common rates.
const (
	Kbit Rate = 1000
	Mbit      = 1000 * Kbit
	Gbit      = 1000 * Mbit
)

// BytesPerSecond is r in bytes per second.
func (r Rate) BytesPerSecond() float64 { return float64(r) / 8 }

// String formats r the way ParseRate reads it, e.g. "1gbit", "250mbit".
func (r Rate) String() string {
	switch {
	case r == 0:
		return "unlimited"
	case r%Gbit == 0:
		return strconv.FormatInt(int64(r/Gbit), 10) + "gbit"
	case r%Mbit == 0:
		return strconv.FormatInt(int64(r/Mbit), 10) + "mbit"
	case r%Kbit == 0:
		return strconv.FormatInt(int64(r/Kbit), 10) + "kbit"
	}
	return strconv.FormatInt(int64(r), 10) + "bit"
}

// rateUnits are the suffixes ParseRate knows, as tc(8) spells them:
// "bit" units count bits per second, "bps" units bytes per second, both
// with decimal prefixes.
var rateUnits = []struct {
	suffix string
	bits   float64
}{
	{"tbit", 1e12}, {"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1},
	{"tbps", 8e12}, {"gbps", 8e9}, {"mbps", 8e6}, {"kbps", 8e3}, {"bps", 8},
}

// ParseRate reads a bandwidth such as "1gbit", "100mbit", "12.5mbps" or
// "0" (unlimited). Units follow tc(8): "kbit", "mbit", "gbit", "tbit" are
// bits per second and "kbps", "mbps", "gbps", "tbps" bytes per second,
// with decimal prefixes; a bare number is bits per second.
func ParseRate(s string) (Rate, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := 1.0
	for _, u := range rateUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.bits
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || v*mult > 1e15 {
		return 0, fmt.Errorf("linkproxy: bad rate %q (want e.g. 1gbit, 100mbit, 10mbps)", s)
	}
	return Rate(v*mult + 0.5), nil
}

// bucket paces one direction of the link, shared by every connection: a
// virtual clock that says when the link finishes sending what was handed
// to it. Senders learn when their bytes are fully on the wire; they may run
// at most burst ahead of that, which keeps pacing exact (delivery times
// come from the virtual clock, not from when a sleep happened to end)
// without a sleep per packet.
type bucket struct {
	mu      sync.Mutex
	perByte float64 // nanoseconds per byte
	burst   time.Duration
	next    time.Time // when the link is free again
}

// burstFor is how far senders may run ahead of the link.
const burstFor = 20 * time.Millisecond

func newBucket(r Rate) *bucket {
	if r <= 0 {
		return nil
	}
	return &bucket{perByte: 1e9 / r.BytesPerSecond(), burst: burstFor}
}

// reserve books n bytes on the link and reports when they have been sent
// (their last bit is on the wire), and until when the sender should wait
// before handing over more.
func (b *bucket) reserve(now time.Time, n int) (sent, wait time.Time) {
	b.mu.Lock()
	if b.next.Before(now) {
		b.next = now
	}
	b.next = b.next.Add(time.Duration(float64(n) * b.perByte))
	sent = b.next
	b.mu.Unlock()
	return sent, sent.Add(-b.burst)
}
