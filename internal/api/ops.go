package api

import (
	"context"
	"encoding/json"
	"net/http"
	"time"
)

// Readiness is the body of GET /readyz: whether this process should get
// traffic, and why not.
type Readiness struct {
	Ready bool `json:"ready"`
	// Driver is the store's driver, "sqlite" or "postgres".
	Driver string `json:"driver"`
	// Store is "ok" when the store answered, else what failed.
	Store string `json:"store"`
	// Migrations is "current" when the store's schema is this binary's,
	// else what differs.
	Migrations string `json:"migrations"`
	// Leader says whether this process holds the leader lease (runs the
	// chores); with SQLite the one process always does.
	Leader bool `json:"leader"`
}

// handleOps registers the unauthenticated operations endpoints: they say
// nothing of any workspace (no ids, no custom_ids), so a load balancer or
// Prometheus needs no key.
func (a *API) handleOps() {
	a.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"status":"ok"}`))
	})
	if a.cfg.Ready != nil {
		a.mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
			defer cancel()
			rd := a.cfg.Ready(ctx)
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "no-store")
			if !rd.Ready {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			json.NewEncoder(w).Encode(rd)
		})
	}
	if a.cfg.Metrics != nil {
		a.mux.Handle("GET /metrics", a.cfg.Metrics)
	}
}

// Subscribers is how many event streams are open on this process.
func (a *API) Subscribers() int {
	if a.hub == nil {
		return 0
	}
	a.hub.mu.Lock()
	defer a.hub.mu.Unlock()
	n := 0
	for _, subs := range a.hub.byWS {
		n += len(subs)
	}
	return n
}
