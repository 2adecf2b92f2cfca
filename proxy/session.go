package proxy

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Cookies of the Discord login. Both are sealed (AES-256-GCM with
// Config.SessionKey, the cookie's name as additional data, so one cannot
// be swapped for the other): any replica holding the key opens them, none
// keeps state.
const (
	sessionCookie = "modbot_session"
	loginCookie   = "modbot_login" // the state of a login in progress
)

// session is the signed-in user as the session cookie carries them.
type session struct {
	UserID   uint64 `json:"uid,string"`
	Username string `json:"name"`
	// AccessToken is the user's Discord OAuth2 token (scopes identify,
	// guilds, guilds.members.read): the proxy reads the user's guilds,
	// permissions and roles with it.
	AccessToken string `json:"tok"`
	CSRF        string `json:"csrf"` // the form token of this session
	Expires     int64  `json:"exp"`  // unix seconds
}

// loginState binds a login to the browser that started it.
type loginState struct {
	State   string `json:"state"`
	Next    string `json:"next"`
	Expires int64  `json:"exp"`
}

// sealer seals and opens cookie values.
type sealer struct{ aead cipher.AEAD }

func newSealer(key []byte) (*sealer, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("session key has %d bytes, want 32 (64 hex digits, e.g. openssl rand -hex 32)", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("session key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("session key: %w", err)
	}
	return &sealer{aead: aead}, nil
}

func (s *sealer) seal(name string, v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("seal %s: %w", name, err)
	}
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(b)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("seal %s: %w", name, err)
	}
	return base64.RawURLEncoding.EncodeToString(s.aead.Seal(nonce, nonce, b, []byte(name))), nil
}

// open decrypts and authenticates a sealed value; exp is read from the
// value (a JSON "exp" in unix seconds) and checked against now.
func (s *sealer) open(name, value string, v any, now time.Time) error {
	raw, err := base64.RawURLEncoding.DecodeString(value)
	if err != nil || len(raw) < s.aead.NonceSize()+s.aead.Overhead() {
		return errors.New("malformed cookie")
	}
	ns := s.aead.NonceSize()
	b, err := s.aead.Open(nil, raw[:ns], raw[ns:], []byte(name))
	if err != nil {
		return errors.New("cookie fails authentication (tampered, or sealed with another key)")
	}
	var exp struct {
		Expires int64 `json:"exp"`
	}
	if err := json.Unmarshal(b, &exp); err != nil {
		return fmt.Errorf("cookie body: %w", err)
	}
	if now.Unix() >= exp.Expires {
		return errors.New("cookie expired")
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("cookie body: %w", err)
	}
	return nil
}

func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
