// Package openai is batchd's backend for OpenAI-compatible Chat Completions
// servers: vLLM, Ollama, llama.cpp's server, LM Studio and OpenAI itself. It
// translates each Anthropic Messages request into a chat completion and the
// answer back into an Anthropic Message, so a batch can mix Claude with
// self-hosted models without clients noticing. Anything the Messages request
// asks for that Chat Completions cannot express is refused with an
// invalid_request_error naming the field, never silently dropped, because a
// batch result that quietly ignored part of its request is worse than an
// error; only pure hints such as cache_control are dropped.
package openai

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/batchd/batchd/internal/backend"
)

// Config configures one OpenAI-compatible upstream.
type Config struct {
	// Name identifies the backend in logs and listings, e.g. "local-vllm".
	// Empty means "openai".
	Name string
	// BaseURL is the API root that /chat/completions is appended to, e.g.
	// "http://127.0.0.1:8000/v1" for vLLM or "http://127.0.0.1:11434/v1" for
	// Ollama. It must not carry credentials: use APIKey, which is kept out of
	// logs and errors.
	BaseURL string
	// APIKey, when non-empty, is sent as "Authorization: Bearer <key>". It
	// never appears in errors, even when an upstream echoes it back.
	APIKey string
	// Timeout bounds one request, from sending it to reading the whole
	// answer. Zero means DefaultTimeout; a long generation on a busy local
	// server can legitimately take minutes.
	Timeout time.Duration
	// HTTPClient replaces the default client, mainly for tests. Its own
	// Timeout, if any, applies in addition to Timeout.
	HTTPClient *http.Client
}

// Requests go to the client's transport directly, without http.Client:
// it copies each request for the redirects it could follow, and Chat
// Completions APIs answer a POST without redirecting. An answer that does
// redirect (a 307 from http to https, a moved base URL) is sent again
// through the client, which follows it as it always did. A caller's client
// with a timeout, a cookie jar or a redirect policy of its own is always
// used whole.

// redirected reports whether http.Client would follow a response.
func redirected(resp *http.Response) bool {
	switch resp.StatusCode {
	case 301, 302, 303, 307, 308:
		return resp.Header.Get("Location") != ""
	}
	return false
}

// DefaultTimeout is the per-request limit when Config.Timeout is zero.
const DefaultTimeout = 10 * time.Minute

const (
	// maxResponseBody bounds a successful answer; a completion is text the
	// model generated, so anything near this is a broken upstream.
	maxResponseBody = 64 << 20
	// maxErrorBody bounds how much of an error answer is read: enough for
	// any JSON error envelope, little enough to ignore an HTML error page.
	maxErrorBody = 64 << 10
	// maxErrorMessage bounds the upstream text copied into an error, since
	// it ends up in every errored result line of the batch.
	maxErrorMessage = 1024
	// maxIdleConnsPerHost lets a dispatcher running many requests at once
	// reuse connections; net/http's default of 2 would reconnect constantly.
	maxIdleConnsPerHost = 256
)

// errTimedOut is the cause of the per-request context when Timeout expires,
// which tells our own deadline apart from the caller's.
var errTimedOut = errors.New("openai backend: request timeout")

// Backend sends Messages requests to one OpenAI-compatible server. It holds
// no per-request state, so one value may serve any number of concurrent
// calls.
type Backend struct {
	name     string
	endpoint string
	apiKey   string
	timeout  time.Duration
	client   *http.Client
	// rt, when set, is client's transport, sent to directly (see
	// redirected); url and header are the request every call sends, parsed
	// and built once. header is shared by every call and read only: a
	// RoundTripper must not modify a request.
	rt     http.RoundTripper
	url    *url.URL
	header http.Header
}

var _ backend.Backend = (*Backend)(nil)

// New returns a backend for cfg. It validates BaseURL up front so a typo in
// the server's configuration fails at startup, not on the first batch.
func New(cfg Config) (*Backend, error) {
	endpoint, err := chatEndpoint(cfg.BaseURL)
	if err != nil {
		return nil, err
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("openai backend: timeout: must not be negative, got %s", cfg.Timeout)
	}
	b := &Backend{
		name:     cfg.Name,
		endpoint: endpoint,
		apiKey:   cfg.APIKey,
		timeout:  cfg.Timeout,
		client:   cfg.HTTPClient,
	}
	if b.name == "" {
		b.name = "openai"
	}
	if b.timeout == 0 {
		b.timeout = DefaultTimeout
	}
	if b.client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = maxIdleConnsPerHost
		b.client = &http.Client{Transport: tr}
	}
	if c := b.client; c.Timeout == 0 && c.Jar == nil && c.CheckRedirect == nil {
		b.rt = cmp.Or[http.RoundTripper](c.Transport, http.DefaultTransport)
	}
	if b.url, err = url.Parse(endpoint); err != nil {
		return nil, fmt.Errorf("openai backend: base URL: %v", err)
	}
	b.header = http.Header{"Content-Type": {"application/json"}, "Accept": {"application/json"}, "User-Agent": {"batchd"}}
	if b.apiKey != "" {
		b.header.Set("Authorization", "Bearer "+b.apiKey)
	}
	return b, nil
}

// chatEndpoint checks baseURL and returns the chat completions URL under it.
func chatEndpoint(baseURL string) (string, error) {
	if baseURL == "" {
		return "", errors.New("openai backend: base URL: required, e.g. http://127.0.0.1:8000/v1")
	}
	u, err := url.Parse(baseURL)
	if err != nil {
		// url.Error quotes the input, which is safe: credentials are refused
		// below and cannot be in a URL that does not parse.
		return "", fmt.Errorf("openai backend: base URL: %v", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("openai backend: base URL: scheme must be http or https, got %q", u.Scheme)
	case u.Host == "":
		return "", errors.New("openai backend: base URL: host required")
	case u.User != nil:
		return "", errors.New("openai backend: base URL: must not contain credentials; set the API key instead")
	case u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return "", errors.New("openai backend: base URL: must not have a query or fragment")
	}
	return strings.TrimRight(u.String(), "/") + "/chat/completions", nil
}

// Name identifies the backend in logs and backend listings.
func (b *Backend) Name() string { return b.name }

// Do translates call into a chat completion request, sends it and translates
// the answer back. call.Betas are not forwarded: they have no meaning to an
// OpenAI-compatible server, and every feature they enable shows up as a
// request field that translation accepts or refuses on its own.
func (b *Backend) Do(ctx context.Context, call backend.Call) (json.RawMessage, error) {
	req, stops, err := translate(call)
	if err != nil {
		return nil, err
	}
	body, ok := req.appendJSON(make([]byte, 0, 64+len(call.Params)))
	if !ok {
		var err error
		if body, err = encode(req); err != nil {
			return nil, fmt.Errorf("encode chat request: %w", err)
		}
	}

	parent := ctx
	if d, ok := ctx.Deadline(); !ok || time.Until(d) >= b.timeout {
		// Only a timeout that can end first needs a timer of its own (the
		// dispatcher's deadline for the attempt usually comes sooner).
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, b.timeout, errTimedOut)
		defer cancel()
	}
	resp, err := b.send(ctx, body)
	if err != nil {
		return nil, b.transportError(parent, ctx, err)
	}
	defer resp.Body.Close()
	if call.OnResponse != nil {
		call.OnResponse(resp.StatusCode, resp.Header)
	}

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		// A body that fails to arrive only costs the message: the status
		// alone classifies the failure.
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		return nil, b.statusError(resp.StatusCode, resp.Header, data)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody+1))
	if err != nil {
		return nil, b.transportError(parent, ctx, err)
	}
	if len(data) > maxResponseBody {
		return nil, badUpstream(fmt.Sprintf("read completion: body larger than %d MiB", maxResponseBody>>20))
	}
	msg, err := convert(data, req.Model, stops)
	if err != nil {
		return nil, b.redactError(err)
	}
	return msg, nil
}

// send posts body to the endpoint and returns the answer's status and
// headers, its body unread.
func (b *Backend) send(ctx context.Context, body []byte) (*http.Response, error) {
	if b.rt == nil {
		// A caller's client may write to a request's headers (a cookie
		// jar does): it gets a copy of them.
		req := b.request(ctx, body)
		req.Header = b.header.Clone()
		return b.client.Do(req)
	}
	req := b.request(ctx, body)
	resp, err := b.rt.RoundTrip(req)
	if err != nil {
		// As http.Client words it, so errors read the same either way.
		return nil, &url.Error{Op: "Post", URL: b.endpoint, Err: err}
	}
	if redirected(resp) {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		return b.client.Do(b.request(ctx, body))
	}
	return resp, nil
}

// request is what http.NewRequestWithContext makes of the endpoint and
// body, without parsing the URL and building the headers again.
func (b *Backend) request(ctx context.Context, body []byte) *http.Request {
	req := &http.Request{
		Method:        http.MethodPost,
		URL:           b.url,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        b.header,
		Body:          io.NopCloser(bytes.NewReader(body)),
		GetBody:       func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil },
		ContentLength: int64(len(body)),
		Host:          strings.TrimSuffix(b.url.Host, ":"), // as NewRequest sets it
	}
	return req.WithContext(ctx)
}

// transportError classifies a failure to get or read an answer. The caller
// giving up is reported as its own context error, not blamed on the
// upstream; our Timeout expiring is a transient timeout_error; anything else
// (refused connection, reset, bad TLS) is a transient api_error.
func (b *Backend) transportError(parent, ctx context.Context, err error) error {
	if perr := parent.Err(); perr != nil {
		return perr
	}
	if errors.Is(context.Cause(ctx), errTimedOut) {
		return &backend.Error{Type: backend.ErrTimeout, Status: 504,
			Message: fmt.Sprintf("upstream %s did not answer within %s", b.name, b.timeout)}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &backend.Error{Type: backend.ErrTimeout, Status: 504,
			Message: b.redact(fmt.Sprintf("upstream %s timed out: %v", b.name, err))}
	}
	return &backend.Error{Type: backend.ErrAPI, Status: 502,
		Message: b.redact(fmt.Sprintf("upstream %s unreachable: %v", b.name, err))}
}

// redact removes the API key from text that came from the upstream or the
// network stack; a misbehaving server may echo the Authorization header.
func (b *Backend) redact(s string) string {
	if b.apiKey == "" {
		return s
	}
	return strings.ReplaceAll(s, b.apiKey, "[redacted]")
}

func (b *Backend) redactError(err error) error {
	var be *backend.Error
	if errors.As(err, &be) {
		c := *be
		c.Message = b.redact(c.Message)
		return &c
	}
	return err
}

// encode marshals v compactly without HTML escaping, so text keeps its <, >
// and & as the model and the client wrote them.
func encode(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
