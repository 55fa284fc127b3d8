package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"runtime/trace"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/batchd/batchd/internal/batch"
	"github.com/batchd/batchd/internal/config"
	"github.com/batchd/batchd/internal/dispatch"
	"github.com/batchd/batchd/internal/server"
	"github.com/batchd/batchd/internal/store/sqlite"
	"github.com/batchd/batchd/internal/store/storeopen"
	"github.com/batchd/batchd/internal/webhook"
)

// serveConfig is everything `batchd serve` takes, each with its default.
type serveConfig struct {
	addr            string
	dataDir         string
	databaseURL     string
	lease           time.Duration
	publicURL       string
	concurrency     int
	expireAfter     time.Duration
	retention       time.Duration
	simLatency      time.Duration
	maxAttempts     int
	maxRequests     int
	maxBodyBytes    int64
	maxParamsBytes  int64
	bodyIdle        time.Duration
	idleTimeout     time.Duration
	maxCreates      int
	maxStreams      int
	storageReserve  int64
	maxInProgress   int
	retryBackoff    time.Duration
	retryBackoffMax time.Duration
	requestTimeout  time.Duration
	shutdownTimeout time.Duration
	logLevel        string
	logFormat       string
	cpuProfile      string
	configPath      string
	webhookAllow    []string
	webhookKeyFile  string
	// webhookRetryScale compresses the webhook retry schedule (tests).
	webhookRetryScale float64
}

func newServeCommand() *cobra.Command {
	var c serveConfig
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the batchd server (embedded SQLite, simulator backend by default)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Two: the graceful stop's and the one that cuts it short.
			sigs := make(chan os.Signal, 2)
			signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
			defer signal.Stop(sigs)
			return serve(cmd.Context(), c, sigs)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.addr, "addr", "127.0.0.1:8080", "address to listen on")
	f.StringVar(&c.configPath, "config", "", "backends and routes (TOML); without it every model runs on the simulator")
	f.StringArrayVar(&c.webhookAllow, "webhook-allow-cidr", nil, "a private range webhook receivers may be in (repeatable); others are refused")
	f.StringVar(&c.webhookKeyFile, "webhook-key-file", "",
		"file of the key that seals webhook secrets, the same for every process of a cluster (default $"+envWebhookKey+", the key itself in base64, else DATA_DIR/webhook.key; PostgreSQL needs one of the two)")
	f.StringVar(&c.dataDir, "data-dir", "./batchd-data", "directory of the SQLite database (unless --database-url names another) and the webhook key")
	f.StringVar(&c.databaseURL, "database-url", "",
		"store: sqlite:PATH, a file path, or postgres://… shared by a cluster of processes (default $"+storeopen.EnvURL+", else SQLite in --data-dir)")
	f.DurationVar(&c.lease, "lease", dispatch.DefaultLease, "how long a process's claims and leadership outlive it when it dies: the wait before another process (or it, restarted) takes its work over")
	f.StringVar(&c.publicURL, "public-url", "", "base URL clients reach batchd at, for results_url (default: from each request's Host)")
	f.IntVar(&c.concurrency, "concurrency", 64, "default ceiling on requests in flight per backend (a backend's max_concurrency overrides it)")
	f.DurationVar(&c.expireAfter, "expire-after", batch.DefaultExpireAfter, "a batch expires this long after creation")
	f.DurationVar(&c.retention, "retention", batch.DefaultRetention, "results are kept this long after creation, then archived")
	f.DurationVar(&c.simLatency, "sim-latency", 0, "latency of simulator requests without a latency directive")
	f.IntVar(&c.maxAttempts, "max-attempts", 8, "attempts per request before a transient error becomes its result")
	f.IntVar(&c.maxRequests, "max-requests", batch.DefaultMaxRequests, "requests per batch")
	f.Int64Var(&c.maxBodyBytes, "max-body-bytes", batch.DefaultMaxBodyBytes, "bytes per create body (413 over it)")
	f.DurationVar(&c.bodyIdle, "body-idle-timeout", server.DefaultBodyIdleTimeout, "a create whose body sends nothing for this long is refused (a slow upload that keeps sending is not)")
	f.DurationVar(&c.idleTimeout, "idle-timeout", 2*time.Minute, "an idle keep-alive connection is closed after this long")
	f.IntVar(&c.maxCreates, "max-concurrent-creates", server.DefaultMaxConcurrentCreates, "creates one workspace may upload at once (429 over it)")
	f.Int64Var(&c.storageReserve, "storage-reserve-bytes", sqlite.DefaultReserve, "disk space kept back (batchd.db-reserve) so deletes, cancels and results still work on a full disk")
	f.IntVar(&c.maxStreams, "max-streams-per-workspace", server.DefaultMaxStreamsPerWorkspace, "event streams one workspace may hold open at once (429 over it)")
	f.Int64Var(&c.maxParamsBytes, "max-params-bytes", batch.DefaultMaxParamsBytes, "bytes of one request's params (413 naming requests.N.params over it)")
	f.IntVar(&c.maxInProgress, "max-in-progress", batch.DefaultMaxInProgress, "unended batches per workspace (429 over it)")
	f.DurationVar(&c.retryBackoff, "retry-backoff", time.Second, "first retry delay after a transient error, doubled per attempt")
	f.DurationVar(&c.retryBackoffMax, "retry-backoff-max", 5*time.Minute, "cap on the retry delay")
	f.DurationVar(&c.requestTimeout, "request-timeout", 10*time.Minute, "timeout of one attempt at a request")
	f.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 30*time.Second, "after SIGTERM or SIGINT, how long requests in flight may take to finish before they are abandoned (they run again at the next start)")
	f.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&c.logFormat, "log-format", "text", "text or json")
	f.StringVar(&c.cpuProfile, "cpu-profile", "", "write a CPU profile to this file until shutdown (for benchmarks)")
	f.MarkHidden("cpu-profile")
	f.Float64Var(&c.webhookRetryScale, "webhook-retry-scale", 1, "multiply every webhook retry wait by this (for tests)")
	f.MarkHidden("webhook-retry-scale")
	return cmd
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: %q is neither text nor json", format)
}

// isLoopback reports whether addr listens on loopback only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// forceExitWait bounds the orderly part of an exit forced by a second
// signal (abandoning requests in flight, closing the store), which takes
// milliseconds; past it the process exits regardless.
const forceExitWait = 3 * time.Second

// signalExitCode is the exit code of a stop forced by sig: 128 + its
// number, as a shell reports a process killed by it (130 for SIGINT, 143
// for SIGTERM).
func signalExitCode(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return 1
}

// serve runs the server until ctx ends or a signal arrives on sigs. The
// first signal stops it gracefully: the listener closes, event streams and
// results downloads are ended, requests in flight get --shutdown-timeout
// to finish, and serve returns nil (exit 0). A second signal during that
// stop exits at once with signalExitCode, abandoning the requests in
// flight to their leases: they run again at the next start.
func serve(ctx context.Context, c serveConfig, sigs <-chan os.Signal) error {
	log, err := newLogger(c.logLevel, c.logFormat)
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		select {
		case <-sigs:
			stop()
		case <-ctx.Done():
		}
	}()
	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	if tf := os.Getenv("BATCHD_TRACE"); tf != "" {
		f, err := os.Create(tf)
		if err == nil && trace.Start(f) == nil {
			defer trace.Stop()
		}
	}
	defer tuneGC()()
	if err := prepareDataDir(c.dataDir, func(msg string) { log.Warn(msg) }); err != nil {
		return err
	}
	unlock, err := lockDataDir(c.dataDir)
	if err != nil {
		return err
	}
	defer unlock()
	var backends *config.Config
	if c.configPath != "" {
		if backends, err = config.Load(c.configPath); err != nil {
			return err
		}
	}
	// The flag wins over the environment.
	c.databaseURL = cmp.Or(c.databaseURL, os.Getenv(storeopen.EnvURL))
	var webhookKey []byte
	if env := os.Getenv(envWebhookKey); env != "" && c.webhookKeyFile == "" {
		if webhookKey, err = webhook.ParseKey(env); err != nil {
			return fmt.Errorf("%s: %w", envWebhookKey, err)
		}
	}
	hooks := server.WebhookConfig{AllowCIDRs: c.webhookAllow, Key: webhookKey, KeyFile: c.webhookKeyFile}
	if c.webhookRetryScale != 1 {
		hooks.Delay = webhook.ScaledDelay(c.webhookRetryScale, nil)
	}
	srvParts, err := server.Open(ctx, server.Config{
		Backends:               backends,
		DataDir:                c.dataDir,
		DatabaseURL:            c.databaseURL,
		Lease:                  c.lease,
		PublicURL:              c.publicURL,
		BodyIdleTimeout:        c.bodyIdle,
		MaxConcurrentCreates:   c.maxCreates,
		MaxStreamsPerWorkspace: c.maxStreams,
		StorageReserve:         c.storageReserve,
		Batch: batch.Config{
			MaxRequests:    c.maxRequests,
			MaxBodyBytes:   c.maxBodyBytes,
			MaxParamsBytes: c.maxParamsBytes,
			MaxInProgress:  c.maxInProgress,
			ExpireAfter:    c.expireAfter,
			Retention:      c.retention,
		},
		Dispatch: dispatch.Config{
			Concurrency:    c.concurrency,
			MaxAttempts:    c.maxAttempts,
			BackoffBase:    c.retryBackoff,
			BackoffMax:     c.retryBackoffMax,
			RequestTimeout: c.requestTimeout,
		},
		SimLatency: c.simLatency,
		Webhooks:   hooks,
		Logger:     log,
	})
	if err != nil {
		return err
	}
	// Open mode is decided once, here, before anything is bound: a server
	// that started with keys keeps refusing requests without one even if
	// every key is later revoked.
	keysActive, err := srvParts.Store.KeysActive(ctx)
	if err != nil {
		srvParts.Close(ctx)
		return err
	}
	if !keysActive {
		if !isLoopback(c.addr) {
			srvParts.Close(ctx)
			return fmt.Errorf("refusing to listen on %s without API keys: anyone could use this server; create one with `batchd keys create --workspace NAME --data-dir %s`, or listen on 127.0.0.1", c.addr, c.dataDir)
		}
		log.Warn("no API keys exist: running open, any key is accepted (loopback only); create one with `batchd keys create`")
	}
	srvParts.SetOpenMode(!keysActive)
	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		srvParts.Close(ctx)
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	if c.publicURL == "" {
		srvParts.Deliverer.SetBaseURL("http://" + ln.Addr().String())
	}

	if err := srvParts.Start(ctx); err != nil {
		ln.Close()
		srvParts.Close(ctx)
		return err
	}
	srv := &http.Server{Handler: srvParts.Handler(), ReadHeaderTimeout: 30 * time.Second, IdleTimeout: c.idleTimeout}
	// Shutdown waits for every response in progress: streams and downloads,
	// which last as long as their clients want, are ended when it begins.
	srv.RegisterOnShutdown(srvParts.CloseStreams)
	log.Info("batchd listening", "url", "http://"+ln.Addr().String(), "data_dir", c.dataDir)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	select {
	case err := <-errc:
		srvParts.Close(context.Background())
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing requests in flight; a second signal exits at once", "timeout", c.shutdownTimeout)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), c.shutdownTimeout)
	defer cancel()
	forced := make(chan os.Signal, 1)
	go func() {
		select {
		case sig := <-sigs:
			code := signalExitCode(sig)
			log.Warn("second signal: exiting now; requests in flight are abandoned and run again at the next start", "signal", sig.String(), "exit_code", code)
			forced <- sig
			cancel() // the stop below abandons what is in flight and returns
			time.AfterFunc(forceExitWait, func() { os.Exit(code) })
		case <-shutdownCtx.Done():
		}
	}()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		log.Error("http shutdown", "err", err)
	}
	if err := srvParts.Close(shutdownCtx); err != nil {
		log.Error("close", "err", err)
	}
	select {
	case sig := <-forced:
		log.Info("stopped by a second signal", "signal", sig.String())
		return &ExitError{Code: signalExitCode(sig)}
	default:
	}
	log.Info("stopped")
	return nil
}

// envWebhookKey holds the webhook key itself (standard base64 of its 32
// bytes, what a key file holds) when no --webhook-key-file is given.
const envWebhookKey = "BATCHD_WEBHOOK_KEY"

// lockDataDir takes an exclusive lock on the data dir: a data dir (its
// SQLite database, its webhook key) belongs to one server; processes that
// share a PostgreSQL database each have their own.
func lockDataDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "batchd.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock data dir %s: another batchd serve is using it (%w)", dir, err)
	}
	return func() { f.Close() }, nil
}
