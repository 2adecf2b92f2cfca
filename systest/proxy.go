package systest

import (
	"context"
	"fmt"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fakediscord"
	"github.com/modbot/modbot/proxy"
)

// Proxy is a proxy started by System.StartProxy: it routes by its own
// watcher of the config cluster, verifies interactions with the fake
// Discord's key and takes Token as its admin token (dashboards need
// "Authorization: Bearer " + Token, or a sign-in through the fake's
// consent page as one of its seeded users, see fakediscord.SeedUsers).
type Proxy struct {
	*proxy.Proxy
	URL     string // base URL, http://127.0.0.1:port
	Watcher *assignments.Watcher
	stop    func()
}

// SessionKey seals the session cookies of every proxy a System starts: one
// key, so any of them accepts a sign-in made through another (like the
// replicas of a Deployment sharing one Secret). Test-only.
var SessionKey = []byte("systest-session-key-32-bytes!!!!")

// Close stops the proxy and its watcher.
func (p *Proxy) Close() { p.stop() }

// StartProxy starts a proxy on a loopback port the kernel picks and waits
// until its map has synced. System.Close stops it.
func (s *System) StartProxy(ctx context.Context) (*Proxy, error) {
	s.proxyMu.Lock()
	n := len(s.proxies)
	s.proxyMu.Unlock()
	w := assignments.NewWatcher(s.Client, assignments.WatcherOptions{Logger: s.opts.Logger, Name: fmt.Sprintf("proxy-%d", n)})
	wctx, stopWatcher := context.WithCancel(context.Background())
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		_ = w.Run(wctx)
	}()
	p := &Proxy{Watcher: w}
	p.stop = func() {
		if p.Proxy != nil {
			_ = p.Proxy.Close()
		}
		stopWatcher()
		<-watchDone
	}
	var err error
	cfg := proxy.Config{Map: w, PublicKey: s.Discord.PublicKey(), Token: Token, InternalToken: InternalToken, ReadToken: ReadToken, Logger: s.opts.Logger,
		OAuth: proxy.OAuthConfig{ClientID: s.Discord.Config().ApplicationID, ClientSecret: s.Discord.Config().ClientSecret,
			AuthorizeURL: s.DiscordURL + "/oauth2/authorize", APIURL: s.DiscordURL + "/api/v10"},
		TLS: s.TLS, SessionKey: SessionKey, Operators: []uint64{fakediscord.SeedModeratorID},
		ConfigStatus: s.Client.Status, RebalanceStatus: s.Client.RebalanceStatus, Name: fmt.Sprintf("proxy-%d", n)}
	if p.Proxy, err = proxy.New(cfg); err != nil {
		p.stop()
		return nil, err
	}
	// Port 0: the kernel picks a free port while binding, nothing to retry.
	if p.URL, err = p.Proxy.Start("127.0.0.1:0"); err != nil {
		p.stop()
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := p.WaitReady(rctx); err != nil {
		p.stop()
		return nil, err
	}
	s.proxyMu.Lock()
	s.proxies = append(s.proxies, p)
	s.proxyMu.Unlock()
	return p, nil
}
