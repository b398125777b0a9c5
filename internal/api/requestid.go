package api

import (
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"unsafe"
)

// RequestIDHeader carries the request id in both directions. It is written
// in canonical form so header lookups need no conversion.
const RequestIDHeader = "X-Request-Id"

// maxRequestIDLen bounds an incoming request id we accept.
const maxRequestIDLen = 128

// requestID returns the X-Request-Id value of the answer: the incoming id
// when it is sane, or a new one. A sane id is 1 to 128 characters of
// letters, digits and -_.:/+=@, which covers UUIDs, ULIDs, W3C trace ids
// and the ids proxies such as Envoy and nginx generate, and keeps control
// characters and quotes out of logs and headers.
func requestID(incoming string) []string {
	if saneRequestID(incoming) {
		return []string{incoming}
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

// generatedID is a new request id and the header value that carries it:
// one allocation for the text, the string and the slice, where a header
// value built the usual way takes three (the UUID's text, the string, the
// slice), on every probe.
type generatedID struct {
	value [1]string
	text  [36]byte
}

// newRequestID returns a header value holding a random (version 4) UUID in
// its canonical text form. Request ids must be unique, not secret, so it
// draws from math/rand/v2's per-thread ChaCha8 generator instead of
// crypto/rand: several times faster on every request.
func newRequestID() []string {
	var u [16]byte
	binary.LittleEndian.PutUint64(u[:8], rand.Uint64()) //nolint:gosec // unique, not secret
	binary.LittleEndian.PutUint64(u[8:], rand.Uint64()) //nolint:gosec // unique, not secret
	u[6] = u[6]&0x0f | 0x40                             // version 4
	u[8] = u[8]&0x3f | 0x80                             // RFC 4122 variant

	g := new(generatedID)
	t := g.text[:]
	hex.Encode(t[0:8], u[0:4])
	t[8] = '-'
	hex.Encode(t[9:13], u[4:6])
	t[13] = '-'
	hex.Encode(t[14:18], u[6:8])
	t[18] = '-'
	hex.Encode(t[19:23], u[8:10])
	t[23] = '-'
	hex.Encode(t[24:36], u[10:16])
	// The text is complete and never written again, so the string may
	// share its memory, as strings.Builder's does.
	g.value[0] = unsafe.String(&g.text[0], len(g.text)) //nolint:gosec // g.text is immutable from here on
	return g.value[:]
}
