package fetch

import "nibble.dev/nibble/internal/cache"

// The node's chunk cache hands out whole objects (FUSE passthrough).
var _ fileStore = (*cache.Cache)(nil)
