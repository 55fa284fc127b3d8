package openai

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/batchd/batchd/internal/backend"
)

// statusError turns a non-2xx answer into an Anthropic error. The Status
// field keeps the upstream's status, as backend.Error documents; the type is
// what decides retrying.
func (b *Backend) statusError(status int, header http.Header, body []byte) error {
	msg, code := upstreamMessage(body)
	if msg == "" {
		msg = fmt.Sprintf("upstream %s answered HTTP %d %s", b.name, status, http.StatusText(status))
	}
	e := &backend.Error{Status: status, Message: clip(b.redact(msg)), RetryAfter: backend.RetryAfter(header, time.Now())}
	switch {
	case status == 400 || status == 422:
		e.Type = backend.ErrInvalidRequest
	case status == 401:
		e.Type = backend.ErrAuthentication
	case status == 402:
		e.Type = backend.ErrBilling
	case status == 403:
		e.Type = backend.ErrPermission
	case status == 404:
		e.Type = backend.ErrNotFound
	case status == 408:
		e.Type = backend.ErrTimeout
	case status == 413:
		e.Type = backend.ErrRequestTooLarge
	case status == 429 && code == "insufficient_quota":
		// OpenAI reports an exhausted quota as a 429, but waiting does not
		// refill it, so retrying would only burn the batch's attempts.
		e.Type = backend.ErrBilling
	case status == 429:
		e.Type = backend.ErrRateLimit
	case status == 503 || status == 529:
		e.Type = backend.ErrOverloaded
	case status == 504:
		e.Type = backend.ErrTimeout
	case status >= 500:
		e.Type = backend.ErrAPI
	case status >= 400:
		// Other client errors (405, 409, 415...) mean the request as sent
		// will not succeed on this upstream.
		e.Type = backend.ErrInvalidRequest
	default:
		// 1xx and unfollowed 3xx: the upstream is not behaving like an API.
		e.Type = backend.ErrAPI
	}
	return e
}

// upstreamMessage extracts the reason from the error bodies the supported
// servers send: OpenAI, llama.cpp and Ollama's {"error":{"message","type",
// "code"}}, Ollama and LM Studio's {"error":"..."}, vLLM's older
// {"object":"error","message":...}, and FastAPI's {"detail":...}. Plain text
// is used as is. code is the error code or type, for telling an exhausted
// quota from a rate limit.
func upstreamMessage(body []byte) (msg, code string) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return "", ""
	}
	var env struct {
		Error   json.RawMessage `json:"error"`
		Message string          `json:"message"`
		Detail  json.RawMessage `json:"detail"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		if utf8.Valid(body) && body[0] != '<' { // skip HTML error pages
			return string(body), ""
		}
		return "", ""
	}
	var inner struct {
		Message string          `json:"message"`
		Type    string          `json:"type"`
		Code    json.RawMessage `json:"code"`
	}
	var s string
	switch {
	case json.Unmarshal(env.Error, &s) == nil && s != "":
		return s, ""
	case json.Unmarshal(env.Error, &inner) == nil && (inner.Message != "" || inner.Type != ""):
		code = inner.Type
		var c string
		if json.Unmarshal(inner.Code, &c) == nil && c != "" {
			code = c
		}
		if inner.Message == "" {
			return inner.Type, code
		}
		return inner.Message, code
	case env.Message != "":
		return env.Message, ""
	}
	if json.Unmarshal(env.Detail, &s) == nil && s != "" {
		return s, ""
	}
	var details []struct {
		Loc []any  `json:"loc"`
		Msg string `json:"msg"`
	}
	if json.Unmarshal(env.Detail, &details) == nil && len(details) > 0 {
		parts := make([]string, 0, len(details))
		for _, d := range details {
			loc := make([]string, len(d.Loc))
			for i, l := range d.Loc {
				loc[i] = fmt.Sprint(l)
			}
			parts = append(parts, strings.Join(loc, ".")+": "+d.Msg)
		}
		return strings.Join(parts, "; "), ""
	}
	return "", ""
}

// clip bounds an upstream message at a rune boundary.
func clip(s string) string {
	if len(s) <= maxErrorMessage {
		return s
	}
	cut := maxErrorMessage
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// badUpstream is a 2xx answer that is not a usable completion. It is
// transient: a server mid-restart or a proxy error page can produce one.
func badUpstream(msg string) *backend.Error {
	return &backend.Error{Type: backend.ErrAPI, Status: 502, Message: msg}
}

func invalid(msg string) *backend.Error {
	return &backend.Error{Type: backend.ErrInvalidRequest, Status: backend.StatusForType(backend.ErrInvalidRequest), Message: msg}
}

func invalidf(format string, args ...any) *backend.Error {
	return invalid(fmt.Sprintf(format, args...))
}

// unsupported names a field this backend cannot express.
func unsupported(field string) *backend.Error {
	return invalid(field + ": not supported by the openai backend")
}

// unsupportedValue names a field whose value this backend cannot express,
// such as a block type.
func unsupportedValue(field, value string) *backend.Error {
	return invalidf("%s: %q not supported by the openai backend", field, value)
}
