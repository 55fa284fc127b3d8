package webhook

import (
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// Vectors of research/webhooks.md §3.
const (
	officialSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	officialID     = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	officialTS     = 1614265330
	officialBody   = `{"test": 2432232314}`
	officialSig    = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

	secretA     = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	secretB     = "whsec_////////////////////////////////"
	projectID   = "evt_01TEST"
	projectTS   = 1700000000
	projectBody = `{"type":"event","id":"evt_01TEST","created_at":"2023-11-14T22:13:20Z","data":{"type":"message_batch.ended","id":"msgbatch_01TEST"}}`
	// projectBodyReserialised has a space after the comma before "data".
	projectBodyReserialised = `{"type":"event","id":"evt_01TEST","created_at":"2023-11-14T22:13:20Z", "data":{"type":"message_batch.ended","id":"msgbatch_01TEST"}}`
	sigA                    = "v1,14WJlXUoAMxT9GQtJYsXL6sSrkiWu/ZxoQv+Gcp+BlQ="
	sigB                    = "v1,KcUVKZhZBzcbEKIJm9SdURE7zJFNBLbEqo276jaByMU="
	sigAReserialised        = "v1,aeoByxYqQgg8V8pHcc8qEg/8rBUopYP/7HdSgo2n7wc="
)

func TestSignVectors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, secret, id string
		ts               int64
		body, want       string
	}{
		{"official", officialSecret, officialID, officialTS, officialBody, officialSig},
		{"official without prefix", strings.TrimPrefix(officialSecret, SecretPrefix), officialID, officialTS, officialBody, officialSig},
		{"project A", secretA, projectID, projectTS, projectBody, sigA},
		{"project B", secretB, projectID, projectTS, projectBody, sigB},
		{"project A reserialised", secretA, projectID, projectTS, projectBodyReserialised, sigAReserialised},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := Sign(tt.secret, tt.id, time.Unix(tt.ts, 0), []byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("Sign = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestSignatureHeaderRotation(t *testing.T) {
	t.Parallel()
	ts := time.Unix(projectTS, 0)
	got, err := SignatureHeader([]string{secretA, secretB}, projectID, ts, []byte(projectBody))
	if err != nil {
		t.Fatal(err)
	}
	if want := sigA + " " + sigB; got != want {
		t.Fatalf("header = %q, want %q", got, want)
	}
	h := Headers(projectID, ts, got)
	for _, s := range []string{secretA, secretB} {
		wh, err := standardwebhooks.NewWebhook(s)
		if err != nil {
			t.Fatal(err)
		}
		if err := wh.VerifyIgnoringTimestamp([]byte(projectBody), h); err != nil {
			t.Errorf("verify with one of the rotated secrets: %v", err)
		}
		// The re-serialised body must not verify against what we sent.
		if err := wh.VerifyIgnoringTimestamp([]byte(projectBodyReserialised), h); err == nil {
			t.Error("re-serialised body verified")
		}
	}
	if _, err := SignatureHeader(nil, projectID, ts, nil); err == nil {
		t.Error("no secrets: want an error")
	}
	if _, err := SignatureHeader([]string{secretA, ""}, projectID, ts, nil); err == nil {
		t.Error("one empty secret: want an error")
	}
}

// TestVerifyWithOfficialLibrary checks what we send (fresh secret, current
// time) against standardwebhooks.Verify, which enforces the ±5 min window.
func TestVerifyWithOfficialLibrary(t *testing.T) {
	t.Parallel()
	secret, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	prev, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(projectBody)
	now := time.Now()
	sig, err := SignatureHeader([]string{secret, prev}, projectID, now, body)
	if err != nil {
		t.Fatal(err)
	}
	h := Headers(projectID, now, sig)
	for _, s := range []string{secret, prev} {
		wh, err := standardwebhooks.NewWebhook(s)
		if err != nil {
			t.Fatal(err)
		}
		if err := wh.Verify(body, h); err != nil {
			t.Errorf("Verify: %v", err)
		}
	}
	// Negative cases of the reference tests: each must fail.
	wh, _ := standardwebhooks.NewWebhook(secret)
	bad := []struct {
		name   string
		mutate func(http.Header)
	}{
		{"missing id", func(h http.Header) { h.Del(HeaderID) }},
		{"missing timestamp", func(h http.Header) { h.Del(HeaderTimestamp) }},
		{"missing signature", func(h http.Header) { h.Del(HeaderSignature) }},
		{"empty v1", func(h http.Header) { h.Set(HeaderSignature, "v1,") }},
		{"wrong signature", func(h http.Header) { h.Set(HeaderSignature, "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=") }},
		{"old timestamp", func(h http.Header) {
			h.Set(HeaderTimestamp, strconv.FormatInt(now.Add(-6*time.Minute).Unix(), 10))
		}},
		{"other id", func(h http.Header) { h.Set(HeaderID, "evt_other") }},
	}
	for _, b := range bad {
		h2 := h.Clone()
		b.mutate(h2)
		if err := wh.Verify(body, h2); err == nil {
			t.Errorf("%s: verified", b.name)
		}
	}
	// The multi-signature case: a good v1 among bad ones passes.
	good, _ := Sign(secret, projectID, now, body)
	h2 := h.Clone()
	h2.Set(HeaderSignature, "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,abc "+good+" v1,bad")
	if err := wh.Verify(body, h2); err != nil {
		t.Errorf("multi-signature: %v", err)
	}
}

func TestNewSecret(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 20 {
		s, err := NewSecret()
		if err != nil {
			t.Fatal(err)
		}
		if seen[s] {
			t.Fatal("duplicate secret")
		}
		seen[s] = true
		rest, ok := strings.CutPrefix(s, SecretPrefix)
		if !ok {
			t.Fatalf("%q lacks the whsec_ prefix", s)
		}
		raw, err := base64.StdEncoding.Strict().DecodeString(rest)
		if err != nil || len(raw) != 32 {
			t.Fatalf("secret decodes to %d bytes, %v", len(raw), err)
		}
		if err := ValidateSecret(s); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSignRejects(t *testing.T) {
	t.Parallel()
	short := SecretPrefix + base64.StdEncoding.EncodeToString(make([]byte, 23))
	long := SecretPrefix + base64.StdEncoding.EncodeToString(make([]byte, 65))
	unpadded := SecretPrefix + base64.RawStdEncoding.EncodeToString(make([]byte, 32))
	tests := []struct {
		name, secret, id, wantErr string
	}{
		{"empty", "", projectID, "empty"},
		{"prefix only", SecretPrefix, projectID, "empty"},
		{"bad base64", "whsec_not*base64!", projectID, "base64"},
		{"unpadded", unpadded, projectID, "base64"},
		{"23 bytes", short, projectID, "at least 24"},
		{"65 bytes", long, projectID, "at most 64"},
		{"empty id", secretA, "", "empty"},
		{"dotted id", secretA, "evt.1", "contains"},
		{"newline id", secretA, "evt\n1", "contains"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Sign(tt.secret, tt.id, time.Unix(projectTS, 0), nil)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.wantErr)
			}
			if tt.secret != "" && len(tt.secret) > len(SecretPrefix) && strings.Contains(err.Error(), strings.TrimPrefix(tt.secret, SecretPrefix)) {
				t.Fatalf("error %q quotes the secret", err)
			}
		})
	}
}

func TestHeaders(t *testing.T) {
	t.Parallel()
	h := Headers(projectID, time.Unix(projectTS, 999e6), sigA)
	want := map[string]string{
		"webhook-id":        projectID,
		"webhook-timestamp": "1700000000",
		"webhook-signature": sigA,
		"content-type":      "application/json",
	}
	for k, v := range want {
		if got := h.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if len(h) != len(want) {
		t.Errorf("headers = %v, want only %d", h, len(want))
	}
}
