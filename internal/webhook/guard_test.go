package webhook

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeResolver answers from a script: each host maps to a list of answers,
// one per lookup, the last repeating. It records how often each host was
// looked up.
type fakeResolver struct {
	mu      sync.Mutex
	answers map[string][][]netip.Addr
	calls   map[string]int
	err     error
}

func newFakeResolver(m map[string][]string) *fakeResolver {
	r := &fakeResolver{answers: map[string][][]netip.Addr{}, calls: map[string]int{}}
	for host, seq := range m {
		for _, a := range seq {
			var ans []netip.Addr
			for _, s := range strings.Split(a, ",") {
				if s != "" {
					ans = append(ans, netip.MustParseAddr(s))
				}
			}
			r.answers[host] = append(r.answers[host], ans)
		}
	}
	return r
}

func (r *fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return nil, r.err
	}
	seq, ok := r.answers[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	i := min(r.calls[host], len(seq)-1)
	r.calls[host]++
	return seq[i], nil
}

func (r *fakeResolver) count(host string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[host]
}

func mustGuard(t *testing.T, cfg GuardConfig) *Guard {
	t.Helper()
	g, err := NewGuard(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// ssrfMatrix lists addresses blocked by default and the reason each gives.
var ssrfMatrix = []struct{ addr, reason string }{
	{"127.0.0.1", "loopback"},
	{"127.5.5.5", "loopback"},
	{"10.0.0.1", "private"},
	{"10.255.255.255", "private"},
	{"172.16.0.1", "private"},
	{"172.31.255.255", "private"},
	{"192.168.1.1", "private"},
	{"169.254.169.254", "cloud metadata"},
	{"169.254.1.1", "link-local"},
	{"100.64.0.1", "carrier-grade NAT"},
	{"100.127.255.255", "carrier-grade NAT"},
	{"0.0.0.0", "unspecified"},
	{"0.1.2.3", "this network"},
	{"255.255.255.255", "broadcast"},
	{"224.0.0.1", "multicast"},
	{"239.255.255.250", "multicast"},
	{"192.0.0.8", "IETF protocol assignment"},
	{"192.0.2.1", "TEST-NET-1"},
	{"198.51.100.7", "TEST-NET-2"},
	{"203.0.113.9", "TEST-NET-3"},
	{"198.18.0.1", "benchmarking"},
	{"198.19.255.255", "benchmarking"},
	{"240.0.0.1", "reserved"},
	{"250.1.2.3", "reserved"},
	{"192.88.99.1", "6to4 relay"},
	{"::1", "loopback"},
	{"::", "unspecified"},
	{"fe80::1", "link-local"},
	{"fe80::1%eth0", "link-local"},
	{"fd00:ec2::254", "cloud metadata"},
	{"fc00::1", "unique local"},
	{"fd12:3456::1", "unique local"},
	{"fec0::1", "site-local"},
	{"ff02::1", "multicast"},
	{"ff0e::1", "multicast"},
	{"2001:db8::1", "documentation"},
	{"3fff::1", "documentation"},
	{"100::1", "discard-only"},
	{"2001::1", "Teredo"},
	{"2001:2::1", "benchmarking"},
	{"5f00::1", "SRv6"},
	{"64:ff9b:1::1", "local-use NAT64"},
	// IPv6 spellings of blocked IPv4 addresses.
	{"::ffff:127.0.0.1", "loopback"},
	{"::ffff:169.254.169.254", "cloud metadata"},
	{"::ffff:10.0.0.1", "private"},
	{"::ffff:0.0.0.0", "unspecified"},
	{"::127.0.0.1", "IPv4-compatible form of 127.0.0.1, a loopback"},
	{"::a00:1", "IPv4-compatible form of 10.0.0.1, a private"},
	{"::8.8.8.8", "deprecated IPv4-compatible"},
	{"64:ff9b::a9fe:a9fe", "NAT64 form of 169.254.169.254, the cloud metadata"},
	{"64:ff9b::a00:1", "NAT64 form of 10.0.0.1"},
	{"64:ff9b::7f00:1", "NAT64 form of 127.0.0.1"},
	{"64:ff9b::6440:1", "NAT64 form of 100.64.0.1"},
	{"2002:a9fe:a9fe::", "6to4 form of 169.254.169.254"},
	{"2002:7f00:1::1", "6to4 form of 127.0.0.1"},
	{"::ffff:0:7f00:1", "IPv4-translated form of 127.0.0.1"},
}

// publicAddrs are allowed by default.
var publicAddrs = []string{
	"8.8.8.8", "1.1.1.1", "93.184.216.34", "223.255.255.255", "192.0.1.1",
	"100.63.255.255", "100.128.0.0", "172.15.255.255", "172.32.0.0",
	"198.17.255.255", "198.20.0.0", "169.253.255.255", "11.0.0.1",
	"2606:4700:4700::1111", "2a00:1450:4001::1", "::ffff:8.8.8.8",
	"64:ff9b::808:808", "2002:808:808::1",
}

func TestGuardBlockedMatrix(t *testing.T) {
	t.Parallel()
	g := mustGuard(t, GuardConfig{})
	for _, tt := range ssrfMatrix {
		t.Run(tt.addr, func(t *testing.T) {
			t.Parallel()
			ip := netip.MustParseAddr(tt.addr)
			reason, bad := g.Blocked(ip)
			if !bad || !strings.Contains(reason, tt.reason) {
				t.Errorf("Blocked(%s) = %q, %v; want blocked as %q", ip, reason, bad, tt.reason)
			}
			// The dial-time hook refuses it too.
			port := netip.AddrPortFrom(ip, 443).String()
			err := g.control(context.Background(), "tcp", port, nil)
			var be *BlockedError
			if !errors.As(err, &be) {
				t.Errorf("control(%s) = %v, want a BlockedError", port, err)
			}
		})
	}
	for _, a := range publicAddrs {
		ip := netip.MustParseAddr(a)
		if reason, bad := g.Blocked(ip); bad {
			t.Errorf("Blocked(%s) = %q, want allowed", a, reason)
		}
		if err := g.control(context.Background(), "tcp", netip.AddrPortFrom(ip, 443).String(), nil); err != nil {
			t.Errorf("control(%s) = %v", a, err)
		}
	}
	if _, bad := g.Blocked(netip.Addr{}); !bad {
		t.Error("the zero Addr is allowed")
	}
}

// TestGuardBlockedAtDial sends a real request to each blocked literal: the
// client refuses before any packet leaves, as ssrf_blocked.
func TestGuardBlockedAtDial(t *testing.T) {
	t.Parallel()
	g := mustGuard(t, GuardConfig{})
	client := g.Client(2 * time.Second)
	for _, tt := range ssrfMatrix {
		t.Run(tt.addr, func(t *testing.T) {
			t.Parallel()
			host := tt.addr
			if strings.Contains(host, ":") {
				host = "[" + strings.ReplaceAll(host, "%", "%25") + "]"
			}
			res := Attempt(context.Background(), client, "http://"+host+":80/hook", nil, []byte("{}"))
			if res.ErrorClass != ClassSSRFBlocked || !strings.Contains(res.Error, AllowFlag) {
				t.Errorf("Attempt = %+v, want ssrf_blocked", res)
			}
			if err := g.CheckURL(context.Background(), "https://"+host+"/hook"); err == nil ||
				!strings.Contains(err.Error(), tt.reason) {
				t.Errorf("CheckURL = %v, want %q", err, tt.reason)
			}
		})
	}
}

func TestGuardControlFailsClosed(t *testing.T) {
	t.Parallel()
	g := mustGuard(t, GuardConfig{})
	for _, tc := range []struct{ network, addr string }{
		{"udp", "8.8.8.8:53"},
		{"tcp", "not-an-address"},
		{"tcp", "example.com:80"},
		{"tcp", ""},
	} {
		if err := g.control(context.Background(), tc.network, tc.addr, nil); err == nil {
			t.Errorf("control(%s, %q) allowed", tc.network, tc.addr)
		}
	}
}

func TestGuardAllowlist(t *testing.T) {
	t.Parallel()
	g := mustGuard(t, GuardConfig{AllowCIDRs: []string{"127.0.0.0/8", " 10.1.0.0/16", "192.168.1.10", "::ffff:172.16.0.0/108", "fd00:1::/32"}})
	tests := []struct {
		addr    string
		blocked bool
	}{
		{"127.0.0.1", false},
		{"127.9.9.9", false},
		{"::ffff:127.0.0.1", false},
		{"64:ff9b::7f00:1", false}, // NAT64 of an allowed address
		{"10.1.2.3", false},
		{"10.2.0.1", true},
		{"192.168.1.10", false},
		{"192.168.1.11", true},
		{"172.16.0.1", false}, // from the IPv4-mapped prefix, a /12
		{"172.31.0.1", false},
		{"fd00:1::5", false},
		{"fd00:2::5", true},
		{"::1", true},
		{"169.254.169.254", true},
		{"8.8.8.8", false},
	}
	for _, tt := range tests {
		if _, bad := g.Blocked(netip.MustParseAddr(tt.addr)); bad != tt.blocked {
			t.Errorf("Blocked(%s) = %v, want %v", tt.addr, bad, tt.blocked)
		}
	}
	for _, bad := range []string{"foo", "10.0.0.0/33", "::ffff:0.0.0.0/64", ""} {
		if _, err := NewGuard(GuardConfig{AllowCIDRs: []string{bad}}); err == nil {
			t.Errorf("NewGuard(allow %q): want an error", bad)
		}
	}
}

func TestCheckURL(t *testing.T) {
	t.Parallel()
	res := newFakeResolver(map[string][]string{
		"hook.example":    {"93.184.216.34,2606:2800:220:1::1"},
		"hook.internal":   {"10.0.0.5"},
		"mixed.example":   {"93.184.216.34,10.0.0.1"},
		"meta.example":    {"fd00:ec2::254"},
		"empty.example":   {""},
		"allowed.example": {"127.0.0.1"},
	})
	g := mustGuard(t, GuardConfig{Resolver: res})
	gs := mustGuard(t, GuardConfig{Resolver: res, HTTPSOnly: true})
	ga := mustGuard(t, GuardConfig{Resolver: res, AllowCIDRs: []string{"127.0.0.0/8"}})
	tests := []struct {
		name    string
		g       *Guard
		url     string
		wantErr string // exact when it starts with "url: ", else a substring; "" means OK
	}{
		{"public https", g, "https://hook.example/webhooks?x=1", ""},
		{"public http with port", g, "http://hook.example:8080/", ""},
		{"public literal", g, "https://8.8.8.8/", ""},
		{"private literal", g, "https://10.0.0.5/", "url: 10.0.0.5 is a private address; allow it with --webhook-allow-cidr"},
		{"private name", g, "https://hook.internal/x", "url: hook.internal resolves to 10.0.0.5, a private address; allow it with --webhook-allow-cidr"},
		{"mixed answers", g, "https://mixed.example/", "resolves to 10.0.0.1"},
		{"metadata v6 name", g, "https://meta.example/", "cloud metadata"},
		{"no addresses", g, "https://empty.example/", "no addresses"},
		{"unknown host", g, "https://nope.example/", "no such host"},
		{"localhost literal", g, "http://127.0.0.1:8080/", "loopback"},
		{"allowed loopback", ga, "http://allowed.example:8080/", ""},
		{"ftp", g, "ftp://hook.example/", "url: scheme must be http or https"},
		{"javascript", g, "javascript:alert(1)", "scheme must be http or https"},
		{"no scheme", g, "hook.example/x", "scheme"},
		{"userinfo", g, "https://user:pass@hook.example/", "url: must not contain a user name or password"},
		{"user only", g, "https://user@hook.example/", "user name"},
		{"no host", g, "https:///path", "url: has no host"},
		{"opaque", g, "http:hook.example", "absolute"},
		{"bad port", g, "https://hook.example:99999/", "bad port"},
		{"unparsable", g, "https://[::1/", "url: not a valid URL"},
		{"https only refuses http", gs, "http://hook.example/", "url: scheme must be https"},
		{"https only allows https", gs, "https://hook.example/", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.g.CheckURL(context.Background(), tt.url)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("CheckURL = %v, want OK", err)
			case tt.wantErr == "":
			case err == nil:
				t.Fatalf("CheckURL = nil, want %q", tt.wantErr)
			case strings.HasPrefix(tt.wantErr, "url: ") && err.Error() != tt.wantErr:
				t.Fatalf("CheckURL = %q, want %q", err, tt.wantErr)
			case !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("CheckURL = %q, want it to mention %q", err, tt.wantErr)
			}
		})
	}
	var be *BlockedError
	if err := g.CheckURL(context.Background(), "https://hook.internal/"); !errors.As(err, &be) || be.Addr != netip.MustParseAddr("10.0.0.5") {
		t.Errorf("CheckURL error %v does not unwrap to the BlockedError", err)
	}
}

// countingServer counts the requests it gets and answers with h.
func countingServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// TestGuardDNSRebinding: the name resolves to a public address when the
// endpoint is created and to a private one when delivering; the dial is
// refused.
func TestGuardDNSRebinding(t *testing.T) {
	t.Parallel()
	res := newFakeResolver(map[string][]string{"rebind.example": {"93.184.216.34", "10.0.0.5"}})
	g := mustGuard(t, GuardConfig{Resolver: res})
	u := "http://rebind.example/hook"
	if err := g.CheckURL(context.Background(), u); err != nil {
		t.Fatalf("CheckURL at creation = %v, want OK", err)
	}
	r := Attempt(context.Background(), g.Client(time.Second), u, nil, []byte("{}"))
	if r.ErrorClass != ClassSSRFBlocked || !strings.Contains(r.Error, "10.0.0.5") {
		t.Fatalf("Attempt = %+v, want ssrf_blocked naming 10.0.0.5", r)
	}
	if n := res.count("rebind.example"); n != 2 {
		t.Errorf("resolver called %d times, want 2 (once per check)", n)
	}
}

// TestGuardResolvedLoopback: a name resolving to the loopback test server is
// refused by default and delivered to once 127.0.0.0/8 is allowed.
func TestGuardResolvedLoopback(t *testing.T) {
	t.Parallel()
	srv, hits := countingServer(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
	su, _ := url.Parse(srv.URL)
	u := "http://hook.test:" + su.Port() + "/hook"
	res := newFakeResolver(map[string][]string{"hook.test": {"127.0.0.1"}})

	blocked := mustGuard(t, GuardConfig{Resolver: res})
	if r := Attempt(context.Background(), blocked.Client(time.Second), u, nil, nil); r.ErrorClass != ClassSSRFBlocked {
		t.Fatalf("default guard: %+v, want ssrf_blocked", r)
	}
	if r := Attempt(context.Background(), blocked.Client(time.Second), srv.URL, nil, nil); r.ErrorClass != ClassSSRFBlocked {
		t.Fatalf("default guard, literal: %+v, want ssrf_blocked", r)
	}
	if hits.Load() != 0 {
		t.Fatal("a blocked request reached the server")
	}

	allowed := mustGuard(t, GuardConfig{Resolver: res, AllowCIDRs: []string{"127.0.0.0/8"}})
	if r := Attempt(context.Background(), allowed.Client(time.Second), u, nil, nil); !r.OK || r.Status != 204 {
		t.Fatalf("allowlisted: %+v, want 204", r)
	}
	if hits.Load() != 1 {
		t.Fatalf("server got %d requests, want 1", hits.Load())
	}
}

// TestGuardRedirectNotFollowed: a receiver that redirects, to the metadata
// address or anywhere else, gets a failed attempt and the target nothing.
func TestGuardRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	target, targetHits := countingServer(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(200) })
	toMeta, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/", http.StatusFound)
	})
	toTarget, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/landing", http.StatusTemporaryRedirect)
	})
	g := mustGuard(t, GuardConfig{AllowCIDRs: []string{"127.0.0.0/8"}})
	client := g.Client(time.Second)

	for _, tc := range []struct {
		name, url string
		status    int
	}{
		{"to metadata", toMeta.URL, http.StatusFound},
		{"to another host", toTarget.URL, http.StatusTemporaryRedirect},
	} {
		r := Attempt(context.Background(), client, tc.url, nil, []byte("{}"))
		if r.OK || r.Status != tc.status || r.ErrorClass != ClassHTTP3xx {
			t.Errorf("%s: %+v, want a failed %d", tc.name, r, tc.status)
		}
		if d, ok := r.NextDelay(1, constRnd(0.5)); !ok || d != 5*time.Second {
			t.Errorf("%s: a 3xx is retried on schedule, got %s, %v", tc.name, d, ok)
		}
	}
	if targetHits.Load() != 0 {
		t.Errorf("redirect target got %d requests, want 0", targetHits.Load())
	}

	// Even a client that does follow redirects cannot reach the metadata
	// address through the guarded transport.
	following := *client
	following.CheckRedirect = nil
	r := Attempt(context.Background(), &following, toMeta.URL, nil, []byte("{}"))
	if r.ErrorClass != ClassSSRFBlocked || !strings.Contains(r.Error, "cloud metadata") {
		t.Errorf("following client: %+v, want ssrf_blocked", r)
	}
}

func TestGuardClientSettings(t *testing.T) {
	t.Parallel()
	g := mustGuard(t, GuardConfig{})
	c := g.Client(0)
	if c.Timeout != DefaultTimeout {
		t.Errorf("timeout = %s, want %s", c.Timeout, DefaultTimeout)
	}
	tr, ok := c.Transport.(*http.Transport)
	if !ok {
		t.Fatalf("transport is %T", c.Transport)
	}
	if tr.Proxy != nil {
		t.Error("transport uses a proxy; it would bypass the dial guard")
	}
	if tr.TLSClientConfig != nil && tr.TLSClientConfig.InsecureSkipVerify {
		t.Error("TLS verification is off")
	}
	if c.CheckRedirect == nil || c.CheckRedirect(nil, nil) != http.ErrUseLastResponse {
		t.Error("client would follow redirects")
	}
	if g.Client(3*time.Second).Timeout != 3*time.Second {
		t.Error("timeout not applied")
	}
}
