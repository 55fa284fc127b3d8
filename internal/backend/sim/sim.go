// Package sim is batchd's built-in simulator backend. It answers Messages
// requests without any network or model so batchd works offline, and it is
// deterministic so tests can compare results byte for byte. Tests and
// benchmarks script latency and failures from the prompt itself with
// directives such as [[sim latency=2s fail=1]], because that is the only
// channel that survives the whole path from a client through a batch to the
// backend.
package sim

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/batchd/batchd/internal/backend"
)

// Config configures the simulator.
type Config struct {
	// Latency is how long each request takes when its prompt carries no
	// latency directive, so a whole server can mimic a slow provider without
	// rewriting prompts. Zero (the default) answers immediately.
	Latency time.Duration
}

// Backend is the simulator. It holds no per-request state, so one value may
// serve any number of concurrent calls.
type Backend struct {
	latency time.Duration
}

var _ backend.Backend = (*Backend)(nil)

// New returns a simulator using cfg. A negative latency is treated as zero
// rather than rejected, since it can only mean "no delay".
func New(cfg Config) *Backend {
	return &Backend{latency: max(cfg.Latency, 0)}
}

// Name identifies the simulator in logs and backend listings.
func (b *Backend) Name() string { return "sim" }

const (
	// minWords and maxWords bound the reply length so results vary enough to
	// exercise max_tokens handling while staying small.
	minWords = 20
	maxWords = 120
	// echoWords is how much of the prompt the reply quotes: enough for tests
	// to plant a stop sequence, little enough to keep replies short.
	echoWords = 12
	// replyPrefix opens every reply; the prompt's words follow in quotes.
	replyPrefix = `Simulated reply to "`
	// directiveOpen starts a directive. Scanning for this literal with
	// strings.Index keeps the common no-directive case nearly free.
	directiveOpen = "[[sim"
)

// base62 spells message ids like Anthropic's.
const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// vocab supplies the filler words; all lowercase so they rarely collide with
// the distinctive stop sequences tests plant in prompts.
var vocab = [...]string{
	"amber", "anchor", "batch", "beacon", "breeze", "canyon", "cedar", "circuit",
	"cloud", "copper", "delta", "dune", "ember", "engine", "fable", "falcon",
	"garden", "glacier", "grove", "harbor", "hollow", "horizon", "island", "ivory",
	"juniper", "jungle", "kelp", "kernel", "lantern", "lattice", "light", "lotus",
	"marble", "meadow", "mirror", "model", "nebula", "ocean", "orbit", "paper",
	"pixel", "quartz", "quiet", "request", "ripple", "river", "signal", "sparrow",
	"stone", "summit", "thread", "token", "tundra", "umbra", "vector", "violet",
	"willow", "window", "yonder", "zephyr", "meridian", "nimbus", "prairie", "reply",
}

// request is the part of a Messages request body the simulator needs.
type request struct {
	Model         string    `json:"model"`
	MaxTokens     int64     `json:"max_tokens"`
	Messages      []message `json:"messages"`
	System        content   `json:"system"`
	StopSequences []string  `json:"stop_sequences"`
}

type message struct {
	Role    string  `json:"role"`
	Content content `json:"content"`
}

// block keeps only what text extraction needs; other block types (images,
// tool results) are skipped, not rejected, since real requests carry them.
type block struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// content is a message content or system prompt: either a plain string or
// blocks, of which only text blocks count.
type content struct {
	str    string
	blocks []block
	// set records that the field was present and not null.
	set bool
	// bad records an unusable value instead of failing the whole decode, so
	// Do can still name the message index in its error.
	bad bool
}

// UnmarshalJSON decodes content in the same pass as the request, sparing a
// copy of every message into a json.RawMessage and a second decode.
func (c *content) UnmarshalJSON(data []byte) error {
	*c = content{}
	if len(data) == 0 {
		c.bad = true
		return nil
	}
	switch data[0] {
	case 'n':
		return nil
	case '"':
		c.set = true
		if len(data) < 2 {
			c.bad = true
			return nil
		}
		// json.Unmarshal has validated the whole body already, so a string
		// without escapes is its bytes between the quotes, if valid UTF-8.
		if inner := data[1 : len(data)-1]; bytes.IndexByte(inner, '\\') < 0 && utf8.Valid(inner) {
			c.str = string(inner)
			return nil
		}
		c.bad = json.Unmarshal(data, &c.str) != nil
	case '[':
		c.set = true
		c.bad = json.Unmarshal(data, &c.blocks) != nil
		if c.blocks == nil {
			c.blocks = []block{} // keep "blocks, none of them text" distinct from a string
		}
	default:
		c.set, c.bad = true, true
	}
	return nil
}

// chars counts characters rather than bytes so non-Latin prompts are not
// charged several tokens per character.
func (c *content) chars() int {
	n := utf8.RuneCountInString(c.str)
	for i := range c.blocks {
		if c.blocks[i].Type == "text" {
			n += utf8.RuneCountInString(c.blocks[i].Text)
		}
	}
	return n
}

// text returns the i-th text piece of c and whether there is one; indexing
// avoids building a slice on the hot path.
func (c *content) text(i int) (string, bool) {
	if c.blocks == nil {
		return c.str, i == 0
	}
	for j := range c.blocks {
		if c.blocks[j].Type != "text" {
			continue
		}
		if i == 0 {
			return c.blocks[j].Text, true
		}
		i--
	}
	return "", false
}

// directives is what the prompt asked the simulator to do.
type directives struct {
	latency    time.Duration
	hasLatency bool
	errType    string
	fail       int
}

// Do answers one request. The reply depends only on call.Params, never on the
// attempt number or the clock, so a retried request yields the same bytes.
func (b *Backend) Do(ctx context.Context, call backend.Call) (json.RawMessage, error) {
	start := time.Now()
	var req request
	if err := json.Unmarshal(call.Params, &req); err != nil {
		return nil, decodeError(err)
	}
	model := req.Model
	if model == "" {
		model = call.Model
	}
	if model == "" {
		return nil, invalid("model: field required")
	}
	if req.MaxTokens < 1 {
		return nil, invalid("max_tokens: must be at least 1, got " + strconv.FormatInt(req.MaxTokens, 10))
	}
	if len(req.Messages) == 0 {
		return nil, invalid("messages: at least one message is required")
	}

	if req.System.bad {
		return nil, invalid("system: must be a string or an array of text blocks")
	}
	chars := req.System.chars()
	var last *content
	for i := range req.Messages {
		c := &req.Messages[i].Content
		if !c.set {
			return nil, invalidf("messages.%d.content: field required", i)
		}
		if c.bad {
			return nil, invalidf("messages.%d.content: must be a string or an array of content blocks", i)
		}
		chars += c.chars()
		if req.Messages[i].Role == "user" {
			last = c
		}
	}
	if last == nil {
		return nil, invalid("messages: no user message to reply to")
	}

	var d directives
	for i := 0; ; i++ {
		s, ok := last.text(i)
		if !ok {
			break
		}
		if err := d.scan(s); err != nil {
			return nil, err
		}
	}

	// Every attempt, failing or not, takes the latency, measured from the
	// call: the work of building the answer happens inside it, so a
	// request of latency L takes L, not L plus the simulator's own time.
	lat := b.latency
	if d.hasLatency {
		lat = d.latency
	}
	var msg json.RawMessage
	var err error
	switch attempt := max(call.Attempt, 1); {
	case d.errType != "":
		err = &backend.Error{Type: d.errType, Status: backend.StatusForType(d.errType), Message: "simulated " + d.errType}
	case attempt <= d.fail:
		err = &backend.Error{
			Type:    backend.ErrOverloaded,
			Status:  backend.StatusForType(backend.ErrOverloaded),
			Message: fmt.Sprintf("simulated %s (attempt %d of %d failing)", backend.ErrOverloaded, attempt, d.fail),
		}
	default:
		msg = answer(call.Params, model, last, chars, req.MaxTokens, req.StopSequences)
	}
	if lat > 0 {
		if left := lat - time.Since(start); left > 0 {
			t := time.NewTimer(left)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			case <-t.C:
			}
		}
	}
	return msg, err
}

// answer builds the Message for params: deterministic, from their hash.
func answer(params json.RawMessage, model string, last *content, chars int, maxTokens int64, stops []string) json.RawMessage {
	sum := sha256.Sum256(params)
	text, words := generate(last, splitmix(binary.LittleEndian.Uint64(sum[24:])))
	text, words, reason, stopSeq := truncate(text, words, maxTokens, stops)
	inTokens := max((chars+3)/4, 1)
	outTokens := max(words, 1)

	out := make([]byte, 0, len(text)+len(model)+320)
	out = append(out, `{"id":"msg_`...)
	for _, c := range sum[:24] {
		out = append(out, base62[c%62])
	}
	out = append(out, `","type":"message","role":"assistant","model":`...)
	out = appendJSONString(out, model)
	out = append(out, `,"content":[{"type":"text","text":`...)
	out = appendJSONString(out, text)
	out = append(out, `}],"stop_reason":"`...)
	out = append(out, reason...)
	out = append(out, `","stop_sequence":`...)
	if reason == "stop_sequence" {
		out = appendJSONString(out, stopSeq)
	} else {
		out = append(out, "null"...)
	}
	out = append(out, `,"usage":{"input_tokens":`...)
	out = strconv.AppendInt(out, int64(inTokens), 10)
	out = append(out, `,"output_tokens":`...)
	out = strconv.AppendInt(out, int64(outTokens), 10)
	out = append(out, `,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"service_tier":"batch"}}`...)
	return out
}

// generate writes the full, uncut reply: the quoted prompt echo, then
// pseudo-random words, minWords..maxWords words in all. It returns the word
// count too, which saves rescanning the text when nothing cuts it.
func generate(last *content, rng splitmix) (string, int) {
	total := minWords + int(rng.next()%(maxWords-minWords+1))
	var sb strings.Builder
	sb.Grow(len(replyPrefix) + 8*(maxWords+echoWords))
	sb.WriteString(replyPrefix)
	echoed := 0
	for i := 0; echoed < echoWords; i++ {
		s, ok := last.text(i)
		if !ok {
			break
		}
		for s != "" && echoed < echoWords {
			start, end, _, _ := nextDirective(s)
			seg := s
			if start >= 0 {
				seg, s = s[:start], s[end:]
			} else {
				s = ""
			}
			echoed = echo(&sb, seg, echoed)
		}
	}
	sb.WriteString(`":`)
	// "Simulated reply to" is three words; the quoted echo is at least one
	// (`"":` when the prompt has no text).
	filler := total - 3 - max(echoed, 1)
	for i := range filler {
		sb.WriteByte(' ')
		sb.WriteString(vocab[rng.next()%uint64(len(vocab))])
		if i == filler-1 {
			sb.WriteByte('.')
		}
	}
	return sb.String(), total
}

// echo appends s's words, single-space separated, until echoWords words have
// been echoed in total; it returns the new total. Collapsing whitespace keeps
// the reply one line and makes every space in it a word boundary, which
// truncate and countWords rely on.
func echo(sb *strings.Builder, s string, echoed int) int {
	for echoed < echoWords {
		s = strings.TrimLeftFunc(s, unicode.IsSpace)
		if s == "" {
			break
		}
		end := strings.IndexFunc(s, unicode.IsSpace)
		if end < 0 {
			end = len(s)
		}
		if echoed > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(s[:end])
		s = s[end:]
		echoed++
	}
	return echoed
}

// truncate applies max_tokens and stop_sequences the way generation would:
// whichever limit is reached first while producing text wins. A stop
// sequence therefore only counts if it is complete within the first
// maxTokens words, and among stop sequences the one that completes earliest
// wins (the longer one on a tie, since it started first).
func truncate(text string, words int, maxTokens int64, stops []string) (cut string, cutWords int, reason, stopSeq string) {
	limit, over := len(text), false
	if maxTokens < int64(words) {
		limit, over = wordsEnd(text, maxTokens), true
	}
	best, bestEnd := -1, 0
	for _, s := range stops {
		if s == "" {
			continue // would match everywhere; treat as absent
		}
		i := strings.Index(text, s)
		if i < 0 || i+len(s) > limit {
			continue
		}
		if e := i + len(s); best < 0 || e < bestEnd || (e == bestEnd && i < best) {
			best, bestEnd, stopSeq = i, e, s
		}
	}
	switch {
	case best >= 0:
		return text[:best], countWords(text[:best]), "stop_sequence", stopSeq
	case over:
		return text[:limit], int(maxTokens), "max_tokens", ""
	default:
		return text, words, "end_turn", ""
	}
}

// wordsEnd returns the byte offset just past the n-th word of s.
func wordsEnd(s string, n int64) int {
	var words int64
	for i := 0; i < len(s); i++ {
		if s[i] != ' ' && (i+1 == len(s) || s[i+1] == ' ') {
			words++
			if words == n {
				return i + 1
			}
		}
	}
	return len(s)
}

// countWords counts one token per space-separated word.
func countWords(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] != ' ' && (i == 0 || s[i-1] == ' ') {
			n++
		}
	}
	return n
}

// scan records every directive in s.
func (d *directives) scan(s string) error {
	for {
		start, end, body, err := nextDirective(s)
		if err != nil {
			return err
		}
		if start < 0 {
			return nil
		}
		if err := d.parse(body); err != nil {
			return err
		}
		s = s[end:]
	}
}

// nextDirective finds the first directive in s and returns its byte range
// and the text between "[[sim" and "]]"; start is -1 when there is none. Only
// "[[sim" followed by whitespace or "]" opens a directive, so prose such as
// "[[simple]]" is left alone.
func nextDirective(s string) (start, end int, body string, err error) {
	off := 0
	for {
		i := strings.Index(s[off:], directiveOpen)
		if i < 0 {
			return -1, -1, "", nil
		}
		i += off
		j := i + len(directiveOpen)
		if j < len(s) {
			if c := s[j]; c != ']' && c != ' ' && c != '\t' && c != '\n' && c != '\r' {
				off = j
				continue
			}
		}
		k := strings.Index(s[j:], "]]")
		if k < 0 {
			return i, len(s), s[j:], invalid(`sim directive: missing closing "]]"`)
		}
		return i, j + k + 2, s[j : j+k], nil
	}
}

// parse applies one directive body such as " latency=500ms fail=1". A later
// setting of the same key overrides an earlier one.
func (d *directives) parse(body string) error {
	for _, f := range strings.Fields(body) {
		key, val, ok := strings.Cut(f, "=")
		if !ok {
			return invalidf("sim directive: %q is not key=value", f)
		}
		switch key {
		case "latency":
			lat, err := time.ParseDuration(val)
			if err != nil || lat < 0 {
				return invalidf("sim directive: bad latency %q: want a non-negative Go duration such as 500ms", val)
			}
			d.latency, d.hasLatency = lat, true
		case "error":
			if !knownErrorType(val) {
				return invalidf("sim directive: unknown error type %q", val)
			}
			d.errType = val
		case "fail":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				return invalidf("sim directive: bad fail %q: want a non-negative integer", val)
			}
			d.fail = n
		default:
			return invalidf("sim directive: unknown key %q", key)
		}
	}
	return nil
}

// knownErrorType accepts only real Anthropic error types, so a typo in a test
// prompt fails loudly instead of silently becoming a permanent 500.
func knownErrorType(t string) bool {
	switch t {
	case backend.ErrInvalidRequest, backend.ErrAuthentication, backend.ErrBilling,
		backend.ErrPermission, backend.ErrNotFound, backend.ErrRequestTooLarge,
		backend.ErrRateLimit, backend.ErrAPI, backend.ErrTimeout, backend.ErrOverloaded:
		return true
	}
	return false
}

// decodeError names the offending field when encoding/json can tell which.
func decodeError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return invalidf("%s: expected %s, got %s", te.Field, te.Type, te.Value)
	}
	return invalid("params: " + err.Error())
}

func invalid(msg string) *backend.Error {
	return &backend.Error{Type: backend.ErrInvalidRequest, Status: backend.StatusForType(backend.ErrInvalidRequest), Message: msg}
}

func invalidf(format string, args ...any) *backend.Error {
	return invalid(fmt.Sprintf(format, args...))
}

// splitmix is SplitMix64: tiny, allocation-free and fully determined by its
// seed, unlike math/rand's shared state.
type splitmix uint64

func (s *splitmix) next() uint64 {
	*s += 0x9e3779b97f4a7c15
	z := uint64(*s)
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// appendJSONString appends s as a JSON string. Hand-encoding avoids
// encoding/json's reflection on the hot path; invalid UTF-8 becomes U+FFFD as
// encoding/json would do.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		// U+2028 and U+2029 are valid JSON but break JavaScript parsers that
		// consumers may feed results to.
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
