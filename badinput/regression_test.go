package badinput

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/modbot/modbot/internal/httpapi"
	"github.com/modbot/modbot/internal/podapi"
)

// Regression tests for the bugs the table found, each named after the
// invariant it protects. They share the package's one running system.

// unchanged runs do and fails the test if the system's fingerprint moved.
func (e *env) unchanged(t *testing.T, do func()) {
	t.Helper()
	before, err := e.fingerprint()
	if err != nil {
		t.Fatal(err)
	}
	do()
	after, err := e.fingerprint()
	if err != nil {
		t.Fatal(err)
	}
	if d := before.diff(after); d != "" {
		t.Fatalf("a refused request changed the system: %s", d)
	}
}

func wantRefusal(t *testing.T, a answer, status int, words ...string) {
	t.Helper()
	if a.Err != nil {
		t.Fatal(a.Err)
	}
	if a.Status != status {
		t.Fatalf("answer %d %s, want %d", a.Status, a.Body, status)
	}
	for _, w := range words {
		if !strings.Contains(a.errorText(), w) {
			t.Fatalf("error %q does not mention %q", a.errorText(), w)
		}
	}
}

// TestUnknownFieldIsRefusedAndChangesNothing: a pod's /internal/events took
// an event with a field it does not know (a sender's typo, or a newer
// sender) and stored the message; it now refuses the whole body with 400
// and stores nothing. The config nodes' API already refused unknown fields.
func TestUnknownFieldIsRefusedAndChangesNothing(t *testing.T) {
	e := system(t)
	body := e.expand(`{"events":[` + strings.Replace(msgJSON("{G0}", 9101), `"t":`, `"extra":1,"t":`, 1) + `]}`)
	e.unchanged(t, func() {
		wantRefusal(t, toPod(http.MethodPost, podapi.PathEvents, []byte(body))(e), http.StatusBadRequest, `unknown field "extra"`)
	})
	e.unchanged(t, func() {
		wantRefusal(t, jsonTo(toLeader, http.MethodPost, "/v1/rebalance", `{"dryrun":true}`)(e), http.StatusBadRequest, `unknown field "dryrun"`)
	})
}

// TestTrailingDataIsRefusedAndChangesNothing: a pod decoded the first JSON
// value of /internal/events and silently ignored the rest (answering 200
// for events it never looked at); it now refuses the body.
func TestTrailingDataIsRefusedAndChangesNothing(t *testing.T) {
	e := system(t)
	body := e.expand(`{"events":[]} {"events":[` + msgJSON("{G0}", 9102) + `]}`)
	e.unchanged(t, func() {
		wantRefusal(t, toPod(http.MethodPost, podapi.PathEvents, []byte(body))(e), http.StatusBadRequest, "more than one JSON value")
	})
}

// TestBodyOverTheLimitIs413AndChangesNothing: a pod answered an
// /internal/events body over its 8 MiB limit with 400 "malformed events:
// http: request body too large"; it now answers 413 with the limit.
func TestBodyOverTheLimitIs413AndChangesNothing(t *testing.T) {
	e := system(t)
	e.unchanged(t, func() {
		wantRefusal(t, toPod(http.MethodPost, podapi.PathEvents, bigEvents(e))(e), http.StatusRequestEntityTooLarge, "larger than 8388608 bytes")
	})
}

// TestRefusedIdentifyLeavesTheBudgetAlone: POST /v1/identify took the
// session_start_limit a request reported before checking that the request
// came from the shard's holder, so a refused request (409) could set the
// leader's daily identify budget — to 5 left, below the reserve, refusing
// every identify until a holder reported again. The report now counts only
// from the holder.
func TestRefusedIdentifyLeavesTheBudgetAlone(t *testing.T) {
	e := system(t)
	body := `{"pod":"gateway-9","shard":0,"max_concurrency":1,"session_start_limit":{"total":1000,"remaining":5,"reset_after":1000,"max_concurrency":1}}`
	e.unchanged(t, func() { // the fingerprint holds the leader's budget
		wantRefusal(t, toLeader(http.MethodPost, "/v1/identify", []byte(body))(e), http.StatusConflict, "does not hold")
	})
}

// TestDecodeJSONTakesOneWholeValueOrNothing pins httpapi.DecodeJSON, the
// decoder every JSON API shares: the body is taken whole or refused with
// what was wrong.
func TestDecodeJSONTakesOneWholeValueOrNothing(t *testing.T) {
	type inner struct {
		B string `json:"b"`
	}
	type body struct {
		A string            `json:"a"`
		N []int             `json:"n"`
		M map[string]int    `json:"m"`
		I inner             `json:"i"`
		R map[string]string `json:"r"`
	}
	cases := []struct {
		name, in   string
		dupsOK     bool
		status     int
		msg        string
		wantFields string // A after a successful decode
	}{
		{"ok", `{"a":"x","n":[1,2],"m":{"k":1},"i":{"b":"y"}}`, false, 0, "", "x"},
		{"empty", ``, false, 400, "request body is empty", ""},
		{"blank", " \n\t", false, 400, "request body is empty", ""},
		{"malformed", `{"a":`, false, 400, "malformed JSON body", ""},
		{"unknown field", `{"a":"x","z":1}`, false, 400, `unknown field "z"`, ""},
		{"unknown nested field", `{"i":{"b":"y","c":1}}`, false, 400, `unknown field "c"`, ""},
		{"two values", `{"a":"x"} {"a":"y"}`, false, 400, "more than one JSON value", ""},
		{"a closing bracket after", `{"a":"x"}]`, false, 400, "more than one JSON value", ""},
		{"garbage after", `{"a":"x"}xyz`, false, 400, "more than one JSON value", ""},
		{"trailing spaces", "{\"a\":\"x\"}\n \n", false, 0, "", "x"},
		{"duplicate", `{"a":"x","a":"y"}`, false, 400, `duplicate key "a"`, ""},
		{"duplicate in another case", `{"a":"x","A":"y"}`, false, 400, `duplicate key "A"`, ""},
		{"duplicate, escaped", `{"a":"x","\u0061":"y"}`, false, 400, `duplicate key "a"`, ""},
		{"duplicate, nested", `{"i":{"b":"x","b":"y"}}`, false, 400, `duplicate key "b"`, ""},
		{"duplicate map key", `{"m":{"k":1,"k":2}}`, false, 400, `duplicate key "k"`, ""},
		{"same key in sibling objects", `{"i":{"b":"x"},"r":{"b":"y"}}`, false, 0, "", ""},
		{"key-like strings in values", `{"a":"\"a\":{","r":{"x":"a","y":"a"},"n":[1]}`, false, 0, "", `"a":{`},
		{"duplicate allowed", `{"a":"x","a":"y"}`, true, 0, "", "y"},
		{"over the limit", `{"a":"` + strings.Repeat("x", 200) + `"}`, false, 413, "larger than 128 bytes", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader([]byte(c.in)))
			var v body
			err := httpapi.DecodeJSON(httptest.NewRecorder(), r, &v, httpapi.DecodeOptions{MaxBytes: 128, AllowDuplicateKeys: c.dupsOK})
			if c.status == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if v.A != c.wantFields {
					t.Fatalf("a = %q, want %q", v.A, c.wantFields)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted %+v, want %d %q", v, c.status, c.msg)
			}
			if got := httpapi.BodyStatus(err); got != c.status || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("%d %q, want %d %q", got, err, c.status, c.msg)
			}
		})
	}
}
