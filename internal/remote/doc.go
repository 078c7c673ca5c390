// Package remote reads byte ranges of blobs, from OCI registries and from
// local OCI image layouts (oci:DIR[:TAG]).
//
// Open resolves a location to one image (an index resolves to the host's
// platform, or the one given by WithPlatform) and returns its manifest, its
// config and its layer descriptors. Image.Blob gives a Blob whose byte
// ranges can be read with ReadRanges; nothing of a layer is fetched before
// that.
//
// # Registries
//
// Requests to a registry pass through a chain of small http.RoundTrippers,
// outermost first:
//
//   - auth: go-containerregistry's transport, which pings the registry,
//     exchanges credentials from the keychain for a bearer token with pull
//     scope, and refreshes the token once when a request meets a 401 (an
//     expired token). It sends the token only to the registry host, never
//     to blob storage a registry redirects to.
//   - user agent.
//   - retry: 408, 429 and 5xx answers and transient connection faults
//     (resets, refused or broken connections, stalls) are retried with
//     exponential backoff and jitter, honouring Retry-After (seconds or an
//     HTTP date), within the bounds of RetryPolicy.
//   - stall: no bytes for the idle timeout (WithIdleTimeout), while
//     waiting for the answer or in the middle of a body, aborts the request.
//   - scheme guard: plain HTTP only to loopback hosts, unless WithPlainHTTP.
//   - the base transport: NewTransport's HTTP/1.1 transport by default, or
//     the one given by WithTransport.
//
// Above the chain, a blob read handles what a RoundTripper cannot see:
//
//   - redirects: a blob request answered with a redirect (to blob storage
//     on another host) is followed, and the storage URL is remembered per
//     blob, so later ranges skip the registry round trip. When a remembered
//     URL answers 401, 403, 404 or 410 (a signed URL that expired), it is
//     dropped and the blob is resolved through the registry once more.
//   - faults in the body: a body that breaks, stalls or ends short of the
//     range is a transient fault, never data. The bytes that did arrive are
//     kept and the rest of the range is asked for again.
//   - multi-range: ReadRanges asks for several ranges in one request
//     (Range: bytes=a-b,c-d), and takes whatever the server answers: a
//     multipart/byteranges 206, a 206 with one range (the rest are fetched
//     separately), or a 200 with the whole blob (read up to the last range
//     wanted, then dropped). A host that does not answer multi-range
//     requests with every range is remembered, and from then on gets
//     single-range requests, several in parallel (WithParallel).
//   - checks: Content-Range must cover what was asked and name the blob's
//     size, Content-Length must match; a mismatch is a transient fault.
//
// One budget bounds the retries of one range: the retries of the chain and
// those of the body share it (through the request's context), so attempts
// never multiply. The budget is renewed when a range makes progress.
//
// # Errors
//
// Errors name the blob and wrap a classification: ErrNotFound (404 for a
// manifest or blob, a missing layout file), ErrUnauthorized (401 or 403
// after the token refresh), ErrTransient (a fault that did not clear within
// the retry budget; worth trying again later) and ErrRange (a caller's
// invalid range). Anything else is a permanent fault. Retries are logged at
// debug level through the logger of WithLogger.
//
// # Concurrency
//
// An Image and its Blobs are safe for concurrent use. ReadRanges is
// idempotent. Blobs of one Image share a connection pool, the remembered
// redirects and what is known of each host's multi-range support.
package remote
