package registry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Guard admits agent hosts that are, or resolve only to, addresses inside
// the allowed networks.
type Guard struct {
	Networks []netip.Prefix
	Resolver Resolver
}

// Resolver looks up a host name's addresses; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// ErrHostNotAllowed is returned for a host outside the allowed networks.
var ErrHostNotAllowed = errors.New("host not allowed")

// hostLookupTimeout bounds the DNS lookup of a registering agent's host.
const hostLookupTimeout = 2 * time.Second

// CheckHost returns nil when host is an allowed address or a name that
// resolves only to allowed addresses.
func (g *Guard) CheckHost(ctx context.Context, host string) error {
	if addr, err := netip.ParseAddr(host); err == nil {
		return g.CheckAddr(addr)
	}
	ctx, cancel := context.WithTimeout(ctx, hostLookupTimeout)
	defer cancel()
	resolver := g.Resolver
	if resolver == nil {
		resolver = net.DefaultResolver
	}
	addrs, err := resolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		return &FieldError{Field: "host", Msg: fmt.Sprintf("%q does not resolve", host)}
	}
	for _, addr := range addrs {
		if err := g.CheckAddr(addr); err != nil {
			return fmt.Errorf("%q resolves to %s: %w", host, addr, err)
		}
	}
	return nil
}

// CheckAddr returns nil when addr is inside an allowed network.
func (g *Guard) CheckAddr(addr netip.Addr) error {
	addr = addr.Unmap()
	if neverAgent(addr) {
		return fmt.Errorf("%w: %s is unspecified, multicast, link-local or a cloud metadata address, which AGENT_ALLOWED_NETWORKS can never admit", ErrHostNotAllowed, addr)
	}
	for _, p := range g.Networks {
		if p.Contains(addr) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s is outside AGENT_ALLOWED_NETWORKS", ErrHostNotAllowed, addr)
}

// awsIPv6Metadata is EC2's instance metadata service over IPv6, which sits
// inside fc00::/7, one of the default private ranges.
var awsIPv6Metadata = netip.MustParseAddr("fd00:ec2::254")

// neverAgent is true for addresses no configuration may admit: unspecified,
// multicast, and link-local, where cloud metadata services live
// (169.254.169.254), and EC2's IPv6 metadata address.
func neverAgent(addr netip.Addr) bool {
	return addr.IsUnspecified() || addr.IsMulticast() || addr.IsLinkLocalUnicast() ||
		addr.IsLinkLocalMulticast() || addr == awsIPv6Metadata
}

// ParseNetworks parses CIDRs such as 10.0.0.0/8 (a bare address means
// just that address).
func ParseNetworks(cidrs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range cidrs {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		addr, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR such as 10.0.0.0/8", s)
		}
		out = append(out, netip.PrefixFrom(addr, addr.BitLen()))
	}
	return out, nil
}
