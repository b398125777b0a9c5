package postgres

import (
	"strings"
	"unicode/utf8"
)

// storable reports whether PostgreSQL text can hold s: valid UTF-8 with no
// NUL character. PostgreSQL refuses any other string, even as a query
// parameter, so an id or a filter that is not storable names no record:
// a lookup answers not found rather than passing the database's refusal
// on as a 500. JSON bodies always decode to valid UTF-8; a path segment
// (%ff, %00) or a \u0000 escape need not.
func storable(s string) bool { return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 }
