// Package config reads batchd's configuration file (TOML): the backends
// and the routes that send models to them. Secrets never live in the file:
// a backend names the environment variable that holds its key.
package config

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/batchd/batchd/internal/backend"
	"github.com/batchd/batchd/internal/backend/anthropic"
	"github.com/batchd/batchd/internal/backend/openai"
	"github.com/batchd/batchd/internal/backend/sim"
	"github.com/batchd/batchd/internal/cost"
	"github.com/batchd/batchd/internal/delegate"
	"github.com/batchd/batchd/internal/ratelimit"
)

// Backend kinds.
const (
	KindSim       = "sim"
	KindAnthropic = "anthropic"
	KindOpenAI    = "openai"
	// KindAnthropicBatch delegates requests to the upstream's own Message
	// Batches API (package delegate), keeping its batch price.
	KindAnthropicBatch = "anthropic-batch"
)

// Duration is a time.Duration written as "10m" in the file.
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// Backend is one [[backends]] entry.
type Backend struct {
	Name    string `toml:"name"`
	Kind    string `toml:"kind"`
	BaseURL string `toml:"base_url"`
	// APIKeyEnv names the environment variable holding the upstream key.
	APIKeyEnv string `toml:"api_key_env"`
	// Version is the anthropic-version the anthropic backend sends.
	Version string   `toml:"version"`
	Timeout Duration `toml:"timeout"`
	// Latency is the sim backend's default latency.
	Latency Duration `toml:"latency"`

	// Rate control; see ratelimit.Limits. MaxConcurrency is the ceiling
	// on calls in flight and the number of workers (default: the server's
	// --concurrency); Concurrency is where the adaptive limit starts
	// (default, and at most, MaxConcurrency), adapted unless
	// fixed_concurrency is set. A low guess with room to grow is
	// concurrency = 8, max_concurrency = 128.
	Concurrency           int  `toml:"concurrency"`
	MaxConcurrency        int  `toml:"max_concurrency"`
	FixedConcurrency      bool `toml:"fixed_concurrency"`
	HalveOn429            bool `toml:"halve_on_429"`
	RequestsPerMinute     int  `toml:"requests_per_minute"`
	InputTokensPerMinute  int  `toml:"input_tokens_per_minute"`
	OutputTokensPerMinute int  `toml:"output_tokens_per_minute"`

	// Delegation (anthropic-batch): upstream batches are split at
	// max_batch_requests and max_batch_bytes (default and at most the
	// upstream's 100,000 and 256 MB) and polled every poll_interval
	// (default 5s), doubling up to poll_max_interval (default 60s).
	MaxBatchRequests int      `toml:"max_batch_requests"`
	MaxBatchBytes    int64    `toml:"max_batch_bytes"`
	PollInterval     Duration `toml:"poll_interval"`
	PollMaxInterval  Duration `toml:"poll_max_interval"`
}

// Route sends models matching Model (a glob such as "claude-*") to Backend.
type Route struct {
	Model   string `toml:"model"`
	Backend string `toml:"backend"`
}

// Config is the whole file.
type Config struct {
	Backends []Backend `toml:"backends"`
	Routes   []Route   `toml:"routes"`
	Prices   []Price   `toml:"prices"`
	// Workspaces holds per-workspace settings: the budget.
	Workspaces []Workspace `toml:"workspaces"`
}

// Workspace is one workspace's settings.
type Workspace struct {
	Name string `toml:"name"`
	// MaxCostUSD is the workspace's budget per calendar month (UTC) at
	// batch price; 0 is none.
	MaxCostUSD float64 `toml:"max_cost_usd"`
}

// Budgets are the workspaces' monthly budgets, by name.
func (c *Config) Budgets() map[string]float64 {
	out := map[string]float64{}
	for _, w := range c.Workspaces {
		if w.MaxCostUSD > 0 {
			out[w.Name] = w.MaxCostUSD
		}
	}
	return out
}

// Price overrides or adds one model's price, in USD per million tokens at
// standard (not batch) rates. Cache prices left out follow input by
// Anthropic's multipliers (1.25×, 2×, 0.1×).
type Price struct {
	Model        string   `toml:"model"`
	Input        float64  `toml:"input"`
	Output       float64  `toml:"output"`
	CacheWrite5m *float64 `toml:"cache_write_5m"`
	CacheWrite1h *float64 `toml:"cache_write_1h"`
	CacheRead    *float64 `toml:"cache_read"`
}

// cost is p in the cost package's form.
func (p Price) cost() cost.Price {
	// Cache prices left out follow the input price; a zero given is kept.
	c := cost.Price{Input: p.Input, Output: p.Output}.Complete()
	if p.CacheWrite5m != nil {
		c.CacheWrite5m = *p.CacheWrite5m
	}
	if p.CacheWrite1h != nil {
		c.CacheWrite1h = *p.CacheWrite1h
	}
	if p.CacheRead != nil {
		c.CacheRead = *p.CacheRead
	}
	return c
}

// PriceTable is the shipped price table with the file's prices over it.
func (c *Config) PriceTable() *cost.Table {
	over := map[string]cost.Price{}
	for _, p := range c.Prices {
		over[p.Model] = p.cost()
	}
	return cost.Default().With(over)
}

// Load reads and validates the file at path.
func Load(path string) (*Config, error) {
	var c Config
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		var keys []string
		for _, k := range undecoded {
			if k[len(k)-1] == "api_key" {
				return nil, fmt.Errorf("config %s: %s: keys do not belong in the file; put the key in an environment variable and name it with api_key_env", path, k)
			}
			keys = append(keys, k.String())
		}
		return nil, fmt.Errorf("config %s: unknown keys: %s", path, strings.Join(keys, ", "))
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &c, nil
}

// Default is the configuration without a file: every model to the
// simulator.
func Default(simLatency time.Duration) *Config {
	return &Config{
		Backends: []Backend{{Name: "sim", Kind: KindSim, Latency: Duration{simLatency}}},
		Routes:   []Route{{Model: "*", Backend: "sim"}},
	}
}

func (c *Config) validate() error {
	names := map[string]bool{}
	for i, b := range c.Backends {
		field := fmt.Sprintf("backends.%d", i)
		switch {
		case b.Name == "":
			return fmt.Errorf("%s.name: required", field)
		case names[b.Name]:
			return fmt.Errorf("%s.name: %q is used twice", field, b.Name)
		}
		names[b.Name] = true
		switch b.Kind {
		case KindSim:
		case KindAnthropic, KindOpenAI:
			if b.Kind == KindOpenAI && b.BaseURL == "" {
				return fmt.Errorf("%s.base_url: required for an openai backend", field)
			}
		case KindAnthropicBatch:
			switch {
			case b.MaxBatchRequests < 0 || b.MaxBatchRequests > delegate.MaxBatchRequests:
				return fmt.Errorf("%s.max_batch_requests: %d is not between 1 and the upstream's limit %d", field, b.MaxBatchRequests, delegate.MaxBatchRequests)
			case b.MaxBatchBytes < 0 || b.MaxBatchBytes > delegate.MaxBatchBytes:
				return fmt.Errorf("%s.max_batch_bytes: %d is not between 1 and the upstream's limit %d", field, b.MaxBatchBytes, delegate.MaxBatchBytes)
			case b.PollInterval.Duration < 0 || b.PollMaxInterval.Duration < 0:
				return fmt.Errorf("%s.poll_interval: must not be negative", field)
			}
		default:
			return fmt.Errorf("%s.kind: %q is not one of sim, anthropic, anthropic-batch, openai", field, b.Kind)
		}
		if b.Kind != KindAnthropicBatch && (b.MaxBatchRequests != 0 || b.MaxBatchBytes != 0 || b.PollInterval.Duration != 0 || b.PollMaxInterval.Duration != 0) {
			return fmt.Errorf("%s: max_batch_requests, max_batch_bytes and poll_interval are for anthropic-batch backends only", field)
		}
		if b.Concurrency < 0 || b.MaxConcurrency < 0 || b.RequestsPerMinute < 0 || b.InputTokensPerMinute < 0 || b.OutputTokensPerMinute < 0 {
			return fmt.Errorf("%s: limits must not be negative", field)
		}
		if b.MaxConcurrency > 0 && b.Concurrency > b.MaxConcurrency {
			return ceilingError(field, b.Concurrency, b.MaxConcurrency, false)
		}
	}
	priced := map[string]bool{}
	for i, p := range c.Prices {
		field := fmt.Sprintf("prices.%d", i)
		switch {
		case !cost.ValidModelID(p.Model):
			return fmt.Errorf("%s.model: required, a model id without spaces", field)
		case priced[p.Model]:
			return fmt.Errorf("%s.model: %q is priced twice", field, p.Model)
		}
		priced[p.Model] = true
		for _, v := range []*float64{&p.Input, &p.Output, p.CacheWrite5m, p.CacheWrite1h, p.CacheRead} {
			if v != nil && (*v < 0 || math.IsNaN(*v) || math.IsInf(*v, 0)) {
				return fmt.Errorf("%s: prices must be finite and not negative (USD per million tokens)", field)
			}
		}
	}
	spaces := map[string]bool{}
	for i, w := range c.Workspaces {
		field := fmt.Sprintf("workspaces.%d", i)
		switch {
		case w.Name == "":
			return fmt.Errorf("%s.name: required", field)
		case spaces[w.Name]:
			return fmt.Errorf("%s.name: %q is used twice", field, w.Name)
		case w.MaxCostUSD < 0 || math.IsNaN(w.MaxCostUSD) || math.IsInf(w.MaxCostUSD, 0):
			return fmt.Errorf("%s.max_cost_usd: must be a finite amount of USD, not negative", field)
		}
		spaces[w.Name] = true
	}
	if len(c.Routes) == 0 {
		return errors.New("routes: at least one route is needed")
	}
	for i, r := range c.Routes {
		if _, err := path.Match(r.Model, ""); err != nil {
			return fmt.Errorf("routes.%d.model: bad pattern %q", i, r.Model)
		}
		if !names[r.Backend] {
			return fmt.Errorf("routes.%d.backend: no backend named %q", i, r.Backend)
		}
	}
	return nil
}

// ceilingError says that a backend's starting concurrency is above its
// ceiling, naming both fields.
func ceilingError(field string, conc, ceiling int, defaulted bool) error {
	from := ""
	if defaulted {
		from = " (its default, the server's --concurrency)"
	}
	return fmt.Errorf("%s.concurrency: %d is above max_concurrency %d%s, the most calls in flight; raise max_concurrency or lower concurrency", field, conc, ceiling, from)
}

// Built is the running form of a configuration.
type Built struct {
	Router *backend.Router
	// Limiters are the rate-controlled backends, by name, for listing.
	Limiters map[string]*ratelimit.Limiter
	// Backends lists each backend's settings, for GET /v1/backends.
	Backends []Backend
	// Concurrency is each backend's worker count: its maximum concurrency.
	Concurrency map[string]int
	// Delegated are the anthropic-batch backends, whose requests a
	// delegate.Delegator runs instead of the dispatcher.
	Delegated []delegate.Config
}

// Build creates the backends and the router. defaultConcurrency (the
// server's --concurrency) is each backend's ceiling unless it sets
// max_concurrency; getenv reads the key variables (os.Getenv in
// production); logger receives the rate controllers' debug logs (nil:
// discard).
func (c *Config) Build(defaultConcurrency int, getenv func(string) string, logger *slog.Logger) (*Built, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	out := &Built{Limiters: map[string]*ratelimit.Limiter{}, Backends: c.Backends, Concurrency: map[string]int{}}
	byName := map[string]backend.Backend{}
	for i, b := range c.Backends {
		var inner backend.Backend
		key := ""
		if b.APIKeyEnv != "" {
			key = getenv(b.APIKeyEnv)
			if key == "" {
				return nil, fmt.Errorf("backend %s: environment variable %s (api_key_env) is empty", b.Name, b.APIKeyEnv)
			}
		}
		var err error
		switch b.Kind {
		case KindSim:
			s := sim.New(sim.Config{Latency: b.Latency.Duration})
			inner = named{s, b.Name}
		case KindAnthropic:
			if key == "" {
				return nil, fmt.Errorf("backend %s: api_key_env is required for an anthropic backend", b.Name)
			}
			inner, err = anthropic.New(anthropic.Config{Name: b.Name, BaseURL: b.BaseURL, APIKey: key, Version: b.Version, Timeout: b.Timeout.Duration})
		case KindOpenAI:
			inner, err = openai.New(openai.Config{Name: b.Name, BaseURL: b.BaseURL, APIKey: key, Timeout: b.Timeout.Duration})
		case KindAnthropicBatch:
			if key == "" {
				return nil, fmt.Errorf("backend %s: api_key_env is required for an anthropic-batch backend", b.Name)
			}
			dc := delegate.Config{Name: b.Name, BaseURL: b.BaseURL, APIKey: key, Version: b.Version, Timeout: b.Timeout.Duration,
				MaxBatchRequests: b.MaxBatchRequests, MaxBatchBytes: b.MaxBatchBytes,
				PollInterval: b.PollInterval.Duration, PollMaxInterval: b.PollMaxInterval.Duration}
			// No rate limiter: the upstream paces its own batches.
			out.Delegated = append(out.Delegated, dc)
			byName[b.Name] = &delegate.Backend{Config: dc}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("backend %s: %w", b.Name, err)
		}
		if b.Kind == KindSim && !b.FixedConcurrency && b.MaxConcurrency == 0 && b.RequestsPerMinute == 0 && b.InputTokensPerMinute == 0 && b.OutputTokensPerMinute == 0 {
			// The simulator has no upstream to protect: no limiter, and
			// concurrency (default --concurrency) calls in flight.
			out.Concurrency[b.Name] = cmp.Or(b.Concurrency, defaultConcurrency)
			byName[b.Name] = inner
			continue
		}
		ceiling := cmp.Or(b.MaxConcurrency, defaultConcurrency)
		if b.Concurrency > ceiling {
			return nil, ceilingError(fmt.Sprintf("backends.%d", i), b.Concurrency, ceiling, b.MaxConcurrency == 0)
		}
		lim := ratelimit.New(inner, ratelimit.Limits{
			Concurrency: cmp.Or(b.Concurrency, ceiling), MaxConcurrency: ceiling, Fixed: b.FixedConcurrency, HalveOn429: b.HalveOn429,
			RequestsPerMinute: b.RequestsPerMinute, InputTokensPerMinute: b.InputTokensPerMinute, OutputTokensPerMinute: b.OutputTokensPerMinute,
			Logger: logger,
		})
		out.Limiters[b.Name] = lim
		out.Concurrency[b.Name] = lim.Limits().MaxConcurrency
		byName[b.Name] = lim
	}
	var routes []backend.Route
	for _, r := range c.Routes {
		routes = append(routes, backend.Route{Pattern: r.Model, Backend: byName[r.Backend]})
	}
	out.Router = backend.NewRouter(routes...)
	return out, nil
}

// named gives a backend the name the configuration chose.
type named struct {
	backend.Backend
	name string
}

func (n named) Name() string { return n.name }
