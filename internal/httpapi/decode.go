package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// DecodeOptions tunes DecodeJSON.
type DecodeOptions struct {
	// MaxBytes limits the body; a larger one is refused with 413.
	MaxBytes int64
	// AllowDuplicateKeys keeps encoding/json's rule for a key repeated in
	// one object (the last value wins) instead of refusing the body. For
	// bodies that carry third-party payloads (Discord's events) verbatim,
	// which must be taken exactly as the pod that received them took them.
	AllowDuplicateKeys bool
}

// BodyError is a request body DecodeJSON refused; Status is 400 or 413.
type BodyError struct {
	Status int
	Msg    string
	Err    error // the cause, if any (an *http.MaxBytesError for 413)
}

func (e *BodyError) Error() string { return e.Msg }
func (e *BodyError) Unwrap() error { return e.Err }

// BodyStatus is the status to answer a DecodeJSON error with (400 for an
// error that is not a *BodyError).
func BodyStatus(err error) int {
	var be *BodyError
	if errors.As(err, &be) {
		return be.Status
	}
	return http.StatusBadRequest
}

// DecodeJSON reads the request body into v, strictly, so that a typo or a
// truncated body is reported instead of half-applied: the body must be at
// most o.MaxBytes, not empty, one well-formed JSON value with nothing after
// it, with no field v does not have and (unless o.AllowDuplicateKeys) no
// key twice in one object. A refusal is a *BodyError saying what was wrong;
// v may then be partly filled and must not be used.
func DecodeJSON(w http.ResponseWriter, r *http.Request, v any, o DecodeOptions) error {
	body, err := ReadBody(w, r, o.MaxBytes)
	if err != nil {
		return err
	}
	return DecodeJSONBody(body, v, o)
}

// ReadBody reads the request body, at most max bytes (a *BodyError with
// 413 when it is larger, 400 when it cannot be read).
func ReadBody(w http.ResponseWriter, r *http.Request, max int64) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, &BodyError{Status: http.StatusRequestEntityTooLarge, Msg: fmt.Sprintf("request body is larger than %d bytes: %v", max, err), Err: err}
		}
		return nil, &BodyError{Status: http.StatusBadRequest, Msg: fmt.Sprintf("read request body: %v", err), Err: err}
	}
	return body, nil
}

// DecodeJSONBody is DecodeJSON of a body already read (o.MaxBytes is not
// used): for a handler that tries a faster reading of its body first.
func DecodeJSONBody(body []byte, v any, o DecodeOptions) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return &BodyError{Status: http.StatusBadRequest, Msg: "request body is empty; expected JSON"}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &BodyError{Status: http.StatusBadRequest, Msg: fmt.Sprintf("malformed JSON body: %v", err), Err: err}
	}
	if len(bytes.TrimSpace(body[dec.InputOffset():])) > 0 {
		return &BodyError{Status: http.StatusBadRequest, Msg: "malformed JSON body: more than one JSON value"}
	}
	if !o.AllowDuplicateKeys {
		if k, ok := duplicateKey(body); ok {
			return &BodyError{Status: http.StatusBadRequest, Msg: fmt.Sprintf("malformed JSON body: duplicate key %q in one object", k)}
		}
	}
	return nil
}

// duplicateKey finds a key that appears twice in one object of b, which
// must be valid JSON (DecodeJSON checked it). Keys are compared ignoring
// case, as encoding/json matches them to struct fields: "to" and "TO" set
// the same field.
func duplicateKey(b []byte) (string, bool) {
	type level struct {
		isObject bool
		wantKey  bool                // the next string is a key
		keys     map[string]struct{} // lower-cased keys seen, nil until the first
	}
	var stack []level
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '{':
			stack = append(stack, level{isObject: true, wantKey: true})
		case '[':
			stack = append(stack, level{})
		case '}', ']':
			stack = stack[:len(stack)-1]
		case ',':
			if top := len(stack) - 1; top >= 0 && stack[top].isObject {
				stack[top].wantKey = true
			}
		case '"':
			j, escaped := i+1, false
			for ; j < len(b) && b[j] != '"'; j++ {
				if b[j] == '\\' {
					j++
					escaped = true
				}
			}
			if top := len(stack) - 1; top >= 0 && stack[top].wantKey {
				k := string(b[i+1 : j])
				if escaped {
					_ = json.Unmarshal(b[i:j+1], &k)
				}
				l := &stack[top]
				if l.keys == nil {
					l.keys = map[string]struct{}{}
				}
				fold := strings.ToLower(k)
				if _, dup := l.keys[fold]; dup {
					return k, true
				}
				l.keys[fold] = struct{}{}
				l.wantKey = false
			}
			i = j
		}
	}
	return "", false
}
