package confignode

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
	"github.com/modbot/modbot/internal/httpapi"
)

const (
	hdrForwarded = "X-Modbot-Forwarded-By"
	hdrRevision  = "X-Modbot-Revision"
)

// statusOf maps an error to its HTTP status.
func statusOf(err error) int {
	var mbe *http.MaxBytesError
	var be *httpapi.BodyError
	switch {
	case errors.As(err, &be):
		return be.Status
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
		body.MaybeApplied = errors.Is(err, errNoQuorum)
	}
	if status >= 500 {
		n.log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	}
	httpapi.WriteJSON(w, status, body)
}

// decodeBody reads a JSON body with the size limit, refusing unknown fields,
// repeated keys and trailing garbage so that typos are reported instead of
// ignored (httpapi.DecodeJSON).
func (n *Node) decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	return httpapi.DecodeJSON(w, r, v, httpapi.DecodeOptions{MaxBytes: n.cfg.MaxBodyBytes})
}

// scoped guards a /v1 route with the bearer token of scope need (or
// above) unless the node was started with --insecure-no-auth.
func (n *Node) scoped(need httpapi.Scope, next http.Handler) http.Handler {
	if n.cfg.NoAuth {
		return next
	}
	return n.auth.Require(need, next)
}
