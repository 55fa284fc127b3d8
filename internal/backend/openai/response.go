package openai

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	jsonv1 "github.com/go-json-experiment/json/v1"

	"github.com/batchd/batchd/internal/backend"
)

// completion is the part of a Chat Completions answer that is translated.
type completion struct {
	ID      string   `json:"id"`
	Model   string   `json:"model"`
	Choices []choice `json:"choices"`
	Usage   struct {
		PromptTokens     int64 `json:"prompt_tokens"`
		CompletionTokens int64 `json:"completion_tokens"`
	} `json:"usage"`
	// Error is set by proxies and some servers that report a failure with
	// status 200.
	Error json.RawMessage `json:"error"`
}

type choice struct {
	Message struct {
		// Content is a string, null, or (on a few servers) text parts.
		Content   json.RawMessage `json:"content"`
		Refusal   string          `json:"refusal"`
		ToolCalls []toolCall      `json:"tool_calls"`
		// reasoning_content and reasoning, which vLLM, Ollama and others add
		// for reasoning models, are left out: the request could not have
		// asked for thinking, so Anthropic would not have returned any.
	} `json:"message"`
	FinishReason string `json:"finish_reason"`
	// StopReason is vLLM's extension: the stop string that ended
	// generation, or a stop token id, or null.
	StopReason json.RawMessage `json:"stop_reason"`
}

type toolCall struct {
	ID       string `json:"id"`
	Function struct {
		Name string `json:"name"`
		// Arguments is a JSON string holding the arguments object; a few
		// servers send the object itself.
		Arguments json.RawMessage `json:"arguments"`
	} `json:"function"`
}

// message is the Anthropic Message produced; field order follows
// Anthropic's own responses.
type message struct {
	ID           string  `json:"id"`
	Type         string  `json:"type"`
	Role         string  `json:"role"`
	Model        string  `json:"model"`
	Content      []any   `json:"content"`
	StopReason   string  `json:"stop_reason"`
	StopSequence *string `json:"stop_sequence"`
	Usage        usage   `json:"usage"`
}

type textBlock struct {
	Type string `json:"type"` // "text"
	Text string `json:"text"`
}

type toolUseBlock struct {
	Type  string          `json:"type"` // "tool_use"
	ID    string          `json:"id"`
	Name  string          `json:"name"`
	Input json.RawMessage `json:"input"`
}

// usage reports no cache tokens: compatible servers' prefix caching is
// internal and does not change what the request costs here. service_tier is
// "batch" as in every Anthropic batch result, matching the sim backend.
type usage struct {
	InputTokens              int64  `json:"input_tokens"`
	OutputTokens             int64  `json:"output_tokens"`
	CacheCreationInputTokens int64  `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int64  `json:"cache_read_input_tokens"`
	ServiceTier              string `json:"service_tier"`
}

// base62 spells message ids like Anthropic's.
const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// convert translates a Chat Completions answer into compact Anthropic
// Message JSON. model is the requested model, used when the server does not
// name one; stops are the request's stop sequences.
func convert(body []byte, model string, stops []string) ([]byte, error) {
	c, err := decodeCompletion(body)
	if err != nil {
		return nil, err
	}
	if len(c.Choices) == 0 {
		if len(c.Error) > 0 && string(c.Error) != "null" {
			msg, _ := upstreamMessage(body)
			if msg == "" {
				msg = string(c.Error)
			}
			return nil, badUpstream("upstream error: " + clip(msg))
		}
		return nil, badUpstream("decode completion: no choices")
	}
	ch := &c.Choices[0]
	seed := c.ID
	if seed == "" {
		// Without an id, the body itself still identifies this answer.
		seed = string(body)
	}

	text, err := contentText(ch.Message.Content)
	if err != nil {
		return nil, err
	}
	if text == "" {
		text = ch.Message.Refusal
	}
	msg := message{
		ID:      deriveID("msg_", seed),
		Type:    "message",
		Role:    "assistant",
		Model:   c.Model,
		Content: []any{},
		Usage: usage{
			InputTokens:  max(c.Usage.PromptTokens, 0),
			OutputTokens: max(c.Usage.CompletionTokens, 0),
			ServiceTier:  "batch",
		},
	}
	if msg.Model == "" {
		msg.Model = model
	}
	if text != "" || len(ch.Message.ToolCalls) == 0 {
		msg.Content = append(msg.Content, textBlock{Type: "text", Text: text})
	}
	for i, tc := range ch.Message.ToolCalls {
		block, err := toolUseOf(tc, i, seed, ch.FinishReason == "length")
		if err != nil {
			return nil, err
		}
		msg.Content = append(msg.Content, block)
	}

	switch {
	case ch.FinishReason == "length":
		msg.StopReason = "max_tokens"
	case len(ch.Message.ToolCalls) > 0:
		// Some Ollama releases report "stop" with tool calls, so the calls
		// themselves decide.
		msg.StopReason = "tool_use"
	case ch.FinishReason == "content_filter" || ch.Message.Refusal != "":
		msg.StopReason = "refusal"
	default:
		// "stop", and anything unrecognised or missing, is a natural end;
		// only vLLM says which stop sequence matched.
		msg.StopReason = "end_turn"
		if len(ch.StopReason) > 0 && ch.StopReason[0] == '"' {
			var s string // only here, where it is needed: &s escapes
			if json.Unmarshal(ch.StopReason, &s) == nil && slices.Contains(stops, s) {
				msg.StopReason = "stop_sequence"
				msg.StopSequence = &s
			}
		}
	}
	return msg.appendJSON(make([]byte, 0, 256+len(body))), nil
}

// decodeCompletion decodes a Chat Completions answer. The common answer is
// read in one streaming pass (scanCompletion); anything that pass cannot
// vouch for goes to go-json-experiment's v1 API, which decodes with
// encoding/json's semantics at about twice its speed, and a body that
// refuses is decoded again by encoding/json itself, which has the last
// word and words the error.
func decodeCompletion(body []byte) (completion, error) {
	if c, sure := scanCompletion(body); sure {
		return c, nil
	}
	return decodeCompletionSlow(body)
}

func decodeCompletionSlow(body []byte) (completion, error) {
	var c completion
	if jsonv1.Unmarshal(body, &c) != nil {
		c = completion{}
		if err := json.Unmarshal(body, &c); err != nil {
			return completion{}, badUpstream("decode completion: " + err.Error())
		}
	}
	return c, nil
}

// scanCompletion decodes body as decodeCompletionSlow would, in one pass
// over bytes that backend.ValidJSON checked, without reflection (decoding was
// the largest cost of a call). sure is false whenever its reading could
// differ: body is not a valid object, a name is escaped, not ASCII,
// repeated or matches a field only in case or punctuation, a field the
// completion reads has a value of another type or null, a string it reads
// is escaped or not ASCII, a count is not an int64, or a choice has tool
// calls.
func scanCompletion(body []byte) (c completion, sure bool) {
	if !backend.ValidJSON(body) {
		return completion{}, false
	}
	body = body[skipSpace(body, 0):]
	var seen uint8
	ok := scanObject(body, &seen, func(name string, v []byte) bool {
		switch name {
		case "id":
			return scanString(v, &c.ID)
		case "model":
			return scanString(v, &c.Model)
		case "choices":
			return scanChoices(v, &c.Choices)
		case "usage":
			var seen uint8
			return scanObject(v, &seen, func(name string, v []byte) bool {
				switch name {
				case "prompt_tokens":
					return scanInt(v, &c.Usage.PromptTokens)
				case "completion_tokens":
					return scanInt(v, &c.Usage.CompletionTokens)
				}
				return true
			}, "prompt_tokens", "completion_tokens")
		case "error":
			c.Error = v
		}
		return true
	}, "id", "model", "choices", "usage", "error")
	if !ok {
		return completion{}, false
	}
	return c, true
}

// scanObject calls member for each member of obj, a valid JSON object,
// with its name and value. fields are the names a decoder would match:
// member is called with the name itself for those, and with "" for any
// other (whose value it then ignores). It returns false, as soon as
// member does, or for a name that is escaped, not ASCII, matches one of
// fields only in case or punctuation, or repeats one of them (seen holds
// those already met; at most 8 fields).
func scanObject(obj []byte, seen *uint8, member func(name string, v []byte) bool, fields ...string) bool {
	if len(obj) == 0 || obj[0] != '{' {
		return false
	}
	for i := skipSpace(obj, 1); obj[i] != '}'; {
		end := valueEnd(obj, i)
		name := obj[i+1 : end-1]
		i = skipSpace(obj, end)
		i = skipSpace(obj, i+1) // ':'
		end = valueEnd(obj, i)
		v := obj[i:end:end]
		i = skipSpace(obj, end)
		if obj[i] == ',' {
			i = skipSpace(obj, i+1)
		}
		field := ""
		for k, f := range fields {
			if string(name) == f {
				if *seen&(1<<k) != 0 {
					return false
				}
				*seen |= 1 << k
				field = f
				break
			}
		}
		if field == "" && (bytes.IndexByte(name, '\\') >= 0 || like(name, fields...)) {
			return false
		}
		if field != "" && !member(field, v) {
			return false
		}
	}
	return true
}

func scanChoices(v []byte, out *[]choice) bool {
	if v[0] != '[' {
		return false
	}
	items := splitArray(v)
	*out = make([]choice, len(items))
	for n, item := range items {
		ch := &(*out)[n]
		var seen uint8
		ok := scanObject(item, &seen, func(name string, v []byte) bool {
			switch name {
			case "message":
				m := &ch.Message
				var seen uint8
				return scanObject(v, &seen, func(name string, v []byte) bool {
					switch name {
					case "content":
						m.Content = v
					case "refusal":
						return scanString(v, &m.Refusal)
					case "tool_calls":
						// None, or an empty list as vLLM sends; calls are
						// read by the library.
						switch {
						case string(v) == "null":
						case v[0] == '[' && v[skipSpace(v, 1)] == ']':
							m.ToolCalls = []toolCall{}
						default:
							return false
						}
					}
					return true
				}, "content", "refusal", "tool_calls")
			case "finish_reason":
				return scanString(v, &ch.FinishReason)
			case "stop_reason":
				ch.StopReason = v
			}
			return true
		}, "message", "finish_reason", "stop_reason")
		if !ok {
			return false
		}
	}
	return true
}

// scanString reads a string value that is its own text: printable ASCII
// without escapes.
func scanString(v []byte, out *string) bool {
	if v[0] != '"' {
		return false
	}
	s := v[1 : len(v)-1]
	for _, c := range s {
		if c == '\\' || c >= utf8.RuneSelf {
			return false
		}
	}
	*out = string(s)
	return true
}

func scanInt(v []byte, out *int64) bool {
	n, err := strconv.ParseInt(string(v), 10, 64)
	*out = n
	return err == nil
}

// like reports whether name could match one of fields in a decoder that
// ignores case (and, in go-json-experiment, '_' and '-'), without being
// exactly it; a name that is not ASCII always could.
func like(name []byte, fields ...string) bool {
	for _, c := range name {
		if c >= utf8.RuneSelf {
			return true
		}
	}
	for _, f := range fields {
		if foldedEqual(name, f) {
			return true
		}
	}
	return false
}

// foldedEqual compares ASCII a and b ignoring case, '_' and '-'.
func foldedEqual(a []byte, b string) bool {
	i, j := 0, 0
	for {
		for i < len(a) && (a[i] == '_' || a[i] == '-') {
			i++
		}
		for j < len(b) && (b[j] == '_' || b[j] == '-') {
			j++
		}
		if i == len(a) || j == len(b) {
			return i == len(a) && j == len(b)
		}
		x, y := a[i]|0x20, b[j]|0x20
		if x != y || (x < 'a' || x > 'z') && a[i] != b[j] {
			return false
		}
		i++
		j++
	}
}

// appendJSON appends m as encode would (compact, <, > and & as they are),
// without reflection: encoding it was a tenth of a call's cost.
func (m *message) appendJSON(dst []byte) []byte {
	dst = append(dst, `{"id":`...)
	dst = appendQuoted(dst, m.ID)
	dst = append(dst, `,"type":`...)
	dst = appendQuoted(dst, m.Type)
	dst = append(dst, `,"role":`...)
	dst = appendQuoted(dst, m.Role)
	dst = append(dst, `,"model":`...)
	dst = appendQuoted(dst, m.Model)
	dst = append(dst, `,"content":[`...)
	for i, block := range m.Content {
		if i > 0 {
			dst = append(dst, ',')
		}
		switch b := block.(type) {
		case textBlock:
			dst = append(dst, `{"type":`...)
			dst = appendQuoted(dst, b.Type)
			dst = append(dst, `,"text":`...)
			dst = appendQuoted(dst, b.Text)
			dst = append(dst, '}')
		case toolUseBlock:
			dst = append(dst, `{"type":`...)
			dst = appendQuoted(dst, b.Type)
			dst = append(dst, `,"id":`...)
			dst = appendQuoted(dst, b.ID)
			dst = append(dst, `,"name":`...)
			dst = appendQuoted(dst, b.Name)
			dst = append(dst, `,"input":`...)
			buf := bytes.NewBuffer(dst)
			if json.Compact(buf, b.Input) != nil { // valid JSON: checked by toolUseOf
				buf.WriteString("{}")
			}
			dst = append(buf.Bytes(), '}')
		}
	}
	dst = append(dst, `],"stop_reason":`...)
	dst = appendQuoted(dst, m.StopReason)
	dst = append(dst, `,"stop_sequence":`...)
	if m.StopSequence == nil {
		dst = append(dst, "null"...)
	} else {
		dst = appendQuoted(dst, *m.StopSequence)
	}
	dst = append(dst, `,"usage":{"input_tokens":`...)
	dst = strconv.AppendInt(dst, m.Usage.InputTokens, 10)
	dst = append(dst, `,"output_tokens":`...)
	dst = strconv.AppendInt(dst, m.Usage.OutputTokens, 10)
	dst = append(dst, `,"cache_creation_input_tokens":`...)
	dst = strconv.AppendInt(dst, m.Usage.CacheCreationInputTokens, 10)
	dst = append(dst, `,"cache_read_input_tokens":`...)
	dst = strconv.AppendInt(dst, m.Usage.CacheReadInputTokens, 10)
	dst = append(dst, `,"service_tier":`...)
	dst = appendQuoted(dst, m.Usage.ServiceTier)
	return append(dst, "}}"...)
}

// appendQuoted appends s as a JSON string, as encode would: a string of
// plain printable ASCII is its own encoding, anything else goes through
// encoding/json for its exact escapes.
func appendQuoted(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' {
			q, _ := encode(s) // a string always encodes
			return append(dst, q...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// contentText accepts the content shapes servers send: a string, null, or an
// array of text parts.
func contentText(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	if raw[0] == '"' { // the body was decoded whole, so raw is valid JSON
		return unquote(raw), nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", badUpstream("decode completion: message content is neither a string nor text parts")
	}
	var sb strings.Builder
	for _, p := range parts {
		if p.Type != "text" {
			return "", badUpstream(fmt.Sprintf("decode completion: unexpected %q part in message content", p.Type))
		}
		sb.WriteString(p.Text)
	}
	return sb.String(), nil
}

// toolUseOf translates the i-th tool call. A server may omit the call id
// (Anthropic requires one), so a stable one is derived from the completion.
func toolUseOf(tc toolCall, i int, seed string, truncated bool) (toolUseBlock, error) {
	b := toolUseBlock{Type: "tool_use", ID: tc.ID, Name: tc.Function.Name}
	if b.Name == "" {
		return b, badUpstream(fmt.Sprintf("decode completion: tool call %d has no function name", i))
	}
	if b.ID == "" {
		b.ID = deriveID("toolu_", seed+"\x00tool_call\x00"+strconv.Itoa(i))
	}
	args := tc.Function.Arguments
	if len(args) > 0 && args[0] == '"' {
		var s string
		if err := json.Unmarshal(args, &s); err != nil {
			return b, badUpstream(fmt.Sprintf("decode completion: tool call %d: arguments: %v", i, err))
		}
		args = json.RawMessage(strings.TrimSpace(s))
	}
	switch {
	case len(args) == 0 || string(args) == "null":
		// No-argument calls come back as "" or null from some servers.
		b.Input = json.RawMessage("{}")
		return b, nil
	case args[0] == '{' && json.Valid(args):
		b.Input = args
		return b, nil
	}
	msg := fmt.Sprintf("decode completion: tool call %d (%s): arguments are not a JSON object", i, b.Name)
	if truncated {
		msg += "; generation hit max_tokens, so raising max_tokens may help"
	}
	return b, badUpstream(msg)
}

// derive spells a stable 24-character base62 id from seed, so a message id
// has Anthropic's shape whatever characters the upstream's id contains.
func derive(seed string) string {
	return deriveID("", seed)
}

// deriveID is prefix followed by derive(seed), made in one allocation.
func deriveID(prefix, seed string) string {
	sum := sha256.Sum256([]byte(seed))
	var buf [32]byte
	out := append(buf[:0], prefix...)
	for i := range 24 {
		out = append(out, base62[sum[i]%62])
	}
	return string(out)
}
