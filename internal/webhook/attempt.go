package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// MaxResponseBody is how much of a receiver's response is kept for the
// attempt log; the rest is never read, so a huge or endless body costs
// nothing.
const MaxResponseBody = 16 << 10

// Error classes of a failed attempt, stored in the attempt log so an
// operator can see at a glance why deliveries fail.
const (
	ClassTimeout     = "timeout"      // connect, TLS or response took too long
	ClassConnection  = "connection"   // refused, reset, unreachable
	ClassDNS         = "dns"          // the host name did not resolve
	ClassSSRFBlocked = "ssrf_blocked" // the guard refused the address
	ClassTLS         = "tls"          // handshake or certificate failure
	ClassHTTP3xx     = "http_3xx"     // a redirect, which is not followed
	ClassHTTP4xx     = "http_4xx"
	ClassHTTP5xx     = "http_5xx"
	ClassHTTPOther   = "http_other" // 1xx that ended the exchange, or a status beyond 599
	ClassInvalid     = "invalid_request"
	ClassCanceled    = "canceled" // the caller's context ended: not the receiver's fault
)

// Result is the outcome of one attempt, everything the attempt log needs.
// It carries neither the request headers nor the signature.
type Result struct {
	// Status is the HTTP status, or 0 when no response arrived.
	Status int
	// ErrorClass is empty on success, else one of the Class constants.
	ErrorClass string
	// Error is a human-readable cause, without the URL (which may hold a
	// token) and without any secret.
	Error string
	// Duration is from sending to the end of reading the capped body.
	Duration time.Duration
	// Body is the first MaxResponseBody bytes of the response.
	Body []byte
	// Truncated says that the response body was longer than Body.
	Truncated bool
	// RetryAfter is the receiver's Retry-After (seconds or HTTP-date), 0 if
	// absent or unparsable.
	RetryAfter time.Duration
	// Gone is a 410: the receiver asks for the endpoint to be disabled.
	Gone bool
	// OK is a 2xx, the only success.
	OK bool
}

// NextDelay applies the retry rules to this outcome: false when it needs
// no retry (success, 410, an SSRF refusal) or the schedule is exhausted;
// otherwise the package NextDelay, with a 60 s floor after a timeout or a
// 429. An SSRF refusal is final for the delivery because retrying cannot
// help until the operator changes the allowlist, after which a manual
// resend or recover delivers it. attempt counts attempts made, this one
// included.
func (r Result) NextDelay(attempt int, rnd func() float64) (time.Duration, bool) {
	if r.OK || r.Gone || r.ErrorClass == ClassSSRFBlocked || r.ErrorClass == ClassInvalid {
		return 0, false
	}
	var floor time.Duration
	if r.ErrorClass == ClassTimeout || r.Status == http.StatusTooManyRequests {
		floor = ThrottleFloor
	}
	return nextDelay(attempt, floor, r.RetryAfter, rnd)
}

// Attempt POSTs body to endpointURL once with headers and classifies the outcome.
// client should come from Guard.Client, which bounds the time and refuses
// blocked addresses and redirects. Attempt never retries; the engine decides
// with Result.NextDelay. A redirect is a failure even with a client that
// follows redirects, because only the status of the last response counts
// and a 3xx is reported whenever it is the response.
func Attempt(ctx context.Context, client *http.Client, endpointURL string, headers http.Header, body []byte) Result {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpointURL, bytes.NewReader(body))
	if err != nil {
		return Result{ErrorClass: ClassInvalid, Error: "request: " + stripURL(err).Error()}
	}
	for k, v := range headers {
		req.Header[k] = append([]string(nil), v...)
	}
	start := time.Now()
	res, err := client.Do(req)
	if err != nil {
		return Result{ErrorClass: classifyErr(ctx, err), Error: stripURL(err).Error(), Duration: time.Since(start)}
	}
	defer res.Body.Close()
	r := Result{Status: res.StatusCode}
	b, rerr := io.ReadAll(io.LimitReader(res.Body, MaxResponseBody+1))
	if len(b) > MaxResponseBody {
		b, r.Truncated = b[:MaxResponseBody], true
	} else if rerr != nil {
		// The status is in, and it is what counts; a body cut short by the
		// timeout or a reset is kept as far as it came.
		r.Truncated = true
	}
	r.Duration = time.Since(start)
	if len(b) > 0 {
		r.Body = b
	}
	now := time.Now()
	if d, err := http.ParseTime(res.Header.Get("Date")); err == nil {
		// An HTTP-date Retry-After is measured against the receiver's clock,
		// which makes it immune to skew between the two machines.
		now = d
	}
	r.RetryAfter = ParseRetryAfter(res.Header.Get("Retry-After"), now)
	switch s := res.StatusCode; {
	case s >= 200 && s <= 299:
		r.OK = true
	case s >= 300 && s <= 399:
		r.ErrorClass = ClassHTTP3xx
		r.Error = "redirect not followed: " + http.StatusText(s)
	case s >= 400 && s <= 499:
		r.ErrorClass = ClassHTTP4xx
		r.Gone = s == http.StatusGone
		r.Error = strconv.Itoa(s) + " " + http.StatusText(s)
	case s >= 500 && s <= 599:
		r.ErrorClass = ClassHTTP5xx
		r.Error = strconv.Itoa(s) + " " + http.StatusText(s)
	default:
		r.ErrorClass = ClassHTTPOther
		r.Error = "unexpected status " + strconv.Itoa(s)
	}
	return r
}

// ParseRetryAfter reads a Retry-After value, delta-seconds or an HTTP-date
// relative to now; 0 when absent, unparsable, or not in the future. It is
// capped at MaxRetryAfter; NextDelay applies the tighter clamp.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseUint(v, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		if err != nil || n > uint64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return min(d, MaxRetryAfter)
		}
	}
	return 0
}

// stripURL drops the *url.Error wrapper, whose message repeats the URL; an
// endpoint URL can carry a token in its query, and the attempt log already
// knows the URL.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// classifyErr names the cause of a failed exchange. The caller's own
// cancellation is told apart from a timeout so that shutting the engine down
// is not blamed on the receiver.
func classifyErr(ctx context.Context, err error) string {
	var blocked *BlockedError
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalidCert x509.CertificateInvalidError
	var recordErr tls.RecordHeaderError
	var alertErr tls.AlertError
	var netErr net.Error
	switch {
	case errors.As(err, &blocked):
		return ClassSSRFBlocked
	case errors.Is(ctx.Err(), context.Canceled):
		return ClassCanceled
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return ClassTimeout
	case errors.As(err, &certErr), errors.As(err, &unknownCA), errors.As(err, &hostErr),
		errors.As(err, &invalidCert), errors.As(err, &recordErr), errors.As(err, &alertErr):
		return ClassTLS
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		// net/http replaces the tls.RecordHeaderError with this bare text.
		return ClassTLS
	case errors.As(err, &dnsErr):
		return ClassDNS
	}
	return ClassConnection
}
