package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/spf13/cobra"
)

func newResultsCommand() *cobra.Command {
	var (
		output  string
		format  string
		partial bool
	)
	cmd := &cobra.Command{
		Use:   "results ID",
		Short: "Stream a batch's results as JSONL, text or CSV",
		Long: `Stream a batch's results to stdout or, with -o, to a file that appears
only once complete.

Formats: jsonl (the server's lines, copied through as they are), text (custom_id, type and the
message text or error message, tab-separated, with tabs, newlines and
backslashes escaped), csv (custom_id,result_type,stop_reason,input_tokens,
output_tokens,text,error_type,error_message).

--partial asks a batchd server for the results so far of a batch that is still
running; other servers ignore or reject it.`,
		Args: argsNamed,
	}
	conn := addConnFlags(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "", "write to FILE (atomically) instead of stdout")
	cmd.Flags().StringVar(&format, "format", "jsonl", "jsonl, text or csv")
	cmd.Flags().BoolVar(&partial, "partial", false, "results so far of a running batch (batchd only)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx, stop := signalContext(cmd)
		defer stop()
		if _, err := newResultFormatter(format, io.Discard); err != nil {
			return err // before creating any output file
		}
		client := conn.client()
		var opts []option.RequestOption
		if partial {
			opts = append(opts, option.WithQuery("partial", "true"))
		}
		write := func(w io.Writer) error {
			if format == "jsonl" {
				// The SDK decodes every line into a struct, six times the
				// cost of the download: lines are copied through instead.
				_, err := copyResultLines(ctx, &client, args[0], w, opts...)
				return partialHint(err, partial)
			}
			f, err := newResultFormatter(format, w)
			if err != nil {
				return err
			}
			_, err = streamResults(ctx, &client, args[0], f, opts...)
			return partialHint(err, partial)
		}
		if output == "" {
			return write(cmd.OutOrStdout())
		}
		return writeFileAtomic(output, write)
	}
	return cmd
}

// partialHint rewrites the server's "results are not ready" 400, which
// names the API's partial=true, to name this command's --partial.
func partialHint(err error, partial bool) error {
	if err == nil || partial || apiStatus(err) != http.StatusBadRequest {
		return err
	}
	var apiErr *anthropic.Error
	if errors.As(err, &apiErr) && strings.Contains(apiErr.Message, "partial=true") {
		return errors.New(strings.Replace(apiErr.Message, "partial=true", "--partial for the results so far", 1))
	}
	return err
}

// copyResultLines streams the results of batch id to w line by line, as the
// server sent them, and returns how many lines there were. Blank lines are
// dropped and a last line without "\n" gets one, so that the output is
// always valid JSONL; memory holds one line at a time.
func copyResultLines(ctx context.Context, client *anthropic.Client, id string, w io.Writer, opts ...option.RequestOption) (int, error) {
	var res *http.Response
	opts = append([]option.RequestOption{option.WithHeader("Accept", "application/x-jsonl")}, opts...)
	path := "v1/messages/batches/" + url.PathEscape(id) + "/results"
	if err := client.Get(ctx, path, nil, &res, opts...); err != nil {
		return 0, fmt.Errorf("read results of %s: %w", id, concise(err))
	}
	defer res.Body.Close()
	in := bufio.NewReaderSize(res.Body, 256<<10)
	out := bufio.NewWriterSize(w, 256<<10)
	n := 0
	for {
		line, err := in.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A result longer than the buffer: copy it in pieces.
			if _, werr := out.Write(line); werr != nil {
				return n, werr
			}
			for errors.Is(err, bufio.ErrBufferFull) {
				line, err = in.ReadSlice('\n')
				if _, werr := out.Write(line); werr != nil {
					return n, werr
				}
			}
			if err == nil {
				n++
				continue
			}
			if errors.Is(err, io.EOF) {
				n++
				if werr := out.WriteByte('\n'); werr != nil {
					return n, werr
				}
				break
			}
			return n, fmt.Errorf("read results of %s: %w", id, err)
		}
		if len(bytes.TrimSpace(line)) > 0 {
			if _, werr := out.Write(line); werr != nil {
				return n, werr
			}
			if line[len(line)-1] != '\n' {
				if werr := out.WriteByte('\n'); werr != nil {
					return n, werr
				}
			}
			n++
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return n, fmt.Errorf("read results of %s: %w", id, err)
		}
	}
	return n, out.Flush()
}

// streamResults writes each result of batch id to f as it arrives and
// returns how many there were. Memory does not depend on the result count.
func streamResults(ctx context.Context, client *anthropic.Client, id string, f resultFormatter, opts ...option.RequestOption) (int, error) {
	return eachResult(ctx, client, id, func(r *anthropic.MessageBatchIndividualResponse) error {
		return f.write(r)
	}, f.flush, opts...)
}

// eachResult calls fn for every result line of batch id, then end.
func eachResult(ctx context.Context, client *anthropic.Client, id string, fn func(*anthropic.MessageBatchIndividualResponse) error, end func() error, opts ...option.RequestOption) (int, error) {
	stream := client.Messages.Batches.ResultsStreaming(ctx, id, anthropic.MessageBatchResultsParams{}, opts...)
	defer stream.Close()
	n := 0
	for stream.Next() {
		r := stream.Current()
		if err := fn(&r); err != nil {
			return n, err
		}
		n++
	}
	if err := stream.Err(); err != nil {
		return n, fmt.Errorf("read results of %s: %w", id, concise(err))
	}
	if err := end(); err != nil {
		return n, err
	}
	return n, nil
}

// resultFormatter writes results in one output format.
type resultFormatter interface {
	write(r *anthropic.MessageBatchIndividualResponse) error
	flush() error
}

// newResultFormatter returns the formatter for format, writing to w.
func newResultFormatter(format string, w io.Writer) (resultFormatter, error) {
	switch format {
	case "jsonl":
		return &jsonlFormatter{w: bufio.NewWriterSize(w, 64<<10)}, nil
	case "text":
		return &textFormatter{w: bufio.NewWriterSize(w, 64<<10)}, nil
	case "csv":
		return newCSVFormatter(w), nil
	}
	return nil, fmt.Errorf("unknown --format %q (want jsonl, text or csv)", format)
}

// jsonlFormatter writes each line as the server sent it, compacted, so that
// fields the SDK does not model are kept.
type jsonlFormatter struct {
	w   *bufio.Writer
	buf bytes.Buffer
}

func (f *jsonlFormatter) write(r *anthropic.MessageBatchIndividualResponse) error {
	f.buf.Reset()
	if err := json.Compact(&f.buf, []byte(r.RawJSON())); err != nil {
		return fmt.Errorf("compact result %s: %w", r.CustomID, err)
	}
	f.buf.WriteByte('\n')
	_, err := f.w.Write(f.buf.Bytes())
	return err
}

func (f *jsonlFormatter) flush() error { return f.w.Flush() }

// textFormatter writes custom_id<TAB>type<TAB>text, one result per line.
type textFormatter struct {
	w *bufio.Writer
}

// textEscaper keeps each result on one line and the columns apart.
var textEscaper = strings.NewReplacer(`\`, `\\`, "\t", `\t`, "\n", `\n`, "\r", `\r`)

func (f *textFormatter) write(r *anthropic.MessageBatchIndividualResponse) error {
	row := resultRowOf(r)
	detail := row.text
	if row.resultType == "errored" {
		detail = row.errorType + ": " + row.errorMessage
	}
	_, err := fmt.Fprintf(f.w, "%s\t%s\t%s\n", textEscaper.Replace(row.customID), row.resultType, textEscaper.Replace(detail))
	return err
}

func (f *textFormatter) flush() error { return f.w.Flush() }

// csvHeader names the columns of the csv format.
var csvHeader = []string{"custom_id", "result_type", "stop_reason", "input_tokens", "output_tokens", "text", "error_type", "error_message"}

type csvFormatter struct {
	w           *csv.Writer
	wroteHeader bool
}

func newCSVFormatter(w io.Writer) resultFormatter { return &csvFormatter{w: csv.NewWriter(w)} }

func (f *csvFormatter) write(r *anthropic.MessageBatchIndividualResponse) error {
	if err := f.header(); err != nil {
		return err
	}
	row := resultRowOf(r)
	var in, out string
	if row.resultType == "succeeded" {
		in, out = strconv.FormatInt(row.inputTokens, 10), strconv.FormatInt(row.outputTokens, 10)
	}
	return f.w.Write([]string{row.customID, row.resultType, row.stopReason, in, out, row.text, row.errorType, row.errorMessage})
}

func (f *csvFormatter) header() error {
	if f.wroteHeader {
		return nil
	}
	f.wroteHeader = true
	return f.w.Write(csvHeader)
}

// flush writes the header even when there were no results, so that the
// output is always a valid CSV with known columns.
func (f *csvFormatter) flush() error {
	if err := f.header(); err != nil {
		return err
	}
	f.w.Flush()
	return f.w.Error()
}

// resultRow is the flat view of a result that the text and csv formats share.
type resultRow struct {
	customID, resultType, stopReason string
	inputTokens, outputTokens        int64
	text, errorType, errorMessage    string
}

func resultRowOf(r *anthropic.MessageBatchIndividualResponse) resultRow {
	row := resultRow{customID: r.CustomID, resultType: r.Result.Type}
	switch r.Result.Type {
	case "succeeded":
		msg := r.Result.Message
		row.stopReason = string(msg.StopReason)
		row.inputTokens, row.outputTokens = msg.Usage.InputTokens, msg.Usage.OutputTokens
		var text strings.Builder
		for _, block := range msg.Content {
			if block.Type == "text" {
				text.WriteString(block.Text)
			}
		}
		row.text = text.String()
	case "errored":
		row.errorType = r.Result.Error.Error.Type
		row.errorMessage = r.Result.Error.Error.Message
	}
	return row
}

// writeFileAtomic runs write on a temp file next to path and renames it into
// place only when write succeeded, so that readers never see half a file and
// a failure leaves any earlier file intact.
func writeFileAtomic(path string, write func(io.Writer) error) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	mode := os.FileMode(0o644)
	if fi, statErr := os.Stat(path); statErr == nil {
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("write %s: not a regular file", path)
		}
		mode = fi.Mode().Perm()
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("create output: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err = write(tmp); err != nil {
		return err
	}
	if err = tmp.Chmod(mode); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}
