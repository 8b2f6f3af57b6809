// Package http1 is the HTTP/1.x wire: a server connection loop (Server),
// request and response framing, chunked bodies, head parsing and writing,
// the token grammar, and a lean upstream client (Transport) with a direct
// forwarding path (Transport.Forward).
//
// It imports the standard library only and knows nothing of the program
// that uses it: no configuration, routes, pools, metrics or loggers. What a
// user must count or log, it learns through hooks (Server's On* fields,
// BodyEnder); what it must carry per connection, through BaseContext and
// ConnContext, as with net/http. Its tests hold it to net/http,
// differentially.
package http1
