package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2/option"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/batchd/batchd/internal/server"
	"github.com/batchd/batchd/internal/webhook"
)

// receiver is a webhook receiver that records what it got.
type receiver struct {
	mu     sync.Mutex
	got    []delivery
	status int
}

type delivery struct {
	header http.Header
	body   []byte
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.got = append(rc.got, delivery{r.Header.Clone(), body})
	status := rc.status
	rc.mu.Unlock()
	if status == 0 {
		status = 204
	}
	w.WriteHeader(status)
}

func (rc *receiver) deliveries() []delivery {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]delivery(nil), rc.got...)
}

// TestWebhooksEndToEnd: an endpoint created through the API receives the
// batch's events, signed; the official Standard Webhooks library and the
// Anthropic SDK's Unwrap verify them; the ended event carries the final
// counts and results_url; the secret is shown once and logged never.
func TestWebhooksEndToEnd(t *testing.T) {
	t.Parallel()
	rc := &receiver{}
	recv := httptest.NewServer(rc)
	t.Cleanup(recv.Close)
	var logs bytes.Buffer
	var logMu sync.Mutex
	ts := newTestServer(t, withConfig(func(c *server.Config) {
		c.PublicURL = "https://batchd.example"
		c.Webhooks = server.WebhookConfig{AllowCIDRs: []string{"127.0.0.0/8"}, PollInterval: 10 * time.Millisecond}
		c.Logger = slog.New(slog.NewTextHandler(lockedWriter{&logs, &logMu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}))

	r := do(t, "POST", ts.URL+"/v1/webhooks/endpoints", `{"url":"`+recv.URL+`/hook","description":"ci"}`)
	var ep struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	if r.Status != 200 || json.Unmarshal(r.Body, &ep) != nil || !strings.HasPrefix(ep.Secret, "whsec_") {
		t.Fatalf("create endpoint: %d %s", r.Status, r.Body)
	}
	for _, path := range []string{"/v1/webhooks/endpoints", "/v1/webhooks/endpoints/" + ep.ID} {
		if r := do(t, "GET", ts.URL+path, nil); r.Status != 200 || bytes.Contains(r.Body, []byte(ep.Secret)) || bytes.Contains(r.Body, []byte(`"secret"`)) {
			t.Fatalf("GET %s shows the secret or fails: %d %s", path, r.Status, r.Body)
		}
	}

	b := createRaw(t, ts.URL, createBody(t, nRequests("w", 3, "hello")...))
	waitEndedRaw(t, ts.URL, b.ID, 10*time.Second)
	waitFor(t, 10*time.Second, "the created and ended webhooks", func() bool { return len(rc.deliveries()) >= 2 })

	wh, err := standardwebhooks.NewWebhook(ep.Secret)
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]bool{}
	for _, d := range rc.deliveries() {
		if err := wh.Verify(d.body, d.header); err != nil {
			t.Fatalf("standard webhooks verification: %v\n%s", err, d.body)
		}
		client := newClient(ts.URL, "test", option.WithWebhookKey(ep.Secret))
		ev, err := client.Beta.Webhooks.Unwrap(d.body, d.header)
		if err != nil {
			t.Fatalf("Anthropic SDK Unwrap: %v", err)
		}
		var env struct {
			Type string `json:"type"`
			ID   string `json:"id"`
			Data struct {
				Type          string  `json:"type"`
				ID            string  `json:"id"`
				ResultsURL    *string `json:"results_url"`
				RequestCounts struct {
					Succeeded int `json:"succeeded"`
				} `json:"request_counts"`
			} `json:"data"`
		}
		json.Unmarshal(d.body, &env)
		if env.Type != "event" || env.ID != ev.ID || d.header.Get("webhook-id") != env.ID || env.Data.ID != b.ID {
			t.Fatalf("envelope %s, headers %v", d.body, d.header)
		}
		types[env.Data.Type] = true
		if env.Data.Type == "message_batch.ended" {
			if env.Data.RequestCounts.Succeeded != 3 || env.Data.ResultsURL == nil || *env.Data.ResultsURL != "https://batchd.example/v1/messages/batches/"+b.ID+"/results" {
				t.Fatalf("ended event: %s", d.body)
			}
		}
	}
	if !types["message_batch.created"] || !types["message_batch.ended"] {
		t.Fatalf("event types %v", types)
	}
	waitFor(t, 10*time.Second, "both attempts recorded as 204", func() bool {
		r := do(t, "GET", ts.URL+"/v1/webhooks/endpoints/"+ep.ID+"/attempts", nil)
		return r.Status == 200 && bytes.Count(r.Body, []byte(`"status":204`)) == 2
	})
	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logs.String(), ep.Secret) || strings.Contains(logs.String(), strings.TrimPrefix(ep.Secret, "whsec_")) {
		t.Fatal("the webhook secret appears in the logs")
	}
}

// TestWebhookEndpointValidation: a URL on a blocked network is refused at
// creation with a clear error; unknown event types are named.
func TestWebhookEndpointValidation(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t)
	for body, want := range map[string]string{
		`{"url":"http://127.0.0.1:9/hook"}`:                 "url:",
		`{"url":"http://169.254.169.254/latest/meta-data"}`: "url:",
		`{"url":"ftp://example.com/hook"}`:                  "url:",
		`{}`:                                                "url: Field required",
		`{"url":"https://example.com/h","event_types":["nope.type"]}`: `event_types.0: "nope.type"`,
		`{"url":"https://example.com/h","colour":1}`:                  "body:",
	} {
		r := do(t, "POST", ts.URL+"/v1/webhooks/endpoints", body)
		wantError(t, r, 400, "invalid_request_error", want)
	}
	r := do(t, "GET", ts.URL+"/v1/webhooks/endpoints/whep_nope", nil)
	wantError(t, r, 404, "not_found_error", "whep_nope")
}

// fastSchedule is the real schedule a thousand times faster.
func fastSchedule(r webhook.Result, attempt int) (time.Duration, bool) {
	d, ok := r.NextDelay(attempt, func() float64 { return 0.5 })
	return d / 1000, ok
}

func webhookServer(t *testing.T, mutate ...func(*server.Config)) *testServer {
	t.Helper()
	return newTestServer(t, withConfig(func(c *server.Config) {
		c.Webhooks = server.WebhookConfig{AllowCIDRs: []string{"127.0.0.0/8"}, PollInterval: 10 * time.Millisecond,
			Timeout: 300 * time.Millisecond, Delay: fastSchedule}
		for _, m := range mutate {
			m(c)
		}
	}))
}

func addEndpoint(t *testing.T, ts *testServer, url string) (id, secret string) {
	t.Helper()
	r := do(t, "POST", ts.URL+"/v1/webhooks/endpoints", `{"url":"`+url+`","event_types":["message_batch.ended"]}`)
	var ep struct{ ID, Secret string }
	if r.Status != 200 || json.Unmarshal(r.Body, &ep) != nil {
		t.Fatalf("create endpoint: %d %s", r.Status, r.Body)
	}
	return ep.ID, ep.Secret
}

// TestWebhookRetriesUntilDelivered: a receiver failing twice (500, then a
// 429 with Retry-After) gets the same event a third time, with the same
// webhook-id and a fresh signature; the attempt log shows all three.
func TestWebhookRetriesUntilDelivered(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	rc := &receiver{}
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch n.Add(1) {
		case 1:
			w.WriteHeader(500)
			return
		case 2:
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(429)
			return
		}
		rc.ServeHTTP(w, r)
	}))
	t.Cleanup(recv.Close)
	ts := webhookServer(t)
	id, secret := addEndpoint(t, ts, recv.URL)
	b := createRaw(t, ts.URL, createBody(t, nRequests("r", 1, "hi")...))
	waitEndedRaw(t, ts.URL, b.ID, 10*time.Second)
	waitFor(t, 20*time.Second, "the third attempt", func() bool { return len(rc.deliveries()) == 1 })
	d := rc.deliveries()[0]
	wh, _ := standardwebhooks.NewWebhook(secret)
	if err := wh.Verify(d.body, d.header); err != nil {
		t.Fatal(err)
	}
	// The receiver has it; the attempt's record follows a moment later.
	var r response
	waitFor(t, 10*time.Second, "the third attempt's record", func() bool {
		r = do(t, "GET", ts.URL+"/v1/webhooks/endpoints/"+id+"/attempts", nil)
		return bytes.Count(r.Body, []byte(`"attempt":`)) == 3
	})
	var atts struct {
		Data []struct {
			Attempt int    `json:"attempt"`
			Status  int    `json:"status"`
			EventID string `json:"event_id"`
		} `json:"data"`
	}
	json.Unmarshal(r.Body, &atts)
	if len(atts.Data) != 3 || atts.Data[0].Status != 204 || atts.Data[1].Status != 429 || atts.Data[2].Status != 500 ||
		atts.Data[0].EventID != d.header.Get("webhook-id") || atts.Data[2].EventID != atts.Data[0].EventID {
		t.Fatalf("attempts %s", r.Body)
	}
	// The metrics count each attempt just after its record is written.
	waitFor(t, 10*time.Second, "the attempts in the metrics", func() bool {
		f := scrapeMetrics(t, ts.URL)
		return gauge(f, "batchd_webhook_deliveries_total", "outcome", "delivered") == 1
	})
	if got := gauge(scrapeMetrics(t, ts.URL), "batchd_webhook_deliveries_total", "outcome", "failed"); got != 2 {
		t.Errorf("failed attempts in the metrics: %v, want 2", got)
	}
}

// TestWebhook410DisablesEndpoint: a receiver answering 410 Gone disables
// its endpoint, with the reason; enable brings it back.
func TestWebhook410DisablesEndpoint(t *testing.T) {
	t.Parallel()
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(410) }))
	t.Cleanup(recv.Close)
	ts := webhookServer(t)
	id, _ := addEndpoint(t, ts, recv.URL)
	b := createRaw(t, ts.URL, createBody(t, nRequests("r", 1, "hi")...))
	waitEndedRaw(t, ts.URL, b.ID, 10*time.Second)
	var ep struct {
		Enabled        bool    `json:"enabled"`
		DisabledReason *string `json:"disabled_reason"`
	}
	waitFor(t, 10*time.Second, "the endpoint to be disabled", func() bool {
		json.Unmarshal(do(t, "GET", ts.URL+"/v1/webhooks/endpoints/"+id, nil).Body, &ep)
		return !ep.Enabled
	})
	if ep.DisabledReason == nil || !strings.Contains(*ep.DisabledReason, "410") {
		t.Fatalf("disabled without the reason: %+v", ep)
	}
	if r := do(t, "POST", ts.URL+"/v1/webhooks/endpoints/"+id+"/enable", nil); r.Status != 200 || !bytes.Contains(r.Body, []byte(`"enabled":true`)) {
		t.Fatalf("enable: %d %s", r.Status, r.Body)
	}
}

// TestDeadEndpointDoesNotDelayAHealthyOne: of two endpoints, one hangs
// past the timeout on every attempt; the other still gets each batch's
// webhook promptly.
func TestDeadEndpointDoesNotDelayAHealthyOne(t *testing.T) {
	t.Parallel()
	dead := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { time.Sleep(2 * time.Second) }))
	t.Cleanup(dead.Close)
	rc := &receiver{}
	healthy := httptest.NewServer(rc)
	t.Cleanup(healthy.Close)
	ts := webhookServer(t)
	addEndpoint(t, ts, dead.URL)
	addEndpoint(t, ts, healthy.URL)
	const batches = 12
	for i := range batches {
		createRaw(t, ts.URL, createBody(t, nRequests(fmt.Sprint("b", i), 1, "hi")...))
	}
	waitFor(t, 10*time.Second, "every ended webhook at the healthy receiver", func() bool { return len(rc.deliveries()) == batches })
}

// TestWebhookExhaustionThenRecover: a receiver down for every attempt
// leaves the delivery failed; once it is back, recover sends it again,
// with the same webhook-id.
func TestWebhookExhaustionThenRecover(t *testing.T) {
	t.Parallel()
	var healthy atomic.Bool
	rc := &receiver{}
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !healthy.Load() {
			w.WriteHeader(503)
			return
		}
		rc.ServeHTTP(w, r)
	}))
	t.Cleanup(recv.Close)
	// Three quick attempts, then failed for good.
	threeTries := func(r webhook.Result, attempt int) (time.Duration, bool) { return 10 * time.Millisecond, attempt < 3 }
	ts := webhookServer(t, func(c *server.Config) { c.Webhooks.Delay = threeTries })
	id, _ := addEndpoint(t, ts, recv.URL)
	since := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	b := createRaw(t, ts.URL, createBody(t, nRequests("r", 1, "hi")...))
	waitEndedRaw(t, ts.URL, b.ID, 10*time.Second)
	waitFor(t, 10*time.Second, "three failed attempts", func() bool {
		return strings.Count(string(do(t, "GET", ts.URL+"/v1/webhooks/endpoints/"+id+"/attempts", nil).Body), `"status":503`) == 3
	})
	time.Sleep(100 * time.Millisecond) // no fourth attempt may follow
	if n := strings.Count(string(do(t, "GET", ts.URL+"/v1/webhooks/endpoints/"+id+"/attempts", nil).Body), `"attempt":`); n != 3 {
		t.Fatalf("%d attempts after the schedule was spent", n)
	}
	healthy.Store(true)
	r := do(t, "POST", ts.URL+"/v1/webhooks/endpoints/"+id+"/recover", `{"since":"`+since+`"}`)
	if r.Status != 200 || !bytes.Contains(r.Body, []byte(`"recovered":1`)) {
		t.Fatalf("recover: %d %s", r.Status, r.Body)
	}
	waitFor(t, 10*time.Second, "the recovered delivery", func() bool { return len(rc.deliveries()) == 1 })
}

// TestWebhookEndpointFailingFiveDaysIsDisabled: with a clock that runs
// ahead, an endpoint that has failed for five days is disabled, reason
// given.
func TestWebhookEndpointFailingFiveDaysIsDisabled(t *testing.T) {
	t.Parallel()
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }))
	t.Cleanup(recv.Close)
	var offset atomic.Int64 // the clock's lead over real time
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	hourly := func(r webhook.Result, attempt int) (time.Duration, bool) { return time.Hour, true }
	ts := webhookServer(t, func(c *server.Config) { c.Now = now; c.Webhooks.Delay = hourly })
	id, _ := addEndpoint(t, ts, recv.URL)
	b := createRaw(t, ts.URL, createBody(t, nRequests("r", 1, "hi")...))
	waitEndedRaw(t, ts.URL, b.ID, 10*time.Second)
	var ep struct {
		Enabled        bool    `json:"enabled"`
		FailingSince   *string `json:"failing_since"`
		DisabledReason *string `json:"disabled_reason"`
	}
	waitFor(t, 10*time.Second, "the first failure", func() bool {
		json.Unmarshal(do(t, "GET", ts.URL+"/v1/webhooks/endpoints/"+id, nil).Body, &ep)
		return ep.FailingSince != nil
	})
	if !ep.Enabled {
		t.Fatal("disabled after one failure")
	}
	offset.Store(int64(5*24*time.Hour + time.Hour)) // five days on: the next attempt is due, and fails
	waitFor(t, 10*time.Second, "the endpoint to be disabled", func() bool {
		json.Unmarshal(do(t, "GET", ts.URL+"/v1/webhooks/endpoints/"+id, nil).Body, &ep)
		return !ep.Enabled
	})
	if ep.DisabledReason == nil || !strings.Contains(*ep.DisabledReason, "failing continuously since") {
		t.Fatalf("reason %v", ep.DisabledReason)
	}
}

// TestWebhookLostAckAndRedirect: a receiver that took the event but whose
// answer was lost gets it again with the same webhook-id (its idempotency
// key); a 3xx is a failure and is never followed.
func TestWebhookLostAckAndRedirect(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	var ids []string
	var mu sync.Mutex
	target := &receiver{}
	targetSrv := httptest.NewServer(target)
	t.Cleanup(targetSrv.Close)
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		ids = append(ids, r.Header.Get("webhook-id"))
		mu.Unlock()
		switch calls.Add(1) {
		case 1: // processed, but the acknowledgement never arrives
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
		case 2:
			http.Redirect(w, r, targetSrv.URL, http.StatusFound)
		default:
			w.WriteHeader(200)
		}
	}))
	t.Cleanup(recv.Close)
	ts := webhookServer(t, func(c *server.Config) {
		c.Webhooks.Delay = func(r webhook.Result, attempt int) (time.Duration, bool) { return 10 * time.Millisecond, true }
	})
	id, _ := addEndpoint(t, ts, recv.URL)
	b := createRaw(t, ts.URL, createBody(t, nRequests("r", 1, "hi")...))
	waitEndedRaw(t, ts.URL, b.ID, 10*time.Second)
	waitFor(t, 10*time.Second, "three attempts", func() bool {
		return strings.Count(string(do(t, "GET", ts.URL+"/v1/webhooks/endpoints/"+id+"/attempts", nil).Body), `"attempt":`) == 3
	})
	mu.Lock()
	defer mu.Unlock()
	if len(ids) != 3 || ids[0] != ids[1] || ids[1] != ids[2] || ids[0] == "" {
		t.Fatalf("webhook-ids %v, want one id on every attempt", ids)
	}
	if len(target.deliveries()) != 0 {
		t.Fatal("a redirect was followed")
	}
	body := string(do(t, "GET", ts.URL+"/v1/webhooks/endpoints/"+id+"/attempts", nil).Body)
	if !strings.Contains(body, `"error_class":"http_3xx"`) || !strings.Contains(body, `"error_class":"connection"`) {
		t.Fatalf("attempts %s", body)
	}
}

// TestWebhookRotationAndTestEvent: after a rotation both secrets verify
// during the grace period (two signatures); a test event reaches only the
// endpoint it names; resend sends a delivery again with the same id.
func TestWebhookRotationAndTestEvent(t *testing.T) {
	t.Parallel()
	rc := &receiver{}
	recv := httptest.NewServer(rc)
	t.Cleanup(recv.Close)
	ts := webhookServer(t)
	id, oldSecret := addEndpoint(t, ts, recv.URL)
	r := do(t, "POST", ts.URL+"/v1/webhooks/endpoints/"+id+"/rotate", `{"grace_period_seconds":3600}`)
	var rotated struct{ Secret string }
	if r.Status != 200 || json.Unmarshal(r.Body, &rotated) != nil || rotated.Secret == "" || rotated.Secret == oldSecret {
		t.Fatalf("rotate: %d %s", r.Status, r.Body)
	}
	r = do(t, "POST", ts.URL+"/v1/webhooks/endpoints/"+id+"/test", nil)
	var test struct {
		ID         string `json:"id"`
		DeliveryID int64  `json:"delivery_id"`
	}
	if r.Status != 200 || json.Unmarshal(r.Body, &test) != nil || !strings.HasPrefix(test.ID, "evt_") {
		t.Fatalf("test: %d %s", r.Status, r.Body)
	}
	waitFor(t, 10*time.Second, "the test event", func() bool { return len(rc.deliveries()) == 1 })
	d := rc.deliveries()[0]
	if sigs := strings.Fields(d.header.Get("webhook-signature")); len(sigs) != 2 {
		t.Fatalf("want two signatures during the grace period, got %q", d.header.Get("webhook-signature"))
	}
	for _, secret := range []string{oldSecret, rotated.Secret} {
		wh, _ := standardwebhooks.NewWebhook(secret)
		if err := wh.Verify(d.body, d.header); err != nil {
			t.Fatalf("a receiver holding one of the secrets cannot verify: %v", err)
		}
	}
	if !strings.Contains(string(d.body), `"type":"webhook.test"`) || d.header.Get("webhook-id") != test.ID {
		t.Fatalf("test event %s", d.body)
	}
	// The receiver has the event before the deliverer records the attempt;
	// a delivery still in flight cannot be resent, so wait for the record.
	waitFor(t, 10*time.Second, "the test event's attempt record", func() bool {
		return strings.Contains(string(do(t, "GET", ts.URL+"/v1/webhooks/endpoints/"+id+"/attempts", nil).Body), `"attempt":`)
	})
	r = do(t, "POST", ts.URL+"/v1/webhooks/deliveries/"+fmt.Sprint(test.DeliveryID)+"/resend", nil)
	if r.Status != 200 {
		t.Fatalf("resend: %d %s", r.Status, r.Body)
	}
	waitFor(t, 10*time.Second, "the resent event", func() bool { return len(rc.deliveries()) == 2 })
	if again := rc.deliveries()[1]; again.header.Get("webhook-id") != test.ID {
		t.Fatalf("resent with webhook-id %s, want %s", again.header.Get("webhook-id"), test.ID)
	}
	wantError(t, do(t, "POST", ts.URL+"/v1/webhooks/deliveries/999999/resend", nil), 404, "not_found_error")
}

// TestWebhookRecoverReplaysWhatADisabledEndpointMissed: a 410 disables the
// endpoint; batches that end meanwhile get no delivery for it; after enable,
// recover since then sends the failed delivery again and every missed event
// once, each with its event's webhook-id, and a second recover sends none.
func TestWebhookRecoverReplaysWhatADisabledEndpointMissed(t *testing.T) {
	t.Parallel()
	var gone atomic.Bool
	gone.Store(true)
	rc := &receiver{}
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if gone.Load() {
			w.WriteHeader(410)
			return
		}
		rc.ServeHTTP(w, r)
	}))
	t.Cleanup(recv.Close)
	ts := webhookServer(t)
	id, secret := addEndpoint(t, ts, recv.URL)
	since := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	first := createRaw(t, ts.URL, createBody(t, nRequests("r", 1, "hi")...))
	waitFor(t, 10*time.Second, "the endpoint to be disabled", func() bool {
		return bytes.Contains(do(t, "GET", ts.URL+"/v1/webhooks/endpoints/"+id, nil).Body, []byte(`"enabled":false`))
	})
	missed := []string{}
	for i := range 2 {
		b := createRaw(t, ts.URL, createBody(t, nRequests(fmt.Sprint("m", i), 1, "hi")...))
		waitEndedRaw(t, ts.URL, b.ID, 10*time.Second)
		missed = append(missed, b.ID)
	}
	gone.Store(false)
	if r := do(t, "POST", ts.URL+"/v1/webhooks/endpoints/"+id+"/enable", nil); r.Status != 200 {
		t.Fatalf("enable: %d %s", r.Status, r.Body)
	}
	r := do(t, "POST", ts.URL+"/v1/webhooks/endpoints/"+id+"/recover", `{"since":"`+since+`"}`)
	if r.Status != 200 || !bytes.Contains(r.Body, []byte(`"recovered":3`)) {
		t.Fatalf("recover: %d %s, want the failed delivery and the two missed", r.Status, r.Body)
	}
	waitFor(t, 10*time.Second, "three deliveries", func() bool { return len(rc.deliveries()) >= 3 })
	wh, _ := standardwebhooks.NewWebhook(secret)
	seen := map[string]string{}
	for _, d := range rc.deliveries() {
		if err := wh.Verify(d.body, d.header); err != nil {
			t.Fatal(err)
		}
		var ev struct {
			ID   string `json:"id"`
			Data struct {
				Type string `json:"type"`
				ID   string `json:"id"`
			} `json:"data"`
		}
		json.Unmarshal(d.body, &ev)
		if d.header.Get("webhook-id") != ev.ID {
			t.Errorf("webhook-id %q for event %q", d.header.Get("webhook-id"), ev.ID)
		}
		if _, dup := seen[ev.Data.ID]; dup {
			t.Errorf("%s delivered twice", ev.Data.ID)
		}
		seen[ev.Data.ID] = ev.Data.Type
	}
	for _, b := range append([]string{first.ID}, missed...) {
		if seen[b] != "message_batch.ended" {
			t.Errorf("batch %s: got %q, want its message_batch.ended (delivered: %v)", b, seen[b], seen)
		}
	}
	if r := do(t, "POST", ts.URL+"/v1/webhooks/endpoints/"+id+"/recover", `{"since":"`+since+`"}`); !bytes.Contains(r.Body, []byte(`"recovered":0`)) {
		t.Fatalf("second recover: %d %s, want nothing more", r.Status, r.Body)
	}
}
