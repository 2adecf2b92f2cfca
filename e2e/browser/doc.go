// Package browser holds the browser tests of the web side (issue 16): a
// headless Chromium (Debian's chromium package) driven with chromedp
// against the whole system in this process (package systest). It is a
// module of its own so the main module does not depend on chromedp.
package browser
