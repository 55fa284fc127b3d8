package batch

import (
	"bytes"
	"sync"

	"github.com/go-json-experiment/json/jsontext"
)

// modelScanner is reused across requests: a fresh decoder costs more than
// the scan.
type modelScanner struct {
	r   bytes.Reader
	dec jsontext.Decoder
}

var modelScanners = sync.Pool{New: func() any { return new(modelScanner) }}

// paramsModel returns the top-level "model" string of a params object, or
// "" when it has none. Params are valid JSON already (the create decoder
// checked them), so a byte scan that jumps from quote to quote finds the
// top-level keys: it runs for every request of a create, and the messages
// it skips are most of a request's bytes.
func paramsModel(params []byte) string {
	depth := 0
	for i := 0; i < len(params); {
		switch params[i] {
		case '{', '[':
			depth++
			i++
			continue
		case '}', ']':
			depth--
			i++
			continue
		case '"':
		default:
			i++
			continue
		}
		end := stringEnd(params, i)
		if end < 0 {
			return ""
		}
		if depth == 1 && string(params[i+1:end]) == "model" {
			j := skipSpace(params, end+1)
			if j < len(params) && params[j] == ':' {
				j = skipSpace(params, j+1)
				if j >= len(params) || params[j] != '"' {
					return ""
				}
				vend := stringEnd(params, j)
				if vend < 0 {
					return ""
				}
				if bytes.IndexByte(params[j+1:vend], '\\') >= 0 {
					return paramsModelSlow(params) // escapes: let the decoder unquote
				}
				return string(params[j+1 : vend])
			}
		}
		i = end + 1
	}
	return ""
}

// stringEnd is the index of the quote closing the string that opens at i.
func stringEnd(b []byte, i int) int {
	j := i + 1
	for {
		k := bytes.IndexByte(b[j:], '"')
		if k < 0 {
			return -1
		}
		j += k
		backslashes := 0
		for m := j - 1; m > i && b[m] == '\\'; m-- {
			backslashes++
		}
		if backslashes%2 == 0 {
			return j
		}
		j++
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// paramsModelSlow finds the model with a real decoder.
func paramsModelSlow(params []byte) string {
	ms := modelScanners.Get().(*modelScanner)
	defer modelScanners.Put(ms)
	ms.r.Reset(params)
	ms.dec.Reset(&ms.r)
	dec := &ms.dec
	if _, err := dec.ReadToken(); err != nil { // '{'
		return ""
	}
	for dec.PeekKind() == '"' {
		key, err := dec.ReadToken()
		if err != nil {
			return ""
		}
		if key.String() == "model" {
			if dec.PeekKind() != '"' {
				return ""
			}
			tok, err := dec.ReadToken()
			if err != nil {
				return ""
			}
			return tok.String()
		}
		if dec.SkipValue() != nil {
			return ""
		}
	}
	return ""
}
