package cli

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// recordedRequest is what a webhooks command sent.
type recordedRequest struct {
	method, path, query, apiKey string
	body                        map[string]any
}

// newRecordingServer answers every request with status and answer and
// records it.
func newRecordingServer(t *testing.T, status int, answer string) (*httptest.Server, func() []recordedRequest) {
	t.Helper()
	var (
		mu   sync.Mutex
		reqs []recordedRequest
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		rec := recordedRequest{method: r.Method, path: r.URL.Path, query: r.URL.RawQuery, apiKey: firstNonEmpty(r.Header.Get("X-Api-Key"), strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))}
		if len(data) > 0 {
			if err := json.Unmarshal(data, &rec.body); err != nil {
				t.Errorf("%s %s: body %q: %v", r.Method, r.URL.Path, data, err)
			}
		}
		mu.Lock()
		reqs = append(reqs, rec)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, answer)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []recordedRequest {
		mu.Lock()
		defer mu.Unlock()
		return append([]recordedRequest(nil), reqs...)
	}
}

const (
	wireEndpointJSON = `{"id":"whep_1","type":"webhook_endpoint","url":"https://example.com/hook","description":"d","event_types":["message_batch.ended"],` +
		`"enabled":true,"disabled_reason":null,"failing_since":null,"created_at":"2026-11-29T10:00:00Z","updated_at":"2026-11-29T10:00:00Z"}`
	wireEndpointWithSecret = `{"id":"whep_1","type":"webhook_endpoint","url":"https://example.com/hook","description":"","event_types":[],` +
		`"enabled":true,"disabled_reason":null,"failing_since":null,"created_at":"2026-11-29T10:00:00Z","updated_at":"2026-11-29T10:00:00Z","secret":"whsec_c2VjcmV0"}`
)

func TestWebhooksCommands(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		args       []string
		answer     string
		wantMethod string
		wantPath   string
		wantQuery  string
		wantBody   map[string]any
		wantOut    []string // substrings of stdout
		wantErr    []string // substrings of stderr
	}{
		{
			name:   "CreateAll",
			args:   []string{"create", "--url", "https://example.com/hook"},
			answer: wireEndpointWithSecret, wantMethod: "POST", wantPath: "/v1/webhooks/endpoints",
			wantBody: map[string]any{"url": "https://example.com/hook"},
			wantOut:  []string{`"secret": "whsec_c2VjcmV0"`, `"id": "whep_1"`},
			wantErr:  []string{"only time the signing secret is shown"},
		},
		{
			name:   "CreateFiltered",
			args:   []string{"create", "--url", "https://example.com/hook", "--event-types", "message_batch.ended,message_batch.canceling", "--description", "prod"},
			answer: wireEndpointWithSecret, wantMethod: "POST", wantPath: "/v1/webhooks/endpoints",
			wantBody: map[string]any{"url": "https://example.com/hook", "event_types": []any{"message_batch.ended", "message_batch.canceling"}, "description": "prod"},
			wantOut:  []string{`"secret": "whsec_c2VjcmV0"`},
			wantErr:  []string{"only time the signing secret is shown"},
		},
		{
			name:       "List",
			args:       []string{"list"},
			answer:     `{"data":[` + wireEndpointJSON + `,{"id":"whep_2","url":"http://localhost:9/x","event_types":[],"enabled":false,"failing_since":"2026-11-28T00:00:00Z"}]}`,
			wantMethod: "GET", wantPath: "/v1/webhooks/endpoints",
			wantOut: []string{
				"ID      URL                       ENABLED  EVENT_TYPES          FAILING_SINCE\n",
				"whep_1  https://example.com/hook  yes      message_batch.ended  -\n",
				"whep_2  http://localhost:9/x      no       all                  2026-11-28T00:00:00Z\n",
			},
		},
		{
			name: "ListJSON", args: []string{"list", "--json"}, answer: `{"data":[` + wireEndpointJSON + `]}`,
			wantMethod: "GET", wantPath: "/v1/webhooks/endpoints",
			wantOut: []string{wireEndpointJSON + "\n"},
		},
		{
			name: "Get", args: []string{"get", "whep_1"}, answer: wireEndpointJSON,
			wantMethod: "GET", wantPath: "/v1/webhooks/endpoints/whep_1",
			wantOut: []string{"{\n  \"id\": \"whep_1\",", `"disabled_reason": null`},
		},
		{
			name: "Delete", args: []string{"delete", "whep_1"}, answer: `{"id":"whep_1","type":"webhook_endpoint_deleted"}`,
			wantMethod: "DELETE", wantPath: "/v1/webhooks/endpoints/whep_1",
			wantOut: []string{`"type": "webhook_endpoint_deleted"`},
		},
		{
			name: "Rotate", args: []string{"rotate", "whep_1", "--grace", "1h30m"}, answer: wireEndpointWithSecret,
			wantMethod: "POST", wantPath: "/v1/webhooks/endpoints/whep_1/rotate",
			wantBody: map[string]any{"grace_period_seconds": float64(5400)},
			wantOut:  []string{`"secret": "whsec_c2VjcmV0"`},
			wantErr:  []string{"previous secret keeps signing for 1h30m."},
		},
		{
			name: "RotateDefaultGrace", args: []string{"rotate", "whep_1"}, answer: wireEndpointWithSecret,
			wantMethod: "POST", wantPath: "/v1/webhooks/endpoints/whep_1/rotate",
			wantBody: map[string]any{"grace_period_seconds": float64(86400)},
			wantErr:  []string{"for 24h."},
		},
		{
			name: "Enable", args: []string{"enable", "whep_1"}, answer: wireEndpointJSON,
			wantMethod: "POST", wantPath: "/v1/webhooks/endpoints/whep_1/enable",
			wantOut: []string{`"enabled": true`},
		},
		{
			name: "Test", args: []string{"test", "whep_1"}, answer: `{"id":"evt_01T","delivery_id":17}`,
			wantMethod: "POST", wantPath: "/v1/webhooks/endpoints/whep_1/test",
			wantOut: []string{`"id": "evt_01T"`, `"delivery_id": 17`},
		},
		{
			name: "Attempts", args: []string{"attempts", "whep_1", "--limit", "5"},
			answer: `{"data":[{"id":9,"delivery_id":17,"event_id":"evt_01T","attempt":2,"at":"2026-11-29T10:00:05Z","status":204,"error_class":"","duration_ms":12,"response":"ok…","response_truncated":true},` +
				`{"id":8,"delivery_id":17,"event_id":"evt_01T","attempt":1,"at":"2026-11-29T10:00:00Z","status":0,"error_class":"timeout","error":"timed out after 15s","duration_ms":15000,"response":""}]}`,
			wantMethod: "GET", wantPath: "/v1/webhooks/endpoints/whep_1/attempts", wantQuery: "limit=5",
			wantOut: []string{
				"AT                    EVENT    DELIVERY  ATTEMPT  STATUS  CLASS    DURATION  NOTE\n",
				"2026-11-29T10:00:05Z  evt_01T  17        2        204     -        12ms      response truncated to its first 16 KiB\n",
				"2026-11-29T10:00:00Z  evt_01T  17        1        -       timeout  15s       timed out after 15s\n",
			},
		},
		{
			name: "Resend", args: []string{"resend", "17"}, answer: `{"id":17,"state":"pending"}`,
			wantMethod: "POST", wantPath: "/v1/webhooks/deliveries/17/resend",
			wantOut: []string{`"state": "pending"`},
		},
		{
			name: "RecoverTime", args: []string{"recover", "whep_1", "--since", "2026-11-29T01:00:00+01:00"}, answer: `{"recovered":3}`,
			wantMethod: "POST", wantPath: "/v1/webhooks/endpoints/whep_1/recover",
			wantBody: map[string]any{"since": "2026-11-29T00:00:00Z"},
			wantOut:  []string{`"recovered": 3`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, requests := newRecordingServer(t, http.StatusOK, tc.answer)
			stdout, stderr, err := runCLI(t, "", append(append([]string{"webhooks"}, tc.args...), "--base-url", srv.URL, "--api-key", "sk-test")...)
			if err != nil {
				t.Fatalf("err = %v\nstderr: %s", err, stderr)
			}
			reqs := requests()
			if len(reqs) != 1 {
				t.Fatalf("%d requests: %+v", len(reqs), reqs)
			}
			r := reqs[0]
			if r.method != tc.wantMethod || r.path != tc.wantPath || r.query != tc.wantQuery || r.apiKey != "sk-test" {
				t.Errorf("request %s %s ?%s key %q, want %s %s ?%s", r.method, r.path, r.query, r.apiKey, tc.wantMethod, tc.wantPath, tc.wantQuery)
			}
			if tc.wantBody != nil && !reflect.DeepEqual(r.body, tc.wantBody) {
				t.Errorf("body = %v, want %v", r.body, tc.wantBody)
			}
			for _, s := range tc.wantOut {
				if !strings.Contains(stdout, s) {
					t.Errorf("stdout lacks %q:\n%s", s, stdout)
				}
			}
			for _, s := range tc.wantErr {
				if !strings.Contains(stderr, s) {
					t.Errorf("stderr lacks %q:\n%s", s, stderr)
				}
			}
			if len(tc.wantErr) == 0 && stderr != "" {
				t.Errorf("stderr = %q", stderr)
			}
		})
	}
}

func TestWebhooksRecoverDuration(t *testing.T) {
	t.Parallel()
	srv, requests := newRecordingServer(t, http.StatusOK, `{"recovered":0}`)
	before := time.Now().Add(-2 * time.Hour).Truncate(time.Second)
	if _, _, err := runCLI(t, "", "webhooks", "recover", "whep_1", "--since", "2h", "--base-url", srv.URL); err != nil {
		t.Fatal(err)
	}
	after := time.Now().Add(-2 * time.Hour)
	since, err := time.Parse(time.RFC3339, requests()[0].body["since"].(string))
	if err != nil || since.Before(before) || since.After(after) {
		t.Errorf("since = %v (%v), want about now-2h", since, err)
	}
}

func TestWebhooksErrors(t *testing.T) {
	t.Parallel()
	srv, requests := newRecordingServer(t, http.StatusNotFound, `{"type":"error","error":{"type":"not_found_error","message":"webhook endpoint \"whep_x\" not found"}}`)
	_, _, err := runCLI(t, "", "webhooks", "get", "whep_x", "--base-url", srv.URL)
	if apiStatus(err) != 404 || err.Error() != `get webhook endpoint: 404 Not Found not_found_error: webhook endpoint "whep_x" not found` {
		t.Errorf("err = %v", err)
	}
	// Refused before sending anything.
	for _, args := range [][]string{
		{"create"},
		{"recover", "whep_1"},
		{"recover", "whep_1", "--since", "yesterday"},
		{"rotate", "whep_1", "--grace", "200h"},
		{"resend", "abc"},
		{"attempts", "whep_1", "--limit", "0"},
	} {
		if _, _, err := runCLI(t, "", append(append([]string{"webhooks"}, args...), "--base-url", srv.URL)...); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
	if n := len(requests()); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}
