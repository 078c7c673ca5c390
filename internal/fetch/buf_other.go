//go:build !linux

package fetch

func adviseHuge([]byte) {}
