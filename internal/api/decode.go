package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
)

// errEmptyBody is returned by decodeBody for a request without a body
// (test for it with errors.Is). It is a 400 where a body is required.
var errEmptyBody error = &bodyError{http.StatusBadRequest, "the request body is empty: send a JSON object"}

// bodyError is a request body that cannot be used; status says why.
type bodyError struct {
	status int
	msg    string
}

func (e *bodyError) Error() string { return e.msg }

// decodeBody reads one JSON object from r's body into v. Unknown fields
// are ignored (agents in the field send extra ones), numbers in maps stay
// exact (json.Number), and the errors name the field at fault.
func decodeBody(r *http.Request, v any) error {
	data, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return &bodyError{http.StatusRequestEntityTooLarge,
				fmt.Sprintf("request body too large: the limit is %d bytes", tooBig.Limit)}
		}
		return &bodyError{http.StatusBadRequest, "reading the request body: " + err.Error()}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return errEmptyBody
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return &bodyError{http.StatusBadRequest, explainJSON(err)}
	}
	switch _, err := dec.Token(); {
	case err == io.EOF:
	case err != nil:
		return &bodyError{http.StatusBadRequest, "the request body has data after its JSON value that is not JSON"}
	default:
		return &bodyError{http.StatusBadRequest, "the request body has more than one JSON value"}
	}
	return nil
}

// explainJSON turns a decoding error into a message a client can act on.
func explainJSON(err error) string {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return fmt.Sprintf("the request body is not valid JSON (at byte %d): %s", syntax.Offset, syntax.Error())
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "the request body is not valid JSON: it ends too early"
	case errors.As(err, &typ):
		if typ.Field == "" {
			return "the request body must be a JSON object, not " + typ.Value
		}
		return fmt.Sprintf("%s: must be %s, not %s", typ.Field, jsonKind(typ.Type), typ.Value)
	}
	return "the request body is not valid JSON: " + err.Error()
}

// jsonKind names a Go type the way a JSON client thinks of it.
func jsonKind(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "an array of " + pluralKind(jsonKind(t.Elem()))
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "a " + t.String()
}

// pluralKind turns one of jsonKind's names into the plural: "an integer"
// -> "integers", "an array of strings" -> "arrays of strings".
func pluralKind(kind string) string {
	if kind == "true or false" {
		return "true or false values"
	}
	noun, rest, _ := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(kind, "a "), "an "), " ")
	if rest != "" {
		rest = " " + rest
	}
	return noun + "s" + rest
}
