package batch

import (
	"bytes"
	"fmt"
	"io"
)

// The JSON decoder holds a whole token (or, for ReadValue, a whole value)
// in memory, so one 200 MiB string would cost the server 200 MiB and more.
// bodyGuard sits between a create body and the decoder and looks at the
// shape of the stream as it passes, before the decoder buffers anything:
//
//   - the value of an unknown member of the body or of a request is
//     replaced by null as it streams (the decoder skips a null), so no
//     unknown field is ever buffered;
//   - a custom_id longer than maxCustomIDBytes is refused at that length;
//   - a params value larger than maxParams is refused at that size (413);
//   - any other token (a key, a number) is refused past maxTokenBytes.
//
// Errors are *Error values naming the field (requests.N.params), reported
// after the bytes before the fault have reached the decoder, so that an
// error the decoder finds first still wins.
type bodyGuard struct {
	r         io.Reader
	maxParams int64

	in      []byte
	out     []byte // processed, not yet read
	outRead int
	err     error // reported once out is drained
	broken  bool  // mismatched brackets: the decoder will fail; pass through

	off   int64  // offset of the next input byte
	stack []byte // open containers, '{' or '['

	inStr, esc bool
	strIsKey   bool
	strLen     int64
	key        []byte // the key being read or last read, at depths 1 and 3
	keyEsc     bool
	expectKey  bool
	lit        int64 // length of the literal being read, 0 outside one

	pending    class // class of the value about to start
	cur        class // class of the value being read
	valueDepth int   // depth where the current classed value started
	valueStart int64
	inRequests bool // inside the body's requests array
	index      int  // index of the current request
}

type class uint8

const (
	clsNone     class = iota
	clsElide          // an unknown member's value: replaced by null
	clsParams         // requests.N.params: counted against maxParams
	clsCustomID       // requests.N.custom_id: short
	clsRequests       // the body's requests value
	clsElement        // an element of the requests array
)

const (
	maxCustomIDBytes = 1 << 10 // a valid custom_id is 64 characters
	maxTokenBytes    = 64 << 10
	maxDepth         = 10_000
	guardChunk       = 64 << 10
)

func newBodyGuard(r io.Reader, maxParams int64) *bodyGuard {
	return &bodyGuard{r: r, maxParams: maxParams, in: make([]byte, guardChunk), index: -1}
}

func (g *bodyGuard) Read(p []byte) (int, error) {
	for g.outRead >= len(g.out) {
		if g.err != nil {
			return 0, g.err
		}
		g.out, g.outRead = g.out[:0], 0
		n, err := g.r.Read(g.in)
		if n > 0 {
			if g.broken {
				g.out = append(g.out, g.in[:n]...)
			} else {
				g.scan(g.in[:n])
			}
		}
		if err != nil && g.err == nil {
			g.err = err
		}
		if n == 0 && err == nil {
			return 0, nil
		}
	}
	n := copy(p, g.out[g.outRead:])
	g.outRead += n
	return n, nil
}

func (g *bodyGuard) fail(format string, args ...any) {
	g.err = &Error{Kind: KindInvalid, Message: fmt.Sprintf(format, args...)}
}

// scan processes one chunk into g.out, stopping at the first fault.
func (g *bodyGuard) scan(in []byte) {
	emit := 0 // in[emit:i] is still to be copied to out
	dropping := g.cur == clsElide
	if dropping {
		emit = -1
	}
	startDrop := func(i int) {
		g.out = append(g.out, in[emit:i]...)
		g.out = append(g.out, "null"...)
		dropping, emit = true, -1
	}
	stopDrop := func(from int) { dropping, emit = false, from }
	base := g.off
	for i := 0; i < len(in); i++ {
		c := in[i]
		if g.inStr {
			if g.esc {
				g.esc = false
				g.strLen++
				continue
			}
			// Fast path: jump to the next quote or backslash.
			rest := in[i:]
			j := bytes.IndexByte(rest, '"')
			if j < 0 {
				j = len(rest)
			}
			if k := bytes.IndexByte(rest[:j], '\\'); k >= 0 {
				j = k
			}
			g.strLen += int64(j)
			if g.strIsKey && len(g.key) < 64 {
				g.key = append(g.key, rest[:min(j, 64-len(g.key))]...)
			}
			i += j
			if !g.checkSizes(base + int64(i)) {
				g.finish(in, i, emit, dropping)
				return
			}
			if i == len(in) {
				break
			}
			if in[i] == '\\' {
				g.esc = true
				if g.strIsKey {
					g.keyEsc = true
				}
				continue
			}
			// Closing quote.
			g.inStr, g.strLen = false, 0
			if g.cur != clsNone && !g.strIsKey && len(g.stack) == g.valueDepth {
				// A string was the whole classed value.
				if g.cur == clsElide {
					stopDrop(i + 1)
				}
				g.endValue(base + int64(i))
			}
			continue
		}
		if g.lit > 0 {
			switch c {
			case ' ', '\t', '\n', '\r', ',', '}', ']', ':':
				g.lit = 0
				if g.cur != clsNone && len(g.stack) == g.valueDepth {
					if g.cur == clsElide {
						stopDrop(i)
					}
					g.endValue(base + int64(i) - 1)
				}
			default:
				g.lit++
				if !g.checkSizes(base + int64(i)) {
					g.finish(in, i, emit, dropping)
					return
				}
				continue
			}
		}
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		case '"':
			g.startValue(base+int64(i), func() { startDrop(i) })
			g.inStr, g.strLen = true, 0
			g.strIsKey = g.expectKey && len(g.stack) > 0 && g.stack[len(g.stack)-1] == '{'
			if g.strIsKey {
				g.key, g.keyEsc = g.key[:0], false
				g.expectKey = false
			}
		case '{', '[':
			g.startValue(base+int64(i), func() { startDrop(i) })
			if len(g.stack) >= maxDepth {
				g.fail("body: JSON nested more than %d levels deep", maxDepth)
				g.finish(in, i, emit, dropping)
				return
			}
			g.stack = append(g.stack, c)
			g.expectKey = c == '{'
			if g.inRequests && len(g.stack) == 2 && c == '[' {
				g.pending = clsElement
			}
		case '}', ']':
			open := byte('{')
			if c == ']' {
				open = '['
			}
			if len(g.stack) == 0 || g.stack[len(g.stack)-1] != open {
				// Let the decoder report the syntax error.
				g.broken = true
				g.finish(in, i, emit, dropping)
				g.out = append(g.out, in[i:]...)
				return
			}
			g.stack = g.stack[:len(g.stack)-1]
			g.pending = clsNone
			if g.cur != clsNone && len(g.stack) == g.valueDepth {
				if g.cur == clsElide {
					stopDrop(i + 1)
				}
				g.endValue(base + int64(i))
			}
			if len(g.stack) == 1 && g.inRequests && c == ']' {
				g.inRequests = false
			}
		case ':':
			g.pending = g.classify()
		case ',':
			if len(g.stack) > 0 && g.stack[len(g.stack)-1] == '{' {
				g.expectKey = true
			} else if g.inRequests && len(g.stack) == 2 {
				g.pending = clsElement
			}
		default:
			g.startValue(base+int64(i), func() { startDrop(i) })
			g.lit = 1
		}
	}
	g.finish(in, len(in), emit, dropping)
}

// finish copies what is left of the chunk up to end and advances off.
func (g *bodyGuard) finish(in []byte, end, emit int, dropping bool) {
	if !dropping && emit >= 0 && emit < end {
		g.out = append(g.out, in[emit:end]...)
	}
	if g.cur == clsParams && end == len(in) {
		// Tokens too small to be checked one by one add up here.
		g.checkSizes(g.off + int64(end) - 1)
	}
	g.off += int64(len(in))
}

// classify names the class of the value that follows a key.
func (g *bodyGuard) classify() class {
	inRequest := g.inRequests && len(g.stack) == 3 && g.stack[2] == '{'
	if len(g.stack) != 1 && !inRequest {
		return clsNone
	}
	if g.keyEsc {
		// An escaped key is rare and may spell a known one: keep it.
		return clsNone
	}
	k := string(g.key)
	switch {
	case len(g.stack) == 1 && k == "requests":
		return clsRequests
	case len(g.stack) == 1:
		return clsElide
	case k == "params":
		return clsParams
	case k == "custom_id":
		return clsCustomID
	}
	return clsElide
}

// startValue begins a value at offset at; drop starts eliding it.
func (g *bodyGuard) startValue(at int64, drop func()) {
	p := g.pending
	g.pending = clsNone
	switch p {
	case clsNone:
		return
	case clsElement:
		g.index++
		return
	case clsRequests:
		if len(g.stack) == 1 {
			g.inRequests = true // a '[' here opens the array; else the decoder refuses it
		}
		return
	}
	if g.cur != clsNone {
		return
	}
	g.cur, g.valueDepth, g.valueStart = p, len(g.stack), at
	if p == clsElide {
		drop()
	}
}

func (g *bodyGuard) endValue(at int64) {
	g.checkSizes(at)
	g.cur = clsNone
}

// checkSizes enforces the limits with the value read up to offset at;
// false means a fault is recorded.
func (g *bodyGuard) checkSizes(at int64) bool {
	if g.err != nil {
		return false
	}
	switch g.cur {
	case clsElide:
		return true
	case clsParams:
		if at-g.valueStart+1 > g.maxParams {
			g.err = &Error{Kind: KindTooLarge, Message: fmt.Sprintf("requests.%d.params: params are larger than the %d-byte limit per request", g.index, g.maxParams)}
			return false
		}
		return true
	case clsCustomID:
		if at-g.valueStart+1 > maxCustomIDBytes {
			g.fail("requests.%d.custom_id: String should have at most 64 characters", g.index)
			return false
		}
		return true
	}
	if g.strLen > maxTokenBytes || g.lit > maxTokenBytes {
		where := "body"
		if g.inRequests && g.index >= 0 {
			where = fmt.Sprintf("requests.%d", g.index)
		}
		g.fail("%s: a JSON token of more than %d bytes outside params", where, maxTokenBytes)
		return false
	}
	return true
}
