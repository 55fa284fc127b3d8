package dispatch

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/batchd/batchd/internal/backend"
)

// requestParams is the part of a Messages body batchd checks before sending:
// structure only; the model provider validates the rest.
type requestParams struct {
	Model     *string           `json:"model"`
	MaxTokens json.RawMessage   `json:"max_tokens"`
	Messages  []json.RawMessage `json:"messages"`
	Stream    *bool             `json:"stream"`
}

type messageParam struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// checkParams validates params the way Anthropic does inside a batch: a bad
// request is not a 400 at create but an errored result naming the field.
func checkParams(raw json.RawMessage) (model string, err *backend.Error) {
	bad := func(format string, args ...any) (string, *backend.Error) {
		return "", &backend.Error{Type: backend.ErrInvalidRequest, Status: 400, Message: fmt.Sprintf(format, args...)}
	}
	var p requestParams
	if uerr := json.Unmarshal(raw, &p); uerr != nil {
		if te, ok := uerr.(*json.UnmarshalTypeError); ok {
			return bad("%s: Input should be a valid %s", te.Field, te.Type.String())
		}
		return bad("params: %v", uerr)
	}
	switch {
	case p.Model == nil:
		return bad("model: Field required")
	case *p.Model == "":
		return bad("model: String should have at least 1 character")
	case p.MaxTokens == nil || string(p.MaxTokens) == "null":
		return bad("max_tokens: Field required")
	}
	// A number token only: a quoted "5" is not an integer.
	n, nerr := strconv.ParseInt(string(p.MaxTokens), 10, 64)
	if nerr != nil {
		return bad("max_tokens: Input should be a valid integer")
	}
	if n < 1 {
		return bad("max_tokens: Each batched request must have max_tokens of at least 1")
	}
	if p.Messages == nil {
		return bad("messages: Field required")
	}
	if len(p.Messages) == 0 {
		return bad("messages: List should have at least 1 item")
	}
	for i, m := range p.Messages {
		var mp messageParam
		if len(m) == 0 || m[0] != '{' || json.Unmarshal(m, &mp) != nil {
			return bad("messages.%d: Input should be a valid dictionary", i)
		}
		if mp.Role != "user" && mp.Role != "assistant" {
			return bad("messages.%d.role: Input should be 'user' or 'assistant'", i)
		}
		c := bytes.TrimSpace(mp.Content)
		if len(c) == 0 {
			return bad("messages.%d.content: Field required", i)
		}
		if c[0] != '"' && c[0] != '[' {
			return bad("messages.%d.content: Input should be a valid string or list of content blocks", i)
		}
	}
	if p.Stream != nil && *p.Stream {
		return bad("stream: streaming is not supported in message batches; results come back as one file")
	}
	return *p.Model, nil
}
