// Package webhook holds the pieces batchd's webhook delivery engine is built
// from: Standard Webhooks signing, encryption of endpoint secrets at rest, an
// SSRF guard applied at dial time, the retry schedule, and one delivery
// attempt with its outcome classified. It has no database and no HTTP
// endpoints of its own; the engine that stores deliveries and the API that
// manages endpoints use it.
//
// Signing follows Standard Webhooks v1 exactly (webhook-id, webhook-timestamp,
// webhook-signature; HMAC-SHA256 over "id.ts.body"), so receivers can verify
// with the official libraries, the Anthropic SDK's Webhooks.Unwrap, or the
// OpenAI SDK. The package never logs, and no error or Result it returns
// carries a secret or a signature.
package webhook

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Standard Webhooks header names, as the spec writes them. http.Header
// canonicalises them on Set ("Webhook-Id"); header names are
// case-insensitive, and every verifier reads them that way.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

const (
	// SecretPrefix starts every endpoint secret, as in Standard Webhooks,
	// OpenAI, Stripe and Anthropic, so a leaked value is recognisable.
	SecretPrefix = "whsec_"
	// SecretBytes is the size of the secrets NewSecret makes: the top of the
	// common range, and what Anthropic issues.
	SecretBytes = 32
	// minSecretBytes and maxSecretBytes are the spec's bounds on a decoded
	// secret (24 to 64 bytes); anything shorter is too weak to accept.
	minSecretBytes = 24
	maxSecretBytes = 64
)

// NewSecret returns a fresh endpoint secret: "whsec_" followed by the padded
// standard base64 of 32 random bytes. Padded StdEncoding matters: the
// official Go verifier decodes with it and rejects unpadded secrets.
func NewSecret() (string, error) {
	b := make([]byte, SecretBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("new secret: %w", err)
	}
	return SecretPrefix + base64.StdEncoding.EncodeToString(b), nil
}

// secretKey validates a secret and returns the HMAC key it encodes. The
// prefix is optional, as in the official libraries, so a key copied without
// it still works. Errors describe the defect without quoting the secret.
func secretKey(secret string) ([]byte, error) {
	s := strings.TrimPrefix(secret, SecretPrefix)
	if s == "" {
		return nil, errors.New("secret is empty")
	}
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		// base64.CorruptInputError is only an offset; it reveals nothing.
		return nil, fmt.Errorf("secret is not padded standard base64: %w", err)
	}
	if len(key) < minSecretBytes {
		return nil, fmt.Errorf("secret decodes to %d bytes, want at least %d", len(key), minSecretBytes)
	}
	if len(key) > maxSecretBytes {
		return nil, fmt.Errorf("secret decodes to %d bytes, want at most %d", len(key), maxSecretBytes)
	}
	return key, nil
}

// ValidateSecret reports whether secret can sign, so the API can refuse a
// bad secret (for example one supplied by a user) when it is stored rather
// than on the first delivery.
func ValidateSecret(secret string) error {
	if _, err := secretKey(secret); err != nil {
		return fmt.Errorf("validate secret: %w", err)
	}
	return nil
}

// validMsgID checks a webhook-id. It must be non-empty, and it must not
// contain "." (the separator of the signed content, so an id with a dot
// could collide with another id and timestamp) or anything that cannot sit
// in a header value.
func validMsgID(msgID string) error {
	if msgID == "" {
		return errors.New("message id is empty")
	}
	for i := 0; i < len(msgID); i++ {
		if c := msgID[i]; c == '.' || c <= ' ' || c == 0x7f {
			return fmt.Errorf("message id %q contains %q", msgID, c)
		}
	}
	return nil
}

// Sign returns the Standard Webhooks v1 signature of one attempt:
// "v1," + base64(HMAC-SHA256(key, msgID + "." + unix(ts) + "." + body)).
// body must be the exact bytes that go on the wire; ts is the attempt's time
// (whole seconds), not the event's, so every retry is signed afresh.
func Sign(secret string, msgID string, ts time.Time, body []byte) (string, error) {
	key, err := secretKey(secret)
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	if err := validMsgID(msgID); err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(msgID))
	mac.Write([]byte{'.'})
	mac.Write(strconv.AppendInt(nil, ts.Unix(), 10))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil)), nil
}

// SignatureHeader signs with every secret and joins the signatures with
// single spaces, the webhook-signature value. Several secrets are how
// rotation works: during the grace period the current and the previous
// secret both sign, and a receiver holding either accepts the message.
func SignatureHeader(secrets []string, msgID string, ts time.Time, body []byte) (string, error) {
	if len(secrets) == 0 {
		return "", errors.New("signature header: no secrets")
	}
	sigs := make([]string, 0, len(secrets))
	for i, s := range secrets {
		sig, err := Sign(s, msgID, ts, body)
		if err != nil {
			return "", fmt.Errorf("signature header: secret %d: %w", i, err)
		}
		sigs = append(sigs, sig)
	}
	return strings.Join(sigs, " "), nil
}

// Headers returns the headers of one attempt: the three Standard Webhooks
// headers (the timestamp as unix seconds, the same ts that was signed) and
// Content-Type application/json. The engine adds its User-Agent and any
// custom endpoint headers before these, so these always win.
func Headers(msgID string, ts time.Time, sig string) http.Header {
	h := make(http.Header, 4)
	h.Set(HeaderID, msgID)
	h.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	h.Set(HeaderSignature, sig)
	h.Set("Content-Type", "application/json")
	return h
}
