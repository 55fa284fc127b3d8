package openai

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/anthropics/anthropic-sdk-go/v2"

	"github.com/batchd/batchd/internal/backend"
)

// captured is one request the fake upstream received.
type captured struct {
	method, path string
	header       http.Header
	body         []byte
}

// upstream is an httptest server standing in for vLLM, Ollama or OpenAI. It
// records every request and answers with reply.
type upstream struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []captured
}

func newUpstream(t *testing.T, reply http.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.reqs = append(u.reqs, captured{r.Method, r.URL.Path, r.Header.Clone(), body})
		u.mu.Unlock()
		reply(w, r)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

// backend returns a Backend pointed at the fake, with cfg's other settings.
func (u *upstream) backend(t *testing.T, cfg Config) *Backend {
	t.Helper()
	cfg.BaseURL = u.srv.URL + "/v1"
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (u *upstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.reqs)
}

func (u *upstream) last(t *testing.T) captured {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.reqs) == 0 {
		t.Fatal("upstream received no request")
	}
	return u.reqs[len(u.reqs)-1]
}

// answer replies with a fixed status, headers and body.
func answer(status int, header map[string]string, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for k, v := range header {
			w.Header().Set(k, v)
		}
		if strings.HasPrefix(body, "{") {
			w.Header().Set("Content-Type", "application/json")
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// okCompletion is a minimal successful vLLM answer.
const okCompletion = `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"qwen3","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}`

func call(params string) backend.Call {
	return backend.Call{Model: "qwen3", Params: json.RawMessage(params), Attempt: 1}
}

// sameJSON compares two JSON texts by value.
func sameJSON(t *testing.T, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("got invalid JSON %s: %v", got, err)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("want invalid JSON %s: %v", want, err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("JSON mismatch\n got: %s\nwant: %s", got, want)
	}
}

func asError(t *testing.T, err error) *backend.Error {
	t.Helper()
	var be *backend.Error
	if !errors.As(err, &be) {
		t.Fatalf("want *backend.Error, got %T %v", err, err)
	}
	return be
}

func TestNew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, base, wantEndpoint, wantErr string
		timeout                           time.Duration
	}{
		{name: "vllm", base: "http://127.0.0.1:8000/v1", wantEndpoint: "http://127.0.0.1:8000/v1/chat/completions"},
		{name: "trailing slash", base: "https://api.openai.com/v1/", wantEndpoint: "https://api.openai.com/v1/chat/completions"},
		{name: "empty", base: "", wantErr: "base URL: required"},
		{name: "scheme", base: "ftp://host/v1", wantErr: "scheme must be http or https"},
		{name: "no scheme", base: "127.0.0.1:8000/v1", wantErr: "base URL"},
		{name: "no host", base: "http:///v1", wantErr: "host required"},
		{name: "credentials", base: "http://user:hunter2@host/v1", wantErr: "must not contain credentials"},
		{name: "query", base: "http://host/v1?key=1", wantErr: "query or fragment"},
		{name: "negative timeout", base: "http://host/v1", timeout: -time.Second, wantErr: "timeout: must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b, err := New(Config{BaseURL: tt.base, Timeout: tt.timeout})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("error leaks the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.endpoint != tt.wantEndpoint {
				t.Errorf("endpoint = %q, want %q", b.endpoint, tt.wantEndpoint)
			}
			if b.Name() != "openai" || b.timeout != DefaultTimeout {
				t.Errorf("defaults: name %q timeout %s", b.Name(), b.timeout)
			}
		})
	}
	b, err := New(Config{Name: "local-vllm", BaseURL: "http://h/v1", Timeout: time.Second})
	if err != nil || b.Name() != "local-vllm" || b.timeout != time.Second {
		t.Errorf("New with name and timeout: %v %+v", err, b)
	}
}

// TestRequestTranslation checks the Chat Completions body the upstream
// receives for each Anthropic request shape.
func TestRequestTranslation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		params string
		want   string
	}{{
		name:   "minimal",
		params: `{"model":"qwen3","max_tokens":64,"messages":[{"role":"user","content":"Hello"}]}`,
		want:   `{"model":"qwen3","messages":[{"role":"user","content":"Hello"}],"max_tokens":64}`,
	}, {
		name:   "model from the call when params omit it",
		params: `{"max_tokens":8,"messages":[{"role":"user","content":"Hi"}]}`,
		want:   `{"model":"qwen3","messages":[{"role":"user","content":"Hi"}],"max_tokens":8}`,
	}, {
		name: "sampling, stop sequences and user",
		params: `{"model":"m","max_tokens":100,"temperature":0.2,"top_p":0.9,"stop_sequences":["###","END"],
			"metadata":{"user_id":"u-42"},"messages":[{"role":"user","content":"Count"}]}`,
		want: `{"model":"m","messages":[{"role":"user","content":"Count"}],"max_tokens":100,"temperature":0.2,"top_p":0.9,
			"stop":["###","END"],"user":"u-42"}`,
	}, {
		name:   "temperature zero is kept",
		params: `{"model":"m","max_tokens":1,"temperature":0,"messages":[{"role":"user","content":"x"}]}`,
		want:   `{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1,"temperature":0}`,
	}, {
		name:   "system string",
		params: `{"model":"m","max_tokens":10,"system":"Be brief.","messages":[{"role":"user","content":"Hi"}]}`,
		want:   `{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"max_tokens":10}`,
	}, {
		name: "system blocks joined, cache_control dropped",
		params: `{"model":"m","max_tokens":10,"system":[{"type":"text","text":"You are terse."},
			{"type":"text","text":"Answer in French.","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":"Hi"}]}`,
		want: `{"model":"m","messages":[{"role":"system","content":"You are terse.\nAnswer in French."},{"role":"user","content":"Hi"}],"max_tokens":10}`,
	}, {
		name: "text blocks become one string",
		params: `{"model":"m","max_tokens":10,"messages":[{"role":"user","content":[{"type":"text","text":"one"},
			{"type":"text","text":"two","cache_control":{"type":"ephemeral"}}]},
			{"role":"assistant","content":[{"type":"text","text":"ok"}]},{"role":"user","content":"three"}]}`,
		want: `{"model":"m","messages":[{"role":"user","content":"one\ntwo"},{"role":"assistant","content":"ok"},
			{"role":"user","content":"three"}],"max_tokens":10}`,
	}, {
		name: "images base64 and url",
		params: `{"model":"m","max_tokens":10,"messages":[{"role":"user","content":[{"type":"text","text":"Compare"},
			{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}},
			{"type":"image","source":{"type":"url","url":"https://example.com/cat.jpg"},"cache_control":{"type":"ephemeral"}}]}]}`,
		want: `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"Compare"},
			{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}},
			{"type":"image_url","image_url":{"url":"https://example.com/cat.jpg"}}]}],"max_tokens":10}`,
	}, {
		name: "tool use round trip",
		params: `{"model":"m","max_tokens":200,
			"tools":[{"name":"get_weather","description":"Weather for a city",
				"input_schema":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}],
			"tool_choice":{"type":"auto","disable_parallel_tool_use":true},
			"messages":[
				{"role":"user","content":"Weather in Paris and Rome?"},
				{"role":"assistant","content":[{"type":"text","text":"Checking."},
					{"type":"tool_use","id":"toolu_01","name":"get_weather","input":{"city": "Paris"}},
					{"type":"tool_use","id":"toolu_02","name":"get_weather","input":{"city":"Rome"}}]},
				{"role":"user","content":[
					{"type":"tool_result","tool_use_id":"toolu_01","content":"18C sunny"},
					{"type":"tool_result","tool_use_id":"toolu_02","content":[{"type":"text","text":"timeout"},{"type":"text","text":"retry later"}],"is_error":true},
					{"type":"text","text":"Summarise."}]}]}`,
		want: `{"model":"m","max_tokens":200,
			"messages":[
				{"role":"user","content":"Weather in Paris and Rome?"},
				{"role":"assistant","content":"Checking.","tool_calls":[
					{"id":"toolu_01","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},
					{"id":"toolu_02","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Rome\"}"}}]},
				{"role":"tool","tool_call_id":"toolu_01","content":"18C sunny"},
				{"role":"tool","tool_call_id":"toolu_02","content":"Error: timeout\nretry later"},
				{"role":"user","content":"Summarise."}],
			"tools":[{"type":"function","function":{"name":"get_weather","description":"Weather for a city",
				"parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],
			"tool_choice":"auto","parallel_tool_calls":false}`,
	}, {
		name: "tool calls only, thinking history dropped, empty result",
		params: `{"model":"m","max_tokens":50,"tool_choice":{"type":"any"},
			"tools":[{"type":"custom","name":"now","input_schema":{"type":"object"},"strict":true,"cache_control":{"type":"ephemeral"}}],
			"messages":[{"role":"user","content":"Time?"},
				{"role":"assistant","content":[{"type":"thinking","thinking":"call now","signature":"sig"},{"type":"redacted_thinking","data":"xx"},
					{"type":"tool_use","id":"call_9","name":"now","input":{}}]},
				{"role":"user","content":[{"type":"tool_result","tool_use_id":"call_9"}]}]}`,
		want: `{"model":"m","max_tokens":50,
			"messages":[{"role":"user","content":"Time?"},
				{"role":"assistant","tool_calls":[{"id":"call_9","type":"function","function":{"name":"now","arguments":"{}"}}]},
				{"role":"tool","tool_call_id":"call_9","content":""}],
			"tools":[{"type":"function","function":{"name":"now","parameters":{"type":"object"},"strict":true}}],
			"tool_choice":"required"}`,
	}, {
		name: "tool_choice tool",
		params: `{"model":"m","max_tokens":5,"tools":[{"name":"f","input_schema":{"type":"object"}}],
			"tool_choice":{"type":"tool","name":"f"},"messages":[{"role":"user","content":"go"}]}`,
		want: `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"go"}],
			"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],
			"tool_choice":{"type":"function","function":{"name":"f"}}}`,
	}, {
		name: "tool_choice none",
		params: `{"model":"m","max_tokens":5,"tools":[{"name":"f","input_schema":{"type":"object"}}],
			"tool_choice":{"type":"none"},"messages":[{"role":"user","content":"go"}]}`,
		want: `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"go"}],
			"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"tool_choice":"none"}`,
	}, {
		name:   "tool_choice auto without tools is left out",
		params: `{"model":"m","max_tokens":5,"tool_choice":{"type":"auto"},"messages":[{"role":"user","content":"go"}]}`,
		want:   `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"go"}]}`,
	}, {
		name: "hints and defaults dropped, nulls ignored",
		params: `{"model":"m","max_tokens":5,"cache_control":{"type":"ephemeral"},"service_tier":"auto","speed":"standard",
			"diagnostics":{"previous_message_id":null},"thinking":{"type":"disabled"},"stream":false,"top_k":null,
			"metadata":{"user_id":null},"stop_sequences":[],"messages":[{"role":"user","content":"go"}]}`,
		want: `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"go"}]}`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			u := newUpstream(t, answer(200, nil, okCompletion))
			b := u.backend(t, Config{})
			if _, err := b.Do(context.Background(), call(tt.params)); err != nil {
				t.Fatalf("Do: %v", err)
			}
			got := u.last(t)
			if got.method != http.MethodPost || got.path != "/v1/chat/completions" {
				t.Errorf("request %s %s, want POST /v1/chat/completions", got.method, got.path)
			}
			if ct := got.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			sameJSON(t, got.body, tt.want)
		})
	}
}

// TestRejected checks that what cannot be expressed is an invalid request
// naming the field, and that nothing is sent upstream.
func TestRejected(t *testing.T) {
	t.Parallel()
	const user = `{"role":"user","content":"hi"}`
	wrap := func(extra string, msgs ...string) string {
		if len(msgs) == 0 {
			msgs = []string{user}
		}
		if extra != "" {
			extra += ","
		}
		return `{"model":"m","max_tokens":10,` + extra + `"messages":[` + strings.Join(msgs, ",") + `]}`
	}
	tests := []struct {
		name, params, want string
	}{
		{"top_k", wrap(`"top_k":40`), "top_k: not supported by the openai backend"},
		{"thinking enabled", wrap(`"thinking":{"type":"enabled","budget_tokens":2048}`), "thinking: not supported by the openai backend"},
		{"thinking adaptive", wrap(`"thinking":{"type":"adaptive"}`), "thinking: not supported by the openai backend"},
		{"stream", wrap(`"stream":true`), "stream: not supported by the openai backend"},
		{"unknown top-level", wrap(`"frobnicate":1`), "frobnicate: not supported by the openai backend"},
		{"container", wrap(`"container":"c_1"`), "container: not supported by the openai backend"},
		{"output_config", wrap(`"output_config":{"effort":"low"}`), "output_config: not supported by the openai backend"},
		{"inference_geo", wrap(`"inference_geo":"us"`), "inference_geo: not supported by the openai backend"},
		{"mcp_servers", wrap(`"mcp_servers":[]`), "mcp_servers: not supported by the openai backend"},
		{"metadata key", wrap(`"metadata":{"tier":"gold"}`), "metadata.tier: not supported by the openai backend"},
		{"document block", wrap("", `{"role":"user","content":[{"type":"text","text":"read"},{"type":"document","source":{"type":"text","media_type":"text/plain","data":"x"}}]}`),
			`messages.0.content.1.type: "document" not supported by the openai backend`},
		{"image file source", wrap("", `{"role":"user","content":[{"type":"image","source":{"type":"file","file_id":"file_1"}}]}`),
			`messages.0.content.0.source.type: "file" not supported by the openai backend`},
		{"unknown block key", wrap("", `{"role":"user","content":[{"type":"text","text":"x","weight":2}]}`),
			"messages.0.content.0.weight: not supported by the openai backend"},
		{"message key", wrap("", `{"role":"user","content":"x","name":"bob"}`), "messages.0.name: not supported by the openai backend"},
		{"server tool", wrap(`"tools":[{"type":"web_search_20250305","name":"web_search"}]`),
			`tools.0.type: "web_search_20250305" not supported by the openai backend`},
		{"tool key", wrap(`"tools":[{"name":"f","input_schema":{"type":"object"},"defer_loading":true}]`),
			"tools.0.defer_loading: not supported by the openai backend"},
		{"tool_choice type", wrap(`"tools":[{"name":"f","input_schema":{}}],"tool_choice":{"type":"maybe"}`),
			`tool_choice.type: "maybe" not supported by the openai backend`},
		{"image in tool_result", wrap("", user,
			`{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"shot","input":{}}]}`,
			`{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"image","source":{"type":"url","url":"https://x/y.png"}}]}]}`),
			`messages.2.content.0.content.0.type: "image" not supported by the openai backend`},
		{"image from assistant", wrap("", user, `{"role":"assistant","content":[{"type":"image","source":{"type":"url","url":"https://x/y.png"}}]}`, user),
			`messages.1.content.0.type: "image" not supported by the openai backend`},
		{"server_tool_use history", wrap("", user, `{"role":"assistant","content":[{"type":"server_tool_use","id":"s1","name":"web_search","input":{}}]}`, user),
			`messages.1.content.0.type: "server_tool_use" not supported by the openai backend`},
		{"tool_use from user", wrap("", `{"role":"user","content":[{"type":"tool_use","id":"t","name":"f","input":{}}]}`),
			`messages.0.content.0.type: "tool_use" not supported by the openai backend`},
		{"prefill", wrap("", user, `{"role":"assistant","content":"{"}`), "messages.1: a final assistant message (prefill) is not supported by the openai backend"},
		// Plain validation, named the same way.
		{"max_tokens missing", `{"model":"m","messages":[` + user + `]}`, "max_tokens: field required"},
		{"max_tokens zero", `{"model":"m","max_tokens":0,"messages":[` + user + `]}`, "max_tokens: must be at least 1"},
		{"max_tokens type", `{"model":"m","max_tokens":"10","messages":[` + user + `]}`, "max_tokens: must be an integer"},
		{"no messages", `{"model":"m","max_tokens":10,"messages":[]}`, "messages: at least one message is required"},
		{"system role", wrap("", `{"role":"system","content":"x"}`), `messages.0.role: must be "user" or "assistant"`},
		{"content missing", wrap("", `{"role":"user"}`), "messages.0.content: field required"},
		{"system not text", wrap(`"system":[{"type":"image","source":{}}]`), `system.0.type: "image" not supported by the openai backend`},
		{"tool_use input", wrap("", user, `{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":[1]}]}`, user),
			"messages.1.content.0.input: must be an object"},
		{"any without tools", wrap(`"tool_choice":{"type":"any"}`), `tool_choice: type "any" requires tools`},
		{"params not JSON", `{"model":`, "params: not valid JSON"},
		{"params not object", `[1]`, "params: must be a JSON object"},
	}
	u := newUpstream(t, answer(200, nil, okCompletion))
	b := u.backend(t, Config{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			msg, err := b.Do(context.Background(), call(tt.params))
			if err == nil {
				t.Fatalf("Do succeeded with %s", msg)
			}
			be := asError(t, err)
			if be.Type != backend.ErrInvalidRequest || be.Status != 400 || be.Transient() {
				t.Errorf("error = %+v, want a permanent 400 invalid_request_error", be)
			}
			if !strings.Contains(be.Message, tt.want) {
				t.Errorf("message = %q, want containing %q", be.Message, tt.want)
			}
		})
	}
	t.Cleanup(func() {
		if n := u.count(); n != 0 {
			t.Errorf("rejected requests reached the upstream %d times", n)
		}
	})
}

var idPattern = regexp.MustCompile(`^msg_[0-9A-Za-z]{24}$`)

// TestResponseTranslation checks the Anthropic Message made from each kind
// of completion.
func TestResponseTranslation(t *testing.T) {
	t.Parallel()
	usage := func(in, out int) string {
		return fmt.Sprintf(`"usage":{"input_tokens":%d,"output_tokens":%d,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"service_tier":"batch"}`, in, out)
	}
	completion := func(choice string) string {
		return `{"id":"chatcmpl-abc","object":"chat.completion","model":"served-model","choices":[` + choice +
			`],"usage":{"prompt_tokens":30,"completion_tokens":7,"total_tokens":37}}`
	}
	head := `"type":"message","role":"assistant","model":"served-model",`
	tests := []struct {
		name  string
		stops string // request stop_sequences, JSON
		body  string
		want  string // without id
	}{{
		name: "text, stop → end_turn",
		body: completion(`{"index":0,"message":{"role":"assistant","content":"Bonjour"},"finish_reason":"stop"}`),
		want: `{` + head + `"content":[{"type":"text","text":"Bonjour"}],"stop_reason":"end_turn","stop_sequence":null,` + usage(30, 7) + `}`,
	}, {
		name: "length → max_tokens",
		body: completion(`{"index":0,"message":{"role":"assistant","content":"One two"},"finish_reason":"length"}`),
		want: `{` + head + `"content":[{"type":"text","text":"One two"}],"stop_reason":"max_tokens","stop_sequence":null,` + usage(30, 7) + `}`,
	}, {
		name:  "vLLM names the matched stop sequence",
		stops: `["###","END"]`,
		body:  completion(`{"index":0,"message":{"role":"assistant","content":"1 2 3"},"finish_reason":"stop","stop_reason":"END"}`),
		want:  `{` + head + `"content":[{"type":"text","text":"1 2 3"}],"stop_reason":"stop_sequence","stop_sequence":"END",` + usage(30, 7) + `}`,
	}, {
		name:  "vLLM stop token id is a natural end",
		stops: `["###"]`,
		body:  completion(`{"index":0,"message":{"role":"assistant","content":"done"},"finish_reason":"stop","stop_reason":151645}`),
		want:  `{` + head + `"content":[{"type":"text","text":"done"}],"stop_reason":"end_turn","stop_sequence":null,` + usage(30, 7) + `}`,
	}, {
		name:  "stop string not requested is a natural end",
		stops: `["###"]`,
		body:  completion(`{"index":0,"message":{"role":"assistant","content":"done"},"finish_reason":"stop","stop_reason":"</s>"}`),
		want:  `{` + head + `"content":[{"type":"text","text":"done"}],"stop_reason":"end_turn","stop_sequence":null,` + usage(30, 7) + `}`,
	}, {
		name: "tool calls without text",
		body: completion(`{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[
			{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}},
			{"id":"call_2","type":"function","function":{"name":"now","arguments":""}}]},"finish_reason":"tool_calls"}`),
		want: `{` + head + `"content":[{"type":"tool_use","id":"call_1","name":"get_weather","input":{"city":"Paris"}},
			{"type":"tool_use","id":"call_2","name":"now","input":{}}],"stop_reason":"tool_use","stop_sequence":null,` + usage(30, 7) + `}`,
	}, {
		name: "tool call with text, Ollama finish_reason stop, arguments as object",
		body: completion(`{"index":0,"message":{"role":"assistant","content":"Let me check.","tool_calls":[
			{"id":"call_x","type":"function","function":{"name":"lookup","arguments":{"q":"go"}}}]},"finish_reason":"stop"}`),
		want: `{` + head + `"content":[{"type":"text","text":"Let me check."},{"type":"tool_use","id":"call_x","name":"lookup","input":{"q":"go"}}],
			"stop_reason":"tool_use","stop_sequence":null,` + usage(30, 7) + `}`,
	}, {
		name: "content_filter → refusal",
		body: completion(`{"index":0,"message":{"role":"assistant","content":""},"finish_reason":"content_filter"}`),
		want: `{` + head + `"content":[{"type":"text","text":""}],"stop_reason":"refusal","stop_sequence":null,` + usage(30, 7) + `}`,
	}, {
		name: "OpenAI refusal field",
		body: completion(`{"index":0,"message":{"role":"assistant","content":null,"refusal":"I can't help with that."},"finish_reason":"stop"}`),
		want: `{` + head + `"content":[{"type":"text","text":"I can't help with that."}],"stop_reason":"refusal","stop_sequence":null,` + usage(30, 7) + `}`,
	}, {
		name: "text parts content, missing finish_reason",
		body: completion(`{"index":0,"message":{"role":"assistant","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},"finish_reason":null}`),
		want: `{` + head + `"content":[{"type":"text","text":"ab"}],"stop_reason":"end_turn","stop_sequence":null,` + usage(30, 7) + `}`,
	}, {
		name: "no model, no usage, no id",
		body: `{"choices":[{"message":{"role":"assistant","content":"<b>&</b>"},"finish_reason":"stop"}]}`,
		want: `{"type":"message","role":"assistant","model":"qwen3","content":[{"type":"text","text":"<b>&</b>"}],"stop_reason":"end_turn","stop_sequence":null,` + usage(0, 0) + `}`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			u := newUpstream(t, answer(200, nil, tt.body))
			b := u.backend(t, Config{})
			params := `{"model":"qwen3","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`
			if tt.stops != "" {
				params = `{"model":"qwen3","max_tokens":100,"stop_sequences":` + tt.stops + `,"messages":[{"role":"user","content":"hi"}]}`
			}
			raw, err := b.Do(context.Background(), call(params))
			if err != nil {
				t.Fatalf("Do: %v", err)
			}
			if strings.ContainsAny(string(raw), "\n\t") || strings.Contains(string(raw), `\u003c`) {
				t.Errorf("message is not compact, unescaped JSON: %s", raw)
			}
			var m map[string]any
			if err := json.Unmarshal(raw, &m); err != nil {
				t.Fatal(err)
			}
			if id, _ := m["id"].(string); !idPattern.MatchString(id) {
				t.Errorf("id = %q, want msg_ and 24 base62 characters", id)
			}
			delete(m, "id")
			rest, _ := json.Marshal(m)
			sameJSON(t, rest, tt.want)
		})
	}
}

// TestMessageExact pins the byte layout, including a stable id derived from
// the completion id, so retried requests and reruns produce the same id.
func TestMessageExact(t *testing.T) {
	t.Parallel()
	u := newUpstream(t, answer(200, nil, okCompletion))
	b := u.backend(t, Config{})
	p := `{"model":"qwen3","max_tokens":9,"messages":[{"role":"user","content":"hi"}]}`
	raw, err := b.Do(context.Background(), call(p))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":"msg_` + derive("chatcmpl-1") + `","type":"message","role":"assistant","model":"qwen3","content":[{"type":"text","text":"Hi"}],` +
		`"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"service_tier":"batch"}}`
	if string(raw) != want {
		t.Errorf("got  %s\nwant %s", raw, want)
	}
	again, err := b.Do(context.Background(), call(p))
	if err != nil || string(again) != string(raw) {
		t.Errorf("second answer differs: %s (%v)", again, err)
	}
}

// TestSDKDecodesToolUse runs a tool-use round trip and decodes the result
// with the official SDK, the way a batchd client would.
func TestSDKDecodesToolUse(t *testing.T) {
	t.Parallel()
	u := newUpstream(t, answer(200, nil, `{"id":"chatcmpl-tool-7f3a","object":"chat.completion","model":"Qwen/Qwen3-8B",
		"choices":[{"index":0,"message":{"role":"assistant","content":"","reasoning_content":"The user wants weather.",
		"tool_calls":[{"id":"chatcmpl-tool-1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Rome\",\"unit\":\"c\"}"}},
		{"type":"function","function":{"name":"get_time","arguments":"{}"}}]},
		"finish_reason":"tool_calls","stop_reason":null}],"usage":{"prompt_tokens":120,"completion_tokens":40,"total_tokens":160}}`))
	b := u.backend(t, Config{Name: "local-vllm"})
	params := `{"model":"qwen3","max_tokens":256,
		"tools":[{"name":"get_weather","input_schema":{"type":"object"}},{"name":"get_time","input_schema":{"type":"object"}}],
		"messages":[{"role":"user","content":"Weather and time in Rome?"}]}`
	raw, err := b.Do(context.Background(), call(params))
	if err != nil {
		t.Fatal(err)
	}
	var msg anthropic.Message
	if err := json.Unmarshal(raw, &msg); err != nil {
		t.Fatalf("SDK decode: %v\n%s", err, raw)
	}
	if !idPattern.MatchString(msg.ID) || msg.Model != "Qwen/Qwen3-8B" || msg.StopReason != anthropic.StopReasonToolUse {
		t.Errorf("id %q model %q stop_reason %q", msg.ID, msg.Model, msg.StopReason)
	}
	if msg.Usage.InputTokens != 120 || msg.Usage.OutputTokens != 40 {
		t.Errorf("usage = %+v", msg.Usage)
	}
	if len(msg.Content) != 2 {
		t.Fatalf("content = %s, want two tool_use blocks and no empty text", raw)
	}
	first, ok := msg.Content[0].AsAny().(anthropic.ToolUseBlock)
	if !ok || first.ID != "chatcmpl-tool-1" || first.Name != "get_weather" {
		t.Fatalf("first block = %#v", msg.Content[0])
	}
	var in struct{ City, Unit string }
	if err := json.Unmarshal(first.Input, &in); err != nil || in.City != "Rome" || in.Unit != "c" {
		t.Errorf("input = %s (%v)", first.Input, err)
	}
	second := msg.Content[1].AsToolUse()
	if !regexp.MustCompile(`^toolu_[0-9A-Za-z]{24}$`).MatchString(second.ID) || second.Name != "get_time" {
		t.Errorf("second block id %q name %q: want a derived toolu_ id", second.ID, second.Name)
	}

	// Send the calls back with results: they must arrive as tool_calls and
	// tool messages with the same ids.
	params = `{"model":"qwen3","max_tokens":256,"tools":[{"name":"get_weather","input_schema":{"type":"object"}}],
		"messages":[{"role":"user","content":"Weather in Rome?"},
		{"role":"assistant","content":[{"type":"tool_use","id":"` + first.ID + `","name":"get_weather","input":` + string(first.Input) + `}]},
		{"role":"user","content":[{"type":"tool_result","tool_use_id":"` + first.ID + `","content":"21C"}]}]}`
	if _, err := b.Do(context.Background(), call(params)); err != nil {
		t.Fatal(err)
	}
	var sent struct {
		Messages []struct {
			Role       string `json:"role"`
			ToolCallID string `json:"tool_call_id"`
			ToolCalls  []struct {
				ID       string `json:"id"`
				Function struct{ Arguments string }
			} `json:"tool_calls"`
		}
	}
	if err := json.Unmarshal(u.last(t).body, &sent); err != nil {
		t.Fatal(err)
	}
	if len(sent.Messages) != 3 || sent.Messages[1].ToolCalls[0].ID != first.ID || sent.Messages[2].Role != "tool" ||
		sent.Messages[2].ToolCallID != first.ID || sent.Messages[1].ToolCalls[0].Function.Arguments != `{"city":"Rome","unit":"c"}` {
		t.Errorf("round trip sent %s", u.last(t).body)
	}
}

// TestBadCompletion checks that a 2xx answer that is not a usable completion
// is a transient api_error.
func TestBadCompletion(t *testing.T) {
	t.Parallel()
	tool := func(args string) string {
		return `{"id":"c","choices":[{"message":{"role":"assistant","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":` +
			args + `}}]},"finish_reason":"tool_calls"}]}`
	}
	tests := []struct {
		name, body, want string
	}{
		{"malformed JSON", `{"id":"c","choices":[`, "decode completion"},
		{"empty body", ``, "decode completion"},
		{"HTML page", `<html><body>proxy error</body></html>`, "decode completion"},
		{"no choices", `{"id":"c","object":"chat.completion","choices":[]}`, "no choices"},
		{"error with 200", `{"error":{"message":"model crashed","type":"server_error"}}`, "upstream error: model crashed"},
		{"arguments not JSON", tool(`"{\"city\": "`), "arguments are not a JSON object"},
		{"arguments not an object", tool(`"[1,2]"`), "arguments are not a JSON object"},
		{"arguments a number", tool(`7`), "arguments are not a JSON object"},
		{"tool call without name", `{"choices":[{"message":{"tool_calls":[{"id":"t","function":{"arguments":"{}"}}]}}]}`, "no function name"},
		{"content a number", `{"choices":[{"message":{"content":42},"finish_reason":"stop"}]}`, "message content"},
		{"truncated tool call", `{"choices":[{"message":{"tool_calls":[{"id":"t","function":{"name":"f","arguments":"{\"a\":"}}]},"finish_reason":"length"}]}`,
			"raising max_tokens may help"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			u := newUpstream(t, answer(200, nil, tt.body))
			b := u.backend(t, Config{})
			_, err := b.Do(context.Background(), call(`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}]}`))
			be := asError(t, err)
			if be.Type != backend.ErrAPI || !be.Transient() || be.Status != 502 {
				t.Errorf("error = %+v, want transient api_error 502", be)
			}
			if !strings.Contains(be.Message, tt.want) {
				t.Errorf("message = %q, want containing %q", be.Message, tt.want)
			}
		})
	}
}

// TestStatusErrors checks the Anthropic error type, retry hint and message
// for each upstream status, and that every response reaches OnResponse.
func TestStatusErrors(t *testing.T) {
	t.Parallel()
	date := time.Now().Add(30 * time.Second).UTC().Format(http.TimeFormat)
	tests := []struct {
		name             string
		status           int
		header           map[string]string
		body             string
		wantType         string
		wantMsg          string
		minRetry, maxRet time.Duration
	}{
		{name: "400 OpenAI envelope", status: 400,
			body:     `{"error":{"message":"max_tokens is too large: 99999","type":"invalid_request_error","param":"max_tokens","code":null}}`,
			wantType: backend.ErrInvalidRequest, wantMsg: "max_tokens is too large: 99999"},
		{name: "400 vLLM context length", status: 400,
			body:     `{"object":"error","message":"This model's maximum context length is 4096 tokens.","type":"BadRequestError","param":null,"code":400}`,
			wantType: backend.ErrInvalidRequest, wantMsg: "maximum context length is 4096"},
		{name: "422 FastAPI detail", status: 422,
			body:     `{"detail":[{"loc":["body","messages"],"msg":"Field required","type":"missing"}]}`,
			wantType: backend.ErrInvalidRequest, wantMsg: "body.messages: Field required"},
		{name: "404 Ollama model", status: 404, body: `{"error":"model \"llama9\" not found, try pulling it first"}`,
			wantType: backend.ErrNotFound, wantMsg: `model "llama9" not found`},
		{name: "404 llama.cpp envelope", status: 404, body: `{"error":{"code":404,"message":"File Not Found","type":"not_found_error"}}`,
			wantType: backend.ErrNotFound, wantMsg: "File Not Found"},
		{name: "401", status: 401, body: `{"error":{"message":"Invalid API key","type":"invalid_request_error","code":"invalid_api_key"}}`,
			wantType: backend.ErrAuthentication, wantMsg: "Invalid API key"},
		{name: "403", status: 403, body: `{"error":{"message":"Project lacks access","type":"invalid_request_error"}}`,
			wantType: backend.ErrPermission, wantMsg: "Project lacks access"},
		{name: "413 plain text", status: 413, body: "request entity too large",
			wantType: backend.ErrRequestTooLarge, wantMsg: "request entity too large"},
		{name: "429 retry-after seconds", status: 429, header: map[string]string{"Retry-After": "7"},
			body:     `{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}`,
			wantType: backend.ErrRateLimit, wantMsg: "Rate limit reached", minRetry: 7 * time.Second, maxRet: 7 * time.Second},
		{name: "429 retry-after-ms wins", status: 429, header: map[string]string{"Retry-After-Ms": "1500", "Retry-After": "2"},
			body: `{"error":{"message":"slow down"}}`, wantType: backend.ErrRateLimit, wantMsg: "slow down",
			minRetry: 1500 * time.Millisecond, maxRet: 1500 * time.Millisecond},
		{name: "429 retry-after date", status: 429, header: map[string]string{"Retry-After": date},
			body: `{"error":{"message":"later"}}`, wantType: backend.ErrRateLimit, wantMsg: "later",
			minRetry: 25 * time.Second, maxRet: 31 * time.Second},
		{name: "429 insufficient quota", status: 429,
			body:     `{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}`,
			wantType: backend.ErrBilling, wantMsg: "exceeded your current quota"},
		{name: "500", status: 500, body: `{"error":{"message":"EngineCore died","type":"InternalServerError"}}`,
			wantType: backend.ErrAPI, wantMsg: "EngineCore died"},
		{name: "502 HTML", status: 502, body: "<html>bad gateway</html>", wantType: backend.ErrAPI, wantMsg: "HTTP 502 Bad Gateway"},
		{name: "503 overloaded", status: 503, header: map[string]string{"Retry-After": "3"}, body: "",
			wantType: backend.ErrOverloaded, wantMsg: "HTTP 503", minRetry: 3 * time.Second, maxRet: 3 * time.Second},
		{name: "504", status: 504, wantType: backend.ErrTimeout, wantMsg: "HTTP 504"},
		{name: "529", status: 529, wantType: backend.ErrOverloaded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := map[string]string{"X-Upstream": "fake"}
			for k, v := range tt.header {
				h[k] = v
			}
			u := newUpstream(t, answer(tt.status, h, tt.body))
			b := u.backend(t, Config{Name: "local"})
			var seen []int
			var hdr http.Header
			c := call(`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}]}`)
			c.OnResponse = func(status int, header http.Header) {
				seen = append(seen, status)
				hdr = header
			}
			_, err := b.Do(context.Background(), c)
			be := asError(t, err)
			if be.Type != tt.wantType || be.Status != tt.status {
				t.Errorf("type %q status %d, want %q %d", be.Type, be.Status, tt.wantType, tt.status)
			}
			if be.Transient() != backend.IsTransientType(tt.wantType) {
				t.Errorf("transient = %v", be.Transient())
			}
			if !strings.Contains(be.Message, tt.wantMsg) {
				t.Errorf("message = %q, want containing %q", be.Message, tt.wantMsg)
			}
			if be.RetryAfter < tt.minRetry || be.RetryAfter > tt.maxRet {
				t.Errorf("RetryAfter = %s, want %s..%s", be.RetryAfter, tt.minRetry, tt.maxRet)
			}
			if len(seen) != 1 || seen[0] != tt.status || hdr.Get("X-Upstream") != "fake" {
				t.Errorf("OnResponse saw %v, header %v", seen, hdr)
			}
		})
	}
}

func TestOnResponseOnSuccess(t *testing.T) {
	t.Parallel()
	u := newUpstream(t, answer(200, map[string]string{"X-Ratelimit-Remaining-Requests": "99"}, okCompletion))
	b := u.backend(t, Config{})
	c := call(`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}]}`)
	var got string
	c.OnResponse = func(status int, header http.Header) {
		got = fmt.Sprint(status, " ", header.Get("X-Ratelimit-Remaining-Requests"))
	}
	if _, err := b.Do(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	if got != "200 99" {
		t.Errorf("OnResponse got %q", got)
	}
}

// TestTimeout uses servers that hang past Timeout, before the headers and in
// the middle of the body: both must fail quickly as timeout_error.
func TestTimeout(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		handler func(release <-chan struct{}) http.HandlerFunc
	}{
		{"no headers", func(release <-chan struct{}) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-r.Context().Done():
				case <-release:
				}
			}
		}},
		{"stalled body", func(release <-chan struct{}) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(200)
				io.WriteString(w, `{"id":"chatcmpl-1","choices":[`)
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
				case <-release:
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			u := newUpstream(t, tt.handler(release))
			t.Cleanup(func() { close(release) }) // runs before the server closes
			b := u.backend(t, Config{Timeout: 100 * time.Millisecond, APIKey: "sk-timeout-secret"})
			start := time.Now()
			_, err := b.Do(context.Background(), call(`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}]}`))
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("Do took %s with a 100ms timeout", d)
			}
			be := asError(t, err)
			if be.Type != backend.ErrTimeout || !be.Transient() {
				t.Errorf("error = %+v, want transient timeout_error", be)
			}
			if strings.Contains(be.Message, "sk-timeout-secret") {
				t.Errorf("message leaks the key: %q", be.Message)
			}
		})
	}
}

// TestCallerCancel checks that the caller giving up is reported as such, not
// as an upstream timeout.
func TestCallerCancel(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	u := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) })
	b := u.backend(t, Config{Timeout: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := b.Do(ctx, call(`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}]}`))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the caller's context.DeadlineExceeded", err)
	}
}

func TestConnectionError(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	base := srv.URL + "/v1"
	srv.Close()
	b, err := New(Config{Name: "gone", BaseURL: base, APIKey: "sk-conn-secret"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Do(context.Background(), call(`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}]}`))
	be := asError(t, err)
	if be.Type != backend.ErrAPI || !be.Transient() || !strings.Contains(be.Message, "upstream gone unreachable") {
		t.Errorf("error = %+v, want transient api_error naming the backend", be)
	}
	if strings.Contains(be.Message, "sk-conn-secret") {
		t.Errorf("message leaks the key: %q", be.Message)
	}
}

// TestAPIKey checks the key is sent as a bearer token only when set, and is
// scrubbed from errors even when the upstream echoes it.
func TestAPIKey(t *testing.T) {
	t.Parallel()
	const key = "sk-proj-SECRET0123456789"
	tests := []struct {
		name, key, wantAuth string
		status              int
		body                string
	}{
		{"sent", key, "Bearer " + key, 200, okCompletion},
		{"absent", "", "", 200, okCompletion},
		{"echoed in 401", key, "Bearer " + key, 401, `{"error":{"message":"Incorrect API key provided: ` + key + `","type":"invalid_request_error","code":"invalid_api_key"}}`},
		{"echoed in 200 error", key, "Bearer " + key, 200, `{"error":{"message":"bad token ` + key + `"}}`},
		{"echoed in plain text", key, "Bearer " + key, 500, "auth header was Bearer " + key},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			u := newUpstream(t, answer(tt.status, nil, tt.body))
			b := u.backend(t, Config{APIKey: tt.key})
			_, err := b.Do(context.Background(), call(`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}]}`))
			if got := u.last(t).header.Get("Authorization"); got != tt.wantAuth {
				t.Errorf("Authorization = %q, want %q", got, tt.wantAuth)
			}
			if tt.body == okCompletion {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("Do succeeded")
			}
			if strings.Contains(err.Error(), key) || strings.Contains(fmt.Sprintf("%+v", err), key) {
				t.Errorf("error leaks the key: %v", err)
			}
			if !strings.Contains(err.Error(), "[redacted]") {
				t.Errorf("error = %v, want the echoed key replaced by [redacted]", err)
			}
		})
	}
}

// TestConcurrent runs many calls on one Backend for the race detector.
func TestConcurrent(t *testing.T) {
	t.Parallel()
	u := newUpstream(t, answer(200, nil, okCompletion))
	b := u.backend(t, Config{})
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 32 {
		wg.Go(func() {
			_, err := b.Do(context.Background(), call(fmt.Sprintf(`{"model":"m","max_tokens":%d,"messages":[{"role":"user","content":"x"}]}`, i+1)))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if u.count() != 32 {
		t.Errorf("upstream saw %d requests, want 32", u.count())
	}
}

func TestRetryAfterParsing(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		ms, secs string
		want     time.Duration
	}{
		{"", "", 0},
		{"250", "", 250 * time.Millisecond},
		{"12.5", "", 12500 * time.Microsecond},
		{"", "1.5", 1500 * time.Millisecond},
		{"", "0", 0},
		{"", "-3", 0},
		{"junk", "4", 4 * time.Second},
		{"", now.Add(10 * time.Second).Format(http.TimeFormat), 10 * time.Second},
		{"", now.Add(-10 * time.Second).Format(http.TimeFormat), 0},
		{"", "soon", 0},
	}
	for _, tt := range tests {
		h := http.Header{}
		if tt.ms != "" {
			h.Set("retry-after-ms", tt.ms)
		}
		if tt.secs != "" {
			h.Set("retry-after", tt.secs)
		}
		if got := backend.RetryAfter(h, now); got != tt.want {
			t.Errorf("retryAfter(ms=%q, s=%q) = %s, want %s", tt.ms, tt.secs, got, tt.want)
		}
	}
}

func TestClip(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é", maxErrorMessage) // two bytes each
	got := clip(long)
	if len(got) > maxErrorMessage+len("…") || !strings.HasSuffix(got, "…") || !utf8.ValidString(got) {
		t.Errorf("clip gave %d bytes, valid UTF-8 %v", len(got), utf8.ValidString(got))
	}
	if clip("short") != "short" {
		t.Error("clip changed a short message")
	}
}

// TestRedirectFollowed: requests skip http.Client, but an upstream that
// redirects (307, 308: the POST and its body go again) is still followed,
// as the client follows it.
func TestRedirectFollowed(t *testing.T) {
	t.Parallel()
	moved := newUpstream(t, answer(200, nil, okCompletion))
	for _, status := range []int{307, 308} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			t.Parallel()
			u := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, moved.srv.URL+"/v2/chat/completions", status)
			})
			b := u.backend(t, Config{})
			params := `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"moved ` + strconv.Itoa(status) + `"}]}`
			if _, err := b.Do(context.Background(), call(params)); err != nil {
				t.Fatal(err)
			}
			found := false
			moved.mu.Lock()
			for _, r := range moved.reqs {
				found = found || (r.path == "/v2/chat/completions" && strings.Contains(string(r.body), "moved "+strconv.Itoa(status)))
			}
			moved.mu.Unlock()
			if !found {
				t.Errorf("the redirect target never got the request")
			}
		})
	}
}

// TestCallerClientWithJar: a caller's client with a cookie jar is used
// whole (it adds the upstream's cookies), and never writes into the headers
// every call shares: a second call sends one cookie, not two.
func TestCallerClientWithJar(t *testing.T) {
	t.Parallel()
	u := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: "s", Value: "1", Path: "/"})
		answer(200, nil, okCompletion)(w, r)
	})
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	b := u.backend(t, Config{HTTPClient: &http.Client{Jar: jar}})
	params := `{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}]}`
	for range 3 {
		if _, err := b.Do(context.Background(), call(params)); err != nil {
			t.Fatal(err)
		}
	}
	if got := u.last(t).header.Values("Cookie"); len(got) != 1 || got[0] != "s=1" {
		t.Errorf("third call sent Cookie %q, want one s=1", got)
	}
	if got := b.header.Values("Cookie"); len(got) != 0 {
		t.Errorf("the shared headers gained Cookie %q", got)
	}
}
