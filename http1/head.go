package http1

import (
	"bufio"
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Heads, both ways: where a head ends, the one scanner of its field lines
// (request and response heads alike) and the one writer of field lines.

// headEnd returns the length of the head in b (through its empty line), or
// -1 while it is incomplete. Lines end in CRLF or a bare LF.
func headEnd(b []byte) int { return headEndFrom(b, 0) }

// headEndFrom is headEnd for a b whose bytes before from (but the last
// two) were searched already.
func headEndFrom(b []byte, from int) int {
	for i := from; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		i += j + 1
		switch {
		case i < len(b) && b[i] == '\n':
			return i + 1
		case i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n':
			return i + 2
		}
	}
}

// cutLine cuts the first line off s; a line ends in CRLF or a bare LF.
func cutLine(s string) (line, rest string) {
	line, rest, _ = strings.Cut(s, "\n")
	return strings.TrimSuffix(line, "\r"), rest
}

// headerScanner walks the field lines of a head, after its first line, up
// to the empty line or the end: the one parser of request and response
// header sections. Each field's name is canonical (a slice of the head when
// it already is) and its value a slice of the head, trimmed of spaces and
// tabs.
type headerScanner struct {
	rest     string
	key, val string
	// refused is why the last line is not a field, "" at the head's end.
	refused string
}

// next moves to the next field; false at the head's end or at a line that
// is not a field (refused says why).
func (s *headerScanner) next() bool {
	if s.rest == "" {
		return false
	}
	var line string
	line, s.rest = cutLine(s.rest)
	if line == "" {
		s.rest = ""
		return false
	}
	if line[0] == ' ' || line[0] == '\t' {
		s.refused = "obsolete line folding"
		return false
	}
	colon := strings.IndexByte(line, ':')
	if colon <= 0 {
		s.refused = "malformed MIME header line"
		return false
	}
	key, ok := canonicalKey(line[:colon])
	if !ok {
		s.refused = "invalid header name"
		return false
	}
	val := strings.Trim(line[colon+1:], " \t")
	if !validValue(val) {
		s.refused = "invalid header value"
		return false
	}
	s.key, s.val = key, val
	return true
}

// writeField writes one field line, "k: v\r\n": the one writer of request,
// response and trailer fields. Line breaks in v become spaces, as net/http
// writes them.
func writeField(w *bufio.Writer, k, v string) {
	w.WriteString(k)
	w.WriteString(": ")
	if strings.ContainsAny(v, "\r\n") {
		v = newlineToSpace.Replace(v)
	}
	w.WriteString(v)
	w.WriteString("\r\n")
}

var newlineToSpace = strings.NewReplacer("\r", " ", "\n", " ")

// statusLine returns "HTTP/1.1 CODE TEXT\r\n".
func statusLine(code int) string {
	if code >= 100 && code < 600 {
		if s := statusLines[code]; s != "" {
			return s
		}
	}
	return "HTTP/1.1 " + strconv.Itoa(code) + " " + http.StatusText(code) + "\r\n"
}

var statusLines = func() (t [600]string) {
	for c := 100; c < 600; c++ {
		if text := http.StatusText(c); text != "" {
			t[c] = "HTTP/1.1 " + strconv.Itoa(c) + " " + text + "\r\n"
		}
	}
	return t
}()

// httpDateNow returns the Date header's value for now, formatted once a
// second and shared by every connection.
func httpDateNow() []byte {
	d := currentDate.Load()
	now := time.Now().Unix()
	if d == nil || d.unix != now {
		d = &httpDate{unix: now}
		d.text = time.Unix(now, 0).UTC().AppendFormat(d.buf[:0], http.TimeFormat)
		currentDate.Store(d)
	}
	return d.text
}

type httpDate struct {
	unix int64
	buf  [32]byte
	text []byte
}

var currentDate atomic.Pointer[httpDate]

// aLongTimeAgo is a deadline in the past: set on a connection, it cuts the
// read or write blocked on it.
var aLongTimeAgo = time.Unix(1, 0)
