"""Check the built book as a reader sees it: every HTML page rendered in headless Chromium, offline.

Usage:
    .venv/bin/python scripts/check_rendered_book.py [_build/html] [--screenshots-dir DIR]
    .venv/bin/python scripts/check_rendered_book.py --find-chromium   # which Chromium; status 2 if none

Every page of the built site is opened in headless Chromium with all outside hosts blocked, and
once its scripts (MathJax included) have finished, the page is checked for what a reader would
see as broken. The check fails (exit status 1) and names the page and the place for each of:

  raw-tex          TeX left in the visible text (\\[, \\(, $$, \\begin{...}): math that did not render;
  math-not-typeset a math element of the page that MathJax did not turn into rendered math;
  fence-as-text    a ``` fence, ::: fence or {note}-style directive name shown as text: an
                   admonition (or other directive) that was not parsed;
  image-not-loaded an image with naturalWidth 0 (missing or unreadable file);
  too-wide         a code or output block (a <pre> in the page's content) wider than its column,
                   so part of it is hidden behind a scroll bar;
  doubled-number   a heading or table-of-contents entry with two numbers ("3. 3. The scan");
  script-error     a JavaScript error on the page;
  no-result        the page never finished loading and checking;
and, read from the HTML files themselves:
  broken-link      a link or resource to a local file, or to an #anchor, that does not exist;
  needs-network    a script, style sheet or image loaded from another host (the book must work
                   offline).

How it works: the site is copied to a temporary folder; a small checker script (CHECKER_JS) is
injected into each copied page; `chromium --headless --dump-dom` loads the page and prints the
DOM once the page settled, and the checker's findings are read back from an attribute it set on
<html>. No network, and no Python package beyond the standard library, is needed.

It also saves screenshots of a few chapters (03, 06 and 08 by default) and prints where.
Chromium: the Debian package `chromium` (`sudo apt-get install chromium`); set CHROMIUM to use
another Chromium or Chrome binary.
"""

from __future__ import annotations

import argparse
import html
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")  # on PATH
INSTALL_HINT = (
    "Headless Chromium is needed to check the rendered book, and none was found "
    f"(looked for $CHROMIUM, then {', '.join(CHROMIUM_NAMES)} on PATH).\n"
    "Install it with:  sudo apt-get update && sudo apt-get install -y chromium   "
    "(Debian; on macOS: brew install --cask chromium),\nor point CHROMIUM at a Chromium or "
    "Chrome binary:  CHROMIUM=/path/to/chrome bash scripts/test.sh")

# Headless, offline: every host name resolves to nothing, and Chromium's own background
# traffic (updates, sync, field trials) is switched off.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--mute-audio",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]
VIRTUAL_TIME_BUDGET_MS = 20000   # page time Chromium lets pass before it dumps the DOM
SCREENSHOT_HEIGHT = 4000          # px: deep enough for a chapter's opening and first figure
CHECKER_TIMEOUT_MS = 15000       # the checker gives up waiting for MathJax after this
REAL_TIMEOUT_S = 120             # wall-clock limit for one Chromium run
RESULT_ATTR = "data-rendered-book-check"
DEFAULT_SCREENSHOTS = ("03_", "06_", "08_")
MAX_SHOWN = 10                   # defects printed per page and kind, unless --all

# JavaScript errors that come from the book's toolchain, are harmless, and cannot be fixed in the
# book: sphinx-thebe 0.3.1 (loaded by jupyter-book 1.0.4, with Sphinx 7.4) writes its
# `const THEBE_JS_URL = ...` configuration script twice into every page; the second copy fails,
# the first already defined the same constants, and the book does not use thebe.
KNOWN_SCRIPT_ERRORS = (re.compile(r"Identifier 'THEBE_JS_URL' has already been declared"),)

# Injected first into <head>: records JavaScript errors from the very start of the page.
ERROR_RECORDER_JS = """
window.__renderedBookErrors = [];
window.addEventListener("error", function (e) {
  if (e.target === window || e.target === undefined) {
    window.__renderedBookErrors.push(String(e.message) + " (" + e.filename + ":" + e.lineno + ")");
  }
});
window.addEventListener("unhandledrejection", function (e) {
  window.__renderedBookErrors.push("unhandled promise rejection: " + String(e.reason));
});
"""

# Injected last into <body>: waits for the page (and MathJax) to settle, checks it, and writes
# {"defects": [[kind, detail], ...]} into the RESULT_ATTR attribute of <html>.
CHECKER_JS = r"""
(function () {
  "use strict";
  const TIMEOUT_MS = __TIMEOUT_MS__;
  const KNOWN_ERRORS = [__KNOWN_ERRORS__];
  const defects = [];
  const report = (kind, detail) => defects.push([kind, detail]);
  const squash = (s) => s.replace(/\s+/g, " ").trim();
  const clip = (s, n) => (s.length > n ? s.slice(0, n) + "..." : s);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  function isVisible(el) {
    if (el.checkVisibility) return el.checkVisibility({checkVisibilityCSS: true, visibilityProperty: true});
    return el.getClientRects().length > 0 && getComputedStyle(el).visibility !== "hidden";
  }

  // Where an element is, for the report: the id of its section, or "top of page".
  function where(el) {
    const section = el.closest("section[id]");
    return section ? "#" + section.id : "top of page";
  }

  // The visible text nodes under root, except those inside an element matching skip.
  function visibleTextNodes(root, skip) {
    const nodes = [];
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      const el = n.parentElement;
      if (!el || el.closest(skip) || !n.nodeValue.trim() || !isVisible(el)) continue;
      nodes.push(n);
    }
    return nodes;
  }

  async function settle() {
    if (document.readyState !== "complete") {
      await new Promise((r) => window.addEventListener("load", r, {once: true}));
    }
    const mj = window.MathJax;
    if (document.querySelector(".math") && !(mj && mj.startup && mj.startup.promise)) {
      report("math-not-typeset", "MathJax did not load (is its script file there?)");
    } else if (mj && mj.startup && mj.startup.promise) {
      const done = await Promise.race([mj.startup.promise.then(() => true), sleep(TIMEOUT_MS)]);
      if (done !== true) report("math-not-typeset", "MathJax did not finish in " + TIMEOUT_MS + " ms");
    }
    for (const img of document.images) {
      if (img.loading === "lazy") img.loading = "eager";
    }
    await Promise.race([
      Promise.all(Array.from(document.images, (img) => img.complete ? null :
        new Promise((r) => { img.addEventListener("load", r); img.addEventListener("error", r); }))),
      sleep(TIMEOUT_MS)]);
    if (document.fonts) await Promise.race([document.fonts.ready, sleep(TIMEOUT_MS)]);
    await sleep(50);
  }

  function checkMath() {
    const TEX = /\\\[|\\\(|\$\$|\\begin\{|\\end\{/;
    const skip = "script, style, noscript, template, textarea, pre, code, kbd, samp, mjx-container";
    for (const n of visibleTextNodes(document.body, skip)) {
      const m = n.nodeValue.match(TEX);
      if (m) {
        const at = Math.max(0, m.index - 30);
        report("raw-tex", where(n.parentElement) + ": '" +
               clip(squash(n.nodeValue.slice(at)), 80) + "'");
      }
    }
    for (const el of document.querySelectorAll(".math")) {
      if (!el.querySelector("mjx-container") && el.closest(".math") === el && el.textContent.trim()) {
        report("math-not-typeset", where(el) + ": '" + clip(squash(el.textContent), 60) + "'");
      }
    }
  }

  function checkFences() {
    const FENCE = /```|(^|\n)\s*:::|\{(admonition|note|warning|tip|important|caution|attention|danger|error|hint|seealso|dropdown|margin|sidebar|figure|code-cell)\}/;
    const skip = "script, style, noscript, template, textarea, pre, mjx-container";
    for (const n of visibleTextNodes(document.body, skip)) {
      const m = n.nodeValue.match(FENCE);
      if (m) {
        report("fence-as-text", where(n.parentElement) + ": '" +
               clip(squash(n.nodeValue.slice(Math.max(0, m.index - 20))), 80) + "'");
      }
    }
  }

  function checkImages() {
    for (const img of document.images) {
      if (img.naturalWidth === 0) {
        report("image-not-loaded", where(img) + ": " + (img.getAttribute("src") || "(no src)"));
      }
    }
  }

  function checkWideBlocks(content) {
    for (const pre of content.querySelectorAll("pre")) {
      // 1 px of slack for sub-pixel rounding; hidden blocks have clientWidth 0.
      if (pre.clientWidth === 0 || pre.scrollWidth <= pre.clientWidth + 1) continue;
      const kind = pre.closest(".cell_output, .output") ? "output block" :
                   pre.closest(".cell_input, .highlight") ? "code block" : "preformatted block";
      const lines = pre.textContent.split("\n");
      const longest = lines.reduce((a, b) => (b.length > a.length ? b : a), "");
      // Monospace: the longest line sets the width, so its width per character tells how many
      // characters fit in the column.
      const style = getComputedStyle(pre);
      const pad = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
      const fit = Math.floor((pre.clientWidth - pad) / ((pre.scrollWidth - pad) / longest.length));
      report("too-wide", where(pre) + ": " + kind + " " + pre.scrollWidth + " px wide in a " +
             pre.clientWidth + " px column; longest line " + longest.length + " chars (about " +
             fit + " fit): '" + clip(longest.trim(), 70) + "'");
    }
  }

  function checkNumbers() {
    const TWO = /^(\d+(?:\.\d+)*)\.\s+(\d+(?:\.\d+)*)([.):])?(\s|$)/;
    const items = document.querySelectorAll("h1, h2, h3, h4, h5, h6, nav a, .toc-entry a");
    for (const el of items) {
      const copy = el.cloneNode(true);
      copy.querySelectorAll(".headerlink").forEach((x) => x.remove());
      const text = squash(copy.textContent);
      const m = text.match(TWO);
      if (m && (m[3] || m[1] === m[2])) {
        report("doubled-number", el.tagName.toLowerCase() + " '" + clip(text, 70) + "'");
      }
    }
  }

  async function run() {
    try {
      await settle();
      const content = document.querySelector(".bd-article") || document.querySelector("article") ||
                      document.querySelector("main") || document.body;
      checkMath();
      checkFences();
      checkImages();
      checkWideBlocks(content);
      checkNumbers();
    } catch (e) {
      report("script-error", "the checker itself failed: " + e);
    }
    for (const e of window.__renderedBookErrors || []) {
      if (!KNOWN_ERRORS.some((re) => re.test(e))) report("script-error", e);
    }
    document.documentElement.setAttribute("__RESULT_ATTR__", JSON.stringify({defects: defects}));
  }
  run();
})();
"""


class Defect(NamedTuple):
    """One problem a reader would see: the page (relative to the site), its kind, and where/what."""

    page: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.page}: {self.kind}: {self.detail}"


class ChromiumMissing(RuntimeError):
    """No Chromium binary was found; the message says how to install one."""


def find_chromium() -> str:
    """The Chromium binary to use: $CHROMIUM, else the first of the usual names on PATH."""
    configured = os.environ.get("CHROMIUM")
    if configured:
        found = shutil.which(configured)
        if found:
            return found
        raise ChromiumMissing(f"CHROMIUM={configured!r} is not an executable.\n{INSTALL_HINT}")
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise ChromiumMissing(INSTALL_HINT)


# ---------------------------------------------------------------- links, read from the HTML files

class _PageParser(HTMLParser):
    """Collects a page's anchor targets (id and name attributes) and the URLs it refers to."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: set[str] = set()
        self.links: list[tuple[str, str]] = []      # (tag, url) of <a href>, <img src>, ...
        self.resources: list[tuple[str, str]] = []  # (tag, url) the browser loads by itself

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name"):
            if a.get(key):
                self.anchors.add(a[key])
        if tag == "a" and a.get("href") is not None:
            self.links.append((tag, a["href"]))
        elif tag == "link" and a.get("href"):
            self.links.append((tag, a["href"]))
            rel = (a.get("rel") or "").lower()
            if "stylesheet" in rel or "icon" in rel:
                self.resources.append((tag, a["href"]))
        elif tag in ("img", "script", "iframe", "source", "video", "audio") and a.get("src"):
            self.links.append((tag, a["src"]))
            self.resources.append((tag, a["src"]))


def _parse(path: Path) -> _PageParser:
    parser = _PageParser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    return parser


def book_pages(site: Path) -> list[Path]:
    """The site's HTML pages, without the HTML template fragments the theme copies into _static/
    (and any other folder whose name starts with an underscore)."""
    return sorted(p for p in site.rglob("*.html")
                  if not any(part.startswith("_") for part in p.relative_to(site).parts[:-1]))


def check_links(site: Path) -> list[Defect]:
    """Broken local links and anchors, and resources loaded from other hosts, in every page."""
    site = site.resolve()
    pages = book_pages(site)
    parsed = {p: _parse(p) for p in pages}
    defects = []
    for page, parser in parsed.items():
        name = page.relative_to(site).as_posix()
        for tag, url in parser.resources:
            parts = urlsplit(url)
            if parts.scheme in ("http", "https") or url.startswith("//"):
                defects.append(Defect(name, "needs-network", f"<{tag}> loads {url}"))
        for tag, url in parser.links:
            parts = urlsplit(url)
            if parts.scheme or url.startswith("//"):   # http:, mailto:, data:, javascript: ...
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                defects.append(Defect(name, "broken-link", f"<{tag}> {url}: no file {target}"))
                continue
            fragment = unquote(parts.fragment)
            if fragment and target.suffix == ".html":
                anchors = parsed[target].anchors if target in parsed else _parse(target).anchors
                if fragment not in anchors:
                    defects.append(Defect(name, "broken-link", f"<{tag}> {url}: no anchor "
                                          f"#{fragment} in {target.name}"))
    return defects


# ------------------------------------------------------------------------ pages, in the browser

def inject_checker(page_html: str) -> str:
    """The page with the error recorder first in <head> and the checker last in <body>."""
    recorder = f"<script>{ERROR_RECORDER_JS}</script>"
    checker_js = (CHECKER_JS.replace("__TIMEOUT_MS__", str(CHECKER_TIMEOUT_MS))
                  .replace("__RESULT_ATTR__", RESULT_ATTR)
                  .replace("__KNOWN_ERRORS__", ", ".join(
                      f"new RegExp({json.dumps(r.pattern)})" for r in KNOWN_SCRIPT_ERRORS)))
    checker = f"<script>{checker_js}</script>"
    head = re.search(r"<head[^>]*>", page_html, re.IGNORECASE)
    if head:
        page_html = page_html[:head.end()] + recorder + page_html[head.end():]
    else:
        page_html = recorder + page_html
    body_end = page_html.lower().rfind("</body>")
    if body_end >= 0:
        return page_html[:body_end] + checker + page_html[body_end:]
    return page_html + checker


def _run_chromium(chromium: str, args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=REAL_TIMEOUT_S, check=False)


def check_page(chromium: str, page: Path, name: str, profile: Path, width: int) -> list[Defect]:
    """Render one page (already carrying the injected checker) and return what the checker found."""
    try:
        proc = _run_chromium(chromium, [
            f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}", f"--window-size={width},2000",
            "--dump-dom", page.as_uri()], profile)
    except subprocess.TimeoutExpired:
        return [Defect(name, "no-result", f"Chromium did not finish in {REAL_TIMEOUT_S} s")]
    match = re.search(RESULT_ATTR + r'="([^"]*)"', proc.stdout)
    if not match:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        return [Defect(name, "no-result", f"the page never finished checking (Chromium exit "
                       f"status {proc.returncode}; stderr ends with:\n{tail})")]
    result = json.loads(html.unescape(match.group(1)))
    return [Defect(name, kind, detail) for kind, detail in result["defects"]]


def screenshot(chromium: str, page: Path, out: Path, profile: Path, width: int) -> bool:
    """Save a screenshot of the first ``SCREENSHOT_HEIGHT`` pixels of the page (the title, the
    chapter's opening and its first figures); True if Chromium wrote it."""
    try:
        _run_chromium(chromium, [f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
                                 f"--window-size={width},{SCREENSHOT_HEIGHT}", f"--screenshot={out}",
                                 page.as_uri()], profile)
    except subprocess.TimeoutExpired:
        return False
    return out.exists()


def check_site(site: Path, chromium: str | None = None, screenshots_dir: Path | None = None,
               screenshot_pages: tuple[str, ...] = DEFAULT_SCREENSHOTS, width: int = 1400,
               log=print) -> tuple[list[Defect], list[Path]]:
    """Check every HTML page under site; return the defects and the screenshots written.

    Pages are checked in a temporary copy of the site (the built site itself is not changed).
    A screenshot is taken of each page whose file name starts with one of screenshot_pages.
    """
    site = Path(site).resolve()
    if not site.is_dir() or not book_pages(site):
        raise FileNotFoundError(f"no built book in {site}: build it first with "
                                ".venv/bin/jupyter-book build . -W -n --keep-going")
    chromium = chromium or find_chromium()
    defects = check_links(site)
    shots = []
    with tempfile.TemporaryDirectory(prefix="rendered-book-check-") as tmp:
        copy, profile = Path(tmp) / "site", Path(tmp) / "profile"
        shutil.copytree(site, copy, symlinks=True)
        for page in book_pages(copy):
            name = page.relative_to(copy).as_posix()
            page.write_text(inject_checker(page.read_text(encoding="utf-8", errors="replace")),
                            encoding="utf-8")
            found = check_page(chromium, page, name, profile, width)
            log(f"  {name}: {len(found)} problem(s)" if found else f"  {name}: ok")
            defects += found
            if screenshots_dir and page.name.startswith(screenshot_pages):
                out = Path(screenshots_dir) / (page.stem + ".png")
                if screenshot(chromium, page, out, profile, width):
                    shots.append(out)
    return sorted(set(defects)), shots


def main(argv=None) -> int:
    """Command line: check the built site, print every defect, exit 1 if there is any (2 if there is no
    Chromium or no built site). With --find-chromium, only print the Chromium the check would use."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", nargs="?", default=str(ROOT / "_build" / "html"),
                        help="the built HTML book (default: _build/html)")
    parser.add_argument("--screenshots-dir", default=None,
                        help="where to save screenshots (default: a new temporary folder)")
    parser.add_argument("--width", type=int, default=1400,
                        help="browser window width in px (default: 1400, a laptop screen)")
    parser.add_argument("--all", action="store_true",
                        help=f"print every defect (default: at most {MAX_SHOWN} of a kind a page)")
    parser.add_argument("--find-chromium", action="store_true",
                        help="only print the Chromium binary the check would use (exit status 2 if none)")
    args = parser.parse_args(argv)
    try:
        chromium = find_chromium()
    except ChromiumMissing as e:
        print(f"check_rendered_book: {e}", file=sys.stderr)
        return 2
    if args.find_chromium:
        print(chromium)
        return 0
    shots_dir = Path(args.screenshots_dir or tempfile.mkdtemp(prefix="rendered-book-screenshots-"))
    shots_dir.mkdir(parents=True, exist_ok=True)
    print(f"Checking the rendered book in {args.site} with {chromium}, offline, "
          f"{args.width} px wide:")
    try:
        defects, shots = check_site(Path(args.site), chromium, shots_dir, width=args.width)
    except FileNotFoundError as e:
        print(f"check_rendered_book: {e}", file=sys.stderr)
        return 2
    print(f"Screenshots ({len(shots)}) in {shots_dir}: " + ", ".join(p.name for p in shots))
    if not defects:
        print("The rendered book has no defects the check knows of.")
        return 0
    print(f"\nThe rendered book has {len(defects)} defect(s):", file=sys.stderr)
    for (page, kind), group in itertools.groupby(defects, key=lambda d: (d.page, d.kind)):
        group = list(group)
        shown = group if args.all else group[:MAX_SHOWN]
        for d in shown:
            print(f"  {d}", file=sys.stderr)
        if len(group) > len(shown):
            print(f"  {page}: {kind}: ... and {len(group) - len(shown)} more (--all shows them)",
                  file=sys.stderr)
    kinds = sorted({d.kind for d in defects})
    print(f"Kinds: {', '.join(kinds)}. (too-wide: shorten the line, e.g. wrap the call or print "
          "fewer columns; see the module docstring of scripts/check_rendered_book.py for the "
          "others.)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
