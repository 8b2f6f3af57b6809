// Package upstream holds the pools: the replicas of one service behind an
// http.Handler. A Pool picks an available endpoint with its balance policy,
// forwards the request there - on the direct path over http1.Transport for
// bodyless requests with plain answers, through httputil.ReverseProxy for
// the rest (Pool.serve chooses) - retries on another endpoint in one loop
// (Pool.try) within its budget, gates its in-flight requests, and answers a
// failure with the status its error's type calls for, in one function
// (statusOf). NewTransport builds the Transports pools forward over.
//
// It knows nothing of the daemon or its config language: it is given its
// settings already parsed (Options, TransportOptions, TLSOptions) and never
// imports sekisho/proxy or sekisho/proxy/config. What the listener must
// learn from it (an answer never sent because the client left), it tells
// through a small interface (ClientGoneRecorder), never by asserting the
// listener's types. Endpoint health lives in health.Registry, which
// outlives any pool.
package upstream
