package proxy

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modbot/modbot/assignments"
	"github.com/modbot/modbot/fsm"
)

// memMap is an in-memory Map: tests change it with update and every
// subscriber is told, like the Watcher does.
type memMap struct {
	mu     sync.Mutex
	rev    uint64
	guilds map[uint64]fsm.Guild
	pods   map[string]fsm.Pod
	subs   map[chan assignments.Change]struct{}
	// subscribed receives a value on every Subscribe (buffered; dropped when
	// full) so tests know a request is being held.
	subscribed chan struct{}
	synced     chan struct{}
}

func newMemMap() *memMap {
	m := &memMap{rev: 1, guilds: map[uint64]fsm.Guild{}, pods: map[string]fsm.Pod{},
		subs: map[chan assignments.Change]struct{}{}, subscribed: make(chan struct{}, 16), synced: make(chan struct{})}
	close(m.synced)
	return m
}

func (m *memMap) Lookup(id uint64) (fsm.Guild, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.guilds[id]
	return g, ok
}

func (m *memMap) Pod(id string) (fsm.Pod, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.pods[id]
	return p, ok
}

func (m *memMap) Pods() []fsm.Pod {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []fsm.Pod
	for _, p := range m.pods {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b fsm.Pod) int {
		if a.Ordinal != b.Ordinal {
			return a.Ordinal - b.Ordinal
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

func (m *memMap) Revision() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rev
}

func (m *memMap) WaitSynced(ctx context.Context) error {
	select {
	case <-m.synced:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *memMap) Subscribe(buffer int) (<-chan assignments.Change, func()) {
	ch := make(chan assignments.Change, max(buffer, 1))
	m.mu.Lock()
	m.subs[ch] = struct{}{}
	m.mu.Unlock()
	select {
	case m.subscribed <- struct{}{}:
	default:
	}
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			m.mu.Lock()
			delete(m.subs, ch)
			close(ch)
			m.mu.Unlock()
		})
	}
}

// update applies fn as one new revision and notifies subscribers.
func (m *memMap) update(fn func(guilds map[uint64]fsm.Guild, pods map[string]fsm.Pod)) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	fn(m.guilds, m.pods)
	m.rev++
	for ch := range m.subs {
		select {
		case ch <- assignments.Change{Revision: m.rev, Relisted: true}:
		default:
		}
	}
	return m.rev
}

// Snapshot is the whole map, like assignments.Watcher's (for /status).
func (m *memMap) Snapshot() assignments.Snapshot {
	pods := m.Pods()
	m.mu.Lock()
	defer m.mu.Unlock()
	s := assignments.Snapshot{Revision: m.rev, Pods: pods}
	for _, g := range m.guilds {
		s.Guilds = append(s.Guilds, g)
	}
	slices.SortFunc(s.Guilds, func(a, b fsm.Guild) int { return cmp.Compare(a.ID, b.ID) })
	return s
}

func (m *memMap) addPod(id string, ordinal int, addr string, st fsm.PodState) {
	m.update(func(_ map[uint64]fsm.Guild, pods map[string]fsm.Pod) {
		pods[id] = fsm.Pod{ID: id, Ordinal: ordinal, Addr: addr, State: st}
	})
}

func (m *memMap) place(id uint64, owner string, st fsm.GuildState) uint64 {
	return m.update(func(guilds map[uint64]fsm.Guild, _ map[string]fsm.Pod) {
		g := guilds[id]
		guilds[id] = fsm.Guild{ID: id, Owner: owner, State: st, Epoch: g.Epoch + 1}
	})
}

// backend is a stand-in gateway pod that counts requests.
type backend struct {
	name  string
	srv   *httptest.Server
	count atomic.Int64
	mu    sync.Mutex
	last  *http.Request
	body  []byte
}

func newBackend(t testing.TB, name string, h http.HandlerFunc) *backend {
	t.Helper()
	b := &backend{name: name}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.count.Add(1)
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.last, b.body = r.Clone(context.Background()), body
		b.mu.Unlock()
		if h != nil {
			h(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Pod", name)
		if r.URL.Path == InternalInteractionsPath {
			_, _ = io.WriteString(w, `{"type":4,"data":{"content":"from `+name+`"}}`)
			return
		}
		_, _ = io.WriteString(w, `{"owner":"`+name+`","path":"`+r.URL.Path+`"}`)
	}))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *backend) addr() string { return b.srv.Listener.Addr().String() }

func (b *backend) lastRequest() (*http.Request, []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last, b.body
}

// The env's proxy has distinct admin and internal tokens, so a test can
// tell which one travelled where.
const (
	testAdminToken    = "admin-secret"
	testInternalToken = "internal-secret"
)

type testEnv struct {
	m    *memMap
	p    *Proxy
	url  string
	priv ed25519.PrivateKey
	pub  ed25519.PublicKey
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func newEnv(t testing.TB, tweak func(*Config)) *testEnv {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{m: newMemMap(), priv: priv, pub: pub}
	cfg := Config{Map: e.m, PublicKey: pub, Token: testAdminToken, InternalToken: testInternalToken, Logger: quietLogger()}
	if tweak != nil {
		tweak(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.p = p
	srv := httptest.NewServer(p)
	t.Cleanup(func() {
		srv.Close()
		_ = p.Close()
	})
	e.url = srv.URL
	return e
}

// signed builds a webhook request for body signed with the env's key at the
// current time.
func (e *testEnv) signed(t *testing.T, body string) *http.Request {
	t.Helper()
	return e.signedAt(t, body, strconv.FormatInt(time.Now().Unix(), 10))
}

// signedAt is signed with a given X-Signature-Timestamp.
func (e *testEnv) signedAt(t *testing.T, body, ts string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.url+"/webhooks/discord", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderSignature, hex.EncodeToString(ed25519.Sign(e.priv, []byte(ts+body))))
	return req
}

type result struct {
	status int
	header http.Header
	body   string
	took   time.Duration
}

func do(t *testing.T, req *http.Request) result {
	t.Helper()
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: buf.String(), took: time.Since(start)}
}

// get is a JSON GET as an operator: it carries the admin token.
func get(t *testing.T, url string) result {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	return do(t, req)
}
