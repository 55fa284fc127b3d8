package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "batchd.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestExampleConfigLoadsAndBuilds(t *testing.T) {
	t.Parallel()
	c, err := Load(filepath.Join("..", "..", "batchd.example.toml"))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"ANTHROPIC_UPSTREAM_KEY": "sk-ant-test"}
	built, err := c.Build(64, func(k string) string { return env[k] }, nil)
	if err != nil {
		t.Fatal(err)
	}
	for model, want := range map[string]string{"claude-sonnet-4-5": "anthropic", "llama-3-8b": "local", "gpt-4o": "sim"} {
		b, err := built.Router.Lookup(model)
		if err != nil || b.Name() != want {
			t.Errorf("%s routes to %v (%v), want %s", model, b, err, want)
		}
	}
	if built.Limiters["anthropic"] == nil || built.Limiters["anthropic"].Limits().RequestsPerMinute != 4000 {
		t.Errorf("anthropic limits not applied: %+v", built.Limiters["anthropic"])
	}
	if built.Concurrency["anthropic"] != 256 {
		t.Errorf("anthropic workers %d, want max_concurrency 256", built.Concurrency["anthropic"])
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	t.Parallel()
	sim := "[[backends]]\nname = \"sim\"\nkind = \"sim\"\n"
	route := "[[routes]]\nmodel = \"*\"\nbackend = \"sim\"\n"
	tests := map[string]string{
		"[[backends]]\nname = \"a\"\nkind = \"anthropic\"\napi_key = \"sk-secret\"\n" + route: "keys do not belong in the file",
		sim + route + "[[backends]]\nname = \"x\"\nkind = \"sim\"\ncolour = 1\n":              "unknown keys",
		sim: "routes: at least one route",
		sim + "[[routes]]\nmodel = \"*\"\nbackend = \"nope\"\n":                                         `routes.0.backend: no backend named "nope"`,
		sim + "[[routes]]\nmodel = \"[\"\nbackend = \"sim\"\n":                                          "routes.0.model: bad pattern",
		"[[backends]]\nname = \"b\"\nkind = \"anthropic-batch\"\nmax_batch_requests = 100001\n" + route: "backends.0.max_batch_requests",
		sim + route + "[[backends]]\nname = \"c\"\nkind = \"sim\"\nmax_batch_bytes = 5\n":               "anthropic-batch backends only",
		"[[backends]]\nname = \"b\"\nkind = \"grpc\"\n" + route:                                         `backends.0.kind: "grpc"`,
		"[[backends]]\nname = \"o\"\nkind = \"openai\"\n" + route:                                       "backends.0.base_url: required",
		sim + sim + route: `backends.1.name: "sim" is used twice`,
		"[[backends]]\nname = \"s\"\nkind = \"sim\"\nlatency = \"soon\"\n" + route: "latency",
		sim + route + "[[workspaces]]\nmax_cost_usd = 5.0\n":                       "workspaces.0.name: required",
		sim + route + "[[workspaces]]\nname = \"w\"\nmax_cost_usd = -1.0\n":        "workspaces.0.max_cost_usd",
		sim + route + "[[prices]]\ninput = 1.0\n":                                  "prices.0.model: required",
		sim + route + "[[prices]]\nmodel = \"m\"\n[[prices]]\nmodel = \"m\"\n":     `prices.1.model: "m" is priced twice`,
		sim + route + "[[prices]]\nmodel = \"m\"\noutput = -1.0\n":                 "prices.0: prices must be finite and not negative",
		sim + route + "[[prices]]\nmodel = \"m\"\ncache_read = nan\n":              "prices.0: prices must be finite",
	}
	for body, want := range tests {
		_, err := Load(write(t, body))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config:\n%s\nwant error containing %q, got %v", body, want, err)
		}
		if err != nil && strings.Contains(err.Error(), "sk-secret") {
			t.Errorf("an error repeats the key: %v", err)
		}
	}
}

func TestBuildNeedsTheKeyVariable(t *testing.T) {
	t.Parallel()
	c, err := Load(write(t, "[[backends]]\nname = \"a\"\nkind = \"anthropic\"\napi_key_env = \"NOPE_KEY\"\n[[routes]]\nmodel = \"*\"\nbackend = \"a\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Build(8, func(string) string { return "" }, nil); err == nil || !strings.Contains(err.Error(), "NOPE_KEY") {
		t.Fatalf("want an error naming the empty variable, got %v", err)
	}
}

func TestDefaultRoutesEverythingToSim(t *testing.T) {
	t.Parallel()
	built, err := Default(0).Build(64, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := built.Router.Lookup("anything")
	if err != nil || b.Name() != "sim" || len(built.Limiters) != 0 {
		t.Fatalf("default: %v %v %d limiters", b, err, len(built.Limiters))
	}
}

func TestAnthropicBatchBuildsADelegator(t *testing.T) {
	t.Parallel()
	p := write(t, "[[backends]]\nname = \"b\"\nkind = \"anthropic-batch\"\nbase_url = \"http://127.0.0.1:1\"\napi_key_env = \"K\"\n"+
		"max_batch_requests = 10\nmax_batch_bytes = 1000\npoll_interval = \"20ms\"\npoll_max_interval = \"1s\"\n"+
		"[[routes]]\nmodel = \"*\"\nbackend = \"b\"\n")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Build(8, func(string) string { return "" }, nil); err == nil {
		t.Error("built without its key")
	}
	built, err := c.Build(8, func(string) string { return "sk" }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(built.Delegated) != 1 {
		t.Fatalf("delegated %+v", built.Delegated)
	}
	d := built.Delegated[0]
	if d.Name != "b" || d.APIKey != "sk" || d.MaxBatchRequests != 10 || d.MaxBatchBytes != 1000 || d.PollInterval.String() != "20ms" || d.PollMaxInterval.String() != "1s" {
		t.Errorf("delegate config %+v", d)
	}
	if b, err := built.Router.Lookup("claude-x"); err != nil || b.Name() != "b" {
		t.Errorf("route: %v %v", b, err)
	}
	if built.Limiters["b"] != nil {
		t.Error("an anthropic-batch backend got a rate limiter")
	}
}

// TestConcurrencyCeiling: max_concurrency is the ceiling and defaults to
// the server's --concurrency (it was 16 × concurrency, above what the
// README promised); the adaptive limit starts at concurrency (default: the
// ceiling); the backend runs as many workers as its ceiling.
func TestConcurrencyCeiling(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                    string
		limits                  string
		start, ceiling, workers int
	}{
		{"nothing set", "", 64, 64, 64},
		{"a low start", "concurrency = 8\n", 8, 64, 64},
		{"a low guess with room to grow", "concurrency = 8\nmax_concurrency = 128\n", 8, 128, 128},
		{"a ceiling only", "max_concurrency = 128\n", 128, 128, 128},
		{"fixed", "concurrency = 16\nfixed_concurrency = true\n", 16, 64, 64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Load(write(t, "[[backends]]\nname = \"a\"\nkind = \"anthropic\"\napi_key_env = \"K\"\n"+tt.limits+"[[routes]]\nmodel = \"*\"\nbackend = \"a\"\n"))
			if err != nil {
				t.Fatal(err)
			}
			built, err := c.Build(64, func(string) string { return "sk" }, nil)
			if err != nil {
				t.Fatal(err)
			}
			lim := built.Limiters["a"]
			if got := lim.Limits(); got.Concurrency != tt.start || got.MaxConcurrency != tt.ceiling {
				t.Errorf("start %d, ceiling %d; want %d, %d", got.Concurrency, got.MaxConcurrency, tt.start, tt.ceiling)
			}
			if got := lim.Stats().Concurrency; got != tt.start {
				t.Errorf("the adaptive limit starts at %d, want %d", got, tt.start)
			}
			if got := built.Concurrency["a"]; got != tt.workers {
				t.Errorf("%d workers, want %d", got, tt.workers)
			}
		})
	}
}

// TestConcurrencyAboveTheCeilingIsRefused: a start above the ceiling,
// whether max_concurrency is written or defaulted to --concurrency, is a
// configuration error naming the field.
func TestConcurrencyAboveTheCeilingIsRefused(t *testing.T) {
	t.Parallel()
	backend := "[[backends]]\nname = \"a\"\nkind = \"anthropic\"\napi_key_env = \"K\"\n"
	route := "[[routes]]\nmodel = \"*\"\nbackend = \"a\"\n"
	_, err := Load(write(t, backend+"concurrency = 128\nmax_concurrency = 32\n"+route))
	if err == nil || !strings.Contains(err.Error(), "backends.0.concurrency: 128 is above max_concurrency 32") {
		t.Errorf("concurrency above max_concurrency: %v", err)
	}
	c, err := Load(write(t, backend+"concurrency = 128\n"+route))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Build(64, func(string) string { return "sk" }, nil)
	if err == nil || !strings.Contains(err.Error(), "backends.0.concurrency: 128 is above max_concurrency 64 (its default, the server's --concurrency)") {
		t.Errorf("concurrency above the default ceiling: %v", err)
	}
}

func TestPricesOverrideAndExtend(t *testing.T) {
	t.Parallel()
	c, err := Load(write(t, `[[backends]]
name = "sim"
kind = "sim"
[[routes]]
model = "*"
backend = "sim"
[[prices]]
model = "llama-3-8b"
input = 0.2
output = 0.4
[[prices]]
model = "claude-sonnet-4-5"
input = 2
output = 10
cache_read = 0.5
`))
	if err != nil {
		t.Fatal(err)
	}
	tab := c.PriceTable()
	llama, ok := tab.Lookup("llama-3-8b")
	if !ok || llama.Input != 0.2 || llama.Output != 0.4 || llama.CacheWrite5m != 0.25 || llama.CacheWrite1h != 0.4 || llama.CacheRead < 0.0199 || llama.CacheRead > 0.0201 {
		t.Errorf("extended price %+v %v", llama, ok)
	}
	sonnet, _ := tab.Lookup("claude-sonnet-4-5-20250929")
	if sonnet.Input != 2 || sonnet.CacheRead != 0.5 || sonnet.CacheWrite5m != 2.5 {
		t.Errorf("overridden price %+v", sonnet)
	}
	if haiku, ok := tab.Lookup("claude-haiku-4-5"); !ok || haiku.Input != 1 {
		t.Errorf("a shipped price is lost: %+v %v", haiku, ok)
	}
}
