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
	// go-json-experiment's v1 API decodes with encoding/json's semantics
	// at about twice its speed; a body it refuses is decoded again by
	// encoding/json itself, which has the last word and words the error.
	var c completion
	if jsonv1.Unmarshal(body, &c) != nil {
		c = completion{}
		if err := json.Unmarshal(body, &c); err != nil {
			return nil, badUpstream("decode completion: " + err.Error())
		}
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
		ID:      "msg_" + derive(seed),
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
		var s string
		if len(ch.StopReason) > 0 && ch.StopReason[0] == '"' && json.Unmarshal(ch.StopReason, &s) == nil && slices.Contains(stops, s) {
			msg.StopReason = "stop_sequence"
			msg.StopSequence = &s
		}
	}
	return msg.appendJSON(make([]byte, 0, 256+len(body))), nil
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
		b.ID = "toolu_" + derive(seed+"\x00tool_call\x00"+strconv.Itoa(i))
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
	sum := sha256.Sum256([]byte(seed))
	out := make([]byte, 24)
	for i := range out {
		out[i] = base62[sum[i]%62]
	}
	return string(out)
}
