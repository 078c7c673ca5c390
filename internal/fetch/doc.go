// Package fetch schedules the reads of layers' chunks: from a small memory
// cache of recently decoded chunks, from the node-wide chunk store, and
// from the layer's blob otherwise (DESIGN.md, decision 5).
//
// # Units
//
// A layer's payload is a sequence of members (gzip members or zstd frames),
// each holding one or more chunks: a chunk of a large file, or several
// small files packed together. The network unit is the member: fetching a
// member yields every chunk in it, so a read of one small file also brings
// in the small files that share its member. The caching unit is the chunk,
// keyed by its digest. A layer's Table lists both: its files' chunks, each
// file's a contiguous run addressed by index, and its members in blob
// order; the table has no pointers and is immutable once built.
//
// # Concurrency
//
// A Scheduler owns a fixed pool of workers that run jobs: one job is one
// range request covering one member or several adjacent members. Each
// member being fetched has one flight that every reader of its chunks
// waits on, so a chunk is fetched once however many readers want it. Jobs
// are queued by priority: on-demand reads first, then prefetch, then
// background fetch, which starts only after a quiet period without
// on-demand reads and runs one job at a time. A queued job that an
// on-demand read needs is promoted. Running jobs are not interrupted:
// requests are bounded in size, so a reader waits at most for one. A
// Source that streams (remote.Blob's ReadRange) has each member decoded
// as it arrives, and its readers woken before the rest of the request is
// in.
//
// # Integrity
//
// Every chunk is verified against its digest before it reaches a reader,
// the memory cache or the store. A member that fails to decode or verify
// is fetched again, alone, like a transient network fault; when the
// attempts are spent the readers get an error, never bytes.
package fetch
