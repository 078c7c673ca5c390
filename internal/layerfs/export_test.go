package layerfs

// ReadCalls returns how many Read requests of regular files fs served.
func ReadCalls(fs *FS) int64 { return fs.reads.Load() }

// OpenInodes returns how many inodes fs counts open files of.
func OpenInodes(fs *FS) int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return len(fs.open)
}
