package cost

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"testing"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// The cases are worked by hand from the pricing page's numbers (USD per
// million tokens), so a wrong multiplier or unit shows as a wrong sum.
func TestPriceByHand(t *testing.T) {
	t.Parallel()
	tab := Default()
	for _, tc := range []struct {
		name          string
		byModel       map[string]Tokens
		batch, stdUSD float64
		unpriced      []string
	}{
		{"input and output", map[string]Tokens{"claude-sonnet-4-5": {Input: 1_000_000, Output: 1_000_000}},
			9, 18, nil}, // 3 + 15 standard, half in a batch
		{"5-minute cache write", map[string]Tokens{"claude-sonnet-4-5": {CacheWrite5m: 100_000}},
			0.1875, 0.375, nil}, // 0.1 M × 3.75 = 1.25 × 3 × 0.1
		{"1-hour cache write", map[string]Tokens{"claude-sonnet-4-5": {CacheWrite1h: 100_000}},
			0.3, 0.6, nil}, // 0.1 M × 6 = 2 × 3 × 0.1
		{"cache read", map[string]Tokens{"claude-sonnet-4-5": {CacheRead: 1_000_000}},
			0.15, 0.3, nil}, // 0.1 × 3
		{"mixed models", map[string]Tokens{
			"claude-sonnet-4-5":         {Input: 1_000_000, Output: 1_000_000},
			"claude-haiku-4-5-20251001": {Input: 2_000_000, Output: 500_000}}, // 2 × 1 + 0.5 × 5 = 4.5
			(18 + 4.5) / 2, 18 + 4.5, nil},
		{"opus 4.1 every kind", map[string]Tokens{"claude-opus-4-1": {Input: 10, Output: 20, CacheWrite5m: 30, CacheWrite1h: 40, CacheRead: 50}},
			(10*15 + 20*75 + 30*18.75 + 40*30 + 50*1.5) / 1e6 / 2, (10*15 + 20*75 + 30*18.75 + 40*30 + 50*1.5) / 1e6, nil},
		{"an unknown model is unpriced, not free", map[string]Tokens{
			"llama-3-8b":        {Input: 1_000_000, Output: 1_000_000},
			"claude-sonnet-4-5": {Output: 1_000_000}},
			7.5, 15, []string{"llama-3-8b"}},
		{"a model unknown by its base id is not priced as an older one", map[string]Tokens{"claude-opus-4-9": {Input: 1_000_000}},
			0, 0, []string{"claude-opus-4-9"}},
		{"nothing", map[string]Tokens{}, 0, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := tab.Price(tc.byModel)
			if !near(r.BatchUSD, tc.batch) || !near(r.StandardUSD, tc.stdUSD) || !near(r.SavingUSD, tc.stdUSD-tc.batch) {
				t.Errorf("batch %v standard %v saving %v, want %v %v %v", r.BatchUSD, r.StandardUSD, r.SavingUSD, tc.batch, tc.stdUSD, tc.stdUSD-tc.batch)
			}
			if !slices.Equal(r.Unpriced, tc.unpriced) && (len(r.Unpriced) != 0 || tc.unpriced != nil) {
				t.Errorf("unpriced %v, want %v", r.Unpriced, tc.unpriced)
			}
			var sum Tokens
			for _, tok := range tc.byModel {
				sum = sum.Add(tok)
			}
			if r.Tokens != sum || len(r.Models) != len(tc.byModel) {
				t.Errorf("tokens %+v over %d models, want %+v over %d", r.Tokens, len(r.Models), sum, len(tc.byModel))
			}
		})
	}
}

func TestParseUsage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, raw string
		want      Tokens
		bad       bool
	}{
		{"plain", `{"input_tokens":5,"output_tokens":7}`, Tokens{Input: 5, Output: 7}, false},
		{"cache writes without the breakdown count at 5 minutes",
			`{"input_tokens":1,"output_tokens":2,"cache_creation_input_tokens":300,"cache_read_input_tokens":40}`,
			Tokens{Input: 1, Output: 2, CacheWrite5m: 300, CacheRead: 40}, false},
		{"the breakdown splits them",
			`{"input_tokens":1,"output_tokens":2,"cache_creation_input_tokens":300,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":200},"service_tier":"batch"}`,
			Tokens{Input: 1, Output: 2, CacheWrite5m: 100, CacheWrite1h: 200}, false},
		{"an empty breakdown leaves the total at 5 minutes",
			`{"input_tokens":1,"cache_creation_input_tokens":30,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0}}`,
			Tokens{Input: 1, CacheWrite5m: 30}, false},
		{"negative", `{"input_tokens":-1}`, Tokens{}, true},
		{"not json", `{"input_tokens":`, Tokens{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseUsage([]byte(tc.raw))
			if (err != nil) != tc.bad || got != tc.want {
				t.Errorf("ParseUsage = %+v, %v; want %+v, bad %v", got, err, tc.want, tc.bad)
			}
		})
	}
}

func TestLookup(t *testing.T) {
	t.Parallel()
	tab := Default().With(map[string]Price{
		"llama-3-8b":        Price{Input: 0.1, Output: 0.2}.Complete(),
		"claude-sonnet-4-5": {Input: 2, Output: 10},
	})
	for _, tc := range []struct {
		model string
		input float64
		ok    bool
	}{
		{"claude-sonnet-4-5", 2, true},          // overridden
		{"claude-sonnet-4-5-20250929", 2, true}, // a snapshot follows its base id
		{"claude-3-7-sonnet-latest", 3, true},
		{"claude-haiku-4-5", 1, true},
		{"llama-3-8b", 0.1, true}, // extended
		{"claude-opus-4-20250514", 15, true},
		{"claude-opus-4-8", 0, false}, // not claude-opus-4's price
		{"claude-sonnet-4-5-x", 0, false},
		{"", 0, false},
	} {
		p, ok := tab.Lookup(tc.model)
		if ok != tc.ok || !near(p.Input, tc.input) {
			t.Errorf("Lookup(%q) = %+v %v, want input %v %v", tc.model, p, ok, tc.input, tc.ok)
		}
	}
	if p, _ := tab.Lookup("llama-3-8b"); !near(p.CacheWrite5m, 0.125) || !near(p.CacheWrite1h, 0.2) || !near(p.CacheRead, 0.01) {
		t.Errorf("completed price %+v", p)
	}
	if p, _ := Default().Lookup("claude-sonnet-4-5"); p.Input != 3 {
		t.Errorf("With changed the default table: %+v", p)
	}
}

func TestFromResult(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, raw string
		model     string
		want      Tokens
		ok        bool
	}{
		{"succeeded", `{"type":"succeeded","message":{"id":"msg_1","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"\"usage\":{\"input_tokens\":999}"}],"usage":{"input_tokens":12,"output_tokens":34,"cache_read_input_tokens":5}}}`,
			"claude-sonnet-4-5-20250929", Tokens{Input: 12, Output: 34, CacheRead: 5}, true},
		{"a nested usage is not the message's", `{"type":"succeeded","message":{"model":"m","content":[{"type":"tool_use","input":{"usage":{"input_tokens":7}}}],"usage":{"input_tokens":1}}}`,
			"m", Tokens{Input: 1}, true},
		{"errored", `{"type":"errored","error":{"type":"error","error":{"type":"api_error","message":"x"}}}`, "", Tokens{}, false},
		{"canceled", `{"type":"canceled"}`, "", Tokens{}, false},
		{"no usage", `{"type":"succeeded","message":{"model":"m"}}`, "", Tokens{}, false},
		{"no model", `{"type":"succeeded","message":{"usage":{"input_tokens":1}}}`, "", Tokens{}, false},
		{"broken", `{"type":"succeeded","message":{"model":"m","usage":{"input_tokens":"x"}}}`, "", Tokens{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m, got, ok := FromResult([]byte(tc.raw))
			if m != tc.model || got != tc.want || ok != tc.ok {
				t.Errorf("FromResult = %q %+v %v, want %q %+v %v", m, got, ok, tc.model, tc.want, tc.ok)
			}
		})
	}
}

// TestScanUsageReadsAsEncodingJSON: the one-pass reading of usage gives
// what encoding/json gives, or declines and lets it decide.
func TestScanUsageReadsAsEncodingJSON(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{
		`{"input_tokens":5,"output_tokens":7}`,
		`{"input_tokens":1,"cache_creation_input_tokens":30,"cache_creation":{"ephemeral_5m_input_tokens":10,"ephemeral_1h_input_tokens":20},"cache_read_input_tokens":4,"service_tier":"batch"}`,
		`{"input_tokens":1,"cache_creation":null}`,
		`{"Input_Tokens":9,"input_tokens":1}`,
		`{"input_tokens":1,"input_tokens":2}`,
		`{"input\u005ftokens":3}`,
		`{"input_tokens":1.0}`,
		`{"input_tokens":1e3}`,
		`{"output_tokens":99999999999999999999}`,
		`{"ephemeral_5m_input_tokens":4,"input_tokens":1}`,
		`{"cache_creation":{"ephemeral_5m_input_tokens":1},"cache_creation":{"ephemeral_1h_input_tokens":2}}`,
		`{"server_tool_use":{"web_search_requests":1},"input_tokens":2}`,
		` { "input_tokens" : 3 , "output_tokens" : 4 } `,
		"{\"output_to\u212Aens\":2}", // a Kelvin sign: encoding/json folds it to k
		"{\"Output_Tokens\":2}",
	} {
		var u Usage
		jerr := json.Unmarshal([]byte(raw), &u)
		if s, ok := scanUsageObject([]byte(raw)); ok {
			if jerr != nil {
				t.Errorf("%s: scanned %+v, encoding/json refuses it: %v", raw, s, jerr)
				continue
			}
			if fmt.Sprint(s.InputTokens, s.OutputTokens, s.CacheCreationInputTokens, s.CacheReadInputTokens, s.CacheCreation != nil) !=
				fmt.Sprint(u.InputTokens, u.OutputTokens, u.CacheCreationInputTokens, u.CacheReadInputTokens, u.CacheCreation != nil) ||
				(s.CacheCreation != nil && *s.CacheCreation != *u.CacheCreation) {
				t.Errorf("%s: scanned %+v, encoding/json %+v", raw, s, u)
			}
		}
	}
}

// TestUsageFastPathTaken: common Messages are read by the one pass itself
// (a reading that always gave up would agree with encoding/json too).
func TestUsageFastPathTaken(t *testing.T) {
	t.Parallel()
	for _, msg := range []string{
		`{"id":"msg_x","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}`,
		`{"usage":{"input_tokens":10,"output_tokens":5,"cache_creation_input_tokens":3,"cache_read_input_tokens":2,"service_tier":"batch"}}`,
		` { "usage" : { "input_tokens" : 7 , "output_tokens" : 2 } } `,
		`{"model":"m","usage":{"input_tokens":1,"cache_creation_input_tokens":30,"cache_creation":{"ephemeral_5m_input_tokens":10,"ephemeral_1h_input_tokens":20}}}`,
	} {
		if _, _, _, sure := scanMessage([]byte(msg)); !sure {
			t.Errorf("scanMessage(%s) gave up", msg)
		}
	}
}
