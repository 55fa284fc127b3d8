package store

import (
	"slices"
	"time"
)

// Amounts are a backend's limits, or a process's share of them: calls in
// flight and the three per-minute figures. Zero in a whole limit means the
// backend has no such limit.
type Amounts struct {
	Concurrency           int
	RequestsPerMinute     int
	InputTokensPerMinute  int
	OutputTokensPerMinute int
}

// LimitShareClaim is one backend's part of LimitSharesRenew: the limit of
// the whole cluster, and what the caller may be using now (Held: the share
// it applies, or more while what is in flight drains down to it).
type LimitShareClaim struct {
	Backend string
	Limit   Amounts
	Held    Amounts
}

// LimitSharesRenewParams renews Owner's shares of each claimed backend's
// limits until Until; a share whose lease lapsed (at or before Now) is
// another process's no longer.
type LimitSharesRenewParams struct {
	Owner  string
	Now    time.Time
	Until  time.Time
	Claims []LimitShareClaim
}

// LimitShareHolding is one live owner's holding of a backend's limits, as
// a driver reads it for GrantShare.
type LimitShareHolding struct {
	Owner string
	Held  Amounts
}

// GrantShare is what owner may apply of c.Limit given the live others'
// holdings of the same backend, the rule both drivers apply in the
// transaction that records it. The fair share is the limit divided by the
// live owners (others and owner), the remainder going one each to the
// first owners in name order, so the fair shares sum to the limit exactly.
// The grant is the fair share, or less when the others still hold more
// than theirs: they drain first, then the owner grows.
func GrantShare(owner string, c LimitShareClaim, others []LimitShareHolding) Amounts {
	names := []string{owner}
	var held Amounts
	for _, o := range others {
		if o.Owner == owner {
			continue
		}
		names = append(names, o.Owner)
		held = held.add(o.Held)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	idx, n := slices.Index(names, owner), len(names)
	grant := func(limit, others int) int {
		if limit <= 0 {
			return 0
		}
		fair := limit / n
		if idx < limit%n {
			fair++
		}
		return max(0, min(fair, limit-others))
	}
	return Amounts{
		Concurrency:           grant(c.Limit.Concurrency, held.Concurrency),
		RequestsPerMinute:     grant(c.Limit.RequestsPerMinute, held.RequestsPerMinute),
		InputTokensPerMinute:  grant(c.Limit.InputTokensPerMinute, held.InputTokensPerMinute),
		OutputTokensPerMinute: grant(c.Limit.OutputTokensPerMinute, held.OutputTokensPerMinute),
	}
}

func (a Amounts) add(b Amounts) Amounts {
	return Amounts{a.Concurrency + b.Concurrency, a.RequestsPerMinute + b.RequestsPerMinute,
		a.InputTokensPerMinute + b.InputTokensPerMinute, a.OutputTokensPerMinute + b.OutputTokensPerMinute}
}

// Max is the larger of a and b in each figure: what an owner holds after
// a renewal, Held or its grant.
func (a Amounts) Max(b Amounts) Amounts {
	return Amounts{max(a.Concurrency, b.Concurrency), max(a.RequestsPerMinute, b.RequestsPerMinute),
		max(a.InputTokensPerMinute, b.InputTokensPerMinute), max(a.OutputTokensPerMinute, b.OutputTokensPerMinute)}
}

// LimitShareGrant is the outcome of one claim of a renewal: Grant is what
// the owner may apply, Record what its row is to hold (the grant, or what
// it still holds above it while it drains).
type LimitShareGrant struct {
	Backend string
	Grant   Amounts
	Record  Amounts
}

// Grants applies GrantShare to each of p's claims, given the others' live
// holdings by backend: the rule both drivers apply inside the renewal's
// transaction.
func (p LimitSharesRenewParams) Grants(live map[string][]LimitShareHolding) []LimitShareGrant {
	out := make([]LimitShareGrant, 0, len(p.Claims))
	for _, c := range p.Claims {
		g := GrantShare(p.Owner, c, live[c.Backend])
		out = append(out, LimitShareGrant{Backend: c.Backend, Grant: g, Record: c.Held.Max(g)})
	}
	return out
}

// RowScanner is what ScanLimitShareHoldings reads: database/sql's and
// pgx's rows both are one.
type RowScanner interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// ScanLimitShareHoldings reads rows of (backend, owner, concurrency,
// requests_pm, input_tokens_pm, output_tokens_pm) into holdings by
// backend. The caller closes rows.
func ScanLimitShareHoldings(rows RowScanner) (map[string][]LimitShareHolding, error) {
	live := map[string][]LimitShareHolding{}
	for rows.Next() {
		var backend string
		var h LimitShareHolding
		if err := rows.Scan(&backend, &h.Owner, &h.Held.Concurrency, &h.Held.RequestsPerMinute,
			&h.Held.InputTokensPerMinute, &h.Held.OutputTokensPerMinute); err != nil {
			return nil, err
		}
		live[backend] = append(live[backend], h)
	}
	return live, rows.Err()
}
