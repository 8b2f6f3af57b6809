package upstream

import (
	"net/netip"
	"strings"

	"sekisho/http1"
)

// rfc7239 returns the Forwarded header (RFC 7239) that says what the
// X-Forwarded-* values say: one element per hop of chain (an
// X-Forwarded-For value, client first), each with its for=, and host= and
// proto= on the first, which describes the request as the client made it.
// An IPv6 address is quoted and bracketed, a value that is not a token is
// quoted, and a hop that is not an address (a peer on a Unix socket) is
// "unknown".
func rfc7239(chain, host, proto string) string {
	var b strings.Builder
	b.Grow(len(chain) + len(host) + len(proto) + 32)
	for first := true; chain != ""; first = false {
		var hop string
		hop, chain, _ = strings.Cut(chain, ", ")
		if !first {
			b.WriteString(", ")
		}
		b.WriteString("for=")
		writeNode(&b, hop)
		if first {
			if host != "" {
				b.WriteString(";host=")
				writeValue(&b, host)
			}
			b.WriteString(";proto=")
			writeValue(&b, proto)
		}
	}
	return b.String()
}

// writeNode writes a node of RFC 7239 section 6 for the address hop.
func writeNode(b *strings.Builder, hop string) {
	a, err := netip.ParseAddr(hop)
	switch {
	case err != nil:
		b.WriteString("unknown")
	case a.Is4():
		b.WriteString(hop)
	default:
		b.WriteString(`"[`)
		writeEscaped(b, hop)
		b.WriteString(`]"`)
	}
}

// writeValue writes v as a token when it is one, as a quoted-string
// otherwise.
func writeValue(b *strings.Builder, v string) {
	if http1.ValidToken(v) {
		b.WriteString(v)
		return
	}
	b.WriteByte('"')
	writeEscaped(b, v)
	b.WriteByte('"')
}

// writeEscaped writes v as the inside of a quoted-string: '"' and '\'
// escaped, control characters other than tab left out.
func writeEscaped(b *strings.Builder, v string) {
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < ' ' && c != '\t' || c == 0x7f:
		default:
			b.WriteByte(c)
		}
	}
}
