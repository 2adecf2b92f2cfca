// Package httpapi holds what modbot's JSON HTTP servers (config nodes,
// gateway pods, proxies) share: how an answer and an error are written, how
// a request body is decoded, and the bearer-token check. Every error body is
// {"error": "..."} (plus fields a server adds), so clients decode errors the
// same way everywhere.
package httpapi

import (
	"crypto/subtle"
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

// RequireBearer lets a request through only with "Authorization: Bearer
// token", compared in constant time; others get 401 saying what was wrong.
func RequireBearer(token string, next http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) == 1 {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="modbot"`)
		if len(got) == 0 {
			WriteError(w, http.StatusUnauthorized, "missing bearer token: send 'Authorization: Bearer <token>' (MODBOT_TOKEN; modbotctl also reads --token or .modbot-dev/token)")
			return
		}
		WriteError(w, http.StatusUnauthorized, "wrong bearer token")
	})
}
