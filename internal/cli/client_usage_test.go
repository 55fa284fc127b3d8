package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestUsageAgainstARealServer: `batchd usage ID` prints a batch's tokens
// and cost, `usage --since` only the work of the days asked for.
func TestUsageAgainstARealServer(t *testing.T) {
	t.Parallel()
	clock := &shiftClock{offset: 72 * time.Hour}
	url := startRealServer(t, clock.Now)
	old := createEnded(t, url, "old")
	clock.set(0)
	recent := createEnded(t, url, "recent")

	out, stderr, err := runCLI(t, "", "usage", recent, "--base-url", url)
	if err != nil {
		t.Fatalf("usage ID: %v %s", err, stderr)
	}
	if !strings.Contains(out, "claude-sonnet-4-5") || !strings.Contains(out, "at batch price") || strings.Contains(out, "no price for") {
		t.Errorf("usage ID:\n%s", out)
	}

	out, stderr, err = runCLI(t, "", "usage", "--since", "2d", "--by", "batch", "--json", "--base-url", url)
	if err != nil {
		t.Fatalf("usage --since: %v %s", err, stderr)
	}
	var rep struct {
		Data []struct {
			Group string `json:"group"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("usage --json: %v\n%s", err, out)
	}
	if len(rep.Data) != 1 || rep.Data[0].Group != recent {
		t.Errorf("usage --since 2d by batch: %s (old %s, recent %s)", out, old, recent)
	}

	out, _, err = runCLI(t, "", "usage", "--by", "day", "--base-url", url)
	if err != nil || strings.Count(out, "claude-sonnet-4-5") != 2 {
		t.Errorf("usage by day (two days): %v\n%s", err, out)
	}
	if _, _, err := runCLI(t, "", "usage", "--by", "hour", "--base-url", url); err == nil || !strings.Contains(err.Error(), "group_by") {
		t.Errorf("--by hour: %v", err)
	}
	if _, _, err := runCLI(t, "", "usage", recent, "--since", "1d", "--base-url", url); err == nil {
		t.Error("usage ID --since accepted")
	}
}
