"""Check the built book as a reader sees it: every HTML page rendered in headless Chromium, offline.

Usage:
    .venv/bin/python scripts/check_rendered_book.py [_build/html] [--screenshots-dir DIR]
        [--widths 1024,1280,1920] [--pages 03_ 06_] [--jobs 2] [--all]
    .venv/bin/python scripts/check_rendered_book.py --find-chromium   # which Chromium; status 2 if none

Every page of the built site is opened in headless Chromium with all outside hosts blocked, at
each of three window widths (1,024, 1,280 and 1,920 px: the theme's columns differ at each, and
1,280 is the narrowest code column), and once its scripts (MathJax included) have finished, the
page is checked for what a reader would see as broken. The check fails (exit status 1) and names
the page, the place and the widths for each of:

  raw-tex          TeX left in the visible text (\\[, \\(, $$, \\begin{...}): math that did not render;
  math-not-typeset a math element of the page that MathJax did not turn into rendered math;
  control-char     a TAB or other control character in the page's prose or math (not in code):
                   in $\\times$ a TAB typed for \\t renders as "imes";
  fence-as-text    a ``` fence, ::: fence or {note}-style directive name shown as text: an
                   admonition (or other directive) that was not parsed;
  image-not-loaded an image with naturalWidth 0 (missing or unreadable file);
  too-wide         a code or output block (a <pre> in the page's content, closed boxes opened),
                   or a display equation, wider than its column, so part of it is hidden behind
                   a scroll bar or runs off the column;
  solution-shown   a solution's output shown while its box is closed: a cell tagged hide-input
                   (only its code in the box) after a solution dropdown or under Exercises;
                   tag it hide-cell;
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

It prints one line per page (ok, or the problems at each width); --pages checks only some pages.
It also saves screenshots, at 1,280 px, of a few chapters (03, 06 and 08 by default) and prints
where.
Chromium: the Debian package `chromium` (`sudo apt-get install chromium`); set CHROMIUM to use
another Chromium or Chrome binary.
"""

from __future__ import annotations

import argparse
import html
import itertools
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
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
WIDTHS = (1024, 1280, 1920)      # px: browser windows every page is checked at
SCREENSHOT_WIDTH = 1280          # px: the width the book is judged at (a common laptop)
JOBS = 2                         # Chromium processes at a time
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

  // Control characters in prose or math, read before MathJax replaces the TeX with rendered math
  // (this script runs while the page is parsed; MathJax is deferred): in $\\times$ typed with a
  // TAB for \\t, the TAB is whitespace and "imes" is rendered as text.
  const CONTROL = /[\x00-\x08\x09\x0b\x0c\x0e-\x1f\x7f]/;
  const CONTROL_NAMES = {"\t": "TAB", "\b": "backspace", "\f": "form feed", "\v": "vertical tab"};
  function checkControlCharacters() {
    const skip = "script, style, noscript, template, textarea, pre, code, kbd, samp";
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      const el = n.parentElement;
      if (!el || el.closest(skip)) continue;
      const m = n.nodeValue.match(CONTROL);
      if (!m) continue;
      const c = m[0];
      const name = CONTROL_NAMES[c] ||
                   "U+" + c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0");
      const at = Math.max(0, m.index - 30);
      const excerpt = n.nodeValue.slice(at, m.index + 30).replace(/\t/g, "<TAB>")
                      .replace(CONTROL, "<?>").replace(/\s+/g, " ");
      const inMath = el.closest(".math") ? "math" : "text";
      report("control-char", where(el) + ": a " + name + " in " + inMath + ": '" + excerpt.trim() + "'");
    }
  }
  // Keep each math element's TeX, to name a too-wide equation once MathJax has replaced it.
  function keepTex() {
    for (const el of document.querySelectorAll(".math")) el.dataset.tex = el.textContent;
  }
  try {
    checkControlCharacters();
    keepTex();
  } catch (e) {
    report("script-error", "the checker itself failed: " + e);
  }

  // A solution's output must be inside its dropdown. A cell tagged hide-input puts only its code
  // in a closed <details>, so its output (the answer) shows under the closed solution box; the
  // cell should be tagged hide-cell. A cell counts as a solution when it follows a dropdown
  // admonition (the solution's text) or sits in a section called Exercises or Solutions.
  function checkSolutionOutputs(content) {
    for (const input of content.querySelectorAll(".cell_input")) {
      const box = input.closest("details");
      const cell = input.closest(".cell");
      if (!box || box.open || !cell || !cell.contains(box)) continue;
      const output = Array.from(cell.querySelectorAll(".cell_output")).find(
        (o) => !o.closest("details") && isVisible(o) && (o.textContent.trim() || o.querySelector("img")));
      if (!output) continue;
      const prev = cell.previousElementSibling;
      const afterDropdown = prev && prev.matches(".dropdown, .toggle, details");
      const section = cell.closest("section");
      const heading = section && section.querySelector("h1, h2, h3, h4, h5, h6");
      const inExercises = heading && /exercise|solution/i.test(heading.textContent);
      if (!afterDropdown && !inExercises) continue;
      const title = prev && prev.querySelector(".admonition-title, summary");
      report("solution-shown", where(cell) + ": the output of a cell whose code is hidden " +
             "(tag hide-input) shows under the closed " +
             (title ? "'" + clip(squash(title.textContent), 40) + "'" : "solution") +
             ": '" + clip(squash((output.querySelector("pre") || output).textContent), 60) +
             "' (tag the cell hide-cell)");
    }
  }

  // Open every closed box (hidden code cells, dropdowns) so that what is inside is measured too.
  function openEverything() {
    for (const d of document.querySelectorAll("details")) d.open = true;
    for (const t of document.querySelectorAll(".toggle-hidden")) t.classList.remove("toggle-hidden");
  }

  // Display math wider than its column: MathJax 3 neither wraps nor scrolls it, so the end of the
  // equation runs under the side bar or off the page.
  function checkWideMath(content) {
    for (const box of content.querySelectorAll('mjx-container[display="true"]')) {
      const column = box.clientWidth;
      const math = box.querySelector("mjx-math");
      if (column === 0 || !math) continue;   // hidden
      const width = Math.max(box.scrollWidth, Math.ceil(math.getBoundingClientRect().width));
      if (width <= column + 1) continue;
      const source = box.closest(".math");
      report("too-wide", where(box) + ": display math " + width + " px wide in a " + column +
             " px column: '" + clip(squash((source && source.dataset.tex) || box.textContent), 70) +
             "'");
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
      checkSolutionOutputs(content);
      openEverything();
      await sleep(50);
      checkWideBlocks(content);
      checkWideMath(content);
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


def _with_widths(found: dict[tuple[str, str, str], list[int]]) -> list[Defect]:
    """One defect per (page, kind, detail), naming the window widths at which it was seen."""
    return sorted(Defect(page, kind, f"{detail} [at {', '.join(map(str, sorted(widths)))} px]")
                  for (page, kind, detail), widths in found.items())


def check_site(site: Path, chromium: str | None = None, screenshots_dir: Path | None = None,
               screenshot_pages: tuple[str, ...] = DEFAULT_SCREENSHOTS,
               widths: tuple[int, ...] = WIDTHS, pages: tuple[str, ...] = (), jobs: int = JOBS,
               log=print) -> tuple[list[Defect], list[Path]]:
    """Check the HTML pages under site at each window width; return the defects and the screenshots.

    Each defect's detail ends with the widths at which it was seen ("[at 1024, 1280 px]").
    pages: only the pages whose path (relative to the site) contains one of these strings (all
    pages if empty); links are checked on every page regardless. Pages are checked in a temporary
    copy of the site (the built site itself is not changed), jobs Chromium processes at a time.
    A screenshot, at SCREENSHOT_WIDTH px (or the nearest width checked), is taken of each checked
    page whose file name starts with one of screenshot_pages.
    """
    site = Path(site).resolve()
    if not site.is_dir() or not book_pages(site):
        raise FileNotFoundError(f"no built book in {site}: build it first with "
                                ".venv/bin/jupyter-book build . -W -n --keep-going")
    chromium = chromium or find_chromium()
    defects = check_links(site)
    shots: list[Path] = []
    shot_width = min(widths, key=lambda w: abs(w - SCREENSHOT_WIDTH))
    with tempfile.TemporaryDirectory(prefix="rendered-book-check-") as tmp:
        copy = Path(tmp) / "site"
        shutil.copytree(site, copy, symlinks=True)
        todo = [page for page in book_pages(copy)
                if not pages or any(p in page.relative_to(copy).as_posix() for p in pages)]
        if pages and not todo:
            raise FileNotFoundError(f"no page of {site} matches {', '.join(pages)}")
        for page in todo:
            page.write_text(inject_checker(page.read_text(encoding="utf-8", errors="replace")),
                            encoding="utf-8")
        free_profiles = queue.SimpleQueue()       # one Chromium profile per concurrent process
        for i in range(max(1, jobs)):
            free_profiles.put(Path(tmp) / f"profile-{i}")

        def run(job):
            page, width = job
            profile = free_profiles.get()
            try:
                return page, width, check_page(chromium, page, page.relative_to(copy).as_posix(),
                                               profile, width)
            finally:
                free_profiles.put(profile)

        found: dict[tuple[str, str, str], list[int]] = {}
        per_page: dict[str, dict[int, int]] = {}
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for page, width, page_defects in pool.map(run, [(p, w) for p in todo for w in widths]):
                name = page.relative_to(copy).as_posix()
                per_page.setdefault(name, {})[width] = len(page_defects)
                for d in page_defects:
                    found.setdefault((d.page, d.kind, d.detail), []).append(width)
                if len(per_page[name]) == len(widths):
                    counts = per_page[name]
                    log(f"  {name}: " + ("ok" if not any(counts.values()) else ", ".join(
                        f"{counts[w]} problem(s) at {w} px" for w in widths)))
        defects += _with_widths(found)
        profile = Path(tmp) / "profile-shots"
        for page in todo:
            if screenshots_dir and page.name.startswith(screenshot_pages):
                out = Path(screenshots_dir) / (page.stem + ".png")
                if screenshot(chromium, page, out, profile, shot_width):
                    shots.append(out)
    return sorted(set(defects)), shots


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of pixel widths: {text!r}")
    if not widths or min(widths) < 200:
        raise argparse.ArgumentTypeError(f"widths must be at least 200 px: {text!r}")
    return widths


def main(argv=None) -> int:
    """Command line: check the built site, print every defect, exit 1 if there is any (2 if there is no
    Chromium or no built site). With --find-chromium, only print the Chromium the check would use."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", nargs="?", default=str(ROOT / "_build" / "html"),
                        help="the built HTML book (default: _build/html)")
    parser.add_argument("--screenshots-dir", default=None,
                        help="where to save screenshots (default: a new temporary folder)")
    parser.add_argument("--widths", type=_widths, default=WIDTHS,
                        help="browser window widths in px, comma-separated (default: "
                             f"{','.join(map(str, WIDTHS))}: a small laptop, a common one, a desktop)")
    parser.add_argument("--pages", nargs="+", default=(), metavar="TEXT",
                        help="check only the pages whose path contains one of these (e.g. 03_ 06_); "
                             "default: every page")
    parser.add_argument("--jobs", type=int, default=JOBS,
                        help=f"Chromium processes at a time (default: {JOBS})")
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
    print(f"Checking the rendered book in {args.site} with {chromium}, offline, at window widths "
          f"{', '.join(map(str, args.widths))} px" +
          (f", pages matching {', '.join(args.pages)}" if args.pages else "") + ":")
    try:
        defects, shots = check_site(Path(args.site), chromium, shots_dir, widths=args.widths,
                                    pages=tuple(args.pages), jobs=args.jobs)
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
    pages_with = sorted({d.page for d in defects})
    print(f"Pages with defects ({len(pages_with)}): {', '.join(pages_with)}", file=sys.stderr)
    kinds = sorted({d.kind for d in defects})
    print(f"Kinds: {', '.join(kinds)}. (too-wide: shorten the line to 79 characters, e.g. wrap the "
          "call or print fewer columns; see the module docstring of scripts/check_rendered_book.py "
          "for the others.)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
