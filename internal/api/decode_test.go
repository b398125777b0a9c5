package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

// decodeSample has a field of each kind the request types use.
type decodeSample struct {
	Name  string          `json:"name"`
	Port  *int            `json:"port"`
	Caps  []string        `json:"caps"`
	Meta  map[string]any  `json:"meta"`
	Inner struct{ N int } `json:"inner"`
	Ratio float64         `json:"ratio"`
	On    bool            `json:"on"`
	Raw   json.RawMessage `json:"raw"`
}

func TestDecodeBody(t *testing.T) {
	for _, tc := range []struct {
		body   string
		status int    // 0: decoded
		msg    string // the exact message
	}{
		{"", 400, "the request body is empty: send a JSON object"},
		{" \t\r\n", 400, "the request body is empty: send a JSON object"},
		{"{", 400, "the request body is not valid JSON: it ends too early"},
		{`{"name":`, 400, "the request body is not valid JSON: it ends too early"},
		{`{"name":"a"`, 400, "the request body is not valid JSON: it ends too early"},
		{"{]", 400, "the request body is not valid JSON (at byte 2): invalid character ']' looking for beginning of object key string"},
		{"nope", 400, "the request body is not valid JSON (at byte 2): invalid character 'o' in literal null (expecting 'u')"},
		{`{"name" "a"}`, 400, "the request body is not valid JSON (at byte 9): invalid character '\"' after object key"},
		{`{"name":"a",}`, 400, "the request body is not valid JSON (at byte 13): invalid character '}' looking for beginning of object key string"},
		{"{\"name\":\"\x01\"}", 400, "the request body is not valid JSON (at byte 10): invalid character '\\x01' in string literal"},
		{"[]", 400, "the request body must be a JSON object, not array"},
		{"5", 400, "the request body must be a JSON object, not number"},
		{`"x"`, 400, "the request body must be a JSON object, not string"},
		{"true", 400, "the request body must be a JSON object, not bool"},
		{`{"port":"80"}`, 400, "port: must be an integer, not string"},
		{`{"port":1.5}`, 400, "port: must be an integer, not number 1.5"},
		{`{"port":1e30}`, 400, "port: must be an integer, not number 1e30"},
		{`{"port":-99999999999999999999}`, 400, "port: must be an integer, not number -99999999999999999999"},
		{`{"port":{}}`, 400, "port: must be an integer, not object"},
		{`{"name":5}`, 400, "name: must be a string, not number"},
		{`{"name":["a"]}`, 400, "name: must be a string, not array"},
		{`{"caps":"x"}`, 400, "caps: must be an array of strings, not string"},
		{`{"caps":{}}`, 400, "caps: must be an array of strings, not object"},
		{`{"caps":[1]}`, 400, "caps: must be a string, not number"},
		{`{"meta":[]}`, 400, "meta: must be an object, not array"},
		{`{"meta":"x"}`, 400, "meta: must be an object, not string"},
		{`{"inner":{"N":"x"}}`, 400, "inner.N: must be an integer, not string"},
		{`{"inner":[]}`, 400, "inner: must be an object, not array"},
		{`{"ratio":"x"}`, 400, "ratio: must be a number, not string"},
		{`{"on":1}`, 400, "on: must be true or false, not number"},
		{`{"port":"80","name":5}`, 400, "port: must be an integer, not string"}, // the first one
		{`{"name":"a"} {}`, 400, "the request body has more than one JSON value"},
		{`{"name":"a"}{"name":"b"}`, 400, "the request body has more than one JSON value"},
		{`{"name":"a"} 5`, 400, "the request body has more than one JSON value"},
		{`{"name":"a"}x`, 400, "the request body has data after its JSON value that is not JSON"},
		{`{"name":"a"} ]`, 400, "the request body has data after its JSON value that is not JSON"},
		{strings.Repeat("[", 10001), 400, "the request body is not valid JSON (at byte 10001): invalid character '[' exceeded max depth"},
		{`{"raw":` + strings.Repeat("[", 10001), 400, "the request body is not valid JSON (at byte 10007): invalid character '[' exceeded max depth"},

		// Accepted.
		{"null", 0, ""},
		{"{}", 0, ""},
		{" {} \n", 0, ""},
		{`{"unknown":1,"name":"a","NAME":"b"}`, 0, ""}, // unknown fields ignored; keys match case-insensitively, the last wins
		{`{"name":"\u00e9\ud83d\ude00","port":null,"caps":null,"meta":null,"raw":null}`, 0, ""},
		{`{"port":8080,"caps":["a","b"],"meta":{"n":12345678901234567890,"f":0.1},"inner":{"N":-1},"ratio":1e-9,"on":true,"raw":[1,{"x":null}]}`, 0, ""},
		{"{\"name\":\"\xff\"}", 0, ""}, // invalid UTF-8 becomes U+FFFD, as encoding/json does
	} {
		t.Run(tc.body[:min(len(tc.body), 40)], func(t *testing.T) {
			var v decodeSample
			err := decodeBody(httptest.NewRequest(http.MethodPost, "/", strings.NewReader(tc.body)), &v)
			if tc.status == 0 {
				if err != nil {
					t.Fatalf("decodeBody(%.60q) = %v, want it decoded", tc.body, err)
				}
				return
			}
			var be *bodyError
			if !errors.As(err, &be) {
				t.Fatalf("decodeBody(%.60q) = %v (%T), want a *bodyError", tc.body, err, err)
			}
			if be.status != tc.status || be.msg != tc.msg {
				t.Errorf("decodeBody(%.60q) = %d %q, want %d %q", tc.body, be.status, be.msg, tc.status, tc.msg)
			}
		})
	}
}

func TestDecodeBodyValues(t *testing.T) {
	var v decodeSample
	body := `{"name":"a","NAME":"b","port":8080,"caps":["x","y"],"meta":{"n":12345678901234567890,"nested":{"f":0.1}},"raw":[1, 2]}`
	if err := decodeBody(httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body)), &v); err != nil {
		t.Fatal(err)
	}
	if v.Name != "b" || v.Port == nil || *v.Port != 8080 || len(v.Caps) != 2 || string(v.Raw) != "[1, 2]" {
		t.Errorf("decoded %+v", v)
	}
	// Numbers in maps stay exact.
	if n, ok := v.Meta["n"].(json.Number); !ok || n.String() != "12345678901234567890" {
		t.Errorf("meta.n = %v (%T), want the exact json.Number", v.Meta["n"], v.Meta["n"])
	}
	if f, ok := v.Meta["nested"].(map[string]any)["f"].(json.Number); !ok || f.String() != "0.1" {
		t.Errorf("meta.nested.f = %v", v.Meta["nested"])
	}
	v = decodeSample{}
	if err := decodeBody(httptest.NewRequest(http.MethodPost, "/", strings.NewReader("{\"name\":\"\xff\"}")), &v); err != nil || v.Name != "\ufffd" {
		t.Errorf("invalid UTF-8: name %q, err %v", v.Name, err)
	}
}

func TestDecodeBodyReadErrors(t *testing.T) {
	// Over the limit the middleware sets: 413 naming the limit.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(`{"name":"far too long for the limit"}`))
	req.Body = http.MaxBytesReader(rec, req.Body, 8)
	var v decodeSample
	var be *bodyError
	if err := decodeBody(req, &v); !errors.As(err, &be) || be.status != 413 || be.msg != "request body too large: the limit is 8 bytes" {
		t.Errorf("body over the limit: %v", err)
	}
	// Any other read error: 400.
	req = httptest.NewRequest(http.MethodPost, "/", nil)
	req.Body = io.NopCloser(iotest.ErrReader(errors.New("connection reset")))
	if err := decodeBody(req, &v); !errors.As(err, &be) || be.status != 400 || be.msg != "reading the request body: connection reset" {
		t.Errorf("read error: %v", err)
	}
	// The empty-body error is recognisable, as the heartbeat handler needs.
	req = httptest.NewRequest(http.MethodPost, "/", nil)
	if err := decodeBody(req, &v); !errors.Is(err, errEmptyBody) {
		t.Errorf("no body: %v, want errors.Is(err, errEmptyBody)", err)
	}
	if err := decodeBody(httptest.NewRequest(http.MethodPost, "/", strings.NewReader(" \n")), &v); !errors.Is(err, errEmptyBody) {
		t.Errorf("blank body: %v, want errors.Is(err, errEmptyBody)", err)
	}
	if err := decodeBody(httptest.NewRequest(http.MethodPost, "/", strings.NewReader("nope")), &v); errors.Is(err, errEmptyBody) {
		t.Errorf("a body that is not JSON is taken for an empty one: %v", err)
	}
}

func TestExplainJSON(t *testing.T) {
	intType, strType := reflect.TypeFor[int](), reflect.TypeFor[string]()
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&json.SyntaxError{Offset: 7}, "the request body is not valid JSON (at byte 7): "},
		{fmt.Errorf("wrapped: %w", io.ErrUnexpectedEOF), "the request body is not valid JSON: it ends too early"},
		{&json.UnmarshalTypeError{Value: "array", Type: reflect.TypeFor[decodeSample]()}, "the request body must be a JSON object, not array"},
		{&json.UnmarshalTypeError{Value: "string", Type: intType, Field: "a.b"}, "a.b: must be an integer, not string"},
		{&json.UnmarshalTypeError{Value: "number", Type: strType, Field: "s"}, "s: must be a string, not number"},
		{errors.New("something else"), "the request body is not valid JSON: something else"},
	} {
		if got := explainJSON(tc.err); got != tc.want {
			t.Errorf("explainJSON(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestJSONKind(t *testing.T) {
	for _, tc := range []struct {
		typ  reflect.Type
		want string
	}{
		{reflect.TypeFor[string](), "a string"},
		{reflect.TypeFor[*string](), "a string"},
		{reflect.TypeFor[int](), "an integer"},
		{reflect.TypeFor[**int](), "an integer"},
		{reflect.TypeFor[uint8](), "an integer"},
		{reflect.TypeFor[int64](), "an integer"},
		{reflect.TypeFor[float64](), "a number"},
		{reflect.TypeFor[float32](), "a number"},
		{reflect.TypeFor[bool](), "true or false"},
		{reflect.TypeFor[[]string](), "an array of strings"},
		{reflect.TypeFor[[]int](), "an array of integers"},
		{reflect.TypeFor[[]float64](), "an array of numbers"},
		{reflect.TypeFor[[]map[string]any](), "an array of objects"},
		{reflect.TypeFor[[3]int](), "an array of integers"},
		{reflect.TypeFor[[]bool](), "an array of true or false values"},
		{reflect.TypeFor[[][]string](), "an array of arrays of strings"},
		{reflect.TypeFor[[]*int](), "an array of integers"},
		{reflect.TypeFor[map[string]int](), "an object"},
		{reflect.TypeFor[decodeSample](), "an object"},
	} {
		if got := jsonKind(tc.typ); got != tc.want {
			t.Errorf("jsonKind(%v) = %q, want %q", tc.typ, got, tc.want)
		}
	}
}
