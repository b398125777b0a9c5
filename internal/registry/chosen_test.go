package registry_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/optiinfra/orchestrator/internal/registry"
)

// chosenRegistration is what a /api/v1 agent registers with: its own ID,
// and the address its request came from.
func chosenRegistration(id, host, from string) registry.Registration {
	reg := validRegistration()
	reg.ID, reg.Name, reg.Host = id, id, host
	if from != "" {
		reg.From = netip.MustParseAddr(from)
	}
	return reg
}

func TestChosenIDValidation(t *testing.T) {
	e := newEnv(t, defaultConfig(t))
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"performance-agent-001", true},
		{"a", true},
		{"A.b_c-9", true},
		{strings.Repeat("x", 128), true},
		{strings.Repeat("x", 129), false},
		{".", false},
		{"..", false},
		{".hidden", false},
		{"-dash", false},
		{"a/b", false},
		{"a b", false},
		{"a%2F", false},
		{"agent\n", false},
		{"é", false},
	} {
		_, _, err := e.reg.Register(context.Background(), chosenRegistration(tc.id, "10.0.0.5", "10.0.0.5"))
		var field *registry.FieldError
		switch {
		case tc.ok && err != nil:
			t.Errorf("Register with agent_id %q: %v", tc.id, err)
		case !tc.ok && (!errors.As(err, &field) || field.Field != "agent_id"):
			t.Errorf("Register with agent_id %q = %v, want a FieldError on agent_id", tc.id, err)
		}
	}
}

func TestChosenIDAddress(t *testing.T) {
	for _, tc := range []struct {
		name, host, from   string
		wantHost           string
		wantSource         registry.AddressSource
		wantNotAllowed     bool
		wantAnnouncedShown string
	}{
		{"announced private address", "10.0.0.5", "10.0.0.9", "10.0.0.5", registry.AddressAnnounced, false, "10.0.0.5"},
		{"unspecified from a pod", "0.0.0.0", "10.244.1.7", "10.244.1.7", registry.AddressRequest, false, "0.0.0.0"},
		{"unspecified IPv6", "::", "fd00::7", "fd00::7", registry.AddressRequest, false, "::"},
		{"unspecified from loopback", "0.0.0.0", "127.0.0.1", "127.0.0.1", registry.AddressRequest, false, "0.0.0.0"},
		{"unspecified from a mapped address", "0.0.0.0", "::ffff:10.1.2.3", "10.1.2.3", registry.AddressRequest, false, "0.0.0.0"},
		{"localhost from a pod", "localhost", "10.244.1.7", "10.244.1.7", registry.AddressRequest, false, "localhost"},
		{"LOCALHOST from a pod", "LOCALHOST", "10.244.1.7", "10.244.1.7", registry.AddressRequest, false, "localhost"},
		{"127.0.0.2 from a pod", "127.0.0.2", "10.244.1.7", "10.244.1.7", registry.AddressRequest, false, "127.0.0.2"},
		{"::1 from a pod", "::1", "10.244.1.7", "10.244.1.7", registry.AddressRequest, false, "::1"},
		{"loopback from loopback", "127.0.0.5", "127.0.0.1", "127.0.0.5", registry.AddressAnnounced, false, "127.0.0.5"},
		{"127.0.0.1 from ::1", "127.0.0.1", "::1", "127.0.0.1", registry.AddressAnnounced, false, "127.0.0.1"},
		{"name announced", "agent.local", "10.0.0.9", "agent.local", registry.AddressAnnounced, false, "agent.local"},
		// The request's address passes AGENT_ALLOWED_NETWORKS as any host.
		{"unspecified from a public address", "0.0.0.0", "203.0.113.7", "", "", true, ""},
		{"localhost from a public address", "localhost", "203.0.113.7", "", "", true, ""},
		// Without the request's address, unspecified stays refused.
		{"unspecified without a request address", "0.0.0.0", "", "", "", true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, defaultConfig(t))
			a, _, err := e.reg.Register(context.Background(), chosenRegistration("agent-1", tc.host, tc.from))
			if tc.wantNotAllowed {
				if !errors.Is(err, registry.ErrHostNotAllowed) {
					t.Fatalf("Register = %v, want ErrHostNotAllowed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if a.Host != tc.wantHost || a.AddressSource != tc.wantSource || a.AnnouncedHost != tc.wantAnnouncedShown {
				t.Errorf("registered host %q (%s), announced %q; want %q (%s), announced %q",
					a.Host, a.AddressSource, a.AnnouncedHost, tc.wantHost, tc.wantSource, tc.wantAnnouncedShown)
			}
		})
	}
}

// TestGeneratedIDKeepsAnnouncedHost: the /agents dialect sends no
// request address, so its host is always the announced one, and an
// unspecified host is refused as before.
func TestGeneratedIDKeepsAnnouncedHost(t *testing.T) {
	e := newEnv(t, defaultConfig(t))
	a := e.register(t, validRegistration())
	if a.AnnouncedHost != a.Host || a.AddressSource != registry.AddressAnnounced || a.ChosenID {
		t.Errorf("agent = host %q announced %q source %q chosen %v; want its host, announced, generated", a.Host, a.AnnouncedHost, a.AddressSource, a.ChosenID)
	}
	reg := validRegistration()
	reg.Host = "0.0.0.0"
	if _, _, err := e.reg.Register(context.Background(), reg); !errors.Is(err, registry.ErrHostNotAllowed) {
		t.Errorf("Register of 0.0.0.0 = %v, want ErrHostNotAllowed", err)
	}
}

func TestChosenIDRegisterAgain(t *testing.T) {
	e := newEnv(t, defaultConfig(t))
	ctx := context.Background()
	first, created, err := e.reg.Register(ctx, chosenRegistration("perf-1", "10.0.0.5", "10.0.0.5"))
	if err != nil || !created || first.ID != "perf-1" || !first.ChosenID {
		t.Fatalf("Register = %s chosen %v created %v, %v; want perf-1 created", first.ID, first.ChosenID, created, err)
	}
	e.clock.Advance(10e9)
	reg := chosenRegistration("perf-1", "10.0.0.6", "10.0.0.6")
	reg.Port, reg.Status = 9000, "degraded"
	again, created, err := e.reg.Register(ctx, reg)
	if err != nil || created || again.ID != "perf-1" || !again.RegisteredAt.Equal(first.RegisteredAt) || again.Host != "10.0.0.6" ||
		again.Port != 9000 || again.Status != registry.StatusDegraded {
		t.Fatalf("Register again = %+v created %v, %v; want perf-1 updated, same registered_at, degraded", again, created, err)
	}

	// The reported status is checked as a heartbeat's is.
	reg.Status = "sleepy"
	var field *registry.FieldError
	if _, _, err := e.reg.Register(ctx, reg); !errors.As(err, &field) || field.Field != "status" {
		t.Errorf("Register with status sleepy = %v, want a FieldError on status", err)
	}

	// A generated ID as a chosen one: 409's error, naming agent_id.
	generated := e.register(t, validRegistration())
	_, _, err = e.reg.Register(ctx, chosenRegistration(generated.ID, "10.0.0.5", "10.0.0.5"))
	if !errors.Is(err, registry.ErrIDTaken) || !strings.HasPrefix(err.Error(), "agent_id: ") {
		t.Errorf("Register with a generated agent's ID = %v, want ErrIDTaken naming agent_id", err)
	}

	// Bound to its token: another one is refused, naming the agent by ID.
	bound := chosenRegistration("bound-1", "10.0.0.5", "10.0.0.5")
	bound.Owner = "sha256:aaaaaaaaaaaa"
	e.register(t, bound)
	bound.Owner = "sha256:bbbbbbbbbbbb"
	var owner *registry.OwnerError
	if _, _, err := e.reg.Register(ctx, bound); !errors.As(err, &owner) || owner.Agent != "bound-1" {
		t.Errorf("Register by another token = %v, want an OwnerError naming bound-1", err)
	}
}
