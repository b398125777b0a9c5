package api

import (
	"encoding/binary"
	"math/rand/v2"

	"github.com/google/uuid"
)

// RequestIDHeader carries the request id in both directions. It is written
// in canonical form so header lookups need no conversion.
const RequestIDHeader = "X-Request-Id"

// maxRequestIDLen bounds an incoming request id we accept.
const maxRequestIDLen = 128

// requestID returns the incoming id when it is sane, or a new one. A sane id
// is 1 to 128 characters of letters, digits and -_.:/+=@, which covers
// UUIDs, ULIDs, W3C trace ids and the ids proxies such as Envoy and nginx
// generate, and keeps control characters and quotes out of logs and headers.
func requestID(incoming string) string {
	if saneRequestID(incoming) {
		return incoming
	}
	return newRequestID()
}

func saneRequestID(id string) bool {
	if id == "" || len(id) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-', c == '_', c == '.', c == ':', c == '/', c == '+', c == '=', c == '@':
		default:
			return false
		}
	}
	return true
}

// newRequestID returns a random (version 4) UUID. Request ids must be
// unique, not secret, so it draws from math/rand/v2's per-thread ChaCha8
// generator instead of crypto/rand: several times faster on every request.
func newRequestID() string {
	var u uuid.UUID
	binary.LittleEndian.PutUint64(u[:8], rand.Uint64()) //nolint:gosec // unique, not secret
	binary.LittleEndian.PutUint64(u[8:], rand.Uint64()) //nolint:gosec // unique, not secret
	u[6] = u[6]&0x0f | 0x40                             // version 4
	u[8] = u[8]&0x3f | 0x80                             // RFC 4122 variant
	return u.String()
}
