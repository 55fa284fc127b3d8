// Package anthropic is the batchd backend that runs each request on the real
// Anthropic Messages API (POST {BaseURL}/v1/messages), one synchronous call per
// batch request, with the server's own API key.
//
// Transport: the official Go SDK (anthropic-sdk-go/v2), used only as a request
// builder and sender. Its typed Message is never involved: the client's params
// go out byte for byte (option.WithRequestBody), and the status, headers and
// raw body of the answer are taken in a middleware (option.WithMiddleware)
// before the SDK looks at them. That keeps every field of the upstream Message
// (usage, stop_reason, content blocks of any type, fields newer than the SDK)
// exactly as it came, and leaves error classification to this package rather
// than to the SDK's error types, which cannot represent a non-JSON error body.
// The SDK's own retries are off (option.WithMaxRetries(0)) because the
// dispatcher owns retrying; its environment defaults are off
// (option.WithoutEnvironmentDefaults) so ANTHROPIC_* variables of the server
// process cannot change where requests go or which key they carry; its
// OpenTelemetry spans are off so prompts never reach a tracer by accident. The
// key is sent as an x-api-key header set by hand, because the SDK's
// option.WithAPIKey sends "Authorization: Bearer" in this version.
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
	// HTTPClient replaces the default client, mainly for tests. It is copied,
	// not modified; redirects are refused unless it sets its own policy.
	HTTPClient *http.Client
}

// Backend sends Messages requests to Anthropic. It holds no per-request
// state, so one value serves any number of concurrent calls.
type Backend struct {
	name    string
	timeout time.Duration
	// client and redact are pointers so that printing a Backend, even with
	// %#v, shows addresses rather than the key they hold.
	client *sdk.Client
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

	var hc http.Client
	if cfg.HTTPClient != nil {
		hc = *cfg.HTTPClient
	} else {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// Batches run many requests to one host at once; the default of 2
		// idle connections per host would redial for almost every request.
		t.MaxIdleConnsPerHost = 256
		hc.Transport = t
	}
	if hc.CheckRedirect == nil {
		// net/http forwards custom headers such as x-api-key across hosts
		// on a redirect; the Messages API never redirects, so refuse.
		hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}
	// Timeouts come from the context so they also cover reading the body
	// and can be told apart from a caller's cancellation.
	hc.Timeout = 0

	client := sdk.NewClient(
		option.WithoutEnvironmentDefaults(),
		option.WithoutOpenTelemetry(),
		option.WithBaseURL(u.String()),
		option.WithHTTPClient(&hc),
		option.WithMaxRetries(0),
		option.WithHeader("X-Api-Key", cfg.APIKey),
		option.WithHeader("Anthropic-Version", cfg.Version),
	)
	return &Backend{
		name:    cfg.Name,
		timeout: cfg.Timeout,
		client:  &client,
		redact:  strings.NewReplacer(cfg.APIKey, "[redacted]"),
	}, nil
}

// Name identifies the backend in logs and backend listings.
func (b *Backend) Name() string { return b.name }

// String names the backend without its key, should a Backend be printed.
func (b *Backend) String() string { return "anthropic backend " + strconv.Quote(b.name) }

// exchange is what the middleware saw of the one HTTP response of a call.
type exchange struct {
	status int
	header http.Header
	body   []byte
	// got is set once a response arrived; done once its body was read whole.
	got, done bool
	readErr   error
}

// errTooLarge ends reading a response that exceeds maxBody.
var errTooLarge = fmt.Errorf("response body exceeds %d bytes", maxBody)

// Do sends one request and returns the upstream Message, compacted. Errors
// are *backend.Error, except that a cancelled ctx returns ctx.Err().
func (b *Backend) Do(ctx context.Context, call backend.Call) (json.RawMessage, error) {
	tctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()

	var ex exchange
	capture := func(req *http.Request, next option.MiddlewareNext) (*http.Response, error) {
		res, err := next(req)
		if err != nil || res == nil {
			return res, err
		}
		ex.got, ex.status, ex.header = true, res.StatusCode, res.Header
		if call.OnResponse != nil {
			call.OnResponse(res.StatusCode, res.Header.Clone())
		}
		body, err := io.ReadAll(io.LimitReader(res.Body, maxBody+1))
		_ = res.Body.Close()
		if err == nil && len(body) > maxBody {
			err = errTooLarge
		}
		if err != nil {
			ex.readErr = err
			return nil, err
		}
		ex.body, ex.done = body, true
		res.Body = io.NopCloser(bytes.NewReader(body))
		return res, nil
	}

	opts := []option.RequestOption{
		option.WithRequestBody("application/json", []byte(call.Params)),
		option.WithMiddleware(capture),
	}
	if betas := joinBetas(call.Betas); betas != "" {
		opts = append(opts, option.WithHeader("Anthropic-Beta", betas))
	}
	// The SDK's own error (it parses error bodies its way) is not needed when
	// the middleware read a whole response; otherwise it says what went wrong.
	sdkErr := b.client.Post(tctx, messagesPath, nil, nil, opts...)

	switch {
	case ex.done:
		return b.response(&ex)
	case ctx.Err() != nil:
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, b.fail(backend.ErrTimeout, 0, 0, "upstream: request deadline passed before the response completed")
		}
		return nil, ctx.Err()
	case tctx.Err() != nil:
		return nil, b.fail(backend.ErrTimeout, 0, 0, "upstream: no complete response within "+b.timeout.String())
	case ex.got:
		return nil, b.fail(backend.ErrAPI, ex.status, 0, fmt.Sprintf("upstream: reading the %d response: %v", ex.status, ex.readErr))
	case sdkErr != nil:
		return nil, b.fail(backend.ErrAPI, 0, 0, "upstream: "+connError(sdkErr))
	default:
		// Unreachable: the SDK returns no error only after a response.
		return nil, b.fail(backend.ErrAPI, 0, 0, "upstream: no response")
	}
}

// response turns a fully read upstream response into the call's result.
func (b *Backend) response(ex *exchange) (json.RawMessage, error) {
	retryAfter := backend.RetryAfter(ex.header, time.Now())
	if ex.status >= 200 && ex.status < 300 {
		return b.message(ex)
	}
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
