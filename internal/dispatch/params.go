package dispatch

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/batchd/batchd/internal/backend"
)

// pooledDecoder is reused across calls: a fresh jsontext.Decoder costs
// more than the check itself.
type pooledDecoder struct {
	r   bytes.Reader
	dec jsontext.Decoder
}

var decoders = sync.Pool{New: func() any { return new(pooledDecoder) }}

// checkParams validates params the way Anthropic does inside a batch: a bad
// request is not a 400 at create but an errored result naming the field.
// It checks structure only (the model provider validates the rest) in one
// streaming pass, because it runs for every request on the dispatch path,
// and returns the model and max_tokens it read on the way, so that neither
// the router nor the rate limiter parses the params again.
func checkParams(raw json.RawMessage) (model string, maxTokens int64, err *backend.Error) {
	bad := func(format string, args ...any) (string, int64, *backend.Error) {
		return "", 0, &backend.Error{Type: backend.ErrInvalidRequest, Status: 400, Message: fmt.Sprintf(format, args...)}
	}
	pd := decoders.Get().(*pooledDecoder)
	defer decoders.Put(pd)
	pd.r.Reset(raw)
	pd.dec.Reset(&pd.r)
	dec := &pd.dec
	if dec.PeekKind() != '{' {
		return bad("params: Input should be a valid dictionary")
	}
	dec.ReadToken()
	var haveModel, haveMaxTokens, haveMessages bool
	for dec.PeekKind() != '}' {
		key, rerr := dec.ReadToken()
		if rerr != nil {
			return bad("params: invalid JSON")
		}
		name := key.String() // before the next decoder call voids key
		kind := dec.PeekKind()
		switch name {
		case "model":
			if kind != '"' {
				return bad("model: Input should be a valid string")
			}
			tok, _ := dec.ReadToken()
			model, haveModel = tok.String(), true
			if model == "" {
				return bad("model: String should have at least 1 character")
			}
			continue
		case "max_tokens":
			if kind == 'n' {
				break // null: as if absent
			}
			if kind != '0' {
				return bad("max_tokens: Input should be a valid integer")
			}
			v, _ := dec.ReadValue()
			// A number token only, and a whole one: 1.5 is not an integer.
			n, perr := strconv.ParseInt(string(v), 10, 64)
			if perr != nil {
				return bad("max_tokens: Input should be a valid integer")
			}
			if n < 1 {
				return bad("max_tokens: Each batched request must have max_tokens of at least 1")
			}
			maxTokens, haveMaxTokens = n, true
			continue
		case "messages":
			if kind != '[' {
				return bad("messages: Input should be a valid list")
			}
			if msg := checkMessages(dec); msg != "" {
				return bad("%s", msg)
			}
			haveMessages = true
			continue
		case "stream":
			if kind == 't' {
				return bad("stream: streaming is not supported in message batches; results come back as one file")
			}
		}
		if dec.SkipValue() != nil {
			return bad("params: invalid JSON")
		}
	}
	switch {
	case !haveModel:
		return bad("model: Field required")
	case !haveMaxTokens:
		return bad("max_tokens: Field required")
	case !haveMessages:
		return bad("messages: Field required")
	}
	return model, maxTokens, nil
}

// checkMessages reads the messages array, returning what is wrong with it
// or "".
func checkMessages(dec *jsontext.Decoder) string {
	dec.ReadToken() // '['
	i := 0
	for ; dec.PeekKind() != ']'; i++ {
		if dec.PeekKind() != '{' {
			return fmt.Sprintf("messages.%d: Input should be a valid dictionary", i)
		}
		dec.ReadToken()
		var role string
		var haveContent bool
		for dec.PeekKind() != '}' {
			key, err := dec.ReadToken()
			if err != nil {
				return "params: invalid JSON"
			}
			name := key.String()
			kind := dec.PeekKind()
			switch name {
			case "role":
				if kind == '"' {
					tok, _ := dec.ReadToken()
					role = tok.String()
					continue
				}
			case "content":
				if kind != '"' && kind != '[' {
					return fmt.Sprintf("messages.%d.content: Input should be a valid string or list of content blocks", i)
				}
				haveContent = true
			}
			if dec.SkipValue() != nil {
				return "params: invalid JSON"
			}
		}
		dec.ReadToken() // '}'
		if role != "user" && role != "assistant" {
			return fmt.Sprintf("messages.%d.role: Input should be 'user' or 'assistant'", i)
		}
		if !haveContent {
			return fmt.Sprintf("messages.%d.content: Field required", i)
		}
	}
	dec.ReadToken() // ']'
	if i == 0 {
		return "messages: List should have at least 1 item"
	}
	return ""
}

// CheckParams is the check the dispatcher makes of a request's params
// before sending it, for callers that predict what a batch will do (the
// create estimate): the model and max_tokens it read, or why the request
// would end errored.
func CheckParams(raw json.RawMessage) (model string, maxTokens int64, reason string) {
	model, maxTokens, err := checkParams(raw)
	if err != nil {
		return "", 0, err.Message
	}
	return model, maxTokens, ""
}
