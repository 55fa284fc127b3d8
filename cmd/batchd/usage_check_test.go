package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/batchd/batchd/internal/cost"
)

// checkUsageRecount reads batch id's results through url, sums the usage
// of the succeeded ones by model, and checks that the batch's usage report
// is exactly that: what a crash might lose or count twice shows here.
func checkUsageRecount(tb testing.TB, url, id string) {
	tb.Helper()
	res, err := http.Get(url + "/v1/messages/batches/" + id + "/results")
	if err != nil {
		tb.Fatal(err)
	}
	defer res.Body.Close()
	recount := map[string]cost.Tokens{}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var line struct {
			Result json.RawMessage `json:"result"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			tb.Fatalf("results line %q: %v", sc.Text(), err)
		}
		if model, t, ok := cost.FromResult(line.Result); ok {
			recount[model] = recount[model].Add(t)
		}
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	ur, err := http.Get(url + "/v1/messages/batches/" + id + "/usage")
	if err != nil {
		tb.Fatal(err)
	}
	defer ur.Body.Close()
	raw, _ := io.ReadAll(ur.Body)
	var u struct {
		Models []struct {
			Model  string      `json:"model"`
			Tokens cost.Tokens `json:"tokens"`
		} `json:"models"`
	}
	if ur.StatusCode != 200 || json.Unmarshal(raw, &u) != nil {
		tb.Fatalf("usage: %d %s", ur.StatusCode, raw)
	}
	if len(recount) == 0 {
		tb.Fatal("no succeeded result reports usage")
	}
	if len(u.Models) != len(recount) {
		tb.Fatalf("usage has %d models, the results %d: %s", len(u.Models), len(recount), raw)
	}
	for _, m := range u.Models {
		if m.Tokens != recount[m.Model] {
			tb.Errorf("usage of %s is %+v, a recount of the results %+v", m.Model, m.Tokens, recount[m.Model])
		}
	}
}
