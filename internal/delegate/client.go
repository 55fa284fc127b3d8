package delegate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/batchd/batchd/internal/backend"
	"github.com/batchd/batchd/internal/store"
)

// client speaks the upstream's Message Batches API. It uses net/http rather
// than the SDK the anthropic backend uses because both directions stream: the
// create body is written while it is sent (an upstream batch may be 256 MB)
// and the results are read line by line. The same rules hold as for the
// anthropic backend: the key is set by hand as x-api-key, no environment
// variable is read, nothing is retried here (the delegator owns retrying)
// and redirects are refused, so the key never follows one to another host.
type client struct {
	base    string // without a trailing slash
	key     string
	version string
	hc      *http.Client
	redact  *strings.Replacer
}

func newClient(baseURL, key, version string, hc *http.Client) (*client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("base_url %q: want an absolute http or https URL", baseURL)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("base_url %q: must not carry credentials, a query or a fragment", u.Redacted())
	}
	var c http.Client
	if hc != nil {
		c = *hc
	} else {
		c.Transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	if c.CheckRedirect == nil {
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}
	return &client{base: strings.TrimSuffix(u.String(), "/"), key: key, version: version, hc: &c,
		redact: strings.NewReplacer(key, "[redacted]")}, nil
}

// upstreamBatch is the part of a Message Batch object the delegator reads.
type upstreamBatch struct {
	ID               string `json:"id"`
	ProcessingStatus string `json:"processing_status"`
}

// do sends one request and returns the response when it is a 2xx; any other
// answer, or none, is a *backend.Error whose Transient says whether trying
// again may help.
func (c *client) do(ctx context.Context, method, path string, body io.Reader, size int64, betas ...string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+"/v1/messages/batches"+path, body)
	if err != nil {
		return nil, &backend.Error{Type: backend.ErrInvalidRequest, Message: "upstream: " + c.redact.Replace(err.Error())}
	}
	if body != nil {
		req.ContentLength = size
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("X-Api-Key", c.key)
	req.Header.Set("Anthropic-Version", c.version)
	if len(betas) > 0 {
		req.Header.Set("Anthropic-Beta", strings.Join(betas, ","))
	}
	res, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, &backend.Error{Type: backend.ErrAPI, Message: "upstream: connection failed: " + c.redact.Replace(err.Error())}
	}
	if res.StatusCode >= 200 && res.StatusCode < 300 {
		return res, nil
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	// The same rules as the anthropic backend: the status decides whether
	// to retry.
	typ, msg, _ := backend.UpstreamError(res.StatusCode, data)
	if msg == "" {
		msg = "HTTP " + strconv.Itoa(res.StatusCode)
	}
	return nil, &backend.Error{Type: typ, Status: res.StatusCode, Message: "upstream: " + c.redact.Replace(msg)}
}

// create sends one upstream batch, streaming its body from reqs, with
// their batch's anthropic-beta values (an upstream batch never mixes two
// of our batches).
func (c *client) create(ctx context.Context, items *os.File, size int64, betas []string) (*upstreamBatch, error) {
	res, err := c.do(ctx, http.MethodPost, "", createBody(items, size), size, betas...)
	if err != nil {
		return nil, err
	}
	return c.decode(res)
}

func (c *client) get(ctx context.Context, id string) (*upstreamBatch, error) {
	res, err := c.do(ctx, http.MethodGet, "/"+url.PathEscape(id), nil, 0)
	if err != nil {
		return nil, err
	}
	return c.decode(res)
}

func (c *client) cancel(ctx context.Context, id string) (*upstreamBatch, error) {
	res, err := c.do(ctx, http.MethodPost, "/"+url.PathEscape(id)+"/cancel", nil, 0)
	if err != nil {
		return nil, err
	}
	return c.decode(res)
}

// results opens the JSONL results stream of an ended upstream batch. A
// download may rightly take long, so it has no deadline of its own; what
// bounds it is idle: a wait for its answer, or for any of its bytes, of
// longer than that gives up (the stream then fails with the context's
// error), so an upstream that stalls mid-stream cannot hold the batch.
func (c *client) results(ctx context.Context, id string, idle time.Duration) (io.ReadCloser, error) {
	ctx, cancel := context.WithCancel(ctx)
	watch := time.AfterFunc(idle, cancel)
	res, err := c.do(ctx, http.MethodGet, "/"+url.PathEscape(id)+"/results", nil, 0)
	if err != nil {
		watch.Stop()
		cancel()
		return nil, err
	}
	watch.Stop()
	return &idleBody{body: res.Body, idle: idle, watch: watch, cancel: cancel}, nil
}

// idleBody fails a body's read that waits longer than idle for bytes.
type idleBody struct {
	body   io.ReadCloser
	idle   time.Duration
	watch  *time.Timer // cancels the request's context when it fires
	cancel context.CancelFunc
}

func (b *idleBody) Read(p []byte) (int, error) {
	b.watch.Reset(b.idle)
	n, err := b.body.Read(p)
	b.watch.Stop()
	return n, err
}

func (b *idleBody) Close() error {
	b.watch.Stop()
	b.cancel()
	return b.body.Close()
}

func (c *client) decode(res *http.Response) (*upstreamBatch, error) {
	defer res.Body.Close()
	var b upstreamBatch
	if err := json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&b); err != nil || b.ID == "" {
		return nil, &backend.Error{Type: backend.ErrAPI, Status: res.StatusCode, Message: fmt.Sprintf("upstream: HTTP %d body is not a message batch", res.StatusCode)}
	}
	return &b, nil
}

// customID maps our request id to the upstream custom_id; it fits the
// upstream's ^[a-zA-Z0-9_-]{1,64}$ whatever the client's custom_id was.
func customID(id int64) string { return "r" + strconv.FormatInt(id, 10) }

// requestID is customID's inverse; ok is false for anything else.
func requestID(customID string) (int64, bool) {
	if !strings.HasPrefix(customID, "r") {
		return 0, false
	}
	id, err := strconv.ParseInt(customID[1:], 10, 64)
	return id, err == nil
}

const (
	bodyHead = `{"requests":[`
	bodyTail = `]}`
	itemHead = `{"custom_id":"`
	itemMid  = `","params":`
	itemTail = `}`
)

// itemSize is the number of bytes request c takes in a create body, comma
// included.
func itemSize(c store.ClaimedRequest) int64 {
	return int64(len(itemHead)+len(customID(c.ID))+len(itemMid)+len(c.Params)+len(itemTail)) + 1
}

// createBody is {"requests":[…]} around the items spooled to a file, of
// size bytes in all; each call reads the file from its start, so a retried
// create sends the same bytes.
func createBody(items *os.File, size int64) io.Reader {
	return io.MultiReader(strings.NewReader(bodyHead), io.NewSectionReader(items, 0, size-int64(len(bodyHead)+len(bodyTail))),
		strings.NewReader(bodyTail))
}

// appendItem writes one request of a create body (params exactly as
// stored), after a comma unless it is the first.
func appendItem(w io.Writer, c store.ClaimedRequest, first bool) error {
	buf := make([]byte, 0, 64)
	if !first {
		buf = append(buf, ',')
	}
	buf = append(buf, itemHead...)
	buf = append(buf, customID(c.ID)...)
	buf = append(buf, itemMid...)
	if _, err := w.Write(buf); err != nil {
		return err
	}
	if _, err := w.Write(c.Params); err != nil {
		return err
	}
	_, err := w.Write([]byte(itemTail))
	return err
}
