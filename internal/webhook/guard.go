package webhook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Timeouts of a delivery client.
const (
	// DefaultTimeout bounds one attempt, from dialing to the last header
	// byte and the capped body; Standard Webhooks suggests 15–30 s.
	DefaultTimeout = 15 * time.Second
	// connectTimeout bounds the TCP connect alone, so an unroutable address
	// fails fast and leaves the rest of the budget for a slow receiver.
	connectTimeout = 5 * time.Second
)

// AllowFlag is the server flag that opens a blocked range; errors name it so
// an operator whose receiver is on a private network knows the fix.
const AllowFlag = "--webhook-allow-cidr"

// Resolver looks up a host's addresses. *net.Resolver satisfies it; tests
// substitute a fake to script DNS answers (DNS rebinding included).
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// GuardConfig configures a Guard.
type GuardConfig struct {
	// AllowCIDRs are ranges that are reachable although blocked by default,
	// the values of --webhook-allow-cidr: for self-hosted receivers on a
	// private network. An allowed range wins over every default block,
	// cloud metadata included, so keep it as narrow as the receiver.
	AllowCIDRs []string
	// HTTPSOnly refuses http:// URLs at CheckURL.
	HTTPSOnly bool
	// Resolver resolves host names, at CheckURL and at every dial; nil
	// means net.DefaultResolver.
	Resolver Resolver
}

// Guard keeps webhook deliveries away from the server's own network: it
// refuses, before any packet is sent, to connect to loopback, private,
// link-local, metadata and other special-purpose addresses, unless the
// operator allowed them. A webhook URL is chosen by an API client, so
// without it any client could make the server POST to its cloud metadata
// service or an internal admin port (SSRF). A Guard holds no mutable state.
type Guard struct {
	allow     []netip.Prefix
	httpsOnly bool
	resolver  Resolver
}

// NewGuard parses the allowed CIDRs; a bare address is taken as a single
// host (/32 or /128).
func NewGuard(cfg GuardConfig) (*Guard, error) {
	g := &Guard{httpsOnly: cfg.HTTPSOnly, resolver: cfg.Resolver}
	if g.resolver == nil {
		g.resolver = net.DefaultResolver
	}
	for _, s := range cfg.AllowCIDRs {
		s = strings.TrimSpace(s)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("new guard: allow %q: want a CIDR such as 10.0.0.0/8", s)
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		if p.Addr().Is4In6() {
			// ::ffff:10.0.0.0/104 means 10.0.0.0/8; addresses are unmapped
			// before matching.
			if p.Bits() < 96 {
				return nil, fmt.Errorf("new guard: allow %q: an IPv4-mapped prefix must be /96 or longer", s)
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		g.allow = append(g.allow, p.Masked())
	}
	return g, nil
}

// BlockedError says that an address may not be contacted, and why. It is
// what CheckURL wraps and what a refused dial returns, so callers can tell a
// policy refusal from a network failure with errors.As.
type BlockedError struct {
	// Host is the name as written in the URL; empty or equal to Addr for an
	// address literal.
	Host string
	// Addr is the refused address.
	Addr netip.Addr
	// Reason names the range, e.g. "a private address".
	Reason string
}

// Error names the address, the range and the flag that opens it, the
// message a user sees when creating an endpoint and the operator reads in
// the attempt log.
func (e *BlockedError) Error() string {
	if e.Host != "" && e.Host != e.Addr.String() {
		return fmt.Sprintf("%s resolves to %s, %s; allow it with %s", e.Host, e.Addr, e.Reason, AllowFlag)
	}
	return fmt.Sprintf("%s is %s; allow it with %s", e.Addr, e.Reason, AllowFlag)
}

// Client returns an HTTP client for deliveries that enforces the guard on
// every connection. timeout bounds a whole attempt (DefaultTimeout when zero
// or negative). Make one client per engine and share it, so connections are
// reused.
//
// Every resolved address is checked before dialing, and the concrete
// address is checked again in the dialer's Control hook, so a name that
// passed CheckURL and later resolves to a private address (DNS rebinding) is
// refused. Redirects are never followed: the 3xx itself is the response, and
// a delivery that gets one has failed. Proxy settings in the environment are
// ignored, because a proxy would do the dialing and bypass the guard. TLS
// certificates are verified.
func (g *Guard) Client(timeout time.Duration) *http.Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	t := &http.Transport{
		Proxy:       nil,
		DialContext: g.dialContext,
		// A custom DialContext turns HTTP/2 off unless asked for.
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   min(10*time.Second, timeout),
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   4,
	}
	return &http.Client{
		Transport:     t,
		Timeout:       timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// dialContext resolves addr's host with the guard's resolver, refuses the
// connection if any address is blocked, and otherwise dials the addresses in
// turn. Refusing when any one is blocked, rather than skipping it, is the
// same rule as CheckURL: a name that mixes public and private answers is
// refused consistently instead of working by luck of ordering.
func (g *Guard) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	ips, err := g.resolve(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	for _, ip := range ips {
		if reason, bad := g.blocked(ip); bad {
			return nil, &BlockedError{Host: host, Addr: ip, Reason: reason}
		}
	}
	d := &net.Dialer{Timeout: connectTimeout, ControlContext: g.control}
	var first error
	for _, ip := range ips {
		c, err := d.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

// control runs after resolution, on the exact address about to be
// connected to; it fails closed on anything it cannot parse. It is the last
// line of defence should an address reach the dialer some other way.
func (g *Guard) control(_ context.Context, network, address string, _ syscall.RawConn) error {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return fmt.Errorf("guard: network %q not allowed", network)
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("guard: unparsable address %q", address)
	}
	if reason, bad := g.blocked(ap.Addr()); bad {
		return &BlockedError{Addr: ap.Addr(), Reason: reason}
	}
	return nil
}

// resolve returns host's addresses, unmapped and without zones: the literal
// itself for an IP, else the resolver's answer.
func (g *Guard) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip.WithZone("").Unmap()}, nil
	}
	ips, err := g.resolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("resolve %s: no addresses", host)
	}
	out := make([]netip.Addr, len(ips))
	for i, ip := range ips {
		out[i] = ip.WithZone("").Unmap()
	}
	return out, nil
}

// CheckURL validates an endpoint URL when it is created or changed, so a
// user learns at once that it can never be delivered to: the scheme must be
// http or https (https only if so configured), it must have a host and no
// user:password, and every address the host resolves to must be allowed.
// Passing it proves nothing later; the client re-checks at every dial.
func (g *Guard) CheckURL(ctx context.Context, rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return errors.New("url: not a valid URL")
	}
	switch u.Scheme {
	case "https":
	case "http":
		if g.httpsOnly {
			return errors.New("url: scheme must be https")
		}
	default:
		return errors.New("url: scheme must be http or https")
	}
	if u.User != nil {
		return errors.New("url: must not contain a user name or password")
	}
	if u.Opaque != "" {
		return errors.New("url: must be absolute, like https://host/path")
	}
	host := u.Hostname()
	if host == "" {
		return errors.New("url: has no host")
	}
	if p := u.Port(); p != "" {
		if n, err := net.LookupPort("tcp", p); err != nil || n == 0 {
			return fmt.Errorf("url: bad port %q", p)
		}
	}
	ips, err := g.resolve(ctx, host)
	if err != nil {
		return fmt.Errorf("url: %w", err)
	}
	for _, ip := range ips {
		if reason, bad := g.blocked(ip); bad {
			return fmt.Errorf("url: %w", &BlockedError{Host: host, Addr: ip, Reason: reason})
		}
	}
	return nil
}

// Blocked reports whether the guard refuses ip, and the reason, for callers
// that hold an address rather than a URL (diagnostics, an admin listing).
func (g *Guard) Blocked(ip netip.Addr) (reason string, blocked bool) { return g.blocked(ip) }

func (g *Guard) blocked(ip netip.Addr) (string, bool) {
	if !ip.IsValid() {
		return "not a valid address", true
	}
	ip = ip.WithZone("").Unmap()
	if g.allowed(ip) {
		return "", false
	}
	if v4, _, ok := embeddedV4(ip); ok && g.allowed(v4) {
		return "", false
	}
	return classify(ip)
}

func (g *Guard) allowed(ip netip.Addr) bool {
	for _, p := range g.allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

type rangeReason struct {
	prefix netip.Prefix
	reason string
}

func mustRanges(pairs ...string) []rangeReason {
	out := make([]rangeReason, 0, len(pairs)/2)
	for i := 0; i < len(pairs); i += 2 {
		out = append(out, rangeReason{netip.MustParsePrefix(pairs[i]), pairs[i+1]})
	}
	return out
}

// Special-purpose ranges blocked by default (IANA special-purpose registries,
// RFC 6890 and successors, and Svix's default list). The most specific range
// comes first so the reason is precise. These are read-only tables.
var (
	blockedV4 = mustRanges(
		"169.254.169.254/32", "the cloud metadata address",
		"255.255.255.255/32", "the broadcast address",
		"0.0.0.0/32", "the unspecified address",
		"0.0.0.0/8", "in 0.0.0.0/8 (\"this network\")",
		"10.0.0.0/8", "a private address",
		"172.16.0.0/12", "a private address",
		"192.168.0.0/16", "a private address",
		"100.64.0.0/10", "a carrier-grade NAT address (100.64.0.0/10)",
		"127.0.0.0/8", "a loopback address",
		"169.254.0.0/16", "a link-local address",
		"192.0.0.0/24", "an IETF protocol assignment (192.0.0.0/24)",
		"192.0.2.0/24", "a documentation address (TEST-NET-1)",
		"198.51.100.0/24", "a documentation address (TEST-NET-2)",
		"203.0.113.0/24", "a documentation address (TEST-NET-3)",
		"192.88.99.0/24", "a deprecated 6to4 relay address",
		"198.18.0.0/15", "a benchmarking address (198.18.0.0/15)",
		"224.0.0.0/4", "a multicast address",
		"240.0.0.0/4", "a reserved address (240.0.0.0/4)",
	)
	blockedV6 = mustRanges(
		"::/128", "the unspecified address",
		"::1/128", "a loopback address",
		"fd00:ec2::254/128", "the cloud metadata address",
		"::/96", "a deprecated IPv4-compatible address",
		"64:ff9b:1::/48", "a local-use NAT64 address",
		"100::/64", "a discard-only address",
		"2001::/32", "a Teredo address",
		"2001:2::/48", "a benchmarking address",
		"2001:10::/28", "an ORCHID address",
		"2001:20::/28", "an ORCHID address",
		"2001:db8::/32", "a documentation address",
		"3fff::/20", "a documentation address",
		"5f00::/16", "an SRv6 segment identifier",
		"fc00::/7", "a private address (unique local)",
		"fe80::/10", "a link-local address",
		"fec0::/10", "a deprecated site-local address",
		"ff00::/8", "a multicast address",
	)
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
	v4compat  = netip.MustParsePrefix("::/96")
	// siit is the IPv4-translated form ::ffff:0:a.b.c.d (RFC 2765).
	siit = netip.MustParsePrefix("::ffff:0:0:0/96")
)

// embeddedV4 returns the IPv4 address carried inside an IPv6 one by
// NAT64 (64:ff9b::/96), 6to4 (2002::/16), the IPv4-translated form, or the
// deprecated IPv4-compatible form (::a.b.c.d), so that a blocked IPv4
// address cannot be reached by writing it as IPv6. IPv4-mapped addresses
// (::ffff:a.b.c.d) are unmapped before this is called.
func embeddedV4(ip netip.Addr) (v4 netip.Addr, how string, ok bool) {
	if !ip.Is6() {
		return netip.Addr{}, "", false
	}
	b := ip.As16()
	switch {
	case nat64.Contains(ip):
		return netip.AddrFrom4([4]byte(b[12:16])), "NAT64 form", true
	case siit.Contains(ip):
		return netip.AddrFrom4([4]byte(b[12:16])), "IPv4-translated form", true
	case sixToFour.Contains(ip):
		return netip.AddrFrom4([4]byte(b[2:6])), "6to4 form", true
	case v4compat.Contains(ip) && ip != netip.IPv6Unspecified() && ip != netip.IPv6Loopback():
		return netip.AddrFrom4([4]byte(b[12:16])), "IPv4-compatible form", true
	}
	return netip.Addr{}, "", false
}

// classify applies the default block list to an unmapped address.
func classify(ip netip.Addr) (string, bool) {
	if ip.Is4() {
		for _, r := range blockedV4 {
			if r.prefix.Contains(ip) {
				return r.reason, true
			}
		}
		return "", false
	}
	if v4, how, ok := embeddedV4(ip); ok {
		if reason, bad := classify(v4); bad {
			return fmt.Sprintf("the %s of %s, %s", how, v4, reason), true
		}
	}
	for _, r := range blockedV6 {
		if r.prefix.Contains(ip) {
			return r.reason, true
		}
	}
	// Belt and braces for anything the table misses.
	switch {
	case ip.IsLoopback():
		return "a loopback address", true
	case ip.IsPrivate():
		return "a private address", true
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast(), ip.IsInterfaceLocalMulticast():
		return "a link-local address", true
	case ip.IsMulticast():
		return "a multicast address", true
	case ip.IsUnspecified():
		return "the unspecified address", true
	}
	return "", false
}
