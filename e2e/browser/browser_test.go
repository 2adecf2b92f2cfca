package browser

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/modbot/modbot/fakediscord"
	"github.com/modbot/modbot/systest"
)

const chromiumPath = "/usr/bin/chromium"

// chromium finds the browser: a missing one fails the test in CI (.ci/run
// installs Debian's chromium) and skips it elsewhere.
func chromium(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err == nil {
		return chromiumPath
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("chromium is missing at %s: install Debian's chromium package (.ci/run does)", chromiumPath)
	}
	t.Skipf("chromium is not installed (%s); apt-get install chromium to run the browser tests", chromiumPath)
	return ""
}

// newBrowser starts a fresh headless Chromium with its own profile.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1200, 1600),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// shots saves numbered screenshots in the test's temp dir and logs each.
type shots struct {
	t   *testing.T
	dir string
	n   int
}

func (s *shots) take(ctx context.Context, name string) {
	s.t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		s.t.Fatalf("screenshot %s: %v", name, err)
	}
	s.n++
	path := filepath.Join(s.dir, fmt.Sprintf("%02d-%s.png", s.n, name))
	if err := os.WriteFile(path, png, 0o644); err != nil {
		s.t.Fatal(err)
	}
	s.t.Logf("screenshot %s: %s", name, path)
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func run(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(tctx, steps...); err != nil {
		loc, _ := chromedp.Run(ctx, chromedp.Location())
		body, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
		t.Fatalf("%s: %v (at %s)\n%.2000s", what, err, loc, body)
	}
}

// value runs one action that returns a value.
func value[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(tctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	return strings.TrimSpace(value(t, ctx, "read "+sel, chromedp.Text(chromedp.CSS(sel))))
}

// TestBrowserModeratorDashboardSettingsAndLiveStatus walks the web side
// the way a person does: a logged-out visit is sent to Discord's (the
// fake's) consent page; alice signs in and sees her guild's counts and
// charts; another guild is refused; the settings form changes the mod-log
// channel while a forged post without the CSRF token is refused; /status
// shows a move appear and finish without a reload.
func TestBrowserModeratorDashboardSettingsAndLiveStatus(t *testing.T) {
	chromium(t)
	ctx := context.Background()
	sys, err := systest.StartSystem(ctx, t.TempDir(), systest.SystemOptions{Shards: 2, Gateways: 2, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sys.Close)
	gs := sys.Discord.Seed(4)
	sys.Discord.SeedUsers()
	if err := sys.WaitSettled(ctx, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	px, err := sys.StartProxy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 7; i++ {
		if _, err := sys.Discord.SendMessage(gs[0].ID, 0, 0, fmt.Sprintf("hello %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := systest.Poll(ctx, 20*time.Second, "7 messages stored", func() bool {
		v, err := sys.Owner(ctx, gs[0].ID)
		if err != nil {
			return false
		}
		n, err := sys.MessageRows(ctx, sys.PodIndex(v.Owner), gs[0].ID)
		return err == nil && n == 7
	}); err != nil {
		t.Fatal(err)
	}
	b := newBrowser(t)
	sh := &shots{t: t, dir: t.TempDir()}
	if d := os.Getenv("MODBOT_SCREENSHOT_DIR"); d != "" { // keep them after the test
		sh.dir = d
	}
	dash := func(g fakediscord.Guild) string { return fmt.Sprintf("%s/guild/%d/dashboard", px.URL, g.ID) }

	// 1. Logged out: redirected to the consent page.
	run(t, b, "open the dashboard logged out", chromedp.Navigate(dash(gs[0])), chromedp.WaitVisible(chromedp.ID("user-alice")))
	loc := value(t, b, "location", chromedp.Location())
	if !strings.HasPrefix(loc, sys.DiscordURL+"/oauth2/authorize?") {
		t.Fatalf("logged out, the dashboard led to %s, want the fake's consent page", loc)
	}
	sh.take(b, "logged-out-redirected-to-consent")

	// 2. Sign in as alice: back on the dashboard with the counts and charts.
	run(t, b, "sign in as alice", chromedp.Click(chromedp.ID("user-alice")), chromedp.WaitVisible(chromedp.ID("messages")))
	loc = value(t, b, "location", chromedp.Location())
	if loc != dash(gs[0]) {
		t.Fatalf("after sign-in at %s, want %s", loc, dash(gs[0]))
	}
	if got := text(t, b, "#messages"); got != "7" {
		t.Fatalf("dashboard shows %s messages, want 7", got)
	}
	if got := text(t, b, "#user"); got != "alice" {
		t.Fatalf("signed in as %q", got)
	}
	bars := value(t, b, "count chart bars", chromedp.Evaluate[int](`document.querySelectorAll("svg.chart rect.bar").length`))
	if bars == 0 {
		t.Fatal("no chart bars on the dashboard")
	}
	sh.take(b, "moderator-dashboard")

	// 3. A guild alice is not in: refused.
	run(t, b, "open another guild", chromedp.Navigate(dash(gs[3])), chromedp.WaitVisible(chromedp.CSS("h1")))
	if got := text(t, b, "h1"); got != "Not allowed" {
		t.Fatalf("another guild's dashboard shows %q, want Not allowed", got)
	}
	sh.take(b, "other-guild-refused")

	// 4. The settings form changes the mod-log channel.
	modlog := gs[0].Channels[1]
	run(t, b, "submit the settings form", chromedp.Navigate(dash(gs[0])), chromedp.WaitVisible(chromedp.ID("settings")),
		chromedp.SetValue(chromedp.ID("modlog-select"), fmt.Sprint(modlog.ID)), chromedp.Click(chromedp.ID("save")),
		chromedp.WaitVisible(chromedp.ID("saved")))
	if got := text(t, b, "#modlog-channel"); got != "#"+modlog.Name {
		t.Fatalf("mod-log channel shows %q after saving, want #%s", got, modlog.Name)
	}
	sh.take(b, "settings-saved")

	// 5. A forged post without the CSRF token (the session cookie goes
	// along, as in a same-site attack) is refused and changes nothing.
	forge := fmt.Sprintf(`fetch("/guild/%d/settings", {method: "POST", credentials: "same-origin",
		body: new URLSearchParams({modlog_channel: "%d"})}).then(r => r.status)`, gs[0].ID, gs[0].Channels[0].ID)
	status := value(t, b, "forge a settings post", chromedp.Evaluate[int](forge, chromedp.EvalAwaitPromise))
	if status != 403 {
		t.Fatalf("a settings post without the CSRF token answered %d, want 403", status)
	}
	run(t, b, "reload", chromedp.Reload(), chromedp.WaitVisible(chromedp.ID("modlog-channel")))
	if got := text(t, b, "#modlog-channel"); got != "#"+modlog.Name {
		t.Fatalf("mod-log channel %q after the forged post, want it unchanged (#%s)", got, modlog.Name)
	}
	sh.take(b, "forged-post-refused")

	// 6. /status: a move appears and finishes without a reload.
	run(t, b, "open /status", chromedp.Navigate(px.URL+"/status"), chromedp.WaitVisible(chromedp.ID("pods")))
	value(t, b, "the page goes live", chromedp.Poll[bool](`document.getElementById("live").textContent === "(live)"`, chromedp.WithPollingTimeout(10*time.Second)))
	sh.take(b, "status-live")
	g := gs[2]
	v, err := sys.Owner(ctx, g.ID)
	if err != nil {
		t.Fatal(err)
	}
	from := sys.PodIndex(v.Owner)
	// A large history makes the copy take a while, so the move is seen in flight.
	if err := sys.InsertMessages(ctx, from, g.ID, 1<<40, 300_000, 5_000); err != nil {
		t.Fatal(err)
	}
	to := fmt.Sprintf("gateway-%d", 1-from)
	value(t, b, "mark the page", chromedp.Evaluate[int](`window.__notReloaded = true; 0`))
	done := make(chan error, 1)
	go func() {
		_, err := sys.Client.Move(ctx, fmt.Sprint(g.ID), to)
		done <- err
	}()
	run(t, b, "the move appears", chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`tr.move[data-guild="%d"]`, g.ID))))
	sh.take(b, "status-move-in-progress")
	if err := <-done; err != nil {
		t.Fatalf("move: %v", err)
	}
	run(t, b, "the move finishes", chromedp.WaitVisible(chromedp.ID("no-moves")))
	same := value(t, b, "no reload", chromedp.Evaluate[bool](`window.__notReloaded === true`))
	if !same {
		t.Fatal("the status page was reloaded; it should update over SSE")
	}
	if got := text(t, b, fmt.Sprintf(`td[data-pod="%s"]`, to)); got == "0" {
		t.Fatalf("%s owns %s guilds after the move", to, got)
	}
	sh.take(b, "status-move-done")
}
