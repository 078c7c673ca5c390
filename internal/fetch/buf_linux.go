package fetch

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// adviseHuge marks the 2 MiB pages that b holds whole with MADV_HUGEPAGE,
// so that the kernel backs them with huge pages when transparent huge
// pages are enabled for madvised memory (the common "madvise" setting;
// "always" needs no advice, "never" ignores it). It is advice only: the
// memory stays the Go heap's, and errors are ignored.
func adviseHuge(b []byte) {
	const huge = 2 << 20
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	lo := (p + huge - 1) &^ (huge - 1)
	hi := (p + uintptr(len(b))) &^ (huge - 1)
	if hi > lo {
		_ = unix.Madvise(b[lo-p:hi-p], unix.MADV_HUGEPAGE)
	}
}
