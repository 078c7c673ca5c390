package cache

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// envCrashChild names the cache directory of TestCrashChild, the process
// that TestCrash kills.
const envCrashChild = "NIBBLE_CACHE_CRASH_CHILD"

// TestCrash kills a process that writes chunks (SIGKILL, at a random
// moment, several times), and checks after each kill that every object
// file under its final name is whole, and that a new Cache removes the
// temporary files and serves only verified bytes.
func TestCrash(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0))
	const rounds = 6
	tempsSeen := 0
	for round := range rounds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), envCrashChild+"="+dir, fmt.Sprintf("NIBBLE_CACHE_CRASH_SEED=%d", r.Uint64()))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		ready := make(chan bool, 1)
		go func() {
			s := bufio.NewScanner(out)
			ok := false
			for s.Scan() {
				if s.Text() == "ready" && !ok {
					ok = true
					ready <- true
				}
			}
			if !ok {
				ready <- false
			}
		}()
		select {
		case ok := <-ready:
			if !ok {
				cmd.Wait()
				t.Fatalf("round %d: the child exited before it was ready", round)
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("round %d: the child is not ready after 30s", round)
		}
		time.Sleep(time.Duration(5+r.IntN(200)) * time.Millisecond)
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()

		objs, temps := files(t, dir)
		tempsSeen += len(temps)
		for name := range objs {
			b, err := os.ReadFile(filepath.Join(dir, algo, name[:2], name))
			if err != nil {
				t.Fatal(err)
			}
			if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != name {
				t.Fatalf("round %d: object %s is torn or wrong (%d bytes)", round, name, len(b))
			}
		}

		c, err := Open(dir, WithMaxSize(crashCap))
		if err != nil {
			t.Fatal(err)
		}
		// A kill between a batch's renames and its eviction leaves the
		// directory over the cap; Open then evicts the oldest objects.
		kept, temps2 := files(t, dir)
		if len(temps2) != 0 {
			t.Fatalf("round %d: temporaries left after Open: %v", round, temps2)
		}
		for name := range kept {
			if _, ok := objs[name]; !ok {
				t.Fatalf("round %d: object %s appeared during Open", round, name)
			}
		}
		s := c.Stats()
		if s.Entries != len(kept) || s.Entries == 0 {
			t.Fatalf("round %d: %d entries, %d object files after Open, %d before (want some)", round, s.Entries, len(kept), len(objs))
		}
		for name, size := range kept {
			d := digest.NewDigestFromEncoded(digest.SHA256, name)
			dst := make([]byte, size)
			ok, err := c.Get(d, dst)
			if err != nil || !ok {
				t.Fatalf("round %d: Get(%s) = %v, %v", round, d, ok, err)
			}
			if digest.FromBytes(dst) != d {
				t.Fatalf("round %d: Get(%s) served wrong bytes", round, d)
			}
		}
		if s := c.Stats(); s.VerifyFailures != 0 || s.Bytes > crashCap {
			t.Fatalf("round %d: Stats = %+v", round, s)
		}
		t.Logf("round %d: %d objects, %d evicted by Open, %d temporaries removed", round, len(objs), len(objs)-len(kept), len(temps))
		c.Close()
	}
	t.Logf("%d temporaries left by %d kills", tempsSeen, rounds)
}

// crashCap is the child's size cap: small enough that it evicts while it
// is killed.
const crashCap = 8 << 20

// TestCrashChild is the process TestCrash kills: it writes chunks until it
// dies.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(envCrashChild)
	if dir == "" {
		return // only run by TestCrash
	}
	var seed uint64
	fmt.Sscan(os.Getenv("NIBBLE_CACHE_CRASH_SEED"), &seed)
	opts := []Option{WithMaxSize(crashCap)}
	if seed%2 == 0 {
		opts = append(opts, WithoutSync())
	}
	c, err := Open(dir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	// "ready" once the first chunk is in, so that every kill finds
	// something to check however slow the machine is.
	var ready sync.Once
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(seed, uint64(g)))
			for {
				b, d := chunk(r.Uint64(), 1+r.IntN(512<<10))
				if seed%4 >= 2 {
					// A batch of small objects, with one flush.
					var ds []digest.Digest
					var bs [][]byte
					for range 8 {
						b, d := chunk(r.Uint64(), 1+r.IntN(16<<10))
						ds, bs = append(ds, d), append(bs, b)
					}
					if err := c.PutVerifiedBatch(ds, bs); err != nil {
						t.Errorf("PutVerifiedBatch: %v", err)
						return
					}
				}
				if err := c.Put(d, b); err != nil {
					t.Errorf("Put: %v", err)
					return
				}
				ready.Do(func() { fmt.Println("ready") })
				if _, err := c.Get(d, b); err != nil {
					t.Errorf("Get: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
}
