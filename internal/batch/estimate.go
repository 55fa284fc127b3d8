package batch

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/batchd/batchd/internal/cost"
	"github.com/batchd/batchd/internal/store"
)

// BytesPerToken is the estimate's guess of input tokens: about four bytes
// of params a token, as the rate limiter guesses before a call. It counts
// the JSON around the text too, so it errs high for short prompts.
const BytesPerToken = 4

// ModelEstimate is one model's share of an estimate.
type ModelEstimate struct {
	Model    string `json:"model"`
	Requests int    `json:"requests"`
	// InputTokens is estimated from the params' size; MaxOutputTokens is
	// the sum of max_tokens, the most the requests can produce.
	InputTokens     int64 `json:"input_tokens"`
	MaxOutputTokens int64 `json:"max_output_tokens"`
	Priced          bool  `json:"priced"`
	// MinUSD is the cost at batch price with no output at all, MaxUSD with
	// every request writing its max_tokens.
	MinUSD float64 `json:"min_usd"`
	MaxUSD float64 `json:"max_usd"`
}

// Rejection is one reason requests would end errored without running, with
// how many and the first of them.
type Rejection struct {
	Reason        string `json:"reason"`
	Requests      int    `json:"requests"`
	FirstCustomID string `json:"first_custom_id"`
}

// Estimate is what a create body would cost before anything runs.
type Estimate struct {
	Requests int             `json:"requests"`
	Models   []ModelEstimate `json:"models"`
	MinUSD   float64         `json:"min_usd"`
	MaxUSD   float64         `json:"max_usd"`
	// Rejected counts the requests that would end errored without being
	// sent (a params error, a model no backend serves), by reason.
	Rejected   int         `json:"rejected"`
	Rejections []Rejection `json:"rejections"`
	Unpriced   []string    `json:"unpriced"`
}

// maxRejectionReasons bounds the distinct reasons an estimate lists, so a
// body of 100,000 differently broken requests stays a small answer.
const maxRejectionReasons = 20

// Estimate reads a create body with the same limits and envelope checks as
// Create, stores nothing, and returns the tokens and cost range per model
// and the requests that would be rejected. An envelope error (one that
// would refuse the create) is returned as that error.
func (s *Service) Estimate(ctx context.Context, workspace string, body io.Reader) (*Estimate, error) {
	est, err := s.estimate(newBodyGuard(&limitedReader{r: body, left: s.cfg.MaxBodyBytes}, s.cfg.MaxParamsBytes))
	if err != nil {
		return nil, err
	}
	return est, ctx.Err()
}

func (s *Service) estimate(r io.Reader) (*Estimate, error) {
	byModel := map[string]*ModelEstimate{}
	rejected := map[string]*Rejection{}
	var order []string
	est := &Estimate{Models: []ModelEstimate{}, Rejections: []Rejection{}, Unpriced: []string{}}
	reject := func(reason, customID string) {
		est.Rejected++
		if rj := rejected[reason]; rj != nil {
			rj.Requests++
			return
		}
		if len(rejected) >= maxRejectionReasons {
			reason = "other reasons"
			if rj := rejected[reason]; rj != nil {
				rj.Requests++
				return
			}
		}
		rejected[reason] = &Rejection{Reason: reason, Requests: 1, FirstCustomID: customID}
		order = append(order, reason)
	}
	n, err := s.eachRequest(r, func(req store.NewRequest) error {
		model, maxTokens, reason := s.check(req.Params)
		switch {
		case reason != "":
			reject(reason, req.CustomID)
			return nil
		case req.Backend == "" && s.routed:
			reject(fmt.Sprintf("model: no backend serves %q", model), req.CustomID)
			return nil
		}
		m := byModel[model]
		if m == nil {
			m = &ModelEstimate{Model: model}
			byModel[model] = m
		}
		m.Requests++
		m.InputTokens += int64(max(1, len(req.Params)/BytesPerToken))
		m.MaxOutputTokens += maxTokens
		return nil
	})
	if err != nil {
		return nil, err
	}
	est.Requests = n
	prices := s.prices()
	for _, name := range slices.Sorted(maps.Keys(byModel)) {
		m := byModel[name]
		if p, ok := prices.Lookup(name); ok {
			m.Priced = true
			m.MinUSD = p.Batch(cost.Tokens{Input: m.InputTokens})
			m.MaxUSD = p.Batch(cost.Tokens{Input: m.InputTokens, Output: m.MaxOutputTokens})
			est.MinUSD += m.MinUSD
			est.MaxUSD += m.MaxUSD
		} else {
			est.Unpriced = append(est.Unpriced, name)
		}
		est.Models = append(est.Models, *m)
	}
	for _, reason := range order {
		est.Rejections = append(est.Rejections, *rejected[reason])
	}
	return est, nil
}

// check is the dispatcher's check of params (Config.CheckParams), or only
// the model when none is configured.
func (s *Service) check(params json.RawMessage) (model string, maxTokens int64, reason string) {
	if s.cfg.CheckParams != nil {
		return s.cfg.CheckParams(params)
	}
	return paramsModel(params), 0, ""
}
