// Package format implements the eStargz wire format: footers, the table of
// contents (TOC), and the compressed members that hold file chunks.
//
// It decodes bytes it is given and encodes layers; it never fetches. Range
// I/O belongs to the fetch layer, and the compact per-layer index is built
// by the layer package from the entries that ReadTOC hands it as it
// decodes the TOC, one at a time.
//
// Supported layouts (see Kind): gzip eStargz (51-byte footer), legacy stargz
// (47-byte footer, no chunk digests), eStargz whose small files share a gzip
// member (innerOffset), and both zstd:chunked variants. The writer (Build)
// produces gzip eStargz or the stargz-snapshotter zstd:chunked variant.
package format

import (
	"errors"
)

// Names and annotations fixed by the eStargz and zstd:chunked formats.
const (
	// TOCTarName is the tar entry that holds the TOC in gzip layouts.
	TOCTarName = "stargz.index.json"
	// PrefetchLandmark marks the end of the files to prefetch.
	PrefetchLandmark = ".prefetch.landmark"
	// NoPrefetchLandmark means that nothing should be prefetched.
	NoPrefetchLandmark = ".no.prefetch.landmark"
	// LandmarkContents is the single byte that a landmark file holds.
	LandmarkContents = 0x0f

	// TOCDigestAnnotation is the layer annotation carrying the digest of
	// the uncompressed TOC JSON.
	TOCDigestAnnotation = "containerd.io/snapshot/stargz/toc.digest"
	// UncompressedSizeAnnotation is the layer annotation carrying the size
	// of the decompressed blob.
	UncompressedSizeAnnotation = "io.containers.estargz.uncompressed-size"
	// ZstdChunkedManifestChecksumAnnotation carries the digest of the
	// compressed TOC of a zstd:chunked layer (stargz-snapshotter variant).
	ZstdChunkedManifestChecksumAnnotation = "io.containers.zstd-chunked.manifest-checksum"
	// ZstdChunkedManifestPositionAnnotation carries
	// "offset:compressedLength:uncompressedLength:type" of the TOC.
	ZstdChunkedManifestPositionAnnotation = "io.containers.zstd-chunked.manifest-position"

	// FooterSize is the size of a gzip eStargz footer.
	FooterSize = 51
	// LegacyFooterSize is the size of a legacy stargz footer.
	LegacyFooterSize = 47
	// ZstdFooterSize is the size of the stargz-snapshotter zstd:chunked
	// footer: an 8-byte skippable-frame header and a 40-byte payload.
	ZstdFooterSize = 48
)

// Entry types used in a TOC.
const (
	TypeDir      = "dir"
	TypeReg      = "reg"
	TypeSymlink  = "symlink"
	TypeHardlink = "hardlink"
	TypeChar     = "char"
	TypeBlock    = "block"
	TypeFifo     = "fifo"
	TypeChunk    = "chunk"
)

// TOC is the decoded table of contents of a layer.
type TOC struct {
	Version int     `json:"version"`
	Entries []Entry `json:"entries"`
}

// Entry is one TOC entry, as serialized in JSON. Field names and JSON keys
// follow the eStargz specification; unknown keys are ignored on decode.
type Entry struct {
	// Name is the entry's path. After Validate it is cleaned: no leading
	// "/" or "./", no "..", no trailing "/".
	Name string `json:"name"`
	// Type is one of the Type* constants.
	Type string `json:"type"`
	// Size is the size of a regular file's whole payload.
	Size int64 `json:"size,omitempty"`
	// ModTime3339 is the modification time, RFC 3339, UTC, seconds.
	ModTime3339 string `json:"modtime,omitempty"`
	// LinkName is a symlink's target or a hardlink's source name.
	LinkName string `json:"linkName,omitempty"`
	// Mode holds the tar header's mode bits (permissions, setuid, setgid,
	// sticky).
	Mode int64 `json:"mode,omitempty"`
	UID  int   `json:"uid,omitempty"`
	GID  int   `json:"gid,omitempty"`
	// Uname and Gname are omitted by writers when they repeat the previous
	// entry's for the same id; decoders carry them forward.
	Uname string `json:"userName,omitempty"`
	Gname string `json:"groupName,omitempty"`
	// Offset is the compressed offset of the member (gzip) or frame (zstd)
	// where this entry's payload (or chunk) begins.
	Offset int64 `json:"offset,omitempty"`
	// InnerOffset is the number of decompressed bytes of that member that
	// precede the payload, where several small files share one member.
	InnerOffset int64 `json:"innerOffset,omitempty"`
	// EndOffset is the compressed end of the payload, written only by the
	// containers/storage zstd:chunked variant.
	EndOffset int64 `json:"endOffset,omitempty"`
	DevMajor  int   `json:"devMajor,omitempty"`
	DevMinor  int   `json:"devMinor,omitempty"`
	// Xattrs holds extended attributes; values are base64 in JSON.
	Xattrs map[string][]byte `json:"xattrs,omitempty"`
	// Digest is the digest of a regular file's whole payload.
	Digest string `json:"digest,omitempty"`
	// ChunkOffset is the offset of this chunk within the file.
	ChunkOffset int64 `json:"chunkOffset,omitempty"`
	// ChunkSize is the chunk's length; 0 on the last chunk (and on an
	// unchunked file) means "to the end of the file".
	ChunkSize int64 `json:"chunkSize,omitempty"`
	// ChunkDigest is the digest of this chunk's payload.
	ChunkDigest string `json:"chunkDigest,omitempty"`
	// ChunkType is "zeros" for a hole in the containers/storage variant.
	ChunkType string `json:"chunkType,omitempty"`
}

// Errors returned by the decoder, wrapped with detail.
var (
	// ErrFormat reports bytes that are not a well-formed layer of a
	// supported format: a bad footer, TOC or member.
	ErrFormat = errors.New("format: malformed layer")
	// ErrDigest reports bytes that do not match their recorded digest.
	ErrDigest = errors.New("format: digest mismatch")
	// ErrTooLarge reports a TOC or entry beyond the configured limits.
	ErrTooLarge = errors.New("format: too large")
)
