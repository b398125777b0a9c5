package api

import "github.com/google/uuid"

// RequestIDHeader carries the request id in both directions.
const RequestIDHeader = "X-Request-ID"

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
	return uuid.NewString()
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

