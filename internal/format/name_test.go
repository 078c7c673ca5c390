package format

import (
	"errors"
	"testing"
)

func TestCleanName(t *testing.T) {
	for _, tt := range []struct {
		in, want string
		bad      bool
	}{
		{in: "a/b", want: "a/b"},
		{in: "./a/b/", want: "a/b"},
		{in: "/a//b/./c", want: "a/b/c"},
		{in: "//a", want: "a"},
		{in: "./", want: ""},
		{in: "/", want: ""},
		{in: "", want: ""},
		{in: "a/../b", want: "b"},
		{in: "a/..", want: ""},
		{in: "..", bad: true},
		{in: "../a", bad: true},
		{in: "a/../../b", bad: true},
		{in: "/../a", bad: true},
		{in: "a\x00b", bad: true},
		{in: "...", want: "..."},
		{in: "..a/b", want: "..a/b"},
	} {
		got, err := CleanName(tt.in)
		if tt.bad {
			if !errors.Is(err, ErrFormat) {
				t.Errorf("CleanName(%q) = %q, %v; want ErrFormat", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("CleanName(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}
