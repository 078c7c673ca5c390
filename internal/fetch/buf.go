package fetch

// hugeMin is the smallest chunk buffer worth advising for huge pages: a
// buffer holds whole 2 MiB pages only from twice that size on, whatever
// its alignment.
const hugeMin = 4 << 20

// newBuf returns a zeroed buffer of n bytes for a chunk. A large one is
// advised for transparent huge pages where the kernel offers them on
// request (see adviseHuge): a cold read of a large file fills a fresh
// buffer per chunk, and faulting it in 4 KiB pages costs more CPU than
// the copy into it (on the development VM, 60k faults and about
// 0.6 CPU-s per 512 MiB; with huge pages, 12k).
func newBuf(n int) []byte {
	b := make([]byte, n)
	if n >= hugeMin {
		adviseHuge(b)
	}
	return b
}
