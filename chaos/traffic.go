package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Traffic drives the fake Discord the way a busy guild does — messages,
// edits, deletes, bans, /report and /setup — and remembers what Discord
// dispatched, in dispatch order, so the checks can compare it with what the
// pods stored. Every send is bounded: it stops at its context or its cap.
type Traffic struct {
	DiscordURL string
	Guilds     []uint64
	Rng        *rand.Rand
	// MaxEvents caps the sends (messages and moderation events).
	MaxEvents int
	Pace      time.Duration // between sends (default 5 ms)

	mu   sync.Mutex
	msgs map[uint64]*SentMessage // by message id
	// Uncertain counts sends whose answer was lost: they may or may not
	// have been dispatched, so the checks allow either.
	Uncertain    int
	bans         []ban
	interactions []sentInteraction
	setupSeq     int
	sent         int
	client       *http.Client
}

// SentMessage is one MESSAGE_CREATE and what followed it.
type SentMessage struct {
	Guild     uint64
	ID        uint64
	Len       int  // the content length after the last edit
	Deleted   bool // a MESSAGE_DELETE was dispatched
	Uncertain bool // an edit or delete whose answer was lost
}

type ban struct {
	Guild, User uint64
}

type sentInteraction struct {
	Guild uint64
	ID    uint64
	Name  string
	Value int  // /setup's mod_role
	OK    bool // Discord got an answer in time
}

// Run sends until ctx ends or MaxEvents were sent; interactions go out
// alongside at a few per second.
func (t *Traffic) Run(ctx context.Context) {
	t.msgs = map[uint64]*SentMessage{}
	t.client = &http.Client{Timeout: 5 * time.Second}
	if t.Pace == 0 {
		t.Pace = 5 * time.Millisecond
	}
	irng := rand.New(rand.NewPCG(t.Rng.Uint64(), 1))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil && i < t.MaxEvents/20; i++ {
			t.interaction(ctx, irng)
			sleep(ctx, 200*time.Millisecond)
		}
	}()
	var ids []uint64
	for n := 0; n < t.MaxEvents && ctx.Err() == nil; n++ {
		g := t.Guilds[t.Rng.IntN(len(t.Guilds))]
		p := t.Rng.IntN(100)
		switch {
		case p < 70 || len(ids) == 0:
			var out struct {
				ID string `json:"id"`
			}
			content := "hello"
			if err := t.post(ctx, "POST", fmt.Sprintf("/_fake/guilds/%d/messages", g), map[string]string{"content": content, "author_id": fmt.Sprint(1000 + t.Rng.IntN(50))}, &out); err != nil {
				t.mu.Lock()
				t.Uncertain++
				t.mu.Unlock()
				break
			}
			id, _ := strconv.ParseUint(out.ID, 10, 64)
			t.mu.Lock()
			t.msgs[id] = &SentMessage{Guild: g, ID: id, Len: len(content)}
			t.mu.Unlock()
			ids = append(ids, id)
		case p < 85:
			t.mu.Lock()
			m := t.msgs[ids[t.Rng.IntN(len(ids))]]
			n := m.Len + 1 + t.Rng.IntN(20)
			t.mu.Unlock()
			err := t.post(ctx, "POST", fmt.Sprintf("/_fake/guilds/%d/messages/%d/edit", m.Guild, m.ID), map[string]string{"content": strings.Repeat("e", n)}, nil)
			t.mu.Lock()
			if err != nil {
				m.Uncertain = true
			} else {
				m.Len = n
			}
			t.mu.Unlock()
		case p < 92:
			t.mu.Lock()
			m := t.msgs[ids[t.Rng.IntN(len(ids))]]
			t.mu.Unlock()
			err := t.post(ctx, "DELETE", fmt.Sprintf("/_fake/guilds/%d/messages/%d", m.Guild, m.ID), nil, nil)
			t.mu.Lock()
			if err != nil {
				m.Uncertain = true
			} else {
				m.Deleted = true
			}
			t.mu.Unlock()
		default:
			user := uint64(500000 + n)
			if err := t.post(ctx, "POST", fmt.Sprintf("/_fake/guilds/%d/bans", g), map[string]string{"user_id": fmt.Sprint(user), "reason": "chaos"}, nil); err != nil {
				t.mu.Lock()
				t.Uncertain++
				t.mu.Unlock()
				break
			}
			t.mu.Lock()
			t.bans = append(t.bans, ban{g, user})
			t.mu.Unlock()
		}
		t.mu.Lock()
		t.sent++
		t.mu.Unlock()
		sleep(ctx, t.Pace)
	}
	wg.Wait()
}

func (t *Traffic) interaction(ctx context.Context, rng *rand.Rand) {
	g := t.Guilds[rng.IntN(len(t.Guilds))]
	body := map[string]any{"guild_id": fmt.Sprint(g), "user_id": fmt.Sprint(9000 + rng.IntN(10))}
	var si sentInteraction
	if rng.IntN(2) == 0 {
		t.mu.Lock()
		t.setupSeq++
		si = sentInteraction{Guild: g, Name: "setup", Value: 100000 + t.setupSeq}
		t.mu.Unlock()
		body["name"] = "setup"
		body["permissions"] = "32"
		body["options"] = map[string]string{"mod_role": fmt.Sprint(si.Value)}
	} else {
		si = sentInteraction{Guild: g, Name: "report"}
		body["name"] = "report"
		body["options"] = map[string]string{"user": fmt.Sprint(4000 + rng.IntN(100)), "reason": "chaos report"}
	}
	var rec struct {
		ID           string `json:"id"`
		ResponseType int    `json:"response_type"`
		HTTPStatus   int    `json:"http_status"`
		Within       bool   `json:"within_deadline"`
	}
	err := t.post(ctx, "POST", "/_fake/interactions", body, &rec)
	if err != nil || rec.ID == "" {
		// Discord's side failed (the proxy down, the answer late): the
		// owner may still have applied it. Kept as unacknowledged, so a
		// /setup that did land is allowed (found by seed 2 under CI load:
		// such a /setup was applied and the check had forgotten it).
		t.mu.Lock()
		t.Uncertain++
		t.interactions = append(t.interactions, si)
		t.mu.Unlock()
		return
	}
	si.ID, _ = strconv.ParseUint(rec.ID, 10, 64)
	si.OK = rec.ResponseType == 4 && rec.HTTPStatus == 200
	t.mu.Lock()
	t.interactions = append(t.interactions, si)
	t.mu.Unlock()
}

func (t *Traffic) post(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		body, _ = json.Marshal(in)
	}
	req, err := http.NewRequestWithContext(ctx, method, t.DiscordURL+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := t.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

// Messages returns what was dispatched, per guild.
func (t *Traffic) Messages() map[uint64][]SentMessage {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[uint64][]SentMessage{}
	for _, m := range t.msgs {
		out[m.Guild] = append(out[m.Guild], *m)
	}
	return out
}

// Sent is how many events were sent.
func (t *Traffic) Sent() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sent
}
