package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"golang.org/x/term"

	"github.com/batchd/batchd/internal/batch"
)

// estimatePending asks the server to estimate each pending batch, streamed
// from its file as a create would be, and prints the sum to w.
func estimatePending(ctx context.Context, client *anthropic.Client, pending []*pendingBatch, w io.Writer) (min, max float64, err error) {
	type modelSum struct {
		requests      int
		input, output int64
		min, max      float64
		priced        bool
	}
	models := map[string]*modelSum{}
	var order []string
	rejected, requests := 0, 0
	var reasons []string
	var unpriced []string
	for i, p := range pending {
		size := p.bodySize()
		body, closer, err := p.body()
		if err != nil {
			return 0, 0, err
		}
		var raw []byte
		err = client.Execute(ctx, http.MethodPost, "v1/messages/batches/estimate", nil, &raw,
			option.WithRequestBody("application/json", body),
			option.WithMiddleware(func(req *http.Request, next option.MiddlewareNext) (*http.Response, error) {
				req.ContentLength = size
				return next(req)
			}))
		closer.Close()
		if err != nil {
			return 0, 0, fmt.Errorf("estimate batch %d of %d: %w", i+1, len(pending), concise(err))
		}
		var est batch.Estimate
		if err := json.Unmarshal(raw, &est); err != nil {
			return 0, 0, fmt.Errorf("read estimate: %w", err)
		}
		requests += est.Requests
		rejected += est.Rejected
		min += est.MinUSD
		max += est.MaxUSD
		for _, m := range est.Models {
			s := models[m.Model]
			if s == nil {
				s = &modelSum{priced: m.Priced}
				models[m.Model] = s
				order = append(order, m.Model)
			}
			s.requests += m.Requests
			s.input += m.InputTokens
			s.output += m.MaxOutputTokens
			s.min += m.MinUSD
			s.max += m.MaxUSD
		}
		for _, r := range est.Rejections {
			reasons = append(reasons, fmt.Sprintf("  %s: %s (first: %s)", plural(int64(r.Requests), "request"), r.Reason, r.FirstCustomID))
		}
		unpriced = append(unpriced, est.Unpriced...)
	}
	fmt.Fprintf(w, "estimate: %s in %s\n", plural(int64(requests), "request"), batchCount(len(pending)))
	const row = "  %-28s %9v %14v %16v  %s\n"
	fmt.Fprintf(w, row, "MODEL", "REQUESTS", "INPUT_TOKENS~", "MAX_OUTPUT", "COST AT BATCH PRICE")
	for _, name := range order {
		s := models[name]
		c := "no price"
		if s.priced {
			c = fmt.Sprintf("$%.4f – $%.4f", s.min, s.max)
		}
		fmt.Fprintf(w, row, name, s.requests, s.input, s.output, c)
	}
	fmt.Fprintf(w, "cost: $%.4f (no output) to $%.4f (every max_tokens)\n", min, max)
	if len(unpriced) > 0 {
		fmt.Fprintf(w, "no price for: %s\n", strings.Join(uniq(unpriced), ", "))
	}
	if rejected > 0 {
		fmt.Fprintf(w, "%s would end errored without running:\n%s\n", plural(int64(rejected), "request"), strings.Join(reasons, "\n"))
	}
	return min, max, nil
}

// confirm asks on a terminal whether to go on; off a terminal it says how
// to submit without asking and answers no.
func confirm(in io.Reader, w io.Writer, question string) bool {
	f, ok := in.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		fmt.Fprintln(w, "not submitted: pass --yes to submit without asking")
		return false
	}
	fmt.Fprintf(w, "%s [y/N] ", question)
	line, _ := bufio.NewReader(in).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true
	}
	fmt.Fprintln(w, "not submitted")
	return false
}

// batchCount is "1 batch" or "N batches".
func batchCount(n int) string {
	if n == 1 {
		return "1 batch"
	}
	return fmt.Sprintf("%d batches", n)
}
