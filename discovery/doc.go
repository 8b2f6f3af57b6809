// Package discovery turns a DNS name into a set of endpoints and keeps that
// set current: every A/AAAA record of a dns://NAME:PORT target, or every SRV
// record (with its port and weight) of a dns+srv://_svc._proto.NAME target,
// re-resolved at the records' TTL. It is how a pool follows the pods behind a
// headless Kubernetes Service without a config reload.
//
// It imports nothing of sekisho: a Source hands out plain Sets and reports its
// state and results through fields and hooks, and the proxy maps them onto
// pools, /pools, /readyz and metrics.
package discovery
