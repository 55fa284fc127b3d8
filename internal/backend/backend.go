// Package backend defines how batchd runs one Messages request on a model
// provider, and routes each request to a backend by its model.
package backend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"
)

// Call is one Messages request to run.
type Call struct {
	// Model is params.model, already extracted so backends and the router
	// need not parse Params again.
	Model string
	// MaxTokens is params.max_tokens when the caller extracted it (the
	// dispatcher does, for the rate limiter's token estimate), 0 when not.
	MaxTokens int64
	// Params is the Messages API request body exactly as the client sent it.
	Params json.RawMessage
	// Attempt is 1 for the first try and grows with every retry.
	Attempt int
	// Betas are the anthropic-beta values the batch was created with, for
	// backends that forward them.
	Betas []string
	// OnResponse, when set, is called by HTTP backends with the status and
	// headers of every upstream response (errors included), so the
	// dispatcher's rate control can read anthropic-ratelimit-* headers.
	// header is the response's own, not a copy: read it, never modify it.
	OnResponse func(status int, header http.Header)
	// OnSend, when set, is called by a backend that waits before sending
	// (the rate limiter) each time the wait ends and the call goes out, so
	// the caller can tell the wait from the call.
	OnSend func()
	// Withdrawn, when set, is closed once the request must no longer be
	// sent (its batch was canceled or expired). A backend that waits
	// before sending (for rate limits) stops waiting then and returns
	// ErrWithdrawn; a call already sent runs to its end.
	Withdrawn <-chan struct{}
}

// ErrWithdrawn is what Do returns for a call withdrawn before it was sent.
var ErrWithdrawn = errors.New("withdrawn before it was sent")

// Backend runs single Messages requests. Implementations must be safe for
// concurrent use and must return promptly when ctx is done.
type Backend interface {
	// Name identifies the backend in logs and listings.
	Name() string
	// Do runs one request and returns the Anthropic Message JSON. A failure is
	// returned as *Error when its Anthropic error type is known; any other
	// error is treated as a transient api_error.
	//
	// A Message returned with a nil error must be valid JSON: the
	// dispatcher writes it into the results as it is, without checking it
	// again (a second json.Valid of every reply cost 2–3 µs a request). A
	// backend relaying an upstream's bytes validates them (anthropic); one
	// that builds the Message itself does so by construction (openai, sim).
	Do(ctx context.Context, call Call) (json.RawMessage, error)
}

// Anthropic error types, as they appear in error envelopes.
const (
	ErrInvalidRequest  = "invalid_request_error"
	ErrAuthentication  = "authentication_error"
	ErrBilling         = "billing_error"
	ErrPermission      = "permission_error"
	ErrNotFound        = "not_found_error"
	ErrRequestTooLarge = "request_too_large"
	ErrRateLimit       = "rate_limit_error"
	ErrAPI             = "api_error"
	ErrTimeout         = "timeout_error"
	ErrOverloaded      = "overloaded_error"
)

// StatusForType is the HTTP status Anthropic answers with for an error type.
func StatusForType(typ string) int {
	switch typ {
	case ErrInvalidRequest:
		return 400
	case ErrAuthentication:
		return 401
	case ErrBilling:
		return 402
	case ErrPermission:
		return 403
	case ErrNotFound:
		return 404
	case ErrRequestTooLarge:
		return 413
	case ErrRateLimit:
		return 429
	case ErrTimeout:
		return 504
	case ErrOverloaded:
		return 529
	default:
		return 500
	}
}

// Error is a failed call with an Anthropic error type.
type Error struct {
	// Type is the Anthropic error type, e.g. "overloaded_error".
	Type string
	// Message is the human-readable reason, as the upstream gave it.
	Message string
	// Status is the HTTP status the upstream answered with, 0 if none.
	Status int
	// RetryAfter is how long the upstream asked us to wait, 0 if it did not.
	RetryAfter time.Duration
}

// Error implements error.
func (e *Error) Error() string { return fmt.Sprintf("%s: %s", e.Type, e.Message) }

// Transient reports whether trying again later may succeed.
func (e *Error) Transient() bool { return IsTransientType(e.Type) }

// IsTransientType reports whether an Anthropic error type is worth retrying.
func IsTransientType(typ string) bool {
	switch typ {
	case ErrRateLimit, ErrOverloaded, ErrAPI, ErrTimeout:
		return true
	}
	return false
}

// AsError turns any error from Do into an *Error, classifying unknown errors
// (connection resets, context deadlines) as transient.
func AsError(err error) *Error {
	var be *Error
	if errors.As(err, &be) {
		return be
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Type: ErrTimeout, Message: "request timed out", Status: 504}
	}
	return &Error{Type: ErrAPI, Message: err.Error(), Status: 500}
}

// Route sends models matching Pattern (a path.Match glob such as "claude-*")
// to Backend.
type Route struct {
	Pattern string
	Backend Backend
}

// Router picks a backend by model, first matching route wins.
type Router struct {
	routes []Route
}

// NewRouter returns a router over routes, tried in order.
func NewRouter(routes ...Route) *Router { return &Router{routes: routes} }

// Backends lists each distinct backend once, in route order.
func (r *Router) Backends() []Backend {
	var out []Backend
	seen := map[Backend]bool{}
	for _, rt := range r.routes {
		if !seen[rt.Backend] {
			seen[rt.Backend] = true
			out = append(out, rt.Backend)
		}
	}
	return out
}

// Lookup returns the backend serving model, or an invalid_request_error
// naming the model when none does.
func (r *Router) Lookup(model string) (Backend, error) {
	for _, rt := range r.routes {
		if ok, _ := path.Match(rt.Pattern, model); ok {
			return rt.Backend, nil
		}
	}
	return nil, &Error{Type: ErrInvalidRequest, Status: 400, Message: fmt.Sprintf("model: no backend serves %q", model)}
}

// MaxRetryAfter bounds what an upstream may ask us to wait, so a broken
// header cannot park a request for days.
const MaxRetryAfter = time.Hour

// RetryAfter reads retry-after-ms (preferred, as the SDKs do) or
// retry-after in seconds or as an HTTP date, bounded to [0, MaxRetryAfter].
// An unparsable header counts as absent.
func RetryAfter(h http.Header, now time.Time) time.Duration {
	if v := strings.TrimSpace(h.Get("Retry-After-Ms")); v != "" {
		if ms, err := strconv.ParseFloat(v, 64); err == nil {
			return durationOf(ms, time.Millisecond)
		}
	}
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil {
		return durationOf(s, time.Second)
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), MaxRetryAfter)
	}
	return 0
}

func durationOf(n float64, unit time.Duration) time.Duration {
	if n != n || n <= 0 { // NaN or not in the future
		return 0
	}
	if n*float64(unit) >= float64(MaxRetryAfter) {
		return MaxRetryAfter
	}
	return time.Duration(n * float64(unit))
}

// UpstreamError names an Anthropic API error answer: the error type and
// message from its envelope ({"type":"error","error":{"type","message"}}),
// except that the HTTP status decides whether it is worth retrying — the
// envelope only names the error within that class, so a 5xx is never made
// permanent, nor a 4xx retried, on the body's word alone. msg is "" when
// the body is no envelope.
func UpstreamError(status int, body []byte) (typ, msg string, transient bool) {
	fallback, transient := classifyStatus(status)
	typ, msg = parseEnvelope(body)
	if typ == "" || IsTransientType(typ) != transient {
		typ = fallback
	}
	return typ, msg, transient
}

// classifyStatus maps an HTTP error status to the Anthropic error type used
// when the body names none, and whether it is worth retrying.
func classifyStatus(status int) (typ string, transient bool) {
	switch status {
	case 400:
		return ErrInvalidRequest, false
	case 401:
		return ErrAuthentication, false
	case 402:
		return ErrBilling, false
	case 403:
		return ErrPermission, false
	case 404:
		return ErrNotFound, false
	case 408:
		return ErrTimeout, true
	case 413:
		return ErrRequestTooLarge, false
	case 429:
		return ErrRateLimit, true
	case 529:
		return ErrOverloaded, true
	}
	if status >= 500 {
		return ErrAPI, true
	}
	// Anthropic documents invalid_request_error for "other 4XX status codes".
	return ErrInvalidRequest, false
}

// parseEnvelope reads {"type":"error","error":{"type","message"}}; it
// returns empty strings for anything else.
func parseEnvelope(body []byte) (typ, msg string) {
	var env struct {
		Type  string `json:"type"`
		Error *struct {
			Type    string `json:"type"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &env) != nil || env.Type != "error" || env.Error == nil {
		return "", ""
	}
	return env.Error.Type, env.Error.Message
}
