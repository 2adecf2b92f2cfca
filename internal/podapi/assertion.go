package podapi

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// HeaderUserAssertion carries a UserAssertion from the proxy to the owner
// pod on a browser-originated dashboard request. Such a request never
// carries the internal bearer token: the pod authorizes it from the
// assertion alone. A client cannot send the header itself: the proxy strips
// every X-Modbot-* header it receives.
const HeaderUserAssertion = "X-Modbot-User-Assertion"

// Permission bits (https://discord.com/developers/docs/topics/permissions)
// that let a member manage a guild's dashboard.
const (
	PermAdministrator = 0x8
	PermManageGuild   = 0x20
)

// UserAssertion is what the proxy tells a pod about the signed-in user of a
// request: who they are and what they hold in one guild, according to
// Discord's OAuth2 API at sign-in. The pod decides from it (Manage Server,
// Administrator or the guild's moderator role from /setup).
type UserAssertion struct {
	UserID      uint64   `json:"uid,string"`
	Username    string   `json:"name"`
	GuildID     uint64   `json:"gid,string"`
	Permissions uint64   `json:"perms,string"`
	Roles       []uint64 `json:"roles"`
	// CSRF is the session's CSRF token, so the pod can check a form post
	// without state of its own.
	CSRF    string `json:"csrf,omitempty"`
	Expires int64  `json:"exp"` // unix seconds
}

// CanManage reports whether the user may read and change the guild's
// dashboard given its moderator role (0: none set).
func (a UserAssertion) CanManage(modRole uint64) bool {
	if a.Permissions&(PermAdministrator|PermManageGuild) != 0 {
		return true
	}
	if modRole == 0 {
		return false
	}
	for _, r := range a.Roles {
		if r == modRole {
			return true
		}
	}
	return false
}

// assertionKey derives the HMAC key from the internal token, the secret the
// proxy and the pods already share, bound to this one purpose.
func assertionKey(internalToken string) []byte {
	m := hmac.New(sha256.New, []byte(internalToken))
	m.Write([]byte("modbot user assertion v1"))
	return m.Sum(nil)
}

// SignAssertion encodes a as base64url(JSON) "." base64url(HMAC-SHA256).
func SignAssertion(internalToken string, a UserAssertion) (string, error) {
	if internalToken == "" {
		return "", errors.New("sign user assertion: no internal token")
	}
	b, err := json.Marshal(a)
	if err != nil {
		return "", fmt.Errorf("sign user assertion: %w", err)
	}
	body := base64.RawURLEncoding.EncodeToString(b)
	m := hmac.New(sha256.New, assertionKey(internalToken))
	m.Write([]byte(body))
	return body + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil)), nil
}

// VerifyAssertion checks the MAC and the expiry of an assertion and that it
// is about guild.
func VerifyAssertion(internalToken, s string, guild uint64, now time.Time) (UserAssertion, error) {
	var a UserAssertion
	if internalToken == "" {
		return a, errors.New("no internal token to verify against")
	}
	body, sig, ok := strings.Cut(s, ".")
	if !ok {
		return a, errors.New("malformed assertion")
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		return a, errors.New("malformed assertion signature")
	}
	m := hmac.New(sha256.New, assertionKey(internalToken))
	m.Write([]byte(body))
	if !hmac.Equal(got, m.Sum(nil)) {
		return a, errors.New("bad assertion signature")
	}
	raw, err := base64.RawURLEncoding.DecodeString(body)
	if err != nil {
		return a, errors.New("malformed assertion body")
	}
	if err := json.Unmarshal(raw, &a); err != nil {
		return a, fmt.Errorf("assertion body: %w", err)
	}
	if now.Unix() > a.Expires {
		return a, errors.New("assertion expired")
	}
	if a.GuildID != guild {
		return a, fmt.Errorf("assertion is for guild %d, not %d", a.GuildID, guild)
	}
	return a, nil
}
