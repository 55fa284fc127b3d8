package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/spf13/cobra"
)

const (
	// defaultMaxRequests and defaultMaxBytes are the API's limits for one batch.
	defaultMaxRequests = 100_000
	defaultMaxBytes    = 256 << 20

	// The create body is bodyPrefix, the requests joined by commas, bodySuffix.
	bodyPrefix = `{"requests":[`
	bodySuffix = `]}`
)

// customIDPattern is the API's rule for custom_id.
var customIDPattern = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)

type submitFlags struct {
	conn        *connFlags
	stateDir    *string
	wait        bool
	interval    time.Duration
	template    string
	model       string
	maxTokens   int64
	idField     string
	maxRequests int
	maxBytes    int64
	estimate    bool
	yes         bool
}

func newSubmitCommand() *cobra.Command {
	f := &submitFlags{}
	cmd := &cobra.Command{
		Use:   "submit FILE.jsonl",
		Short: "Create batches from a JSONL file ('-' for stdin) and print their IDs",
		Long: `Create message batches from a JSONL file ('-' reads stdin).

Each line is a request in the API's own shape, {"custom_id": ..., "params": {...}}.
With --template, each line is instead any JSON record, rendered with Go's
text/template into the user message: --template 'Summarize: {{.text}}'
--model M --max-tokens N. The custom_id then comes from the record's --id-field
(default "id"), cleaned to [a-zA-Z0-9_-]{1,64}, or is req-<line number>.

Input larger than --max-requests or --max-bytes is split into several batches.
The whole input is checked before anything is created. The IDs of the created
batches are printed one per line on stdout; a copy of each batch's requests is
kept in <state dir>/batches/<id>.jsonl so that 'batchd retry' works against
servers without a retry endpoint.`,
		Args: argsNamed,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSubmit(cmd, f, args[0])
		},
	}
	f.conn = addConnFlags(cmd)
	f.stateDir = addStateDirFlag(cmd)
	fl := cmd.Flags()
	fl.BoolVar(&f.wait, "wait", false, "wait for the batches to end, like 'batchd wait'")
	fl.DurationVar(&f.interval, "interval", 2*time.Second, "poll interval for --wait")
	fl.StringVar(&f.template, "template", "", "text/template for the user message; lines are then arbitrary JSON records")
	fl.StringVar(&f.model, "model", "", "model, with --template")
	fl.Int64Var(&f.maxTokens, "max-tokens", 0, "max_tokens, with --template")
	fl.StringVar(&f.idField, "id-field", "id", "record field that gives the custom_id, with --template")
	fl.IntVar(&f.maxRequests, "max-requests", defaultMaxRequests, "most requests in one batch")
	fl.Int64Var(&f.maxBytes, "max-bytes", defaultMaxBytes, "largest create body of one batch, in bytes")
	fl.BoolVar(&f.estimate, "estimate", false, "print the tokens and cost the input would take first, and ask before submitting (on a terminal)")
	fl.BoolVar(&f.yes, "yes", false, "with --estimate, submit without asking")
	return cmd
}

func runSubmit(cmd *cobra.Command, f *submitFlags, input string) error {
	ctx, stop := signalContext(cmd)
	defer stop()

	enc, err := f.encoder(cmd)
	if err != nil {
		return err
	}
	if f.maxRequests < 1 {
		return errors.New("--max-requests must be at least 1")
	}
	if f.maxBytes < int64(len(bodyPrefix)+len(bodySuffix))+2 {
		return errors.New("--max-bytes is too small")
	}
	if f.wait && f.interval <= 0 {
		return errors.New("--interval must be positive")
	}
	stateDir, err := resolveStateDir(*f.stateDir)
	if err != nil {
		return err
	}
	dir, err := batchesDir(stateDir)
	if err != nil {
		return err
	}
	sweepPending(dir, time.Now().Add(-pendingMaxAge))
	sweepLocalCopies(dir, time.Now().Add(-localCopyMaxAge))
	ctx = withNotices(ctx, cmd.ErrOrStderr())

	in := cmd.InOrStdin()
	if input != "-" {
		file, err := os.Open(input)
		if err != nil {
			return fmt.Errorf("open input: %w", err)
		}
		defer file.Close()
		in = file
	}

	sp := newSplitter(dir, f.maxRequests, f.maxBytes)
	defer sp.cleanup()
	if err := splitInput(ctx, in, enc, sp); err != nil {
		return err
	}
	pending, err := sp.finish()
	if err != nil {
		return err
	}
	if len(pending) == 0 {
		return errors.New("no requests in input")
	}

	client := f.conn.client()
	if f.estimate {
		_, max, err := estimatePending(ctx, &client, pending, cmd.ErrOrStderr())
		if err != nil {
			return err
		}
		if !f.yes && !confirm(cmd.InOrStdin(), cmd.ErrOrStderr(), fmt.Sprintf("submit %s (at most $%.4f)?", batchCount(len(pending)), max)) {
			return nil
		}
	}
	ids, err := submitPending(ctx, &client, stateDir, pending, cmd.OutOrStdout(), cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	if !f.wait {
		return nil
	}
	return waitAll(ctx, &client, ids, f.interval, cmd.ErrOrStderr())
}

// encoder checks the template flags and returns what turns lines into requests.
func (f *submitFlags) encoder(cmd *cobra.Command) (requestEncoder, error) {
	if f.template == "" {
		for _, name := range []string{"model", "max-tokens", "id-field"} {
			if cmd.Flags().Changed(name) {
				return nil, fmt.Errorf("--%s only applies with --template", name)
			}
		}
		return rawEncoder{}, nil
	}
	if f.model == "" || f.maxTokens < 1 {
		return nil, errors.New("--template needs --model and --max-tokens")
	}
	return newTemplateEncoder(f.template, f.model, f.maxTokens, f.idField, cmd.Flags().Changed("id-field"))
}

// splitInput encodes every line of in and hands it to sp.
func splitInput(ctx context.Context, in io.Reader, enc requestEncoder, sp *splitter) error {
	var req bytes.Buffer
	return readLines(in, sp.maxBytes, func(lineNo int, line []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		req.Reset()
		id, err := enc.encode(&req, lineNo, line)
		if err != nil {
			return fmt.Errorf("line %d: %w", lineNo, err)
		}
		return sp.add(lineNo, id, req.Bytes())
	})
}

// readLines calls fn with each non-blank line of r (trimmed) and its 1-based
// number. It reuses one buffer, so fn must not keep the line, and it refuses
// lines longer than maxLen rather than buffer them.
func readLines(r io.Reader, maxLen int64, fn func(lineNo int, line []byte) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var buf []byte
	for lineNo := 1; ; lineNo++ {
		buf = buf[:0]
		var err error
		for {
			var chunk []byte
			chunk, err = br.ReadSlice('\n')
			if int64(len(buf)+len(chunk)) > maxLen+2 { // +2 for a CRLF
				return fmt.Errorf("line %d: longer than %d bytes", lineNo, maxLen)
			}
			buf = append(buf, chunk...)
			if !errors.Is(err, bufio.ErrBufferFull) {
				break
			}
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read input: %w", err)
		}
		if line := bytes.TrimSpace(buf); len(line) > 0 {
			if ferr := fn(lineNo, line); ferr != nil {
				return ferr
			}
		}
		if err != nil {
			return nil
		}
	}
}

// requestEncoder turns one input line into one element of the create body's
// "requests" array.
type requestEncoder interface {
	// encode writes the request for line, compact JSON on one line, to dst
	// and returns its custom_id.
	encode(dst *bytes.Buffer, lineNo int, line []byte) (string, error)
}

// rawEncoder takes lines that already are requests in the API's shape. It
// passes them through compacted, so that params fields this client does not
// know about still reach the server.
type rawEncoder struct{}

func (rawEncoder) encode(dst *bytes.Buffer, _ int, line []byte) (string, error) {
	var req struct {
		CustomID *string         `json:"custom_id"`
		Params   json.RawMessage `json:"params"`
	}
	if err := json.Unmarshal(line, &req); err != nil {
		return "", fmt.Errorf("not a request object: %w", err)
	}
	if req.CustomID == nil {
		return "", errors.New(`no "custom_id" (use --template for arbitrary records)`)
	}
	if !customIDPattern.MatchString(*req.CustomID) {
		return "", fmt.Errorf("custom_id %q does not match %s", *req.CustomID, customIDPattern)
	}
	if len(req.Params) == 0 || req.Params[0] != '{' {
		return "", errors.New(`"params" must be an object`)
	}
	if err := json.Compact(dst, line); err != nil {
		return "", fmt.Errorf("compact request: %w", err)
	}
	return *req.CustomID, nil
}

// templateEncoder renders arbitrary JSON records into single-turn requests.
type templateEncoder struct {
	tmpl            *template.Template
	model           string
	maxTokens       int64
	idField         string
	idFieldRequired bool
	text            bytes.Buffer
}

func newTemplateEncoder(text, model string, maxTokens int64, idField string, idFieldRequired bool) (*templateEncoder, error) {
	// missingkey=error: a misspelt field must fail the submit, not send
	// thousands of prompts containing "<no value>".
	tmpl, err := template.New("prompt").Option("missingkey=error").Funcs(template.FuncMap{
		"json": func(v any) (string, error) {
			b, err := json.Marshal(v)
			return string(b), err
		},
	}).Parse(text)
	if err != nil {
		return nil, fmt.Errorf("parse --template: %w", err)
	}
	return &templateEncoder{tmpl: tmpl, model: model, maxTokens: maxTokens, idField: idField, idFieldRequired: idFieldRequired}, nil
}

func (e *templateEncoder) encode(dst *bytes.Buffer, lineNo int, line []byte) (string, error) {
	record, err := decodeRecord(line)
	if err != nil {
		return "", err
	}
	id, err := deriveCustomID(record, e.idField, e.idFieldRequired, lineNo)
	if err != nil {
		return "", err
	}
	e.text.Reset()
	if err := e.tmpl.Execute(&e.text, record); err != nil {
		return "", fmt.Errorf("render template: %w", err)
	}
	req := anthropic.MessageBatchNewParamsRequest{
		CustomID: id,
		Params: anthropic.MessageBatchNewParamsRequestParams{
			Model:     anthropic.Model(e.model),
			MaxTokens: e.maxTokens,
			Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock(e.text.String()))},
		},
	}
	b, err := json.Marshal(req)
	if err != nil {
		return "", fmt.Errorf("encode request: %w", err)
	}
	dst.Write(b)
	return id, nil
}

// decodeRecord decodes one JSON value, keeping numbers as written so that
// templates and IDs see 12345678901234567890 rather than 1.2345678901234567e+19.
func decodeRecord(line []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	var record any
	if err := dec.Decode(&record); err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("not JSON: more than one value on the line")
	}
	return record, nil
}

// deriveCustomID takes the custom_id from the record's field, cleaned up, or
// falls back to req-<line number> when the field is absent and was not asked
// for explicitly.
func deriveCustomID(record any, field string, required bool, lineNo int) (string, error) {
	if m, ok := record.(map[string]any); ok {
		var raw string
		switch v := m[field].(type) {
		case string:
			raw = v
		case json.Number:
			raw = v.String()
		case bool:
			raw = strconv.FormatBool(v)
		case nil:
		default:
			return "", fmt.Errorf("field %q is not a string or a number", field)
		}
		if id := sanitizeCustomID(raw); id != "" {
			return id, nil
		}
	}
	if required {
		return "", fmt.Errorf("record has no %q field", field)
	}
	return "req-" + strconv.Itoa(lineNo), nil
}

// sanitizeCustomID maps s onto ^[a-zA-Z0-9_-]{0,64}$: every other character
// becomes '_' and the result is cut to 64 bytes. Distinct inputs can map to
// the same ID; the splitter rejects such duplicates.
func sanitizeCustomID(s string) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() == 64 {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// splitter writes requests, one compact JSON per line, into pending batch
// files in the state dir, starting a new file whenever the next request would
// take the batch past maxRequests or its create body past maxBytes. The files
// become the local copies once the batches exist, and each is also the source
// the create body is streamed from, so memory does not depend on input size.
type splitter struct {
	dir         string
	maxRequests int
	maxBytes    int64
	batches     []*pendingBatch
	// seen maps the custom_ids of the open batch to their lines, because the
	// API rejects a whole batch over one duplicate. It is bounded by maxRequests.
	seen map[string]int
}

// pendingBatch is one batch's worth of requests on disk.
type pendingBatch struct {
	path      string
	file      *os.File
	w         *bufio.Writer
	requests  int
	dataBytes int64 // file size: each request plus its newline
	firstLine int
	lastLine  int
	committed bool // renamed to its batch's local copy
}

// bodySize is the exact size of the create body: the newlines become commas,
// except the last, which goes.
func (p *pendingBatch) bodySize() int64 {
	return int64(len(bodyPrefix)) + p.dataBytes - 1 + int64(len(bodySuffix))
}

// body returns the create body, read from the file as it is sent.
func (p *pendingBatch) body() (io.Reader, io.Closer, error) {
	f, err := os.Open(p.path)
	if err != nil {
		return nil, nil, fmt.Errorf("open batch input: %w", err)
	}
	r := io.MultiReader(
		strings.NewReader(bodyPrefix),
		commaReader{io.LimitReader(f, p.dataBytes-1)},
		strings.NewReader(bodySuffix),
	)
	return r, f, nil
}

// commaReader turns the newline after each request into the comma between
// array elements. Compact JSON has no other raw newlines.
type commaReader struct{ r io.Reader }

func (c commaReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	for i, b := range p[:n] {
		if b == '\n' {
			p[i] = ','
		}
	}
	return n, err
}

func newSplitter(dir string, maxRequests int, maxBytes int64) *splitter {
	return &splitter{dir: dir, maxRequests: maxRequests, maxBytes: maxBytes, seen: map[string]int{}}
}

// add appends one request (compact JSON, no newline) from input line lineNo.
func (s *splitter) add(lineNo int, customID string, req []byte) error {
	size := int64(len(req)) + 1
	if int64(len(bodyPrefix)+len(bodySuffix))+size-1 > s.maxBytes {
		return fmt.Errorf("line %d: request is %d bytes, more than --max-bytes allows in a batch", lineNo, len(req))
	}
	cur := s.open()
	if cur == nil || cur.requests >= s.maxRequests || cur.bodySize()+size > s.maxBytes {
		if err := s.closeOpen(); err != nil {
			return err
		}
		var err error
		if cur, err = s.start(); err != nil {
			return err
		}
	}
	if prev, dup := s.seen[customID]; dup {
		return fmt.Errorf("line %d: custom_id %q is already used on line %d, in the same batch", lineNo, customID, prev)
	}
	s.seen[customID] = lineNo
	if cur.requests == 0 {
		cur.firstLine = lineNo
	}
	cur.lastLine = lineNo
	cur.requests++
	cur.dataBytes += size
	if _, err := cur.w.Write(req); err != nil {
		return fmt.Errorf("write batch input: %w", err)
	}
	if err := cur.w.WriteByte('\n'); err != nil {
		return fmt.Errorf("write batch input: %w", err)
	}
	return nil
}

// open returns the batch being filled, or nil.
func (s *splitter) open() *pendingBatch {
	if n := len(s.batches); n > 0 && s.batches[n-1].file != nil {
		return s.batches[n-1]
	}
	return nil
}

func (s *splitter) start() (*pendingBatch, error) {
	f, err := os.CreateTemp(s.dir, ".pending-*.jsonl")
	if err != nil {
		return nil, fmt.Errorf("create batch input: %w", err)
	}
	p := &pendingBatch{path: f.Name(), file: f, w: bufio.NewWriterSize(f, 256<<10)}
	s.batches = append(s.batches, p)
	clear(s.seen)
	return p, nil
}

func (s *splitter) closeOpen() error {
	p := s.open()
	if p == nil {
		return nil
	}
	err := p.w.Flush()
	if cerr := p.file.Close(); err == nil {
		err = cerr
	}
	p.file, p.w = nil, nil
	if err != nil {
		return fmt.Errorf("write batch input: %w", err)
	}
	return nil
}

// finish closes the last file and returns the batches, in input order.
func (s *splitter) finish() ([]*pendingBatch, error) {
	if err := s.closeOpen(); err != nil {
		return nil, err
	}
	return s.batches, nil
}

// cleanup removes the files of batches that were not created.
func (s *splitter) cleanup() {
	_ = s.closeOpen()
	for _, p := range s.batches {
		if !p.committed {
			_ = os.Remove(p.path)
		}
	}
}

// pendingMaxAge is when a pending file must be left over from a submit that
// was killed: no submit takes that long to read its input.
const pendingMaxAge = 24 * time.Hour

// sweepPending removes pending files last written before cutoff. A killed
// submit cannot clean up after itself, and other submits may be running, so
// only old files go.
func sweepPending(dir string, cutoff time.Time) {
	matches, _ := filepath.Glob(filepath.Join(dir, ".pending-*.jsonl"))
	for _, path := range matches {
		if fi, err := os.Stat(path); err == nil && fi.ModTime().Before(cutoff) {
			_ = os.Remove(path)
		}
	}
}

// submitPending creates one batch per pending file, in order, printing each
// ID on out as soon as it exists so that a later failure still leaves the
// caller knowing what was created.
func submitPending(ctx context.Context, client *anthropic.Client, stateDir string, pending []*pendingBatch, out, errOut io.Writer) ([]string, error) {
	var ids []string
	for i, p := range pending {
		batch, err := createBatch(ctx, client, p)
		if err != nil {
			if len(pending) > 1 {
				return ids, fmt.Errorf("create batch %d of %d (input lines %d-%d): %w", i+1, len(pending), p.firstLine, p.lastLine, concise(err))
			}
			return ids, fmt.Errorf("create batch: %w", concise(err))
		}
		ids = append(ids, batch.ID)
		if _, err := fmt.Fprintln(out, batch.ID); err != nil {
			return ids, err
		}
		fmt.Fprintf(errOut, "created %s: %s (input lines %d-%d)\n", batch.ID, plural(int64(p.requests), "request"), p.firstLine, p.lastLine)
		if err := keepLocalCopy(stateDir, batch.ID, p); err != nil {
			fmt.Fprintf(errOut, "warning: %v; 'batchd retry %s' will need the server's retry endpoint\n", err, batch.ID)
		}
	}
	return ids, nil
}

// keepLocalCopy renames the pending file to the batch's local copy.
func keepLocalCopy(stateDir, id string, p *pendingBatch) error {
	if !safeBatchID(id) {
		return fmt.Errorf("keep local copy: batch ID %q is not usable as a file name", id)
	}
	if err := os.Rename(p.path, localCopyPath(stateDir, id)); err != nil {
		return fmt.Errorf("keep local copy: %w", err)
	}
	p.committed = true
	return nil
}

// createBatch sends p's create body, streamed from its file with an exact
// Content-Length, through the SDK's create method.
func createBatch(ctx context.Context, client *anthropic.Client, p *pendingBatch) (*anthropic.MessageBatch, error) {
	size := p.bodySize()
	// The SDK sends a body it cannot rewind chunked; a length lets a server
	// refuse an oversized batch before reading it.
	withLength := option.WithMiddleware(func(req *http.Request, next option.MiddlewareNext) (*http.Response, error) {
		req.ContentLength = size
		return next(req)
	})
	var batch *anthropic.MessageBatch
	key := idempotencyKey()
	err := sendUnique(ctx, func() error {
		body, closer, err := p.body()
		if err != nil {
			return err
		}
		defer closer.Close()
		batch, err = client.Messages.Batches.New(ctx, anthropic.MessageBatchNewParams{},
			option.WithRequestBody("application/json", body), withLength, key)
		return err
	})
	if err != nil {
		return nil, err
	}
	return batch, nil
}
