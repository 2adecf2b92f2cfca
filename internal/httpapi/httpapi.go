// Package httpapi holds what modbot's JSON HTTP servers (config nodes,
// gateway pods, proxies) share: how an answer and an error are written, how
// a request body is decoded, and the bearer-token check. Every error body is
// {"error": "..."} (plus fields a server adds), so clients decode errors the
// same way everywhere.
package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
)

// WriteJSON writes v as the whole response in one write, with its length.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"encode response"}`)
	}
	WriteRawJSON(w, status, b)
}

// WriteRawJSON writes b, an encoded JSON value, and a newline (b's spare
// capacity takes the newline without a copy).
func WriteRawJSON(w http.ResponseWriter, status int, b []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// WriteError writes {"error": message}.
func WriteError(w http.ResponseWriter, status int, format string, args ...any) {
	WriteJSON(w, status, struct {
		Error string `json:"error"`
	}{fmt.Sprintf(format, args...)})
}
