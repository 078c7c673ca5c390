// Package linkproxy emulates a registry far away, for tests and
// benchmarks on machines whose kernel has no netem: an HTTP reverse proxy
// on loopback whose client side runs over an emulated network link, and
// which can damage responses on purpose.
//
// # The link
//
// Between the client and the proxy, every connection sees:
//
//   - a one-way delay in each direction (WithDelay; WithRTT sets twice
//     the delay), applied to every piece of data, so a round trip costs
//     twice the delay and a new connection one more round trip for its
//     handshake (WithHandshake);
//   - a bandwidth cap per direction, shared by all connections
//     (WithRate), paced by a virtual clock so the rate holds exactly at
//     the receiving end;
//   - a window (WithWindow): the most bytes one connection has in flight
//     per direction, like TCP's, so one connection moves at most
//     window/delay bytes per second.
//
// Data in flight is queued with the time it arrives, and many packets are
// in flight at once: the delay costs latency, not throughput, and the
// link fills at high bandwidth-delay products (1 Gbit/s with 20 ms round
// trips keeps megabytes in flight). Without delay or cap the connections
// are passed through untouched, apart from counting bytes. The proxy to
// target side is not shaped.
//
// # Faults
//
// Faults (WithFaults, Proxy.SetFaults, changeable while requests run)
// damage a fraction of the requests a filter accepts: a bit flipped in
// the body, the connection closed (FIN) or reset (RST) part way through
// the body, a pause in the body, or a 503 (or any error status) with an
// optional Retry-After.
// Decisions are reproducible from a seed. Everything else, range
// requests and redirects included, streams through unchanged; the Host
// header is kept, so a registry's absolute URLs point back at the proxy.
//
// # Counters
//
// Stats counts bytes on the wire in each direction, connections,
// requests and faults; Records lists each request (method, path, Range,
// status, body bytes, fault). Both can be read at any time and reset.
//
// The proxy only listens on 127.0.0.0/8: it is a test fixture.
package linkproxy
