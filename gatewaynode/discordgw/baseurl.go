package discordgw

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/bwmarrin/discordgo"
	"github.com/gorilla/websocket"
)

// ClientFor returns an HTTP client and a websocket dialer that send
// everything discordgo would send to Discord (https://discord.com/api/…,
// wss://gateway.discord.gg, or the ws:// URL a test double hands out) to the
// Discord-speaking server at baseURL (`--discord-url`; the fake Discord in
// tests and dev) (e.g. "http://127.0.0.1:7900"). It changes no global
// state, so other sessions in the process keep talking to whatever they talk to.
func ClientFor(baseURL string) (*http.Client, *websocket.Dialer, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, nil, fmt.Errorf("discordgw: parse base URL %q: %w", baseURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, nil, fmt.Errorf("discordgw: base URL %q must be http(s)://host:port", baseURL)
	}
	hostport := u.Host
	if u.Port() == "" {
		hostport = net.JoinHostPort(u.Hostname(), map[string]string{"http": "80", "https": "443"}[u.Scheme])
	}
	prefix := strings.TrimSuffix(u.Path, "/")
	base := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	client := &http.Client{Timeout: 20 * time.Second, Transport: rewriteTransport{scheme: u.Scheme, host: u.Host, prefix: prefix, next: base}}
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, hostport)
	}
	dialer := &websocket.Dialer{
		NetDialContext:   dial,
		HandshakeTimeout: 10 * time.Second,
	}
	if u.Scheme == "http" {
		// wss:// URLs (e.g. Discord's real gateway URL) are spoken in plain text to the fake.
		dialer.NetDialTLSContext = dial
	}
	return client, dialer, nil
}

// ConfigureSession points a discordgo session at the server at baseURL
// by setting Session.Client and Session.Dialer (see ClientFor). It does not
// touch discordgo's package-level endpoint variables.
func ConfigureSession(sess *discordgo.Session, baseURL string) error {
	client, dialer, err := ClientFor(baseURL)
	if err != nil {
		return err
	}
	sess.Client, sess.Dialer = client, dialer
	return nil
}

// rewriteTransport sends every request to the fake, keeping method, path,
// query, headers and body.
type rewriteTransport struct {
	scheme, host, prefix string
	next                 http.RoundTripper
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the
// pooled connections (a wrapper without it hides them).
func (t rewriteTransport) CloseIdleConnections() {
	if c, ok := t.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

func (t rewriteTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r2 := r.Clone(r.Context())
	r2.URL.Scheme, r2.URL.Host, r2.Host = t.scheme, t.host, t.host
	if t.prefix != "" {
		r2.URL.Path = t.prefix + r.URL.Path
		r2.URL.RawPath = ""
	}
	return t.next.RoundTrip(r2)
}
