// Package server wires batchd together: store, batch service, dispatcher,
// backends and API. `batchd serve` and the integration tests build the same
// Server, so the tests exercise what users run.
package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/batchd/batchd/internal/api"
	"github.com/batchd/batchd/internal/backend/anthropic"
	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/config"
	"github.com/batchd/batchd/internal/delegate"
	"github.com/batchd/batchd/internal/dispatch"
	"github.com/batchd/batchd/internal/ids"
	"github.com/batchd/batchd/internal/leader"
	"github.com/batchd/batchd/internal/metrics"
	"github.com/batchd/batchd/internal/ratelimit"
	"github.com/batchd/batchd/internal/store"
	"github.com/batchd/batchd/internal/store/sqlite"
	"github.com/batchd/batchd/internal/store/storeopen"
	"github.com/batchd/batchd/internal/store/timedstore"
	"github.com/batchd/batchd/internal/webhook"
)

// Config is everything a server takes. Zero values take the defaults of
// the packages they go to.
type Config struct {
	// DataDir holds the SQLite database (batchd.db) unless DatabaseURL
	// names another store, and the webhook key (webhook.key).
	DataDir string
	// DatabaseURL selects the store (see storeopen.Parse): "" is SQLite
	// in DataDir, "sqlite:PATH" SQLite elsewhere, "postgres://…"
	// PostgreSQL, which several processes may share.
	DatabaseURL string
	// Owner names this process in every lease it takes (default
	// ids.Owner(): host, pid, random suffix); two servers never share one.
	Owner string
	// Lease is how long this process's leases (claims, upstream batches,
	// the leadership of the chores) outlive it when it dies without
	// stopping (default 15s): what a crash costs in waiting before the
	// work runs again.
	Lease time.Duration
	// StorageReserve is the disk space batchd keeps back so that deletes and
	// cancels work when the disk is full (default sqlite.DefaultReserve;
	// negative: none).
	StorageReserve int64
	// PublicURL is the base of results_url; empty derives it per request.
	PublicURL string
	// Batch limits and timings; see batch.Config.
	Batch batch.Config
	// Dispatch settings; see dispatch.Config. Retention is taken from
	// Batch.Retention.
	Dispatch dispatch.Config
	// SimLatency is the simulator's default latency, when Backends is nil.
	SimLatency time.Duration
	// Backends configures backends and routes; nil routes every model to
	// the simulator.
	Backends *config.Config
	// Getenv reads the environment variables that hold upstream keys
	// (default os.Getenv).
	Getenv func(string) string
	// Webhooks configures webhook delivery.
	Webhooks WebhookConfig
	// Logger receives all logs (default: discard).
	Logger *slog.Logger
	// Now is the clock shared by every part (default time.Now).
	Now func() time.Time
	// BodyIdleTimeout and MaxConcurrentCreates guard uploads; see
	// api.Config.
	BodyIdleTimeout      time.Duration
	MaxConcurrentCreates int
	// MaxStreamsPerWorkspace caps a workspace's open event streams; see
	// api.Config.
	MaxStreamsPerWorkspace int
	// StreamPollInterval is how often event streams poll the store when
	// nothing wakes them; see api.Config.
	StreamPollInterval time.Duration
}

// Defaults of the upload guards, for the serve flags.
const (
	DefaultBodyIdleTimeout      = api.DefaultBodyIdleTimeout
	DefaultMaxConcurrentCreates = api.DefaultMaxConcurrentCreates
	// DefaultMaxStreamsPerWorkspace is the default cap on a workspace's
	// open event streams.
	DefaultMaxStreamsPerWorkspace = api.DefaultMaxStreamsPerWorkspace
)

// WebhookConfig configures webhook delivery.
type WebhookConfig struct {
	// AllowCIDRs are private ranges receivers may live in
	// (--webhook-allow-cidr); every other non-public address is refused.
	AllowCIDRs []string
	// Timeout bounds one delivery attempt (default 15s).
	Timeout time.Duration
	// PollInterval is the deliverer's longest sleep (default 1s).
	PollInterval time.Duration
	// Rand is the retry jitter's source (default math/rand/v2).
	Rand func() float64
	// BaseURL is where receivers fetch results from (results_url in
	// message_batch.ended); default PublicURL.
	BaseURL string
	// Delay overrides the retry schedule (tests compress it).
	Delay func(r webhook.Result, attempt int) (time.Duration, bool)
	// Key is the key that seals endpoint secrets (BATCHD_WEBHOOK_KEY),
	// the same for every process of a cluster. Without it, KeyFile is
	// read (--webhook-key-file; never created); without either, SQLite
	// uses DataDir/webhook.key, created on first start, and PostgreSQL
	// refuses to start.
	Key     []byte
	KeyFile string
}

// Server is a running batchd, minus its listener.
type Server struct {
	Store      store.Store
	Service    *batch.Service
	Dispatcher *dispatch.Dispatcher
	// Delegators run the anthropic-batch backends, one each.
	Delegators []*delegate.Delegator
	// Deliverer sends webhooks.
	Deliverer *webhook.Deliverer
	// Leader elects the process of a cluster that runs the chores; Close
	// releases it so another takes over at once.
	Leader *leader.Elector
	// Shares keeps each backend limiter's share of the cluster's limits.
	Shares *ratelimit.Shares
	// Metrics is what GET /metrics serves.
	Metrics *metrics.Metrics
	handler *api.API
	log     *slog.Logger
	// wake hands a store notification to the parts it concerns.
	wake func(store.Notification)
	// stopListen ends the store listener; listening is closed once it has.
	stopListen context.CancelFunc
	listening  chan struct{}
}

// SetOpenMode decides whether requests need a key; see api.SetOpenMode.
func (s *Server) SetOpenMode(open bool) { s.handler.SetOpenMode(open) }

// Open opens the store and builds every part; Start begins dispatching.
func Open(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Owner == "" {
		cfg.Owner = ids.Owner()
	}
	cfg.Lease = cmp.Or(cfg.Lease, cfg.Dispatch.Lease, dispatch.DefaultLease)
	target, err := storeopen.Parse(cfg.DatabaseURL, cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("open server: %w", err)
	}
	raw, err := storeopen.Open(ctx, target, storeopen.Options{Reserve: cmp.Or(cfg.StorageReserve, sqlite.DefaultReserve)})
	if err != nil {
		return nil, fmt.Errorf("open server: %w", err)
	}
	// The metrics read the backends and the event streams, built below,
	// only once something scrapes.
	var backends func() []api.BackendInfo
	var subscribers func() int
	mx := metrics.New(metricsSource(raw, func() []api.BackendInfo { return backends() }, func() int { return subscribers() }, cfg.Now), cfg.Logger)
	// Every part uses the store through the wrapper that times its verbs.
	var st store.Store = timedstore.New(raw, mx.StoreOp)
	// One owner and one elector for every part: the leases of a process
	// are all its own, and it leads (or not) as a whole.
	elector := leader.New(st, leader.Config{Owner: cfg.Owner, Lease: cfg.Lease, Now: cfg.Now, Logger: cfg.Logger})
	sealer, err := openSealer(ctx, cfg, target, st)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("open server: %w", err)
	}
	guard, err := webhook.NewGuard(webhook.GuardConfig{AllowCIDRs: cfg.Webhooks.AllowCIDRs})
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("open server: --webhook-allow-cidr: %w", err)
	}
	deliverer := webhook.NewDeliverer(webhook.DelivererConfig{
		OnAttempt: mx.Delivery, Store: st, Sealer: sealer, Guard: guard, BaseURL: strings.TrimRight(cmp.Or(cfg.Webhooks.BaseURL, cfg.PublicURL), "/"),
		Timeout: cfg.Webhooks.Timeout, PollInterval: cfg.Webhooks.PollInterval, Rand: cfg.Webhooks.Rand, Delay: cfg.Webhooks.Delay,
		Logger: cfg.Logger, Now: cfg.Now, Owner: cfg.Owner, Lease: cfg.Lease,
	})
	bcfg := cfg.Backends
	if bcfg == nil {
		bcfg = config.Default(cfg.SimLatency)
	}
	built, err := bcfg.Build(cmp.Or(cfg.Dispatch.Concurrency, 64), cfg.Getenv, cfg.Logger)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("open server: %w", err)
	}
	logBackends(cfg.Logger, bcfg, built)
	// The limits of a backend hold for the whole cluster: each limiter
	// applies this process's leased share of them.
	shares := ratelimit.NewShares(st, built.Limiters, ratelimit.SharesConfig{Owner: cfg.Owner, Lease: cfg.Lease, Now: cfg.Now, Logger: cfg.Logger})
	backends = backendLister(bcfg, built, shares)
	prices := bcfg.PriceTable()
	router := built.Router
	dc := cfg.Dispatch
	dc.Metrics, dc.Prices = mx, prices
	dc.BackendConcurrency = built.Concurrency
	dc.Retention = cfg.Batch.Retention
	dc.Owner, dc.Lease, dc.Leader = cfg.Owner, cfg.Lease, elector
	dc.Logger = cfg.Logger
	dc.Now = cfg.Now
	// A store of many writers (one that notifies its processes) claims
	// beside a completion rather than inside it.
	_, dc.ClaimBeside = unwrap(st).(store.Notifier)
	// Every change the dispatcher commits may have written webhook events
	// and moves progress: the event streams are woken (the API is built
	// below; wakeStreams is set before anything runs).
	var wakeStreams func()
	onChange := dc.OnChange
	dc.OnChange = func(ch *store.BatchChange) {
		if onChange != nil {
			onChange(ch)
		}
		if ch.Ended {
			deliverer.Wake()
			wakeStreams()
		}
	}
	var delegators []*delegate.Delegator
	for _, c := range built.Delegated {
		dc.Delegated = append(dc.Delegated, c.Name)
		c.ClaimInterval = dc.PollInterval
		c.Logger, c.Now, c.OnChange = cfg.Logger, cfg.Now, dc.OnChange
		c.Owner, c.Lease, c.Leader = cfg.Owner, cfg.Lease, elector
		d, err := delegate.New(st, c)
		if err != nil {
			st.Close()
			return nil, fmt.Errorf("open server: backend %s: %w", c.Name, err)
		}
		delegators = append(delegators, d)
	}
	disp := dispatch.New(st, router, dc)
	bc := cfg.Batch
	bc.Now = cfg.Now
	bc.Prices = prices
	bc.Budgets = bcfg.Budgets()
	bc.OnCreated = func() {
		deliverer.Wake()
		wakeStreams()
		disp.Wake()
		for _, d := range delegators {
			d.Wake()
		}
	}
	bc.OnCanceled = func(seq int64) {
		deliverer.Wake()
		wakeStreams()
		disp.Canceled(seq)
		for _, d := range delegators {
			d.Canceled(seq)
		}
	}
	bc.Route = disp.Route
	bc.CheckParams = dispatch.CheckParams
	svc := batch.NewService(st, bc)
	h := api.New(api.Config{Service: svc, Keys: st, PublicURL: cfg.PublicURL, Logger: cfg.Logger, Backends: backends,
		Metrics: mx.Handler(), Ready: readiness(target, st, elector, cfg.Logger),
		Webhooks: &api.Webhooks{Store: st, Sealer: sealer, Guard: guard, Now: cfg.Now, Wake: deliverer.Wake},
		Events:   st, BodyIdleTimeout: cfg.BodyIdleTimeout, MaxConcurrentCreates: cfg.MaxConcurrentCreates,
		MaxStreamsPerWorkspace: cfg.MaxStreamsPerWorkspace, StreamPollInterval: cfg.StreamPollInterval})
	wakeStreams = h.Wake
	subscribers = h.Subscribers
	// A store shared by several processes notifies every commit to all of
	// them: each part is woken as by the callbacks above, which stay for
	// the store that does not notify (SQLite) and for the process that
	// made the change, which hears it first.
	wake := func(n store.Notification) {
		switch n.Kind {
		case store.NotifyCreated:
			disp.Wake()
			for _, d := range delegators {
				d.Wake()
			}
		case store.NotifyCanceled:
			disp.Canceled(n.BatchSeq)
			for _, d := range delegators {
				d.Canceled(n.BatchSeq)
			}
		case store.NotifyEnded:
			disp.Ended(n.BatchSeq)
			for _, d := range delegators {
				d.Ended(n.BatchSeq)
			}
		case store.NotifyDelivery:
			// A freed endpoint slot: nothing but the deliverer cares.
			deliverer.Wake()
			return
		case store.NotifyResync:
			// Anything may have been missed: what polling would find
			// later is looked for now.
			if n.Err != nil {
				cfg.Logger.Warn("store notifications were lost for a while; listening again", "err", n.Err)
			}
			disp.Wake()
			disp.RecheckCanceled()
			for _, d := range delegators {
				d.Wake()
			}
		}
		// Every transition records an event, perhaps with deliveries.
		deliverer.Wake()
		wakeStreams()
	}
	return &Server{Store: st, Service: svc, Dispatcher: disp, Delegators: delegators, Deliverer: deliverer, Leader: elector, Shares: shares, Metrics: mx, handler: h,
		log: cfg.Logger, wake: wake}, nil
}

// Handler is the HTTP API.
func (s *Server) Handler() http.Handler { return s.handler }

// CloseStreams ends the event streams and results downloads in progress,
// which would otherwise hold http.Server.Shutdown until its deadline;
// register it with http.Server.RegisterOnShutdown. See api.CloseStreams.
func (s *Server) CloseStreams() { s.handler.CloseStreams() }

// Start starts dispatching and delegating in the background. Nothing at
// start takes work another process (or this one before a crash) holds
// under a live lease: it comes back once the lease lapses.
func (s *Server) Start(ctx context.Context) error {
	if err := s.Shares.Start(ctx); err != nil {
		return err
	}
	if err := s.Dispatcher.Start(ctx); err != nil {
		s.Shares.Stop(ctx)
		return err
	}
	for i, d := range s.Delegators {
		if err := d.Start(ctx); err != nil {
			for _, started := range s.Delegators[:i] {
				started.Stop(ctx)
			}
			s.Dispatcher.Stop(ctx)
			s.Shares.Stop(ctx)
			return err
		}
	}
	if err := s.Deliverer.Start(ctx); err != nil {
		for _, d := range s.Delegators {
			d.Stop(ctx)
		}
		s.Dispatcher.Stop(ctx)
		s.Shares.Stop(ctx)
		return err
	}
	s.listen(ctx)
	return nil
}

// listen hands the store's notifications, if it sends any, to the parts
// they wake, until Close. Without them (the listener failed to start)
// every part still finds its work by polling.
func (s *Server) listen(ctx context.Context) {
	n, ok := unwrap(s.Store).(store.Notifier)
	if !ok {
		return
	}
	ctx, stop := context.WithCancel(ctx)
	ch, err := n.Listen(ctx)
	if err != nil {
		stop()
		s.log.Error("listen for store notifications failed; wake-ups from other processes wait for polling", "err", err)
		return
	}
	s.stopListen, s.listening = stop, make(chan struct{})
	go func() {
		defer close(s.listening)
		for n := range ch {
			s.wake(n)
		}
	}()
}

// Close stops dispatching and delegating, letting running requests finish
// until ctx ends, and closes the store. Upstream batches go on upstream and
// are resumed by the next leader once this process's lease on them lapses.
func (s *Server) Close(ctx context.Context) error {
	if s.stopListen != nil {
		s.stopListen()
		<-s.listening
	}
	for _, d := range s.Delegators {
		d.Stop(ctx)
	}
	s.Dispatcher.Stop(ctx)
	s.Deliverer.Stop(ctx)
	s.Shares.Stop(ctx)
	s.Leader.Release(context.WithoutCancel(ctx))
	return s.Store.Close()
}

// backendLister describes the configured backends for GET /v1/backends:
// settings, this process's share of the limits and live rate-control
// state, never a key.
func backendLister(c *config.Config, built *config.Built, shares *ratelimit.Shares) func() []api.BackendInfo {
	return func() []api.BackendInfo {
		var out []api.BackendInfo
		for _, b := range c.Backends {
			info := api.BackendInfo{
				Name: b.Name, Kind: b.Kind, Models: []string{},
				Limits: api.BackendLimits{
					Concurrency: built.Concurrency[b.Name], RequestsPerMinute: b.RequestsPerMinute,
					InputTokensPerMinute: b.InputTokensPerMinute, OutputTokensPerMinute: b.OutputTokensPerMinute,
				},
				Concurrency: built.Concurrency[b.Name],
			}
			for _, r := range c.Routes {
				if r.Backend == b.Name {
					info.Models = append(info.Models, r.Model)
				}
			}
			if lim := built.Limiters[b.Name]; lim != nil {
				st := lim.Stats()
				info.Limits.Concurrency = lim.Limits().Concurrency
				info.Limits.MaxConcurrency = st.MaxConcurrency
				info.Concurrency, info.InFlight, info.Throttled, info.LastError = st.Concurrency, st.InFlight, st.Throttled, st.LastError
			}
			if a, ok := shares.Share(b.Name); ok {
				info.ClusterShare = &api.BackendShare{Concurrency: a.Concurrency, RequestsPerMinute: a.RequestsPerMinute,
					InputTokensPerMinute: a.InputTokensPerMinute, OutputTokensPerMinute: a.OutputTokensPerMinute}
			}
			out = append(out, info)
		}
		return out
	}
}

// logBackends logs, at start, what the configuration amounts to: each
// backend with its kind, base URL, the route patterns that reach it and its
// effective limits, then the routes in the order they are matched, so an
// operator can check what will run where. Keys are never logged: only the
// name of the variable that holds one, and base URLs without userinfo or
// query values.
func logBackends(log *slog.Logger, c *config.Config, built *config.Built) {
	for _, b := range c.Backends {
		models := []string{}
		for _, r := range c.Routes {
			if r.Backend == b.Name {
				models = append(models, r.Model)
			}
		}
		attrs := []any{"name", b.Name, "kind", b.Kind, "models", models}
		switch b.Kind {
		case config.KindSim:
			attrs = append(attrs, "latency", b.Latency.Duration)
		case config.KindAnthropic, config.KindAnthropicBatch:
			attrs = append(attrs, "base_url", redactURL(cmp.Or(b.BaseURL, anthropic.DefaultBaseURL)))
		default:
			attrs = append(attrs, "base_url", redactURL(b.BaseURL))
		}
		if b.APIKeyEnv != "" {
			attrs = append(attrs, "api_key_env", b.APIKeyEnv)
		}
		switch lim := built.Limiters[b.Name]; {
		case b.Kind == config.KindAnthropicBatch:
			attrs = append(attrs, "limits", "paced by the upstream's batches")
		case lim != nil:
			l := lim.Limits()
			ceiling := l.MaxConcurrency
			if l.Fixed {
				ceiling = l.Concurrency // a fixed limit never rises
			}
			attrs = append(attrs, "concurrency", l.Concurrency, "max_concurrency", ceiling, "adaptive", !l.Fixed,
				"requests_per_minute", l.RequestsPerMinute, "input_tokens_per_minute", l.InputTokensPerMinute,
				"output_tokens_per_minute", l.OutputTokensPerMinute)
		default: // the simulator without limits: a fixed worker count
			attrs = append(attrs, "concurrency", built.Concurrency[b.Name], "max_concurrency", built.Concurrency[b.Name], "adaptive", false)
		}
		log.Info("backend", attrs...)
	}
	for i, r := range c.Routes {
		log.Info("route", "order", i+1, "model", r.Model, "backend", r.Backend)
	}
}

// redactURL is u with its userinfo and query values masked: either can
// hold a credential.
func redactURL(u string) string {
	if u == "" {
		return ""
	}
	p, err := url.Parse(u)
	if err != nil {
		return "(unparseable URL)"
	}
	if p.RawQuery != "" {
		q := p.Query()
		for k := range q {
			q[k] = []string{"xxxxx"}
		}
		p.RawQuery = q.Encode()
	}
	if p.User != nil {
		p.User = url.User("xxxxx")
	}
	return p.String()
}

// openSealer builds the sealer of endpoint secrets from the configured
// key, and refuses a key that cannot open the secrets already stored
// (store.Store.WebhookKeyCheck), so that a process of a cluster holding
// another key stops here instead of sealing secrets the others cannot
// read and failing to sign the others' deliveries.
func openSealer(ctx context.Context, cfg Config, target storeopen.Target, st store.Store) (*webhook.Sealer, error) {
	key, from := cfg.Webhooks.Key, "BATCHD_WEBHOOK_KEY"
	switch {
	case key != nil:
	case cfg.Webhooks.KeyFile != "":
		from = "--webhook-key-file " + cfg.Webhooks.KeyFile
		k, err := webhook.ReadKey(cfg.Webhooks.KeyFile)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("--webhook-key-file: %w; a named key file is never created: copy the cluster's key there "+
				"(after `batchd migrate --from DIR`, DIR/webhook.key), or make a new one with `head -c 32 /dev/urandom | base64 > %s`", err, cfg.Webhooks.KeyFile)
		}
		if err != nil {
			return nil, fmt.Errorf("--webhook-key-file: %w", err)
		}
		key = k
	case target.Driver == storeopen.Postgres:
		return nil, errors.New("PostgreSQL needs the webhook key that every process of the cluster shares: " +
			"give it with --webhook-key-file PATH or BATCHD_WEBHOOK_KEY (32 bytes in base64, e.g. `head -c 32 /dev/urandom | base64`; " +
			"after `batchd migrate --from DIR`, DIR/webhook.key); a key of this process's own would make the secrets other processes sealed unreadable")
	default:
		from = filepath.Join(cfg.DataDir, "webhook.key")
		k, err := webhook.LoadOrCreateKey(from)
		if err != nil {
			return nil, err
		}
		key = k
	}
	sealer, err := webhook.NewSealer(key)
	if err != nil {
		return nil, fmt.Errorf("webhook key from %s: %w", from, err)
	}
	err = sealer.CheckKey(func(sealed string) ([]string, error) { return st.WebhookKeyCheck(ctx, sealed) })
	if errors.Is(err, webhook.ErrWrongKey) {
		return nil, fmt.Errorf("webhook key from %s: %w in %s; give this process the key they were sealed with "+
			"(--webhook-key-file PATH or BATCHD_WEBHOOK_KEY), the one every other process of the cluster uses", from, err, target)
	}
	return sealer, err
}

// unwrap is the driver under a wrapping store (timedstore), which is what
// offers more than store.Store (a store.Notifier).
func unwrap(st store.Store) store.Store {
	for {
		u, ok := st.(interface{ Unwrap() store.Store })
		if !ok {
			return st
		}
		st = u.Unwrap()
	}
}
