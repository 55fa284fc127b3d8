package server_test

import (
	"encoding/json"
	"math"
	"net/http"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/cost"
)

type wireUsage struct {
	Type    string `json:"type"`
	BatchID string `json:"batch_id"`
	Models  []struct {
		Model       string      `json:"model"`
		Tokens      cost.Tokens `json:"tokens"`
		Priced      bool        `json:"priced"`
		BatchUSD    float64     `json:"batch_usd"`
		StandardUSD float64     `json:"standard_usd"`
	} `json:"models"`
	Tokens      cost.Tokens `json:"tokens"`
	BatchUSD    float64     `json:"batch_usd"`
	StandardUSD float64     `json:"standard_usd"`
	SavingUSD   float64     `json:"saving_usd"`
	Unpriced    []string    `json:"unpriced"`
}

// TestUsageIsARecountOfTheResults: a batch's usage equals the usage of its
// succeeded results read back one by one, priced by hand at half the
// standard price; errored results cost nothing and models without a price
// are named, not guessed.
func TestUsageIsARecountOfTheResults(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	reqs := nRequests("ok", 6, "hello there")
	reqs = append(reqs, rawRequest{CustomID: "bad", Params: params("[[sim error=invalid_request_error]] no")})
	local := params("hi")
	local["model"] = "llama-local"
	reqs = append(reqs, rawRequest{CustomID: "local", Params: local})
	b := createRaw(t, ts.URL, createBody(t, reqs...))
	waitEndedRaw(t, ts.URL, b.ID, 30*time.Second)

	recount := map[string]cost.Tokens{}
	for id, line := range resultsRaw(t, ts.URL, b.ID, "") {
		if line.Result.Type != "succeeded" {
			if id != "bad" {
				t.Errorf("%s: %s", id, line.Result.Type)
			}
			continue
		}
		var msg struct {
			Model string          `json:"model"`
			Usage json.RawMessage `json:"usage"`
		}
		if err := json.Unmarshal(line.Result.Message, &msg); err != nil {
			t.Fatal(err)
		}
		u, err := cost.ParseUsage(msg.Usage)
		if err != nil {
			t.Fatal(err)
		}
		recount[msg.Model] = recount[msg.Model].Add(u)
	}

	r := do(t, "GET", ts.URL+"/v1/messages/batches/"+b.ID+"/usage", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("usage: %d %s", r.Status, r.Body)
	}
	var u wireUsage
	if err := json.Unmarshal(r.Body, &u); err != nil {
		t.Fatal(err)
	}
	if u.Type != "message_batch_usage" || u.BatchID != b.ID || len(u.Models) != 2 {
		t.Fatalf("usage %s", r.Body)
	}
	sonnet := recount[testModel]
	if sonnet.Input == 0 || sonnet.Output == 0 {
		t.Fatalf("recount %+v", recount)
	}
	for _, m := range u.Models {
		if m.Tokens != recount[m.Model] {
			t.Errorf("%s: tokens %+v, recount %+v", m.Model, m.Tokens, recount[m.Model])
		}
	}
	std := (float64(sonnet.Input)*3 + float64(sonnet.Output)*15) / 1e6 // claude-sonnet-4-5: $3 in, $15 out
	if math.Abs(u.StandardUSD-std) > 1e-12 || math.Abs(u.BatchUSD-std/2) > 1e-12 || math.Abs(u.SavingUSD-std/2) > 1e-12 {
		t.Errorf("cost batch %v standard %v saving %v, want %v %v %v", u.BatchUSD, u.StandardUSD, u.SavingUSD, std/2, std, std/2)
	}
	if len(u.Unpriced) != 1 || u.Unpriced[0] != "llama-local" {
		t.Errorf("unpriced %v", u.Unpriced)
	}

	for _, g := range []string{"model", "day", "batch"} {
		r := do(t, "GET", ts.URL+"/v1/usage?group_by="+g+"&from=7d", nil)
		var rep struct {
			Type    string `json:"type"`
			GroupBy string `json:"group_by"`
			From    string `json:"from"`
			Data    []struct {
				Group    string  `json:"group"`
				BatchUSD float64 `json:"batch_usd"`
			} `json:"data"`
			Total wireUsage `json:"total"`
		}
		if err := json.Unmarshal(r.Body, &rep); err != nil || r.Status != 200 {
			t.Fatalf("usage by %s: %d %s", g, r.Status, r.Body)
		}
		if rep.Type != "usage_report" || rep.GroupBy != g || rep.From == "" || math.Abs(rep.Total.BatchUSD-std/2) > 1e-12 || rep.Total.Tokens != sonnet.Add(recount["llama-local"]) {
			t.Errorf("usage by %s: %s", g, r.Body)
		}
		want := map[string]int{"model": 2, "day": 1, "batch": 1}[g]
		if len(rep.Data) != want {
			t.Errorf("usage by %s: %d groups, want %d", g, len(rep.Data), want)
		}
		if g == "batch" && rep.Data[0].Group != b.ID {
			t.Errorf("batch group %q", rep.Data[0].Group)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, withoutDispatcher())
	wantError(t, do(t, "GET", ts.URL+"/v1/messages/batches/msgbatch_nope/usage", nil), 404, "not_found_error")
	wantError(t, do(t, "GET", ts.URL+"/v1/usage?group_by=hour", nil), 400, "invalid_request_error", "group_by")
	wantError(t, do(t, "GET", ts.URL+"/v1/usage?from=yesterday", nil), 400, "invalid_request_error", "from")
	wantError(t, do(t, "GET", ts.URL+"/v1/usage?from=2026-12-02&to=2026-12-01", nil), 400, "invalid_request_error", "to")
	// A batch still running has usage that moves; one with nothing done yet has none.
	b := createRaw(t, ts.URL, createBody(t, nRequests("r", 3, "x")...))
	r := do(t, "GET", ts.URL+"/v1/messages/batches/"+b.ID+"/usage", nil)
	var u wireUsage
	if err := json.Unmarshal(r.Body, &u); err != nil || r.Status != 200 || len(u.Models) != 0 || u.BatchUSD != 0 {
		t.Errorf("usage before anything ran: %d %s", r.Status, r.Body)
	}
}
