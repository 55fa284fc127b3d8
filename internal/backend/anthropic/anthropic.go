// Package anthropic is the batchd backend that runs each request on the real
// Anthropic Messages API (POST {BaseURL}/v1/messages), one synchronous call per
// batch request, with the server's own API key.
//
// Transport: the official Go SDK (anthropic-sdk-go/v2) builds the request —
// its URL and every header it sends (User-Agent, X-Stainless-*, Accept, the
// key, anthropic-version) — once, in New; each call then sends that request
// with the client's params byte for byte and takes the status, headers and
// raw body of the answer as they came. Building and executing the request
// through the SDK on every call cost about 15 µs of CPU and 70 allocations
// per call (BenchmarkDo: 24 µs with it, 9 µs without; NewRequestConfig,
// re-applying every option, two header copies, the middleware chain), a
// sixth of batchd's whole budget per request against a fast upstream
// (issue 7 item 13), for a request that is the same every time;
// TestSendsWhatTheSDKSends checks that the wire request stays the SDK's own. The SDK's typed Message is never involved, which keeps every
// field of the upstream Message (usage, stop_reason, content blocks of any
// type, fields newer than the SDK) exactly as it came, and leaves error
// classification to this package rather than to the SDK's error types,
// which cannot represent a non-JSON error body. Retrying is the
// dispatcher's (the SDK's retries are off: option.WithMaxRetries(0)); the
// SDK's environment defaults are off (option.WithoutEnvironmentDefaults) so
// ANTHROPIC_* variables of the server process cannot change where requests
// go or which key they carry; its OpenTelemetry spans are off so prompts
// never reach a tracer by accident. The key is sent as an x-api-key header
// set by hand, because the SDK's option.WithAPIKey sends "Authorization:
// Bearer" in this version.
package anthropic

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	sdk "github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"

	"github.com/batchd/batchd/internal/backend"
)

// Defaults for Config fields left zero.
const (
	DefaultName    = "anthropic"
	DefaultBaseURL = "https://api.anthropic.com"
	DefaultVersion = "2023-06-01"
	// DefaultTimeout matches the SDKs' own default: long enough for a
	// non-streaming request with a large max_tokens to finish.
	DefaultTimeout = 10 * time.Minute
)

const (
	// maxBody bounds how much of one response is held in memory. A Message is
	// far smaller; anything bigger is a broken upstream.
	maxBody = 64 << 20
	// messagesPath is relative so a BaseURL with a path prefix keeps it.
	messagesPath = "v1/messages"
)

// Config configures the backend.
type Config struct {
	// Name identifies the backend in logs and listings; default "anthropic".
	Name string
	// BaseURL is where the Messages API lives; requests go to
	// {BaseURL}/v1/messages. Default https://api.anthropic.com.
	BaseURL string
	// APIKey is the server's upstream key, sent as x-api-key. It is never the
	// client's key, and it never appears in an error or a log line.
	APIKey string
	// Version is the anthropic-version header; default 2023-06-01.
	Version string
	// Timeout bounds one request, from sending it to reading the whole answer;
	// default 10m.
	Timeout time.Duration
	// HTTPClient replaces the default client, mainly for tests: requests
	// go straight to its Transport (http.DefaultTransport if nil), so its
	// redirect policy, cookie jar and timeout are not used. Redirects are
	// never followed: net/http forwards custom headers such as x-api-key
	// across hosts on a redirect, and the Messages API never redirects.
	HTTPClient *http.Client
}

// Backend sends Messages requests to Anthropic. It holds no per-request
// state, so one value serves any number of concurrent calls.
type Backend struct {
	name    string
	timeout time.Duration
	rt      http.RoundTripper
	// url and header are the request the SDK builds, without a body; every
	// call sends them again. header is shared by every call without betas,
	// and read only: a RoundTripper must not modify a request. header and
	// redact are pointers so that printing a Backend, even with %#v, shows
	// addresses rather than the key they hold.
	url    *url.URL
	header *http.Header
	redact *strings.Replacer
}

var _ backend.Backend = (*Backend)(nil)

// New returns a backend for cfg. It fails on a missing key or an unusable
// base URL, so a misconfigured server stops at startup instead of failing
// every request with a 401 or a dial error.
func New(cfg Config) (*Backend, error) {
	if cfg.APIKey == "" {
		return nil, errors.New("anthropic backend: APIKey is required")
	}
	if strings.ContainsAny(cfg.APIKey, "\r\n") {
		return nil, errors.New("anthropic backend: APIKey contains a line break")
	}
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if cfg.BaseURL == "" {
		cfg.BaseURL = DefaultBaseURL
	}
	u, err := url.Parse(cfg.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("anthropic backend: BaseURL %q: want an absolute http or https URL", cfg.BaseURL)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("anthropic backend: BaseURL %q: must not carry credentials, a query or a fragment", u.Redacted())
	}
	if cfg.Version == "" {
		cfg.Version = DefaultVersion
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("anthropic backend: Timeout %s is negative", cfg.Timeout)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}

	// Requests go to the transport itself rather than through an
	// http.Client, which copies every request's headers for the redirects
	// it would follow; timeouts come from the context, so they also cover
	// reading the body and can be told apart from a caller's cancellation.
	var rt http.RoundTripper
	if cfg.HTTPClient != nil {
		rt = cfg.HTTPClient.Transport
	}
	if rt == nil && cfg.HTTPClient != nil {
		rt = http.DefaultTransport
	}
	if rt == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// Batches run many requests to one host at once; the default of 2
		// idle connections per host would redial for almost every request.
		t.MaxIdleConnsPerHost = 256
		rt = t
	}
	hc := http.Client{Transport: rt}

	client := sdk.NewClient(
		option.WithoutEnvironmentDefaults(),
		option.WithoutOpenTelemetry(),
		option.WithBaseURL(u.String()),
		option.WithHTTPClient(&hc),
		option.WithMaxRetries(0),
		option.WithHeader("X-Api-Key", cfg.APIKey),
		option.WithHeader("Anthropic-Version", cfg.Version),
	)
	req, err := sdkRequest(&client)
	if err != nil {
		return nil, fmt.Errorf("anthropic backend: build the request: %s", strings.ReplaceAll(err.Error(), cfg.APIKey, "[redacted]"))
	}
	return &Backend{
		name:    cfg.Name,
		timeout: cfg.Timeout,
		rt:      rt,
		url:     req.URL,
		header:  &req.Header,
		redact:  strings.NewReplacer(cfg.APIKey, "[redacted]"),
	}, nil
}

// errBuilt ends the one request sdkRequest has the SDK build, before it is
// sent.
var errBuilt = errors.New("request built")

// sdkRequest has the SDK build a Messages request and returns it unsent.
func sdkRequest(client *sdk.Client) (*http.Request, error) {
	var built *http.Request
	err := client.Post(context.Background(), messagesPath, nil, nil,
		option.WithRequestBody("application/json", []byte("{}")),
		option.WithMiddleware(func(req *http.Request, _ option.MiddlewareNext) (*http.Response, error) {
			built = req
			return nil, errBuilt
		}))
	if built == nil {
		return nil, fmt.Errorf("the SDK sent nothing: %w", err)
	}
	return built, nil
}

// Name identifies the backend in logs and backend listings.
func (b *Backend) Name() string { return b.name }

// String names the backend without its key, should a Backend be printed.
func (b *Backend) String() string { return "anthropic backend " + strconv.Quote(b.name) }

// exchange is the one HTTP response of a call.
type exchange struct {
	status int
	header http.Header
	body   []byte
}

// errTooLarge ends reading a response that exceeds maxBody.
var errTooLarge = fmt.Errorf("response body exceeds %d bytes", maxBody)

// Do sends one request and returns the upstream Message, compacted. Errors
// are *backend.Error, except that a cancelled ctx returns ctx.Err().
func (b *Backend) Do(ctx context.Context, call backend.Call) (json.RawMessage, error) {
	tctx := ctx
	if d, ok := ctx.Deadline(); !ok || time.Until(d) >= b.timeout {
		// Only a timeout that can end first needs a timer of its own (the
		// dispatcher's deadline for the attempt usually comes sooner).
		var cancel context.CancelFunc
		tctx, cancel = context.WithTimeout(ctx, b.timeout)
		defer cancel()
	}

	// What http.NewRequestWithContext makes, without parsing the URL again.
	body := call.Params
	req := (&http.Request{
		Method:        http.MethodPost,
		URL:           b.url,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        *b.header,
		Body:          io.NopCloser(bytes.NewReader(body)),
		GetBody:       func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil },
		ContentLength: int64(len(body)),
		Host:          strings.TrimSuffix(b.url.Host, ":"),
	}).WithContext(tctx)
	if betas := joinBetas(call.Betas); betas != "" {
		req.Header = b.header.Clone()
		req.Header.Set("Anthropic-Beta", betas)
	}
	res, err := b.rt.RoundTrip(req)
	if err != nil {
		return nil, b.failed(ctx, tctx, 0, nil, err)
	}
	if call.OnResponse != nil {
		call.OnResponse(res.StatusCode, res.Header)
	}
	data, err := io.ReadAll(io.LimitReader(res.Body, maxBody+1))
	_ = res.Body.Close()
	if err == nil && len(data) > maxBody {
		err = errTooLarge
	}
	if err != nil {
		return nil, b.failed(ctx, tctx, res.StatusCode, err, nil)
	}
	return b.response(&exchange{status: res.StatusCode, header: res.Header, body: data})
}

// failed classifies a call that got no whole response: the caller's
// context ending, our own timeout, a body that broke off (readErr, after a
// response with status), or no response at all (connErr).
func (b *Backend) failed(ctx, tctx context.Context, status int, readErr, connErr error) error {
	switch {
	case ctx.Err() != nil:
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return b.fail(backend.ErrTimeout, 0, 0, "upstream: request deadline passed before the response completed")
		}
		return ctx.Err()
	case tctx.Err() != nil:
		return b.fail(backend.ErrTimeout, 0, 0, "upstream: no complete response within "+b.timeout.String())
	case readErr != nil:
		return b.fail(backend.ErrAPI, status, 0, fmt.Sprintf("upstream: reading the %d response: %v", status, readErr))
	default:
		return b.fail(backend.ErrAPI, 0, 0, "upstream: "+connError(connErr))
	}
}

// response turns a fully read upstream response into the call's result.
func (b *Backend) response(ex *exchange) (json.RawMessage, error) {
	if ex.status >= 200 && ex.status < 300 {
		return b.message(ex)
	}
	retryAfter := backend.RetryAfter(ex.header, time.Now())
	if ex.status < 400 {
		msg := fmt.Sprintf("upstream: unexpected HTTP %d", ex.status)
		if loc := ex.header.Get("Location"); loc != "" {
			msg += " redirecting to " + loc + "; redirects are not followed"
		}
		return nil, b.fail(backend.ErrAPI, ex.status, retryAfter, msg)
	}

	typ, msg, _ := backend.UpstreamError(ex.status, ex.body)
	if msg == "" {
		msg = fmt.Sprintf("upstream: HTTP %d without an error envelope", ex.status)
	}
	return nil, b.fail(typ, ex.status, retryAfter, msg)
}

// message validates and compacts a 2xx body. A 2xx that is not a Message is
// treated as a transient upstream fault: retrying costs little and an
// unusable body must never reach the results.
func (b *Backend) message(ex *exchange) (json.RawMessage, error) {
	// The common case, a valid and compact Message, is checked without
	// decoding it (a decode into even two fields cost more than the rest
	// of the call); anything else is decoded, for its exact error.
	if backend.ValidJSON(ex.body) {
		if typ, id, compact, ok := messageHead(ex.body); ok && string(typ) == "message" && len(id) > 0 {
			if compact {
				return ex.body, nil
			}
			var buf bytes.Buffer
			buf.Grow(len(ex.body))
			if json.Compact(&buf, ex.body) == nil {
				return buf.Bytes(), nil
			}
		}
	}
	return b.decodeMessage(ex)
}

// messageHead reads the top-level "type" and "id" strings of body, which
// must be valid JSON, without decoding it (nor copying them: they are
// slices of body), and reports whether body is
// already compact (no white space outside strings). ok is false whenever
// that plain reading could differ from what encoding/json decodes: body is
// not an object, a key is escaped or matches "type" or "id" only in case,
// or their values are escaped or not strings.
func messageHead(body []byte) (typ, id []byte, compact, ok bool) {
	depth := 0
	compact = true
	key := false       // at depth 1, the next string is a key
	var pending []byte // at depth 1, the key whose value comes next
	// value handles the start of a value at depth 1; it reports false when
	// that value makes the plain reading unsafe.
	value := func(s []byte, isString, escaped bool) bool {
		k := pending
		pending = nil
		switch string(k) {
		case "type", "id":
			if !isString || escaped {
				return false
			}
			if string(k) == "type" {
				typ = s
			} else {
				id = s
			}
		}
		return true
	}
	for i := 0; i < len(body); i++ {
		switch c := body[i]; c {
		case ' ', '\t', '\n', '\r':
			compact = false
		case '{', '[':
			if depth == 0 && c != '{' {
				return nil, nil, false, false
			}
			if depth == 1 && pending != nil && !value(nil, false, false) {
				return nil, nil, false, false
			}
			depth++
			key = depth == 1
		case '}', ']':
			depth--
		case ',':
			key = depth == 1
		case ':':
		case '"':
			j, escaped := i+1, false
			for body[j] != '"' {
				if body[j] == '\\' {
					escaped = true
					j++
				}
				j++
			}
			s := body[i+1 : j]
			i = j
			switch {
			case depth == 0:
				return nil, nil, false, false
			case depth != 1:
			case key:
				key = false
				if escaped || (strings.EqualFold(string(s), "type") && string(s) != "type") || (strings.EqualFold(string(s), "id") && string(s) != "id") {
					return nil, nil, false, false
				}
				pending = s
			case pending != nil:
				if !value(s, true, escaped) {
					return nil, nil, false, false
				}
			}
		default: // a number or a literal
			if depth == 0 {
				return nil, nil, false, false
			}
			if depth == 1 && pending != nil && !value(nil, false, false) {
				return nil, nil, false, false
			}
		}
	}
	return typ, id, compact, true
}

// decodeMessage is message for the bodies messageHead cannot vouch for.
func (b *Backend) decodeMessage(ex *exchange) (json.RawMessage, error) {
	var head struct {
		Type *string `json:"type"`
		ID   *string `json:"id"`
	}
	if err := json.Unmarshal(ex.body, &head); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field == "" {
			return nil, b.fail(backend.ErrAPI, ex.status, 0, fmt.Sprintf("upstream: HTTP %d body is JSON %s, not a Message object", ex.status, typeErr.Value))
		}
		if typeErr != nil {
			return nil, b.fail(backend.ErrAPI, ex.status, 0, fmt.Sprintf("upstream: HTTP %d body is not a Message: field %s is %s", ex.status, typeErr.Field, typeErr.Value))
		}
		return nil, b.fail(backend.ErrAPI, ex.status, 0, fmt.Sprintf("upstream: HTTP %d body is not valid JSON: %v", ex.status, err))
	}
	if head.Type == nil || *head.Type != "message" {
		got := "missing"
		if head.Type != nil {
			got = strconv.Quote(*head.Type)
		}
		return nil, b.fail(backend.ErrAPI, ex.status, 0, fmt.Sprintf("upstream: HTTP %d body is not a Message: type is %s", ex.status, got))
	}
	if head.ID == nil || *head.ID == "" {
		return nil, b.fail(backend.ErrAPI, ex.status, 0, fmt.Sprintf("upstream: HTTP %d body is not a Message: id is missing", ex.status))
	}
	var buf bytes.Buffer
	buf.Grow(len(ex.body))
	if err := json.Compact(&buf, ex.body); err != nil {
		// Unreachable after a successful Unmarshal.
		return nil, b.fail(backend.ErrAPI, ex.status, 0, "upstream: compacting the message: "+err.Error())
	}
	return buf.Bytes(), nil
}

// fail builds an error whose message is scrubbed of the key, whatever the
// message came from (an upstream echoing headers, a transport error).
func (b *Backend) fail(typ string, status int, retryAfter time.Duration, msg string) *backend.Error {
	msg = b.redact.Replace(msg)
	return &backend.Error{Type: typ, Status: status, RetryAfter: retryAfter, Message: msg}
}

// joinBetas comma-joins the non-empty beta values, as the TS and Python SDKs
// send them.
func joinBetas(betas []string) string {
	var parts []string
	for _, s := range betas {
		if s = strings.TrimSpace(s); s != "" {
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, ",")
}

// connError describes a failure to get any response, without the request
// URL the transport wraps it in: the cause (refused, reset, EOF) is what an
// operator needs.
func connError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "connection closed before a response: " + err.Error()
	}
	return "connection failed: " + err.Error()
}
