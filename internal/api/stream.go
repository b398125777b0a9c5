package api

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
)

// writeList answers 200 with {"<key>":[item...],"count":n}, encoding one
// item at a time straight to the connection. A list built whole would
// hold the answer two or three times over (the items, the encoded array,
// the buffer it grows in): with the registry's metadata budget full,
// that is several times the budget for one GET. Streamed, a listing
// costs one item's encoding at a time.
//
// item converts the i-th element; an error there, after the status line
// has gone out, aborts the connection so the client sees a broken answer
// rather than a short list that looks whole.
func writeList[T any](w http.ResponseWriter, r *http.Request, key string, n int, item func(i int) (T, error)) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	buf := bufio.NewWriterSize(w, 32<<10)
	enc := json.NewEncoder(buf)
	_, _ = buf.WriteString(`{"` + key + `":[`)
	for i := range n {
		v, err := item(i)
		if err == nil && i > 0 {
			err = buf.WriteByte(',')
		}
		if err == nil {
			err = enc.Encode(v) // adds a newline, which JSON allows between tokens
		}
		if err != nil {
			if rec := routeOf(w); rec != nil { // the access log names the cause
				rec.err, rec.status = fmt.Errorf("listing aborted at item %d: %w", i, err), http.StatusInternalServerError
			}
			panic(http.ErrAbortHandler)
		}
	}
	_, _ = buf.WriteString(`],"count":` + strconv.Itoa(n) + "}\n")
	_ = buf.Flush()
}
