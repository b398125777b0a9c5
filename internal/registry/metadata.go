package registry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// metadataLimits bound the metadata of one registration or heartbeat
// (AGENT_MAX_METADATA_BYTES, AGENT_MAX_METADATA_DEPTH).
type metadataLimits struct {
	maxBytes, maxDepth int
}

// check returns raw, the metadata JSON value as the agent sent it,
// compacted; nil for none (absent or null). It refuses, as a FieldError on
// "metadata" (the field's name in registrations and heartbeats alike):
// more than maxBytes (wrapping ErrTooLarge), anything but an object,
// objects and arrays nested deeper than maxDepth, and text that is not
// valid JSON in UTF-8. The size is checked first and the nesting by one
// pass over the text, so what is refused is never decoded.
func (lim metadataLimits) check(raw json.RawMessage) (json.RawMessage, error) {
	const field = "metadata"
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	if len(raw) > lim.maxBytes {
		return nil, &FieldError{Field: field, Err: ErrTooLarge, Msg: fmt.Sprintf(
			"is %d bytes of JSON; the limit is %d bytes (AGENT_MAX_METADATA_BYTES)", len(raw), lim.maxBytes)}
	}
	if raw[0] != '{' {
		return nil, &FieldError{Field: field, Msg: "must be an object, not " + jsonKindOf(raw[0])}
	}
	tooDeep, huge := scan(raw, lim.maxDepth)
	if tooDeep {
		return nil, &FieldError{Field: field, Msg: fmt.Sprintf(
			"nests objects and arrays more than %d levels deep, counting the metadata object itself (AGENT_MAX_METADATA_DEPTH)", lim.maxDepth)}
	}
	if huge != nil {
		return nil, &FieldError{Field: field, Msg: fmt.Sprintf(
			"holds the number %.40q, beyond the range of a 64-bit float (about ±1.8e308), which most JSON clients cannot read", huge)}
	}
	if !utf8.Valid(raw) {
		return nil, &FieldError{Field: field, Msg: "is not valid UTF-8"}
	}
	var out bytes.Buffer
	out.Grow(len(raw))
	if err := json.Compact(&out, raw); err != nil {
		return nil, &FieldError{Field: field, Msg: "is not valid JSON: " + err.Error()}
	}
	return out.Bytes(), nil
}

// scan reads the JSON text js once and reports the first of two things
// that would make it unreadable to the clients that list agents: objects
// and arrays nested more than max levels deep ({} is one level, {"a":[]}
// two; it stops there), or a number literal too large for a 64-bit float
// (json.Unmarshal into any, JavaScript and the portal all fail or turn it
// into Infinity), which it returns. It reads brackets and numbers outside
// strings only.
func scan(js []byte, max int) (tooDeep bool, huge []byte) {
	depth, inString, escaped := 0, false, false
	for i := 0; i < len(js); i++ {
		c := js[i]
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			if depth++; depth > max {
				return true, nil
			}
		case c == '}' || c == ']':
			depth--
		case c == '-' || c >= '0' && c <= '9':
			end := i + 1
			for end < len(js) && isNumberByte(js[end]) {
				end++
			}
			if n := js[i:end]; huge == nil && mayOverflow(n) {
				if _, err := strconv.ParseFloat(string(n), 64); err != nil {
					huge = n
				}
			}
			i = end - 1
		}
	}
	return false, huge
}

func isNumberByte(c byte) bool {
	return c >= '0' && c <= '9' || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-'
}

// mayOverflow reports whether the number literal n could exceed a float64:
// only one with an exponent or more than 300 digits can, so the common
// case is never parsed.
func mayOverflow(n []byte) bool {
	return len(n) > 300 || bytes.ContainsAny(n, "eE")
}

// jsonKindOf names the kind of JSON value that starts with c.
func jsonKindOf(c byte) string {
	switch {
	case c == '[':
		return "an array"
	case c == '"':
		return "a string"
	case c == 't' || c == 'f':
		return "true or false"
	case c == '-' || c >= '0' && c <= '9':
		return "a number"
	}
	return "valid JSON"
}
