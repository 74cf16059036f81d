package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/gradebroker/gradebroker/certs"
	"github.com/gradebroker/gradebroker/internal/testutil"
)

// The console's browser tests drive Debian's chromium, headless, through
// the DevTools protocol (chromedp). A machine without chromium fails these
// tests with what to install: .ci/run installs it.

// chromiumPath finds the browser, or fails the test saying what is missing.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("the console's browser tests need chromium: apt-get install chromium (.ci/run does)")
	return ""
}

// spkiPin is the base64 SHA-256 of a certificate's public key, for
// chromium's --ignore-certificate-errors-spki-list: the browser trusts the
// console's certificate, and only it, without a CA installed.
func spkiPin(t *testing.T, certFile string) string {
	t.Helper()
	c, err := certs.ParseCertificatePEM(mustRead(t, certFile))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// browser is one headless chromium; each session is a browser context of
// its own (its own cookies), as separate people would have.
type browser struct {
	t    *testing.T
	root context.Context
}

func newBrowser(t *testing.T, pin string) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("ignore-certificate-errors-spki-list", pin),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	root, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(root); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return &browser{t: t, root: root}
}

// tab is one page in a browser context of its own.
type tab struct {
	t   *testing.T
	ctx context.Context
}

// session opens a fresh browser context (no cookies) with one tab, whose
// confirmation dialogs are accepted, as a person clicking OK would.
func (b *browser) session(t *testing.T) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(b.root, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("opening a browser context: %v", err)
	}
	go func() {
		for _, err := range chromedp.Events(ctx, page.JavascriptDialogOpening) {
			if err != nil {
				return
			}
			go chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true}) //nolint:errcheck // the click that opened it reports failures
		}
	}()
	return &tab{t: t, ctx: ctx}
}

// in returns the tab for use in (sub)test t: its failures are t's.
func (tb *tab) in(t *testing.T) *tab { return &tab{t: t, ctx: tb.ctx} }

// do runs actions, failing the test on error.
func (tb *tab) do(actions ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		tb.t.Fatalf("browser: %v", err)
	}
}

// open navigates to url and waits for its main content.
func (tb *tab) open(url string) {
	tb.t.Helper()
	tb.do(chromedp.Navigate(url), chromedp.WaitReady(chromedp.CSS("main")))
}

// eval evaluates a JavaScript expression whose value is a string.
func (tb *tab) eval(js string) string {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[string](js, chromedp.EvalAwaitPromise))
	if err != nil {
		tb.t.Fatalf("evaluating %s: %v", js, err)
	}
	return v
}

// text returns the text of the first element sel matches, "" if none.
func (tb *tab) text(sel string) string {
	tb.t.Helper()
	return tb.eval(`(function(){var e=document.querySelector(` + jsString(sel) + `);return e?e.textContent:""})()`)
}

// waitText waits until the element sel matches holds want, without
// reloading the page.
func (tb *tab) waitText(sel, want string) {
	tb.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := tb.text(sel)
		if strings.Contains(got, want) {
			return
		}
		if time.Now().After(deadline) {
			tb.t.Fatalf("%s shows %q, not %q, after 30 s", sel, strings.TrimSpace(got), want)
		}
		tb.waitChange(2 * time.Second)
	}
}

// waitChange waits, in the page, for the next change of its live region
// (or of the document), at most d.
func (tb *tab) waitChange(d time.Duration) {
	ctx, cancel := context.WithTimeout(tb.ctx, d+10*time.Second)
	defer cancel()
	_, _ = chromedp.Run(ctx, chromedp.Evaluate[bool](`new Promise(function(ok){
		var r=document.getElementById("live")||document.documentElement;
		var o=new MutationObserver(function(){o.disconnect();ok(true)});
		o.observe(r,{childList:true,subtree:true,characterData:true});
		setTimeout(function(){o.disconnect();ok(false)},`+strconv.Itoa(int(d.Milliseconds()))+`)})`, chromedp.EvalAwaitPromise))
}

// count returns how many elements sel matches.
func (tb *tab) count(sel string) int {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, 30*time.Second)
	defer cancel()
	n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll(`+jsString(sel)+`).length`))
	if err != nil {
		tb.t.Fatal(err)
	}
	return n
}

// click clicks sel and waits until the page it leads to has loaded: the
// old document carries a mark that the new one lacks.
func (tb *tab) click(sel string) {
	tb.t.Helper()
	tb.eval(`(window.__gbOld = "yes")`)
	tb.do(chromedp.Click(chromedp.CSS(sel)))
	deadline := time.Now().Add(30 * time.Second)
	for tb.eval(`(window.__gbOld === "yes" || document.readyState === "loading") ? "old" : "new"`) != "new" {
		if time.Now().After(deadline) {
			tb.t.Fatalf("clicking %s led to no new page within 30 s", sel)
		}
		tb.waitChange(100 * time.Millisecond)
	}
}

// tick clicks sel, a control that leads nowhere (a checkbox).
func (tb *tab) tick(sel string) {
	tb.t.Helper()
	tb.do(chromedp.Click(chromedp.CSS(sel)))
}

// screenshot saves the whole page under e2e/screenshots (git-ignored), at
// the window's width or at width w when w is set.
func (tb *tab) screenshot(name string, w int64) {
	tb.t.Helper()
	dir := filepath.Join(repoRoot(tb.t), "e2e", "screenshots")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(tb.ctx, 30*time.Second)
	defer cancel()
	if w > 0 {
		if err := chromedp.Do(ctx, chromedp.EmulateViewport(w, 844)); err != nil {
			tb.t.Fatal(err)
		}
		defer chromedp.Do(tb.ctx, chromedp.EmulateViewport(1280, 900)) //nolint:errcheck // the next page sets its own
	}
	// Chromium now and then measures a page it is still laying out as 0
	// pixels wide and refuses the screenshot: wait until it takes one.
	var png []byte
	var err error
	testutil.Eventually(tb.t, "a screenshot of "+name, func() bool {
		png, err = chromedp.Run(ctx, chromedp.FullScreenshot(100))
		return err == nil || !strings.Contains(err.Error(), "0 width")
	})
	if err != nil {
		tb.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		tb.t.Fatal(err)
	}
}

// jsString quotes s for JavaScript.
func jsString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "<", `\u003c`)
	return `"` + r.Replace(s) + `"`
}
