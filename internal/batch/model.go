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
// checked them), so this only walks the top level, skipping values.
func paramsModel(params []byte) string {
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
