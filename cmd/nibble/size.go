package main

import "nibble.dev/nibble/internal/size"

// sizeValue is a byte count flag that accepts units (see package size).
type sizeValue struct {
	n *int64
}

func (v sizeValue) String() string {
	if v.n == nil || *v.n == 0 {
		return ""
	}
	return size.Format(*v.n)
}

func (v sizeValue) Set(s string) error {
	n, err := size.Parse(s)
	if err != nil {
		return err
	}
	*v.n = n
	return nil
}

func (v sizeValue) Type() string { return "size" }
