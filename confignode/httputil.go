package confignode

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
)

const (
	hdrForwarded = "X-Modbot-Forwarded-By"
	hdrRevision  = "X-Modbot-Revision"
)

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}

func writeErr(w http.ResponseWriter, status int, format string, args ...any) {
	writeJSON(w, status, assignments.ErrorBody{Error: fmt.Sprintf(format, args...)})
}

// statusOf maps an error to its HTTP status.
func statusOf(err error) int {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, errBadRequest), errors.Is(err, fsm.ErrInvalid), errors.Is(err, fsm.ErrUnsupported):
		return http.StatusBadRequest
	case errors.Is(err, fsm.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, fsm.ErrConflict), errors.Is(err, fsm.ErrStaleEpoch), errors.Is(err, fsm.ErrNoActivePods):
		return http.StatusConflict
	case errors.Is(err, errNoQuorum), errors.Is(err, errNotLeader):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

var errBadRequest = errors.New("bad request")

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errBadRequest, fmt.Sprintf(format, args...))
}

func (n *Node) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := statusOf(err)
	msg := err.Error()
	msg = strings.TrimPrefix(msg, errBadRequest.Error()+": ")
	body := assignments.ErrorBody{Error: msg}
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
		body.Leader = n.leaderID()
	}
	if status >= 500 {
		n.log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	}
	writeJSON(w, status, body)
}

// decodeBody reads a JSON body with the size limit, refusing unknown fields
// and trailing garbage so that typos are reported instead of ignored.
func (n *Node) decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	r.Body = http.MaxBytesReader(w, r.Body, n.cfg.MaxBodyBytes)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return fmt.Errorf("request body is larger than %d bytes: %w", n.cfg.MaxBodyBytes, err)
		}
		if errors.Is(err, io.EOF) {
			return badRequest("request body is empty; expected JSON")
		}
		return badRequest("malformed JSON body: %v", err)
	}
	if dec.More() {
		return badRequest("malformed JSON body: more than one JSON value")
	}
	return nil
}

// requireToken guards every API route with the bearer token, compared in
// constant time.
func (n *Node) requireToken(next http.Handler) http.Handler {
	if n.cfg.NoAuth {
		return next
	}
	want := []byte("Bearer " + n.cfg.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="modbot"`)
			if len(got) == 0 {
				writeErr(w, http.StatusUnauthorized, "missing bearer token: send 'Authorization: Bearer <token>' (modbotctl reads --token, MODBOT_TOKEN or .modbot-dev/token)")
				return
			}
			writeErr(w, http.StatusUnauthorized, "wrong bearer token")
			return
		}
		next.ServeHTTP(w, r)
	})
}
