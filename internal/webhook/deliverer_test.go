package webhook

import (
	"testing"
	"time"
)

// TestNextWait: the deliverer sleeps until the next delivery is due, but
// not in a loop of 5 ms claims for one that the last claim passed over.
func TestNextWait(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	const poll = time.Second
	for _, tc := range []struct {
		name      string
		due, now  time.Time
		claimedAt time.Time
		want      time.Duration
	}{
		{"nothing pending", time.Time{}, t0, t0, poll},
		{"due later", t0.Add(300 * time.Millisecond), t0.Add(100 * time.Millisecond), t0, 200 * time.Millisecond},
		{"due after the poll", t0.Add(time.Hour), t0, t0, poll},
		{"became due since the claim", t0.Add(time.Millisecond), t0.Add(2 * time.Millisecond), t0, 5 * time.Millisecond},
		{"passed over by the claim", t0.Add(-time.Minute), t0.Add(time.Millisecond), t0, poll},
		{"due at the claim itself", t0, t0.Add(time.Millisecond), t0, poll},
	} {
		if got := nextWait(tc.due, tc.claimedAt, tc.now, poll); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}
