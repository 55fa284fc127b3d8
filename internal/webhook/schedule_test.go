package webhook

import (
	"math/rand/v2"
	"testing"
	"time"
)

func constRnd(v float64) func() float64 { return func() float64 { return v } }

func TestScheduleNominal(t *testing.T) {
	t.Parallel()
	want := []time.Duration{0, 5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour,
		5 * time.Hour, 10 * time.Hour, 14 * time.Hour, 20 * time.Hour, 24 * time.Hour}
	got := Schedule()
	if len(got) != MaxAttempts || len(got) != len(want) {
		t.Fatalf("schedule has %d entries", len(got))
	}
	var total time.Duration
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("schedule[%d] = %s, want %s", i, got[i], want[i])
		}
		total += got[i]
		d, ok := NextDelay(i, 0, constRnd(0.5))
		if !ok || d != want[i] {
			t.Errorf("NextDelay(%d) = %s, %v; want %s", i, d, ok, want[i])
		}
	}
	if want := 75*time.Hour + 35*time.Minute + 5*time.Second; total != want {
		t.Errorf("total = %s, want %s", total, want)
	}
	got[1] = time.Hour // a copy: the package schedule is unchanged
	if d, _ := NextDelay(1, 0, constRnd(0.5)); d != 5*time.Second {
		t.Error("Schedule() exposes the package schedule")
	}
}

func TestNextDelayBounds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		attempt    int
		retryAfter time.Duration
		rnd        float64
		want       time.Duration
		ok         bool
	}{
		{"first attempt immediate", 0, 0, 0.9, 0, true},
		{"negative is first", -3, 0, 0.5, 0, true},
		{"low jitter", 1, 0, 0, 4 * time.Second, true},
		{"high jitter below +20%", 2, 0, 1, 359999640 * time.Microsecond, true},
		{"last retry", 9, 0, 0.5, 24 * time.Hour, true},
		{"exhausted", 10, 0, 0.5, 0, false},
		{"far past the end", 50, time.Hour, 0.5, 0, false},
		{"retry-after shorter than schedule ignored", 3, time.Minute, 0.5, 30 * time.Minute, true},
		{"retry-after within clamp honoured", 2, 8 * time.Minute, 0.5, 8 * time.Minute, true},
		{"retry-after beats low jitter", 2, 5 * time.Minute, 0, 5 * time.Minute, true},
		{"retry-after clamped to 2x", 1, 120 * time.Second, 0.5, 10 * time.Second, true},
		{"retry-after clamped to 24h", 9, 72 * time.Hour, 0, 24 * time.Hour, true},
		{"retry-after on first attempt ignored", 0, time.Hour, 0.5, 0, true},
		{"rnd out of range", 1, 0, 7, 5999999 * time.Microsecond, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d, ok := NextDelay(tt.attempt, tt.retryAfter, constRnd(tt.rnd))
			if ok != tt.ok || d.Round(time.Millisecond) != tt.want.Round(time.Millisecond) {
				t.Errorf("NextDelay = %s, %v; want %s, %v", d, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestNextDelayJitterSpread(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	for attempt := 1; attempt < MaxAttempts; attempt++ {
		base := Schedule()[attempt]
		lo, hi := time.Duration(float64(base)*0.8), time.Duration(float64(base)*1.2)
		minSeen, maxSeen := hi, lo
		for range 2000 {
			d, ok := NextDelay(attempt, 0, r.Float64)
			if !ok || d < lo || d >= hi {
				t.Fatalf("attempt %d: %s outside [%s, %s)", attempt, d, lo, hi)
			}
			minSeen, maxSeen = min(minSeen, d), max(maxSeen, d)
		}
		// The spread really is about ±20%, not a constant.
		if minSeen > time.Duration(float64(base)*0.82) || maxSeen < time.Duration(float64(base)*1.18) {
			t.Errorf("attempt %d: spread [%s, %s] too narrow", attempt, minSeen, maxSeen)
		}
	}
	// nil rnd uses math/rand and stays in bounds.
	for range 100 {
		if d, _ := NextDelay(3, 0, nil); d < 24*time.Minute || d >= 36*time.Minute {
			t.Fatalf("nil rnd: %s", d)
		}
	}
}

// TestResultNextDelay covers the rules that depend on the outcome: the 60 s
// floor after a timeout or a 429, Retry-After 120 s honoured exactly (T11),
// and no retry after success, 410 or an SSRF refusal.
func TestResultNextDelay(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		res     Result
		attempt int
		rnd     float64
		want    time.Duration
		ok      bool
	}{
		{"500 after first", Result{Status: 500, ErrorClass: ClassHTTP5xx}, 1, 0.5, 5 * time.Second, true},
		{"timeout floor", Result{ErrorClass: ClassTimeout}, 1, 0.5, 60 * time.Second, true},
		{"timeout floor low jitter", Result{ErrorClass: ClassTimeout}, 1, 0, 48 * time.Second, true},
		{"429 floor", Result{Status: 429, ErrorClass: ClassHTTP4xx}, 1, 0.5, 60 * time.Second, true},
		{"429 retry-after 120 low jitter", Result{Status: 429, ErrorClass: ClassHTTP4xx, RetryAfter: 120 * time.Second}, 1, 0, 120 * time.Second, true},
		{"429 retry-after 120 high jitter", Result{Status: 429, ErrorClass: ClassHTTP4xx, RetryAfter: 120 * time.Second}, 1, 0.99, 120 * time.Second, true},
		{"503 retry-after 120 at 5m slot", Result{Status: 503, ErrorClass: ClassHTTP5xx, RetryAfter: 120 * time.Second}, 2, 0.5, 5 * time.Minute, true},
		{"floor does not shorten later slots", Result{ErrorClass: ClassTimeout}, 4, 0.5, 2 * time.Hour, true},
		{"exhausted", Result{Status: 500, ErrorClass: ClassHTTP5xx}, 10, 0.5, 0, false},
		{"success", Result{Status: 200, OK: true}, 1, 0.5, 0, false},
		{"gone", Result{Status: 410, Gone: true, ErrorClass: ClassHTTP4xx}, 1, 0.5, 0, false},
		{"ssrf", Result{ErrorClass: ClassSSRFBlocked}, 1, 0.5, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d, ok := tt.res.NextDelay(tt.attempt, constRnd(tt.rnd))
			if ok != tt.ok || d.Round(time.Second) != tt.want {
				t.Errorf("NextDelay = %s, %v; want %s, %v", d, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"120", 120 * time.Second},
		{" 7 ", 7 * time.Second},
		{"0", 0},
		{"-5", 0},
		{"1.5", 0},
		{"99999999999999999999", MaxRetryAfter},
		{"999999", MaxRetryAfter},
		{now.Add(120 * time.Second).Format(http1123), 120 * time.Second},
		{now.Add(-time.Minute).Format(http1123), 0},
		{now.Add(30 * 24 * time.Hour).Format(http1123), MaxRetryAfter},
		{"tomorrow", 0},
	}
	for _, tt := range tests {
		if got := ParseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("ParseRetryAfter(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

const http1123 = "Mon, 02 Jan 2006 15:04:05 GMT"

// TestScaledDelay: the schedule compressed, with the causes' rules kept
// (the throttle floor scales too; a success or 410 still ends it).
func TestScaledDelay(t *testing.T) {
	t.Parallel()
	delay := ScaledDelay(0.01, constRnd(0.5))
	for _, tc := range []struct {
		name    string
		r       Result
		attempt int
		want    time.Duration
		more    bool
	}{
		{"first retry", Result{Status: 503}, 1, 50 * time.Millisecond, true},
		{"third retry", Result{Status: 503}, 3, 18 * time.Second, true},
		{"throttled", Result{Status: 429}, 1, 600 * time.Millisecond, true},
		{"spent", Result{Status: 503}, MaxAttempts, 0, false},
		{"ok", Result{OK: true, Status: 204}, 1, 0, false},
	} {
		if d, more := delay(tc.r, tc.attempt); d != tc.want || more != tc.more {
			t.Errorf("%s: %s %v, want %s %v", tc.name, d, more, tc.want, tc.more)
		}
	}
}
