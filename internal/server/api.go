package server

import "time"

// The API, served over HTTP on a unix socket (JSON bodies):
//
//	GET    /v1/status[?dir=DIR]          Status
//	POST   /v1/mounts                    MountRequest → MountStatus
//	DELETE /v1/mounts?dir=DIR[&force=1]  (no body)
//
// Errors answer a 4xx or 5xx status with an Error body. docs/status.md
// documents the status document.

// MountRequest asks for an image to be mounted.
type MountRequest struct {
	// Ref is the image: a registry reference or oci:DIR[:TAG].
	Ref string `json:"ref"`
	// Dir is the absolute path of the directory to mount it on.
	Dir string `json:"dir"`
	// Writable adds a writable upper layer under the server's root.
	Writable bool `json:"writable,omitempty"`
	// PlainHTTP allows plain HTTP to registries not on loopback.
	PlainHTTP bool `json:"plainHTTP,omitempty"`
	// Platform selects the image of a multi-platform index, os/arch[/variant].
	Platform string `json:"platform,omitempty"`
	// NoBackground fetches only what is read (and the prefetch region):
	// no background fetching of the rest of the layers.
	NoBackground bool `json:"noBackground,omitempty"`
	// Root, when set, is the state directory the client expects the
	// server to use; a server with another root refuses the request.
	Root string `json:"root,omitempty"`
}

// Status is the state of a server and its mounts.
type Status struct {
	// PID is the server's process ID; Root its state directory; Log its
	// log file.
	PID  int    `json:"pid"`
	Root string `json:"root"`
	Log  string `json:"log,omitempty"`
	// Mounts are the images served, by directory.
	Mounts []MountStatus `json:"mounts"`
	// Cache is the node-wide chunk cache.
	Cache CacheStatus `json:"cache"`
	// Orphans are image mounts left by nibble processes that are gone
	// (killed or crashed): every access to them fails until nibble
	// umount releases them. Listed in the status of all mounts only.
	Orphans []OrphanStatus `json:"orphans,omitempty"`
}

// OrphanStatus is an image mount whose serving process is gone.
type OrphanStatus struct {
	// Dir is where the image was mounted; State its state directory.
	Dir   string `json:"dir"`
	State string `json:"state"`
}

// MountStatus is the state of one mounted image.
type MountStatus struct {
	// Dir is where the image is mounted; Ref the reference it was
	// mounted from; Digest its manifest's digest.
	Dir    string `json:"dir"`
	Ref    string `json:"ref"`
	Digest string `json:"digest"`
	// Writable tells whether the mount has an upper layer, Upper where.
	Writable bool   `json:"writable"`
	Upper    string `json:"upper,omitempty"`
	// Mounted is when the mount was made.
	Mounted time.Time `json:"mounted"`
	// FetchedBytes and TotalBytes sum the layers'.
	FetchedBytes int64 `json:"fetchedBytes"`
	TotalBytes   int64 `json:"totalBytes"`
	// Complete tells whether every layer is complete.
	Complete bool `json:"complete"`
	// Layers are the image's layers, bottom first.
	Layers []LayerStatus `json:"layers"`
}

// LayerStatus is the state of one layer of a mounted image.
type LayerStatus struct {
	// Digest and TotalBytes are the layer blob's, as the image names it.
	Digest     string `json:"digest"`
	TotalBytes int64  `json:"totalBytes"`
	// Lazy tells whether the layer's files are fetched on demand; when
	// not, NotLazyReason says why (the layer was fetched whole, verified
	// and rewritten into LocalBlob).
	Lazy          bool   `json:"lazy"`
	NotLazyReason string `json:"notLazyReason,omitempty"`
	LocalBlob     string `json:"localBlob,omitempty"`
	// FetchedBytes is how much of the blob has been fetched (all of it
	// for a layer that is not lazy); Percent its share of TotalBytes.
	FetchedBytes int64   `json:"fetchedBytes"`
	Percent      float64 `json:"percent"`
	// Complete tells whether the whole layer is on this node, so that
	// reading it needs the registry no more: every chunk in the chunk
	// cache, or (a layer that is not lazy) its local rewrite.
	Complete bool `json:"complete"`
	// Requests counts range requests; CacheHits chunk reads served from
	// memory or the chunk cache, CacheMisses those that waited for a
	// fetch.
	Requests    int64 `json:"requests"`
	CacheHits   int64 `json:"cacheHits"`
	CacheMisses int64 `json:"cacheMisses"`
	// Failures counts fetched members that failed to decode or verify;
	// LastError is the last fetch error, or "".
	Failures  int64  `json:"failures"`
	LastError string `json:"lastError,omitempty"`
	// Neutralized counts TOC entries dropped as unsafe to serve.
	Neutralized int `json:"neutralized,omitempty"`
}

// CacheStatus describes the chunk cache.
type CacheStatus struct {
	Dir       string `json:"dir"`
	Entries   int    `json:"entries"`
	Bytes     int64  `json:"bytes"`
	Capacity  int64  `json:"capacity"`
	Hits      int64  `json:"hits"`
	Misses    int64  `json:"misses"`
	Evictions int64  `json:"evictions"`
	// WriteErrors counts chunks that could not be stored (a full disk).
	WriteErrors int64 `json:"writeErrors"`
}

// Error is the body of an error answer.
type Error struct {
	Error string `json:"error"`
}
