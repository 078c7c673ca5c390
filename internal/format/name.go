package format

import (
	"fmt"
	"path"
	"strings"
)

// CleanName cleans an entry name as eStargz readers do (leading "/" and
// "./" stripped, path.Clean applied, no trailing "/") and rejects a name
// that contains a NUL byte or still has a ".." component after cleaning
// (DESIGN.md, decision 9). The root directory cleans to "".
func CleanName(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("%w: name %q contains a NUL byte", ErrFormat, name)
	}
	c := path.Clean("./" + name)
	for strings.HasPrefix(c, "/") {
		c = strings.TrimLeft(c, "/")
		c = path.Clean("./" + c)
	}
	if c == "." {
		return "", nil
	}
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("%w: name %q escapes the layer root", ErrFormat, name)
	}
	return c, nil
}
