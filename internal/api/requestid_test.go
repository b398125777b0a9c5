package api

import (
	"strings"
	"testing"

	"github.com/google/uuid"
)

func TestSaneRequestID(t *testing.T) {
	for id, want := range map[string]bool{
		"":                                     false,
		"a":                                    true,
		"0f8fad5b-d9cb-469f-a165-70867728950e": true,
		"00-4bf92f3577b34da6-00f067aa0ba902b7-01": true,
		strings.Repeat("x", 128):                  true,
		strings.Repeat("x", 129):                  false,
		"with space":                              false,
		"crlf\r\nSet-Cookie: a=b":                 false,
		`"quoted"`:                                false,
		"tab\t":                                   false,
		"é":                                       false,
	} {
		if got := saneRequestID(id); got != want {
			t.Errorf("saneRequestID(%q) = %v, want %v", id, got, want)
		}
	}
}

// FuzzRequestID: whatever arrives in X-Request-ID, the id we use is sane:
// the incoming one when it was sane, a fresh one otherwise.
func FuzzRequestID(f *testing.F) {
	for _, seed := range []string{"", "abc", "a b", "\x00", strings.Repeat("z", 200), "x\r\ny"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, incoming string) {
		value := requestID(incoming)
		if len(value) != 1 {
			t.Fatalf("requestID(%q) = %q: want one header value", incoming, value)
		}
		got := value[0]
		if !saneRequestID(got) {
			t.Fatalf("requestID(%q) = %q, not sane", incoming, got)
		}
		if saneRequestID(incoming) != (got == incoming) {
			t.Fatalf("requestID(%q) = %q: a sane id must be kept and only a sane one", incoming, got)
		}
	})
}

func TestNewRequestIDIsARandomUUID(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		value := newRequestID()
		if len(value) != 1 {
			t.Fatalf("newRequestID() = %q: want one header value", value)
		}
		id := value[0]
		u, err := uuid.Parse(id)
		if err != nil {
			t.Fatalf("newRequestID() = %q: %v", id, err)
		}
		if u.Version() != 4 || u.Variant() != uuid.RFC4122 || u.String() != id {
			t.Fatalf("newRequestID() = %q: version %d, variant %s; want a version 4 RFC 4122 UUID in canonical form",
				id, u.Version(), u.Variant())
		}
		if seen[id] {
			t.Fatalf("newRequestID() repeated %q", id)
		}
		seen[id] = true
	}
}
