package registry

import (
	"bytes"
	"encoding/json"
	"fmt"
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
	if !withinDepth(raw, lim.maxDepth) {
		return nil, &FieldError{Field: field, Msg: fmt.Sprintf(
			"nests objects and arrays more than %d levels deep, counting the metadata object itself (AGENT_MAX_METADATA_DEPTH)", lim.maxDepth)}
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

// withinDepth reports whether the objects and arrays of the JSON text js
// nest at most max levels deep ({} is one level, {"a":[]} two). It reads
// brackets outside strings only, and stops at the first level too deep.
func withinDepth(js []byte, max int) bool {
	depth, inString, escaped := 0, false, false
	for _, c := range js {
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
				return false
			}
		case c == '}' || c == ']':
			depth--
		}
	}
	return true
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
