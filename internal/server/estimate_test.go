package server_test

import (
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/config"
	"github.com/batchd/batchd/internal/server"
)

// TestEstimate: the estimate reads a create body as a create would, stores
// nothing, and prices it by hand: input from the params' size (4 bytes a
// token), output from 0 to max_tokens, at half the standard price; what
// would end errored without running is counted by reason.
func TestEstimate(t *testing.T) {
	t.Parallel()
	cfg := config.Default(0)
	cfg.Routes = []config.Route{{Model: "claude-*", Backend: "sim"}}
	ts := newTestServer(t, withConfig(func(c *server.Config) { c.Backends = cfg }))
	ok := nRequests("ok", 3, "please summarize this")
	noMax := params("x")
	delete(noMax, "max_tokens")
	nowhere := params("y")
	nowhere["model"] = "gpt-4o"
	reqs := append(ok, rawRequest{CustomID: "nomax-1", Params: noMax}, rawRequest{CustomID: "nomax-2", Params: noMax},
		rawRequest{CustomID: "nowhere", Params: nowhere})
	r := do(t, "POST", ts.URL+"/v1/messages/batches/estimate", createBody(t, reqs...))
	if r.Status != 200 {
		t.Fatalf("estimate: %d %s", r.Status, r.Body)
	}
	var est struct {
		Type     string `json:"type"`
		Requests int    `json:"requests"`
		Models   []struct {
			Model           string  `json:"model"`
			Requests        int     `json:"requests"`
			InputTokens     int64   `json:"input_tokens"`
			MaxOutputTokens int64   `json:"max_output_tokens"`
			MinUSD          float64 `json:"min_usd"`
			MaxUSD          float64 `json:"max_usd"`
		} `json:"models"`
		MinUSD     float64 `json:"min_usd"`
		MaxUSD     float64 `json:"max_usd"`
		Rejected   int     `json:"rejected"`
		Rejections []struct {
			Reason        string `json:"reason"`
			Requests      int    `json:"requests"`
			FirstCustomID string `json:"first_custom_id"`
		} `json:"rejections"`
	}
	if err := json.Unmarshal(r.Body, &est); err != nil {
		t.Fatal(err)
	}
	var in int64
	for _, q := range ok {
		raw, _ := json.Marshal(q.Params)
		in += int64(len(raw) / 4)
	}
	out := int64(3 * 256)
	min, max := float64(in)*3/2/1e6, (float64(in)*3+float64(out)*15)/2/1e6 // claude-sonnet-4-5: $3 in, $15 out, halved
	if est.Type != "message_batch_estimate" || est.Requests != 6 || len(est.Models) != 1 || est.Models[0].Requests != 3 ||
		est.Models[0].InputTokens != in || est.Models[0].MaxOutputTokens != out {
		t.Fatalf("estimate %s (want input %d, output %d)", r.Body, in, out)
	}
	if math.Abs(est.MinUSD-min) > 1e-12 || math.Abs(est.MaxUSD-max) > 1e-12 {
		t.Errorf("cost %v..%v, want %v..%v", est.MinUSD, est.MaxUSD, min, max)
	}
	if est.Rejected != 3 || len(est.Rejections) != 2 || est.Rejections[0].Reason != "max_tokens: Field required" ||
		est.Rejections[0].Requests != 2 || est.Rejections[0].FirstCustomID != "nomax-1" || est.Rejections[1].FirstCustomID != "nowhere" {
		t.Errorf("rejections %d %+v", est.Rejected, est.Rejections)
	}
	// Nothing was created.
	var page struct{ Data []any }
	if l := do(t, "GET", ts.URL+"/v1/messages/batches", nil); json.Unmarshal(l.Body, &page) != nil || len(page.Data) != 0 {
		t.Errorf("the estimate created a batch: %s", l.Body)
	}
	// An envelope error is the create's own error.
	wantError(t, do(t, "POST", ts.URL+"/v1/messages/batches/estimate", `{"requests":[{"custom_id":"a"}]}`), 400, "invalid_request_error", "requests.0.params")
}

// TestBudgetRefusesACreate: with max_cost_usd on the workspace, a create
// whose most possible cost would pass it, with what batches in progress
// still hold, is refused with a 400 naming max_cost_usd, and leaves
// nothing behind.
func TestBudgetRefusesACreate(t *testing.T) {
	t.Parallel()
	cfg := config.Default(0)
	// One request of max_tokens 256 at claude-sonnet-4-5 costs at most
	// about 256 × $7.50 / 1M = $0.00192 at batch price, input aside.
	cfg.Workspaces = []config.Workspace{{Name: "default", MaxCostUSD: 0.005}}
	ts := newTestServer(t, withoutDispatcher(), withConfig(func(c *server.Config) { c.Backends = cfg }))
	createRaw(t, ts.URL, createBody(t, nRequests("a", 2, "hi")...)) // ≈ $0.0039, held while in progress
	wantError(t, do(t, "POST", ts.URL+"/v1/messages/batches", createBody(t, nRequests("b", 1, "hi")...)), 400, "invalid_request_error", "max_cost_usd", "monthly budget of $0.0050")
	local := params("x")
	local["model"] = "llama-local"
	wantError(t, do(t, "POST", ts.URL+"/v1/messages/batches", createBody(t, rawRequest{CustomID: "l", Params: local})), 400, "invalid_request_error", "max_cost_usd", "llama-local has no price")
	var page struct{ Data []any }
	if l := do(t, "GET", ts.URL+"/v1/messages/batches", nil); json.Unmarshal(l.Body, &page) != nil || len(page.Data) != 1 {
		t.Errorf("refused creates left batches: %s", l.Body)
	}
}

// TestBudgetHoldsARetry: POST …/retry is held to the budget as a create
// is: with a batch in progress holding most of it, the retry is refused.
func TestBudgetHoldsARetry(t *testing.T) {
	t.Parallel()
	cfg := config.Default(0)
	// A request of max_tokens 256 costs at most about $0.00192 at batch
	// price: the errored one fits, then the slow one holds that much while
	// it runs, and the retry of the errored one no longer fits.
	cfg.Workspaces = []config.Workspace{{Name: "default", MaxCostUSD: 0.003}}
	ts := newTestServer(t, withConfig(func(c *server.Config) { c.Backends = cfg }))
	failed := createRaw(t, ts.URL, createBody(t, rawRequest{CustomID: "bad", Params: params("[[sim error=invalid_request_error]] no")}))
	waitEndedRaw(t, ts.URL, failed.ID, 30*time.Second)
	createRaw(t, ts.URL, createBody(t, rawRequest{CustomID: "slow", Params: params("[[sim latency=1m]] slow")}))
	wantError(t, do(t, "POST", ts.URL+"/v1/messages/batches/"+failed.ID+"/retry", nil), 400, "invalid_request_error", "max_cost_usd")
}
