// Package server wires batchd together: store, batch service, dispatcher,
// backends and API. `batchd serve` and the integration tests build the same
// Server, so the tests exercise what users run.
package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"time"

	"github.com/batchd/batchd/internal/api"
	"github.com/batchd/batchd/internal/backend"
	"github.com/batchd/batchd/internal/backend/sim"
	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/dispatch"
	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/sqlite"
)

// Config is everything a server takes. Zero values take the defaults of
// the packages they go to.
type Config struct {
	// DataDir holds the SQLite database (batchd.db).
	DataDir string
	// PublicURL is the base of results_url; empty derives it per request.
	PublicURL string
	// Batch limits and timings; see batch.Config.
	Batch batch.Config
	// Dispatch settings; see dispatch.Config. Retention is taken from
	// Batch.Retention.
	Dispatch dispatch.Config
	// SimLatency is the simulator's default latency.
	SimLatency time.Duration
	// Logger receives all logs (default: discard).
	Logger *slog.Logger
	// Now is the clock shared by every part (default time.Now).
	Now func() time.Time
}

// Server is a running batchd, minus its listener.
type Server struct {
	Store      store.Store
	Service    *batch.Service
	Dispatcher *dispatch.Dispatcher
	handler    http.Handler
}

// Open opens the store and builds every part; Start begins dispatching.
func Open(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	st, err := sqlite.Open(ctx, filepath.Join(cfg.DataDir, "batchd.db"))
	if err != nil {
		return nil, fmt.Errorf("open server: %w", err)
	}
	router := backend.NewRouter(backend.Route{Pattern: "*", Backend: sim.New(sim.Config{Latency: cfg.SimLatency})})
	dc := cfg.Dispatch
	dc.Retention = cfg.Batch.Retention
	dc.RescueAllAtStart = true // one process owns an SQLite data dir
	dc.Logger = cfg.Logger
	dc.Now = cfg.Now
	disp := dispatch.New(st, router, dc)
	bc := cfg.Batch
	bc.Now = cfg.Now
	bc.OnCreated = disp.Wake
	bc.OnCanceled = disp.Canceled
	bc.Route = disp.Route
	svc := batch.NewService(st, bc)
	h := api.New(api.Config{Service: svc, Keys: st, PublicURL: cfg.PublicURL, Logger: cfg.Logger})
	return &Server{Store: st, Service: svc, Dispatcher: disp, handler: h}, nil
}

// Handler is the HTTP API.
func (s *Server) Handler() http.Handler { return s.handler }

// Start starts dispatching in the background.
func (s *Server) Start(ctx context.Context) error { return s.Dispatcher.Start(ctx) }

// Close stops dispatching, letting running requests finish until ctx ends,
// and closes the store.
func (s *Server) Close(ctx context.Context) error {
	s.Dispatcher.Stop(ctx)
	return s.Store.Close()
}
