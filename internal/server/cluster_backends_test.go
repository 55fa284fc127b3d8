package server_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/batchd/batchd/internal/backend/backendtest"
	"github.com/batchd/batchd/internal/server"
)

// backendShares reads GET /v1/backends of ts: each backend's configured
// max_concurrency and the concurrency of its cluster_share (-1: null).
func backendShares(t *testing.T, ts *testServer) (max, share map[string]int) {
	t.Helper()
	r := do(t, "GET", ts.URL+"/v1/backends", nil)
	var list struct {
		Data []struct {
			Name   string `json:"name"`
			Limits struct {
				MaxConcurrency int `json:"max_concurrency"`
			} `json:"limits"`
			ClusterShare *struct {
				Concurrency       int `json:"concurrency"`
				RequestsPerMinute int `json:"requests_per_minute"`
			} `json:"cluster_share"`
		} `json:"data"`
	}
	if err := json.Unmarshal(r.Body, &list); err != nil {
		t.Fatalf("GET /v1/backends: %v %s", err, r.Body)
	}
	max, share = map[string]int{}, map[string]int{}
	for _, d := range list.Data {
		max[d.Name] = d.Limits.MaxConcurrency
		share[d.Name] = -1
		if d.ClusterShare != nil {
			share[d.Name] = d.ClusterShare.Concurrency
		}
	}
	return max, share
}

// TestBackendsShowClusterShare: GET /v1/backends shows, besides the
// configured limits, this process's share of them: the whole limit for a
// process alone (SQLite), and its part when processes share a database.
// Before, it showed only the configured max_concurrency, the same on
// every process whatever each could send.
func TestBackendsShowClusterShare(t *testing.T) {
	t.Parallel()
	const c = 10
	up := backendtest.NewUpstream(t, c, time.Millisecond)
	t.Run("alone", func(t *testing.T) {
		t.Parallel()
		ts := newTestServer(t, withConfig(withCappedUpstream(up, c, "sk-alone")))
		max, share := backendShares(t, ts)
		if max["up"] != c || share["up"] != c {
			t.Fatalf("alone: max_concurrency %d, cluster_share %d; want %d and %d", max["up"], share["up"], c, c)
		}
	})
	t.Run("cluster", func(t *testing.T) {
		t.Parallel()
		url := clusterURL(t)
		var procs []*testServer
		for _, key := range []string{"sk-a", "sk-b"} {
			procs = append(procs, clusterServer(t, url, func(cfg *server.Config) { withCappedUpstream(up, c, key)(cfg) }))
		}
		waitFor(t, 10*clusterLease, "each process to show half the limit as its share", func() bool {
			for _, p := range procs {
				max, share := backendShares(t, p)
				if max["up"] != c || share["up"] != c/2 {
					return false
				}
			}
			return true
		})
		for i, p := range procs {
			max, share := backendShares(t, p)
			t.Logf("process %d: max_concurrency %d, cluster_share %d", i, max["up"], share["up"])
		}
	})
}
