package http1

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// Chunked transfer coding (RFC 9112 section 7.1), both ways: the reader of
// a chunked request body with its trailer section, and the writer of a
// chunked answer with its trailers.

// FramingError is a request body whose framing is broken (chunk sizes,
// line ends, the trailer section): the client's fault, to be answered 400.
type FramingError struct{ msg string }

func (e *FramingError) Error() string { return e.msg }

var (
	errChunk           = &FramingError{"malformed chunked encoding"}
	errTrailerTooLarge = &FramingError{"request trailer too large"}
	errTrailerLine     = &FramingError{"malformed trailer line"}
)

// chunkedReader decodes a chunked body up to (not including) its trailer
// section, which readTrailer reads.
type chunkedReader struct {
	br   *bufio.Reader
	left int64 // bytes left in the current chunk
	done bool
}

func (c *chunkedReader) Read(p []byte) (int, error) {
	for c.left == 0 {
		if c.done {
			return 0, io.EOF
		}
		size, err := c.chunkSize()
		if err != nil {
			return 0, err
		}
		if size == 0 {
			c.done = true
			return 0, io.EOF
		}
		c.left = size
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.br.Read(p)
	c.left -= int64(n)
	if c.left == 0 && err == nil {
		err = c.crlf()
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (c *chunkedReader) chunkSize() (int64, error) {
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		if err == bufio.ErrBufferFull {
			return 0, errChunk
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, err
	}
	// A bare LF or a stray CR before the CRLF is refused, as by net/http:
	// a proxy in front that reads them otherwise would frame the body
	// differently.
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return 0, errChunk
	}
	line = line[:len(line)-2]
	if bytes.IndexByte(line, '\r') >= 0 {
		return 0, errChunk
	}
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i] // chunk extensions are ignored
	}
	line = bytes.TrimRight(line, " \t")
	if len(line) == 0 || len(line) > 16 {
		return 0, errChunk
	}
	var n int64
	for _, b := range line {
		var d byte
		switch {
		case '0' <= b && b <= '9':
			d = b - '0'
		case 'a' <= b && b <= 'f':
			d = b - 'a' + 10
		case 'A' <= b && b <= 'F':
			d = b - 'A' + 10
		default:
			return 0, errChunk
		}
		n = n<<4 | int64(d)
	}
	if n < 0 {
		return 0, errChunk
	}
	return n, nil
}

func (c *chunkedReader) crlf() error {
	b, err := c.br.Peek(2)
	if err != nil {
		if err == io.EOF {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	if b[0] != '\r' || b[1] != '\n' {
		return errChunk
	}
	c.br.Discard(2)
	return nil
}

// readTrailer reads the trailer section after the last chunk, at most limit
// bytes of it, into the keys of trailer that were announced (a nil trailer
// keeps nothing).
func readTrailer(br *bufio.Reader, limit int, trailer http.Header) error {
	total := 0
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if total += len(line); total > limit {
			return errTrailerTooLarge
		}
		l := strings.TrimRight(string(line), "\r\n")
		if l == "" {
			return nil
		}
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			return errTrailerLine
		}
		if key, ok := canonicalKey(k); ok && trailer != nil {
			if _, announced := trailer[key]; announced {
				trailer[key] = append(trailer[key], strings.TrimSpace(v))
			}
		}
	}
}

// trailerKeys returns the canonical names a Trailer header's values
// announce, leaving out what is not a name.
func trailerKeys(vs []string) []string {
	var keys []string
	for _, v := range vs {
		for _, k := range strings.Split(v, ",") {
			if k, ok := canonicalKey(strings.TrimSpace(k)); ok && k != "" {
				keys = append(keys, k)
			}
		}
	}
	return keys
}

// writeChunk writes p as one chunk (nothing for an empty p) and returns the
// bytes of framing it added; scratch formats the size.
func writeChunk(w *bufio.Writer, scratch []byte, p []byte) (n int, framing int64, err error) {
	if len(p) == 0 {
		return 0, 0, nil
	}
	size := strconv.AppendInt(scratch[:0], int64(len(p)), 16)
	w.Write(size)
	w.WriteString("\r\n")
	n, err = w.Write(p)
	if err == nil {
		_, err = w.WriteString("\r\n")
	}
	return n, int64(len(size)) + 4, err
}

// writeLastChunk ends a chunked body: the last chunk, the trailers of h
// (the values of the keys its Trailer header announced, then those set
// with http.TrailerPrefix) and the empty line.
func writeLastChunk(w *bufio.Writer, h http.Header) {
	w.WriteString("0\r\n")
	write := func(k string, vs []string) {
		if !ValidToken(k) {
			return
		}
		for _, v := range vs {
			writeField(w, k, v)
		}
	}
	for _, k := range trailerKeys(h["Trailer"]) {
		write(k, h[k])
	}
	for k, vs := range h {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			write(name, vs)
		}
	}
	w.WriteString("\r\n")
}
