package openai

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/batchd/batchd/internal/backend"
)

// chatRequest is the Chat Completions body. max_tokens rather than
// max_completion_tokens because every compatible server accepts it, while
// the newer name is missing from older vLLM, llama.cpp and Ollama releases.
type chatRequest struct {
	Model             string        `json:"model"`
	Messages          []chatMessage `json:"messages"`
	MaxTokens         int64         `json:"max_tokens"`
	Temperature       *float64      `json:"temperature,omitempty"`
	TopP              *float64      `json:"top_p,omitempty"`
	Stop              []string      `json:"stop,omitempty"`
	User              string        `json:"user,omitempty"`
	Tools             []chatTool    `json:"tools,omitempty"`
	ToolChoice        any           `json:"tool_choice,omitempty"`
	ParallelToolCalls *bool         `json:"parallel_tool_calls,omitempty"`
}

// chatMessage is one Chat Completions message. Content is a string or a
// []any of textPart and imagePart; it is nil, and so omitted, only for an
// assistant message that consists of tool calls.
type chatMessage struct {
	Role       string         `json:"role"`
	Content    any            `json:"content,omitempty"`
	ToolCalls  []chatToolCall `json:"tool_calls,omitempty"`
	ToolCallID string         `json:"tool_call_id,omitempty"`
}

type textPart struct {
	Type string `json:"type"` // "text"
	Text string `json:"text"`
}

type imagePart struct {
	Type     string   `json:"type"` // "image_url"
	ImageURL imageURL `json:"image_url"`
}

type imageURL struct {
	URL string `json:"url"`
}

type chatToolCall struct {
	ID       string           `json:"id"`
	Type     string           `json:"type"` // "function"
	Function chatFunctionCall `json:"function"`
}

type chatFunctionCall struct {
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

type chatTool struct {
	Type     string       `json:"type"` // "function"
	Function chatFunction `json:"function"`
}

type chatFunction struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
	Strict      *bool           `json:"strict,omitempty"`
}

type namedFunction struct {
	Type     string `json:"type"` // "function"
	Function struct {
		Name string `json:"name"`
	} `json:"function"`
}

// appendJSON appends r as encode would, without reflection, for the
// common request: text messages (tool results included), no tools, no
// image parts; ok is false for any other, which encode then writes.
func (r *chatRequest) appendJSON(dst []byte) (out []byte, ok bool) {
	if r.Tools != nil || r.ToolChoice != nil || r.ParallelToolCalls != nil {
		return nil, false
	}
	dst = append(dst, `{"model":`...)
	dst = appendQuoted(dst, r.Model)
	dst = append(dst, `,"messages":`...)
	if r.Messages == nil {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, '[')
		for i, m := range r.Messages {
			if len(m.ToolCalls) > 0 {
				return nil, false
			}
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, `{"role":`...)
			dst = appendQuoted(dst, m.Role)
			switch c := m.Content.(type) {
			case nil:
			case string:
				dst = append(dst, `,"content":`...)
				dst = appendQuoted(dst, c)
			default:
				return nil, false
			}
			if m.ToolCallID != "" {
				dst = append(dst, `,"tool_call_id":`...)
				dst = appendQuoted(dst, m.ToolCallID)
			}
			dst = append(dst, '}')
		}
		dst = append(dst, ']')
	}
	dst = append(dst, `,"max_tokens":`...)
	dst = strconv.AppendInt(dst, r.MaxTokens, 10)
	for _, f := range []struct {
		name string
		v    *float64
	}{{`,"temperature":`, r.Temperature}, {`,"top_p":`, r.TopP}} {
		if f.v == nil {
			continue
		}
		// encoding/json writes these as 'f' -1; smaller or larger
		// numbers take an exponent, which encode writes.
		if abs := math.Abs(*f.v); abs != 0 && (abs < 1e-6 || abs >= 1e21) || math.IsNaN(*f.v) {
			return nil, false
		}
		dst = append(dst, f.name...)
		dst = strconv.AppendFloat(dst, *f.v, 'f', -1, 64)
	}
	if len(r.Stop) > 0 {
		dst = append(dst, `,"stop":[`...)
		for i, s := range r.Stop {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendQuoted(dst, s)
		}
		dst = append(dst, ']')
	}
	if r.User != "" {
		dst = append(dst, `,"user":`...)
		dst = appendQuoted(dst, r.User)
	}
	return append(dst, '}'), true
}

// Fields accepted on purpose although nothing is sent for them. They are
// hints whose absence cannot change what the model is asked to do:
//   - cache_control (top level and on blocks and tools) asks for prompt
//     caching, which compatible servers do on their own or not at all;
//   - service_tier and speed choose Anthropic capacity, and this upstream
//     has only one kind;
//   - diagnostics asks for extra fields about Anthropic's prompt cache;
//   - citations on an input text block records where earlier output came
//     from and is not shown to the model as text;
//   - thinking {"type":"disabled"} and stream false restate the default.
//
// Everything else that is not translated is refused by name.
var topLevelFields = []string{
	"model", "max_tokens", "messages", "system", "temperature", "top_p",
	"stop_sequences", "metadata", "tools", "tool_choice", "stream", "thinking",
	"cache_control", "service_tier", "speed", "diagnostics",
}

// textBlockFields are the keys a text block may carry, wherever it appears.
var textBlockFields = []string{"type", "text", "cache_control", "citations"}

// translate turns a Messages request into a Chat Completions request, and
// returns the stop sequences so the answer can say which one matched.
func translate(call backend.Call) (*chatRequest, []string, error) {
	top, err := parseObject("", call.Params)
	if err != nil {
		return nil, nil, err
	}
	if err := top.only(topLevelFields...); err != nil {
		return nil, nil, err
	}
	req := &chatRequest{}

	if _, err := top.decode("model", &req.Model, "a string"); err != nil {
		return nil, nil, err
	}
	if req.Model == "" {
		req.Model = call.Model
	}
	if req.Model == "" {
		return nil, nil, invalid("model: field required")
	}
	if ok, err := top.decode("max_tokens", &req.MaxTokens, "an integer"); err != nil {
		return nil, nil, err
	} else if !ok {
		return nil, nil, invalid("max_tokens: field required")
	}
	if req.MaxTokens < 1 {
		return nil, nil, invalidf("max_tokens: must be at least 1, got %d", req.MaxTokens)
	}
	if _, err := top.decode("temperature", &req.Temperature, "a number"); err != nil {
		return nil, nil, err
	}
	if _, err := top.decode("top_p", &req.TopP, "a number"); err != nil {
		return nil, nil, err
	}
	if _, err := top.decode("stop_sequences", &req.Stop, "an array of strings"); err != nil {
		return nil, nil, err
	}

	// Values that may be absent are declared only when present: one passed
	// to decode lives on the heap.
	if top.get("stream") != nil {
		var stream bool
		if _, err := top.decode("stream", &stream, "a boolean"); err != nil {
			return nil, nil, err
		}
		if stream {
			return nil, nil, unsupported("stream")
		}
	}
	if raw := top.get("thinking"); raw != nil {
		th, err := parseObject("thinking", raw)
		if err != nil {
			return nil, nil, err
		}
		if typ, _ := th.str("type"); typ != "disabled" {
			return nil, nil, unsupported("thinking")
		}
	}
	if raw := top.get("metadata"); raw != nil {
		md, err := parseObject("metadata", raw)
		if err != nil {
			return nil, nil, err
		}
		if err := md.only("user_id"); err != nil {
			return nil, nil, err
		}
		if _, err := md.decode("user_id", &req.User, "a string"); err != nil {
			return nil, nil, err
		}
	}

	if raw := top.get("system"); raw != nil {
		sys, err := systemText(raw)
		if err != nil {
			return nil, nil, err
		}
		if sys != "" {
			req.Messages = append(req.Messages, chatMessage{Role: "system", Content: sys})
		}
	}
	var msgs []json.RawMessage
	if raw := top.get("messages"); raw != nil && raw[0] == '[' {
		msgs = splitArray(raw)
	} else if _, err := top.decode("messages", new([]json.RawMessage), "an array of messages"); err != nil {
		return nil, nil, err
	}
	if len(msgs) == 0 {
		return nil, nil, invalid("messages: at least one message is required")
	}
	for i, raw := range msgs {
		if req.Messages, err = appendMessage(req.Messages, i, raw, i == len(msgs)-1); err != nil {
			return nil, nil, err
		}
	}

	if err := translateTools(top, req); err != nil {
		return nil, nil, err
	}
	return req, req.Stop, nil
}

// systemText flattens the system prompt, a string or text blocks, into the
// one string a system message carries.
func systemText(raw json.RawMessage) (string, error) {
	str, blocks, err := parseContent(object{index: -1}, "system", raw)
	if err != nil || blocks == nil {
		return str, err
	}
	texts := make([]string, 0, len(blocks))
	for _, b := range blocks {
		typ, err := b.str("type")
		if err != nil {
			return "", err
		}
		if typ != "text" {
			return "", unsupportedValue(b.name("type"), typ)
		}
		t, err := textOf(b)
		if err != nil {
			return "", err
		}
		texts = append(texts, t)
	}
	return strings.Join(texts, "\n"), nil
}

// appendMessage translates messages[i] and appends the result to out: one
// message, or for a user turn with tool results, a tool message per result
// followed by the rest of the turn.
func appendMessage(out []chatMessage, i int, raw json.RawMessage, last bool) ([]chatMessage, error) {
	m, err := parseObjectAt("messages", i, raw)
	if err != nil {
		return nil, err
	}
	if err := m.only("role", "content"); err != nil {
		return nil, err
	}
	role, err := m.str("role")
	if err != nil {
		return nil, err
	}
	content := m.get("content")
	if content == nil {
		return nil, invalid(m.name("content") + ": field required")
	}
	str, blocks, err := parseContent(m, "content", content)
	if err != nil {
		return nil, err
	}
	switch role {
	case "user":
		if blocks == nil {
			return append(out, chatMessage{Role: "user", Content: str}), nil
		}
		return appendUser(out, blocks)
	case "assistant":
		if last {
			// Anthropic continues a final assistant message (prefill); Chat
			// Completions would answer it with a new message instead, which
			// is a different request.
			return nil, invalid(m.path() + ": a final assistant message (prefill) is not supported by the openai backend")
		}
		if blocks == nil {
			return append(out, chatMessage{Role: "assistant", Content: str}), nil
		}
		msg, err := assistantMessage(blocks)
		if err != nil {
			return nil, err
		}
		return append(out, msg), nil
	default:
		return nil, invalidf("%s: must be \"user\" or \"assistant\", got %q", m.name("role"), role)
	}
}

// appendUser translates a user turn given as blocks. Chat Completions wants
// tool results as role "tool" messages right after the assistant's tool
// calls, so they go first, in order, and any text or images of the same
// turn follow as a user message.
func appendUser(out []chatMessage, blocks []object) ([]chatMessage, error) {
	var parts []any
	var texts []string
	images := false
	results := 0
	for _, b := range blocks {
		typ, err := b.str("type")
		if err != nil {
			return nil, err
		}
		switch typ {
		case "text":
			t, err := textOf(b)
			if err != nil {
				return nil, err
			}
			parts = append(parts, textPart{Type: "text", Text: t})
			texts = append(texts, t)
		case "image":
			u, err := imageOf(b)
			if err != nil {
				return nil, err
			}
			parts = append(parts, imagePart{Type: "image_url", ImageURL: imageURL{URL: u}})
			images = true
		case "tool_result":
			msg, err := toolResult(b)
			if err != nil {
				return nil, err
			}
			out = append(out, msg)
			results++
		default:
			return nil, unsupportedValue(b.name("type"), typ)
		}
	}
	switch {
	case images:
		out = append(out, chatMessage{Role: "user", Content: parts})
	case len(texts) > 0 || results == 0:
		// A plain string is the one form every server's chat template takes.
		out = append(out, chatMessage{Role: "user", Content: strings.Join(texts, "\n")})
	}
	return out, nil
}

// assistantMessage translates an assistant turn given as blocks.
func assistantMessage(blocks []object) (chatMessage, error) {
	msg := chatMessage{Role: "assistant"}
	var texts []string
	for _, b := range blocks {
		typ, err := b.str("type")
		if err != nil {
			return msg, err
		}
		switch typ {
		case "text":
			t, err := textOf(b)
			if err != nil {
				return msg, err
			}
			texts = append(texts, t)
		case "tool_use":
			tc, err := toolUse(b)
			if err != nil {
				return msg, err
			}
			msg.ToolCalls = append(msg.ToolCalls, tc)
		case "thinking", "redacted_thinking":
			// Earlier turns' reasoning. Anthropic itself strips it from
			// previous turns, and another model could not use Claude's
			// signed reasoning anyway, so leaving it out matches what the
			// model would have seen.
		default:
			return msg, unsupportedValue(b.name("type"), typ)
		}
	}
	if len(texts) > 0 || len(msg.ToolCalls) == 0 {
		msg.Content = strings.Join(texts, "\n")
	}
	return msg, nil
}

func textOf(b object) (string, error) {
	if err := b.only(textBlockFields...); err != nil {
		return "", err
	}
	var t string
	if ok, err := b.decode("text", &t, "a string"); err != nil {
		return "", err
	} else if !ok {
		return "", invalid(b.name("text") + ": field required")
	}
	return t, nil
}

// imageOf returns the image_url for an image block: a data URL for inline
// base64 data, the URL itself for a url source. Files API references have no
// equivalent on these servers.
func imageOf(b object) (string, error) {
	if err := b.only("type", "source", "cache_control"); err != nil {
		return "", err
	}
	raw := b.get("source")
	if raw == nil {
		return "", invalid(b.name("source") + ": field required")
	}
	src, err := parseObject(b.name("source"), raw)
	if err != nil {
		return "", err
	}
	typ, err := src.str("type")
	if err != nil {
		return "", err
	}
	switch typ {
	case "base64":
		if err := src.only("type", "media_type", "data"); err != nil {
			return "", err
		}
		mt, err := src.str("media_type")
		if err != nil {
			return "", err
		}
		data, err := src.str("data")
		if err != nil {
			return "", err
		}
		return "data:" + mt + ";base64," + data, nil
	case "url":
		if err := src.only("type", "url"); err != nil {
			return "", err
		}
		return src.str("url")
	default:
		return "", unsupportedValue(src.name("type"), typ)
	}
}

// toolUse turns an assistant tool_use block into a tool call, with the input
// object re-encoded as the arguments string Chat Completions expects.
func toolUse(b object) (chatToolCall, error) {
	tc := chatToolCall{Type: "function"}
	if err := b.only("type", "id", "name", "input", "cache_control"); err != nil {
		return tc, err
	}
	var err error
	if tc.ID, err = b.str("id"); err != nil {
		return tc, err
	}
	if tc.Function.Name, err = b.str("name"); err != nil {
		return tc, err
	}
	tc.Function.Arguments = "{}"
	if input := b.get("input"); input != nil {
		if input[0] != '{' {
			return tc, invalid(b.name("input") + ": must be an object")
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, input); err != nil {
			return tc, invalid(b.name("input") + ": must be an object")
		}
		tc.Function.Arguments = buf.String()
	}
	return tc, nil
}

// toolResult turns a tool_result block into a tool message. Tool messages
// carry only text, so images or documents in a result are refused; an error
// result is marked in the text because the role has no error flag.
func toolResult(b object) (chatMessage, error) {
	msg := chatMessage{Role: "tool"}
	if err := b.only("type", "tool_use_id", "content", "is_error", "cache_control"); err != nil {
		return msg, err
	}
	var err error
	if msg.ToolCallID, err = b.str("tool_use_id"); err != nil {
		return msg, err
	}
	var text string
	if raw := b.get("content"); raw != nil {
		str, blocks, err := parseContent(b, "content", raw)
		if err != nil {
			return msg, err
		}
		text = str
		if blocks != nil {
			texts := make([]string, 0, len(blocks))
			for _, c := range blocks {
				typ, err := c.str("type")
				if err != nil {
					return msg, err
				}
				if typ != "text" {
					return msg, unsupportedValue(c.name("type"), typ)
				}
				t, err := textOf(c)
				if err != nil {
					return msg, err
				}
				texts = append(texts, t)
			}
			text = strings.Join(texts, "\n")
		}
	}
	var isErr bool
	if _, err := b.decode("is_error", &isErr, "a boolean"); err != nil {
		return msg, err
	}
	if isErr {
		if text == "" {
			text = "Error"
		} else {
			text = "Error: " + text
		}
	}
	msg.Content = text
	return msg, nil
}

// translateTools maps tools and tool_choice. A tool_choice without tools is
// left out when it only says "auto" or "none", which is what no tools means
// anyway, because OpenAI rejects tool_choice without tools.
func translateTools(top object, req *chatRequest) error {
	var tools []json.RawMessage
	if raw := top.get("tools"); raw != nil && raw[0] == '[' {
		tools = splitArray(raw)
	} else if _, err := top.decode("tools", new([]json.RawMessage), "an array of tools"); err != nil {
		return err
	}
	for i, raw := range tools {
		t, err := parseObjectAt("tools", i, raw)
		if err != nil {
			return err
		}
		// Server tools (web search, code execution...) run inside Anthropic's
		// API; only client tools have a function equivalent.
		if t.get("type") != nil {
			s, err := t.str("type")
			if err != nil {
				return err
			}
			if s != "custom" {
				return unsupportedValue(t.name("type"), s)
			}
		}
		if err := t.only("type", "name", "description", "input_schema", "cache_control", "strict"); err != nil {
			return err
		}
		ct := chatTool{Type: "function"}
		if ct.Function.Name, err = t.str("name"); err != nil {
			return err
		}
		if _, err := t.decode("description", &ct.Function.Description, "a string"); err != nil {
			return err
		}
		ct.Function.Parameters = t.get("input_schema")
		if _, err := t.decode("strict", &ct.Function.Strict, "a boolean"); err != nil {
			return err
		}
		req.Tools = append(req.Tools, ct)
	}

	raw := top.get("tool_choice")
	if raw == nil {
		return nil
	}
	tc, err := parseObject("tool_choice", raw)
	if err != nil {
		return err
	}
	if err := tc.only("type", "name", "disable_parallel_tool_use"); err != nil {
		return err
	}
	typ, err := tc.str("type")
	if err != nil {
		return err
	}
	var choice any
	switch typ {
	case "auto":
		choice = "auto"
	case "any":
		choice = "required"
	case "none":
		choice = "none"
	case "tool":
		var nf namedFunction
		nf.Type = "function"
		if nf.Function.Name, err = tc.str("name"); err != nil {
			return err
		}
		choice = nf
	default:
		return unsupportedValue(tc.name("type"), typ)
	}
	var noParallel bool
	if _, err := tc.decode("disable_parallel_tool_use", &noParallel, "a boolean"); err != nil {
		return err
	}
	if len(req.Tools) == 0 {
		if typ == "any" || typ == "tool" {
			return invalidf("tool_choice: type %q requires tools", typ)
		}
		return nil
	}
	req.ToolChoice = choice
	if noParallel {
		f := false
		req.ParallelToolCalls = &f
	}
	return nil
}

// object is one JSON object of the request being translated, with the dotted
// path that names its fields in errors, as Anthropic's own errors do
// ("messages.0.content.1.source.type"). The path is base, or base.index
// when index >= 0, and is spelled only for an error: most requests have
// none.
type object struct {
	base   string
	index  int
	fields []field
}

// field is one member of an object: its name, unescaped, and raw value.
// A request's objects have a few members each, which a slice searched in
// order finds sooner than a map is built.
type field struct {
	key []byte
	raw json.RawMessage
}

// parseObject splits raw into its fields. The params (path "") are
// validated once, as a whole; every other raw value is a part of them, so
// splitting needs no validation and no decoding: encoding/json validated
// and decoded the same bytes again for every object, array and field on
// the way down, which made translation the largest cost of a call.
func parseObject(path string, raw json.RawMessage) (object, error) {
	return parseObjectAt(path, -1, raw)
}

// parseObjectAt is parseObject for the object at base.index.
func parseObjectAt(base string, index int, raw json.RawMessage) (object, error) {
	o := object{base: base, index: index}
	if base == "" {
		if !backend.ValidJSON(raw) {
			return object{}, invalid("params: not valid JSON")
		}
		raw = bytes.Trim(raw, " \t\r\n")
	}
	if len(raw) == 0 || raw[0] != '{' {
		if base == "" {
			return object{}, invalid("params: must be a JSON object")
		}
		return object{}, invalid(o.path() + ": must be an object")
	}
	o.fields = make([]field, 0, 8)
	for i := skipSpace(raw, 1); raw[i] != '}'; {
		end := valueEnd(raw, i)
		key := unquoteBytes(raw[i:end])
		i = skipSpace(raw, end)
		i = skipSpace(raw, i+1) // ':'
		end = valueEnd(raw, i)
		o.fields = append(o.fields, field{key, raw[i:end:end]}) // get takes the last of duplicate keys, as encoding/json does
		i = skipSpace(raw, end)
		if raw[i] == ',' {
			i = skipSpace(raw, i+1)
		}
	}
	return o, nil
}

// splitArray splits raw, a valid JSON array, into its elements.
func splitArray(raw json.RawMessage) []json.RawMessage {
	out := make([]json.RawMessage, 0, 4)
	for i := skipSpace(raw, 1); raw[i] != ']'; {
		end := valueEnd(raw, i)
		out = append(out, raw[i:end:end])
		i = skipSpace(raw, end)
		if raw[i] == ',' {
			i = skipSpace(raw, i+1)
		}
	}
	return out
}

func skipSpace(raw []byte, i int) int {
	for i < len(raw) && (raw[i] == ' ' || raw[i] == '\t' || raw[i] == '\n' || raw[i] == '\r') {
		i++
	}
	return i
}

// valueEnd returns the end of the valid JSON value that starts at raw[i].
func valueEnd(raw []byte, i int) int {
	switch raw[i] {
	case '"':
		for i++; raw[i] != '"'; i++ {
			if raw[i] == '\\' {
				i++
			}
		}
		return i + 1
	case '{', '[':
		depth := 0
		for ; ; i++ {
			switch raw[i] {
			case '"':
				i = valueEnd(raw, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
	default: // a number, true, false or null
		for ; i < len(raw); i++ {
			switch raw[i] {
			case ',', '}', ']', ' ', '\t', '\r', '\n':
				return i
			}
		}
		return i
	}
}

// unquote decodes a valid JSON string as encoding/json does; most strings
// need no decoding at all.
func unquote(raw []byte) string {
	if s := raw[1 : len(raw)-1]; plain(s) {
		return string(s)
	}
	var out string
	_ = json.Unmarshal(raw, &out) // cannot fail on a valid string
	return out
}

// unquoteBytes is unquote without a copy when raw needs no decoding.
func unquoteBytes(raw []byte) []byte {
	if s := raw[1 : len(raw)-1]; plain(s) {
		return s
	}
	return []byte(unquote(raw))
}

// plain reports whether s, the inside of a valid JSON string, is its own
// value: no escapes, and valid UTF-8 (encoding/json replaces invalid bytes).
func plain(s []byte) bool {
	for _, c := range s {
		if c == '\\' || c >= utf8.RuneSelf {
			return bytes.IndexByte(s, '\\') < 0 && utf8.Valid(s)
		}
	}
	return true
}

// path names the object in errors.
func (o object) path() string {
	if o.index < 0 {
		return o.base
	}
	return o.base + "." + strconv.Itoa(o.index)
}

func (o object) name(key string) string {
	if p := o.path(); p != "" {
		return p + "." + key
	}
	return key
}

// get returns key's raw value, or nil when it is absent or null: the
// Messages API treats an explicit null like an omitted field.
func (o object) get(key string) json.RawMessage {
	for i := len(o.fields) - 1; i >= 0; i-- {
		if f := o.fields[i]; string(f.key) == key {
			if string(f.raw) == "null" {
				return nil
			}
			return f.raw
		}
	}
	return nil
}

// decode unmarshals key into v when present, reporting whether it was; want
// describes the expected type for the error.
func (o object) decode(key string, v any, want string) (bool, error) {
	raw := o.get(key)
	if raw == nil {
		return false, nil
	}
	// The common types are read straight from the bytes, which are valid
	// JSON; anything else, and any value of another type (for the error),
	// goes through encoding/json.
	switch v := v.(type) {
	case *string:
		if raw[0] == '"' {
			*v = unquote(raw)
			return true, nil
		}
	case *[]json.RawMessage:
		if raw[0] == '[' {
			*v = splitArray(raw)
			return true, nil
		}
	case *int64:
		if n, err := strconv.ParseInt(string(raw), 10, 64); err == nil {
			*v = n
			return true, nil
		}
	case *bool:
		if string(raw) == "true" || string(raw) == "false" {
			*v = string(raw) == "true"
			return true, nil
		}
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, invalidf("%s: must be %s", o.name(key), want)
	}
	return true, nil
}

// str returns a required string field.
func (o object) str(key string) (string, error) {
	if raw := o.get(key); raw != nil && raw[0] == '"' {
		return unquote(raw), nil
	}
	var s string
	ok, err := o.decode(key, &s, "a string")
	if err != nil {
		return "", err
	}
	if !ok {
		return "", invalid(o.name(key) + ": field required")
	}
	return s, nil
}

// only refuses any non-null key outside allowed, naming the first in sorted
// order so the error is the same on every attempt.
func (o object) only(allowed ...string) error {
	var bad []string
	for _, f := range o.fields {
		if !slices.Contains(allowed, string(f.key)) && o.get(string(f.key)) != nil {
			bad = append(bad, string(f.key))
		}
	}
	if len(bad) == 0 {
		return nil
	}
	slices.Sort(bad)
	return unsupported(o.name(bad[0]))
}

// parseContent splits the content at o's key into a string or blocks;
// blocks is nil exactly when the content was a string.
func parseContent(o object, key string, raw json.RawMessage) (string, []object, error) {
	if raw[0] == '"' {
		return unquote(raw), nil, nil
	}
	path := o.name(key)
	if raw[0] != '[' {
		return "", nil, invalid(path + ": must be a string or an array of content blocks")
	}
	items := splitArray(raw)
	blocks := make([]object, 0, len(items))
	for j, item := range items {
		b, err := parseObjectAt(path, j, item)
		if err != nil {
			return "", nil, err
		}
		blocks = append(blocks, b)
	}
	return "", blocks, nil
}
