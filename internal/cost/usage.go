package cost

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/batchd/batchd/internal/backend"
)

// Usage is a Message's usage object as encoding/json reads it: the counts
// the pricing and the rate limiter use, and nothing else.
type Usage struct {
	InputTokens              int64          `json:"input_tokens"`
	OutputTokens             int64          `json:"output_tokens"`
	CacheCreationInputTokens int64          `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int64          `json:"cache_read_input_tokens"`
	CacheCreation            *CacheCreation `json:"cache_creation"`
}

// CacheCreation is usage's breakdown of cache writes by lifetime.
type CacheCreation struct {
	Ephemeral5m int64 `json:"ephemeral_5m_input_tokens"`
	Ephemeral1h int64 `json:"ephemeral_1h_input_tokens"`
}

// Tokens are u's counts by kind. Without the cache_creation breakdown
// every cache write counts at the 5-minute rate, as Anthropic's older
// responses imply; a negative count is refused.
func (u Usage) Tokens() (Tokens, error) {
	t := Tokens{Input: u.InputTokens, Output: u.OutputTokens, CacheRead: u.CacheReadInputTokens}
	if c := u.CacheCreation; c != nil && (c.Ephemeral5m != 0 || c.Ephemeral1h != 0) {
		t.CacheWrite5m, t.CacheWrite1h = c.Ephemeral5m, c.Ephemeral1h
	} else {
		t.CacheWrite5m = u.CacheCreationInputTokens
	}
	if t.Input < 0 || t.Output < 0 || t.CacheRead < 0 || t.CacheWrite5m < 0 || t.CacheWrite1h < 0 {
		return Tokens{}, fmt.Errorf("usage: negative token count")
	}
	return t, nil
}

// ParseUsage reads a usage object and prices nothing: its Tokens.
func ParseUsage(raw []byte) (Tokens, error) {
	u, sure := scanUsageObject(raw)
	if !sure {
		u = Usage{}
		if err := json.Unmarshal(raw, &u); err != nil {
			return Tokens{}, fmt.Errorf("parse usage: %w", err)
		}
	}
	return u.Tokens()
}

// MessageUsage reads msg's top-level usage object as encoding/json would:
// present is false when msg has none, ok false when msg is not one object
// encoding/json decodes. The common Message is read in one pass (it runs
// for every reply, in the rate limiter and for the usage totals), which
// also checks msg is valid JSON; anything that pass cannot vouch for is
// decoded by encoding/json, so the two never differ.
func MessageUsage(msg []byte) (u Usage, present, ok bool) {
	_, u, present, ok = readMessage(msg)
	return u, present, ok
}

// readMessage is MessageUsage, reading the model in the same pass ("" for
// none, or one that is not a string).
func readMessage(msg []byte) (model string, u Usage, present, ok bool) {
	if model, u, present, sure := scanMessage(msg); sure {
		return model, u, present, true
	}
	var m struct {
		Model any    `json:"model"`
		Usage *Usage `json:"usage"`
	}
	if json.Unmarshal(msg, &m) != nil {
		return "", Usage{}, false, false
	}
	model, _ = m.Model.(string)
	if m.Usage == nil {
		return model, Usage{}, false, true
	}
	return model, *m.Usage, true, true
}

// scanMessage is readMessage's one pass; sure is false when encoding/json
// could read msg otherwise (or not at all).
func scanMessage(msg []byte) (model string, u Usage, present, sure bool) {
	sure = true
	valid := backend.EachMember(msg, func(name, v []byte) bool {
		switch {
		case string(name) == "usage":
			if present {
				sure = false
				return false
			}
			present = true
			u, sure = scanUsageObject(v)
			return sure
		case string(name) == "model":
			if len(v) >= 2 && v[0] == '"' && bytes.IndexByte(v, '\\') < 0 {
				model = string(v[1 : len(v)-1])
			} else if err := json.Unmarshal(v, &model); err != nil {
				model = ""
			}
		case foldsLike(name, "usage", "model"):
			sure = false
			return false
		}
		return true
	})
	return model, u, present, sure && valid
}

// usageFields are Usage's JSON names, in field order, then CacheCreation's.
var usageFields = [...]string{"input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation"}

var cacheFields = [...]string{"ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"}

// scanUsageObject reads a usage object in one pass. sure is false whenever
// that reading could differ from encoding/json's: v is not an object, a
// name is escaped, not ASCII or matches a field only in case, a field is
// repeated, or a count is not a plain integer of int64's range.
func scanUsageObject(v []byte) (u Usage, sure bool) {
	if len(v) == 0 || v[0] != '{' {
		return Usage{}, false
	}
	sure = true
	var seen [len(usageFields)]bool
	counts := [...]*int64{&u.InputTokens, &u.OutputTokens, &u.CacheCreationInputTokens, &u.CacheReadInputTokens}
	readCount := func(v []byte, dst *int64) bool {
		n, err := strconv.ParseInt(string(v), 10, 64) // not a fraction, an exponent, null or out of range
		if err != nil {
			sure = false
			return false
		}
		*dst = n
		return true
	}
	valid := backend.EachMember(v, func(name, v []byte) bool {
		i := index(name, usageFields[:])
		switch {
		case i < 0:
			if foldsLike(name, usageFields[:]...) {
				sure = false
			}
			return sure
		case seen[i]:
			sure = false
			return false
		}
		seen[i] = true
		if i < len(counts) {
			return readCount(v, counts[i])
		}
		if string(v) == "null" {
			return true
		}
		if v[0] != '{' {
			sure = false
			return false
		}
		c := &CacheCreation{}
		u.CacheCreation = c
		var seenC [len(cacheFields)]bool
		cc := [...]*int64{&c.Ephemeral5m, &c.Ephemeral1h}
		return backend.EachMember(v, func(name, v []byte) bool {
			j := index(name, cacheFields[:])
			switch {
			case j < 0:
				if foldsLike(name, cacheFields[:]...) {
					sure = false
				}
				return sure
			case seenC[j]:
				sure = false
				return false
			}
			seenC[j] = true
			return readCount(v, cc[j])
		}) && sure
	})
	return u, sure && valid
}

func index(name []byte, fields []string) int {
	for i, f := range fields {
		if string(name) == f {
			return i
		}
	}
	return -1
}

// foldsLike reports whether encoding/json could match name, the inside of
// a JSON string, to one of fields without it being exactly that field: it
// is escaped, not ASCII, or equal to one of them but for case.
func foldsLike(name []byte, fields ...string) bool {
	for _, c := range name {
		if c == '\\' || c >= utf8.RuneSelf {
			return true
		}
	}
	for _, f := range fields {
		if bytes.EqualFold(name, []byte(f)) {
			return true
		}
	}
	return false
}
