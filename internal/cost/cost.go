// Package cost prices the usage of succeeded requests. Usage is kept as
// token totals (per batch and model) and priced only when read, so a total
// is exact integers however many results went into it, and a price change
// in the configuration reprices every report at once.
package cost

import (
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/batchd/batchd/internal/backend"
)

// BatchMultiplier is the Message Batches discount: every token of a batch
// request costs half its standard price, and it stacks with the cache
// multipliers.
const BatchMultiplier = 0.5

// The prompt-caching multipliers of the base input price, used for a
// price that names only its input price.
const (
	CacheWrite5mMultiplier = 1.25
	CacheWrite1hMultiplier = 2
	CacheReadMultiplier    = 0.1
)

// Price is a model's standard price in USD per million tokens of each
// kind.
type Price struct {
	Input        float64 `json:"input"`
	Output       float64 `json:"output"`
	CacheWrite5m float64 `json:"cache_write_5m"`
	CacheWrite1h float64 `json:"cache_write_1h"`
	CacheRead    float64 `json:"cache_read"`
}

// Tokens counts tokens by kind. Input excludes the cache writes and reads,
// as Anthropic's usage does.
type Tokens struct {
	Input        int64 `json:"input_tokens"`
	Output       int64 `json:"output_tokens"`
	CacheWrite5m int64 `json:"cache_write_5m_tokens"`
	CacheWrite1h int64 `json:"cache_write_1h_tokens"`
	CacheRead    int64 `json:"cache_read_tokens"`
}

// Add returns t + u.
func (t Tokens) Add(u Tokens) Tokens {
	return Tokens{
		Input:        t.Input + u.Input,
		Output:       t.Output + u.Output,
		CacheWrite5m: t.CacheWrite5m + u.CacheWrite5m,
		CacheWrite1h: t.CacheWrite1h + u.CacheWrite1h,
		CacheRead:    t.CacheRead + u.CacheRead,
	}
}

// IsZero reports whether t counts nothing.
func (t Tokens) IsZero() bool { return t == Tokens{} }

// Standard is what t costs at p's standard prices, in USD.
func (p Price) Standard(t Tokens) float64 {
	return (float64(t.Input)*p.Input + float64(t.Output)*p.Output +
		float64(t.CacheWrite5m)*p.CacheWrite5m + float64(t.CacheWrite1h)*p.CacheWrite1h +
		float64(t.CacheRead)*p.CacheRead) / 1e6
}

// Batch is what t costs at p's batch prices, in USD.
func (p Price) Batch(t Tokens) float64 { return p.Standard(t) * BatchMultiplier }

// Table maps model ids to prices. A model's dated snapshot ids
// ("claude-sonnet-4-5-20250929") and its "-latest" alias take the price of
// the id without the suffix; any other model is unpriced.
type Table struct{ prices map[string]Price }

// NewTable holds prices by model id.
func NewTable(prices map[string]Price) *Table {
	return &Table{prices: maps.Clone(prices)}
}

// Default is the table shipped with batchd: Anthropic's standard prices
// (USD per million tokens) as published on the pricing page when this
// release was made. Check them against https://www.anthropic.com/pricing
// before billing anyone; the configuration file overrides and extends them.
func Default() *Table {
	return NewTable(map[string]Price{
		"claude-opus-4-7":   {Input: 5, Output: 25, CacheWrite5m: 6.25, CacheWrite1h: 10, CacheRead: 0.5},
		"claude-opus-4-6":   {Input: 5, Output: 25, CacheWrite5m: 6.25, CacheWrite1h: 10, CacheRead: 0.5},
		"claude-opus-4-5":   {Input: 5, Output: 25, CacheWrite5m: 6.25, CacheWrite1h: 10, CacheRead: 0.5},
		"claude-opus-4-1":   {Input: 15, Output: 75, CacheWrite5m: 18.75, CacheWrite1h: 30, CacheRead: 1.5},
		"claude-opus-4":     {Input: 15, Output: 75, CacheWrite5m: 18.75, CacheWrite1h: 30, CacheRead: 1.5},
		"claude-sonnet-4-6": {Input: 3, Output: 15, CacheWrite5m: 3.75, CacheWrite1h: 6, CacheRead: 0.3},
		"claude-sonnet-4-5": {Input: 3, Output: 15, CacheWrite5m: 3.75, CacheWrite1h: 6, CacheRead: 0.3},
		"claude-sonnet-4":   {Input: 3, Output: 15, CacheWrite5m: 3.75, CacheWrite1h: 6, CacheRead: 0.3},
		"claude-3-7-sonnet": {Input: 3, Output: 15, CacheWrite5m: 3.75, CacheWrite1h: 6, CacheRead: 0.3},
		"claude-haiku-4-5":  {Input: 1, Output: 5, CacheWrite5m: 1.25, CacheWrite1h: 2, CacheRead: 0.1},
		"claude-3-5-haiku":  {Input: 0.8, Output: 4, CacheWrite5m: 1, CacheWrite1h: 1.6, CacheRead: 0.08},
		"claude-3-opus":     {Input: 15, Output: 75, CacheWrite5m: 18.75, CacheWrite1h: 30, CacheRead: 1.5},
		"claude-3-haiku":    {Input: 0.25, Output: 1.25, CacheWrite5m: 0.3, CacheWrite1h: 0.5, CacheRead: 0.03},
	})
}

// With returns a copy of t with prices added or replaced.
func (t *Table) With(prices map[string]Price) *Table {
	out := NewTable(t.prices)
	maps.Copy(out.prices, prices)
	return out
}

// Models lists the priced model ids in order.
func (t *Table) Models() []string { return slices.Sorted(maps.Keys(t.prices)) }

// snapshot is a dated model id's suffix, or the "-latest" alias's.
var snapshot = regexp.MustCompile(`-(\d{8}|latest)$`)

// Lookup returns model's price: its own, else that of the id without a
// date or "-latest" suffix.
func (t *Table) Lookup(model string) (Price, bool) {
	if p, ok := t.prices[model]; ok {
		return p, true
	}
	if loc := snapshot.FindStringIndex(model); loc != nil {
		p, ok := t.prices[model[:loc[0]]]
		return p, ok
	}
	return Price{}, false
}

// ModelCost is one model's usage and cost.
type ModelCost struct {
	Model  string `json:"model"`
	Tokens Tokens `json:"tokens"`
	// Priced is false for a model without a price; its costs are zero and
	// it is left out of the totals.
	Priced bool `json:"priced"`
	// BatchUSD is the cost at batch prices, StandardUSD the same work at
	// standard prices.
	BatchUSD    float64 `json:"batch_usd"`
	StandardUSD float64 `json:"standard_usd"`
}

// Report is a set of models' usage and cost.
type Report struct {
	Models      []ModelCost `json:"models"`
	Tokens      Tokens      `json:"tokens"`
	BatchUSD    float64     `json:"batch_usd"`
	StandardUSD float64     `json:"standard_usd"`
	SavingUSD   float64     `json:"saving_usd"`
	// Unpriced names the models whose tokens have no price.
	Unpriced []string `json:"unpriced"`
}

// Price prices token totals by model.
func (t *Table) Price(byModel map[string]Tokens) Report {
	r := Report{Models: []ModelCost{}, Unpriced: []string{}}
	for _, m := range slices.Sorted(maps.Keys(byModel)) {
		tok := byModel[m]
		mc := ModelCost{Model: m, Tokens: tok}
		if p, ok := t.Lookup(m); ok {
			mc.Priced, mc.BatchUSD, mc.StandardUSD = true, p.Batch(tok), p.Standard(tok)
			r.BatchUSD += mc.BatchUSD
			r.StandardUSD += mc.StandardUSD
		} else if !tok.IsZero() {
			r.Unpriced = append(r.Unpriced, m)
		}
		r.Tokens = r.Tokens.Add(tok)
		r.Models = append(r.Models, mc)
	}
	r.SavingUSD = r.StandardUSD - r.BatchUSD
	return r
}

// Complete fills a price that names only some kinds: cache prices left at
// zero follow the input price by the standard multipliers. A model meant
// to be free says so with input and output 0 and no cache prices.
func (p Price) Complete() Price {
	if p.CacheWrite5m == 0 {
		p.CacheWrite5m = p.Input * CacheWrite5mMultiplier
	}
	if p.CacheWrite1h == 0 {
		p.CacheWrite1h = p.Input * CacheWrite1hMultiplier
	}
	if p.CacheRead == 0 {
		p.CacheRead = p.Input * CacheReadMultiplier
	}
	return p
}

// ValidModelID reports whether id can name a price: not empty, no spaces.
func ValidModelID(id string) bool { return id != "" && !strings.ContainsAny(id, " \t\n") }

// FromResult reads the model and the priced usage of a result object
// ({"type":"succeeded","message":{…}}) in one pass without decoding the
// content; ok is false for any other result type, or a message without a
// model or a readable usage (it is then not counted rather than guessed).
func FromResult(result []byte) (model string, t Tokens, ok bool) {
	var succeeded bool
	var msg []byte
	backend.EachMember(result, func(name, v []byte) bool {
		switch string(name) {
		case "type":
			succeeded = string(v) == `"succeeded"`
		case "message":
			msg = v
		}
		return true
	})
	if !succeeded || len(msg) == 0 || msg[0] != '{' {
		return "", Tokens{}, false
	}
	return FromMessage(msg)
}

// FromMessage reads the model and the priced usage of a Message in one
// pass; ok is false when it has no model or no readable usage.
func FromMessage(msg []byte) (model string, t Tokens, ok bool) {
	model, u, present, valid := readMessage(msg)
	if model == "" || !present || !valid {
		return "", Tokens{}, false
	}
	t, err := u.Tokens()
	if err != nil {
		return "", Tokens{}, false
	}
	return model, t, true
}
