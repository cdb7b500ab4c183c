"""scripts/check_rendered_book.py finds each defect it knows on a planted page, and passes a clean one.

The planted site is a tiny folder of HTML pages written here (no book build needed): broken.html
carries one of each defect, typeset.html those that need MathJax to run (too-wide display math, a
TAB in math, a solution's output shown under its closed box, ...), clean.html the same kinds of
content done right (math typeset by the bundled offline MathJax, an image, links, a short code
block, a solution inside its box). All are rendered in headless Chromium, offline, at the three
window widths, exactly as the real book is by scripts/test.sh.
"""

import base64
import importlib.util
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_rendered_book",
                                               ROOT / "scripts" / "check_rendered_book.py")
checker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checker)

# A valid 1x1 PNG.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")

HEAD = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title>
<script>window.MathJax = {{"options": {{"processHtmlClass": "tex2jax_process|mathjax_process|math"}}}}</script>
<script defer="defer" src="{mathjax}"></script>
<style>article {{ width: 600px; }} pre {{ overflow: auto; }}</style>
{extra_head}</head><body><main><article class="bd-article">"""
TAIL = "</article></main></body></html>"

CLEAN = HEAD.format(title="clean", mathjax="_static/mathjax/tex-chtml.js", extra_head="""
<!-- the toolchain's known, harmless duplicate script (see KNOWN_SCRIPT_ERRORS) -->
<script>const THEBE_JS_URL = "x";</script><script>const THEBE_JS_URL = "x";</script>""") + r"""
<section id="the-scan"><h1><span class="section-number">3. </span>The associative scan</h1>
<p>Inline <span class="math notranslate nohighlight">\(h_t = a_t h_{t-1} + b_t\)</span>, then:</p>
<div class="math notranslate nohighlight">\[\begin{aligned} x &= 1 \\ y &= 2 \end{aligned}\]</div>
<div class="admonition note"><p class="admonition-title">Note</p><p>A rendered note.</p></div>
<p>TeX in code is code: <code>\(x\)</code>, <code>$$</code>.</p>
<section id="three-steps"><h2><span class="section-number">3.1. </span>3 steps, 2 sweeps</h2>
<pre>print("a short line")</pre>
<div class="cell_output"><pre>a short output</pre></div>
<img src="_images/dot.png" alt="a dot">
<p><a href="#the-scan">up</a> <a href="broken.html#defects">the defects</a>
<a href="https://example.org/">an outside link is fine</a> <a href="./">this folder</a></p>
</section>
<section id="exercises"><h2>Exercises</h2>
<div class="dropdown admonition"><p class="admonition-title">Solution 1</p><p>The answer.</p></div>
<div class="cell tag_hide-cell docutils container"><details class="hide above-input">
<summary>Show code cell content</summary>
<div class="cell_input docutils container"><div class="highlight"><pre>print(42)</pre></div></div>
<div class="cell_output docutils container"><div class="output"><pre>42</pre></div></div>
</details></div>
</section>
<section id="a-figure"><h2>A figure whose code is hidden</h2>
<div class="cell tag_hide-input docutils container"><details class="hide above-input">
<summary>Show code cell source</summary>
<div class="cell_input docutils container"><div class="highlight"><pre>plot()</pre></div></div>
</details>
<div class="cell_output docutils container"><img src="_images/dot.png" alt="a plot"></div></div>
</section></section>""" + TAIL

BROKEN = HEAD.format(title="broken", mathjax="_static/no-such-folder/tex-chtml.js",
                     extra_head='<script src="https://cdn.example.org/lib.js"></script>') + r"""
<section id="defects"><h2><span class="section-number">3. </span>3. The associative scan</h2>
<p>Unrendered display math: \[ x^2 \]</p>
<p>Inline: <span class="math notranslate nohighlight">\(y\)</span></p>
<p>```{note}</p><p>An admonition that was not parsed.</p><p>```</p>
<img src="_images/corrupt.png" alt="corrupt"> <img src="_images/missing.png" alt="missing">
<div class="highlight"><pre>x = 1""" + " + 1" * 150 + r"""</pre></div>
<div class="cell_output"><pre>""" + "0123456789" * 100 + r"""</pre></div>
<p><a href="missing.html">gone</a> <a href="clean.html#no-such-anchor">bad anchor</a>
<a href="#nowhere">bad local anchor</a></p>
<script>this_function_does_not_exist();</script>
</section>""" + TAIL

# Defects that only show once MathJax and the page's scripts ran: MathJax loads here.
# A TAB typed for the \t of \times (the escapes \t and \b below are the characters themselves).
CONTROL_CHARACTERS = ('<p>A product <span class="math notranslate nohighlight">\\(c \times c\\)</span>'
                      "</p>\n<p>A backspace\bin prose.</p>")
WIDE_MATH = r"x_0 + " + " + ".join(f"x_{{{i}}}" for i in range(1, 60))
TYPESET = HEAD.format(title="typeset", mathjax="_static/mathjax/tex-chtml.js", extra_head="""
<style>@media (max-width: 1100px) { .narrow { width: 200px; } }</style>""") + r"""
<section id="typeset"><h1>Typeset</h1>
<div class="math notranslate nohighlight">\[""" + WIDE_MATH + r"""\]</div>
""" + CONTROL_CHARACTERS + r"""
<div class="narrow"><pre>print("forty characters or so, a bit more")</pre></div>
<section id="exercises"><h2>Exercises</h2>
<div class="dropdown admonition"><p class="admonition-title">Solution 1</p><p>The answer.</p></div>
<div class="cell tag_hide-input docutils container"><details class="hide above-input">
<summary>Show code cell source</summary>
<div class="cell_input docutils container"><div class="highlight"><pre>print(42)</pre></div></div>
</details>
<div class="cell_output docutils container"><div class="output"><pre>the answer is 42</pre></div></div>
</div>
<div class="dropdown admonition"><p class="admonition-title">Solution 2</p><p>Another.</p></div>
<div class="cell tag_hide-cell docutils container"><details class="hide above-input">
<summary>Show code cell content</summary>
<div class="cell_input docutils container"><div class="highlight"><pre>y = 2""" + " + 2" * 150 + r"""</pre></div></div>
</details></div>
</section></section>""" + TAIL

# (kind, a piece of its detail) for each defect planted in typeset.html.
PLANTED_TYPESET = [
    ("too-wide", "display math"),
    ("too-wide", "x_0 + x_{1}"),
    ("control-char", "a TAB in math: '\\(c <TAB>imes c\\)'"),
    ("control-char", "a backspace in text"),
    ("too-wide", "print(\"forty characters or so, a bit more\")' [at 1024 px]"),
    ("solution-shown", "'Solution 1': 'the answer is 42'"),
    ("too-wide", "y = 2 + 2"),        # inside a closed box: measured with the box open
]

# (kind, a piece of its detail) for each defect planted in broken.html.
PLANTED = [
    ("raw-tex", r"\[ x^2 \]"),
    ("raw-tex", r"\(y\)"),
    ("math-not-typeset", "MathJax did not load"),
    ("math-not-typeset", r"'\(y\)'"),
    ("fence-as-text", "```{note}"),
    ("fence-as-text", "'```'"),
    ("image-not-loaded", "corrupt.png"),
    ("image-not-loaded", "missing.png"),
    ("too-wide", "code block"),
    ("too-wide", "output block"),
    ("doubled-number", "3. 3. The associative scan"),
    ("broken-link", "missing.html"),
    ("broken-link", "missing.png"),
    ("broken-link", "no-such-folder/tex-chtml.js"),
    ("broken-link", "no anchor #no-such-anchor in clean.html"),
    ("broken-link", "no anchor #nowhere in broken.html"),
    ("needs-network", "https://cdn.example.org/lib.js"),
    ("script-error", "this_function_does_not_exist"),
]


def _mathjax_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    assert spec is not None, "sphinx-mathjax-offline is not installed: pip install -r requirements.txt"
    return pathlib.Path(spec.origin).parent / "static" / "mathjax"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Check the planted site once; return its defects grouped by page."""
    try:
        chromium = checker.find_chromium()
    except checker.ChromiumMissing as e:
        pytest.fail(str(e))
    site = tmp_path_factory.mktemp("planted-site")
    (site / "_static").mkdir()
    (site / "_static" / "mathjax").symlink_to(_mathjax_dir(), target_is_directory=True)
    (site / "_images").mkdir()
    (site / "_images" / "dot.png").write_bytes(PNG)
    (site / "_images" / "corrupt.png").write_bytes(b"this is not a PNG")
    (site / "clean.html").write_text(CLEAN, encoding="utf-8")
    (site / "broken.html").write_text(BROKEN, encoding="utf-8")
    (site / "typeset.html").write_text(TYPESET, encoding="utf-8")
    (site / "index.html").write_text('<a href="clean.html">clean</a>', encoding="utf-8")
    shots_dir = tmp_path_factory.mktemp("screenshots")
    defects, shots = checker.check_site(site, chromium, screenshots_dir=shots_dir,
                                        screenshot_pages=("clean",), log=lambda *_: None)
    by_page = {}
    for d in defects:
        by_page.setdefault(d.page, []).append(d)
    return by_page, shots


def test_clean_page_passes(planted):
    by_page, _ = planted
    assert by_page.get("clean.html", []) == [], "\n".join(map(str, by_page["clean.html"]))
    assert by_page.get("index.html", []) == []


ALL_PLANTED = ([("broken.html", kind, detail) for kind, detail in PLANTED]
               + [("typeset.html", kind, detail) for kind, detail in PLANTED_TYPESET])


@pytest.mark.parametrize("page, kind, detail", ALL_PLANTED, ids=[f"{p}:{k}:{d}" for p, k, d in ALL_PLANTED])
def test_planted_defect_is_reported(planted, page, kind, detail):
    by_page, _ = planted
    found = by_page.get(page, [])
    assert any(d.kind == kind and detail in d.detail for d in found), (
        f"planted {kind} ({detail!r}) not reported on {page}; the checker found:\n" + "\n".join(map(str, found)))


@pytest.mark.parametrize("page, planted_defects", [("broken.html", PLANTED),
                                                   ("typeset.html", PLANTED_TYPESET)])
def test_nothing_else_is_reported_on_the_planted_page(planted, page, planted_defects):
    by_page, _ = planted
    unexpected = [d for d in by_page.get(page, [])
                  if not any(d.kind == k and det in d.detail for k, det in planted_defects)]
    assert unexpected == [], "\n".join(map(str, unexpected))


def test_every_page_is_checked_at_every_width(planted):
    by_page, _ = planted
    width_bound = [d for d in by_page["typeset.html"] if "forty characters" in d.detail]
    assert len(width_bound) == 1 and width_bound[0].detail.endswith("[at 1024 px]")
    everywhere = [d for d in by_page["typeset.html"] if d.kind == "solution-shown"]
    assert everywhere and all(d.detail.endswith("[at 1024, 1280, 1920 px]") for d in everywhere)


def test_a_subset_of_pages_can_be_checked(tmp_path):
    (tmp_path / "one.html").write_text("<p>one</p>", encoding="utf-8")
    (tmp_path / "two.html").write_text("<p>two\tbad</p>", encoding="utf-8")
    seen = []
    defects, _ = checker.check_site(tmp_path, checker.find_chromium(), widths=(1280,),
                                    pages=("one",), log=seen.append)
    assert defects == [] and seen == ["  one.html: ok"]
    defects, _ = checker.check_site(tmp_path, checker.find_chromium(), widths=(1280,),
                                    pages=("two",), log=seen.append)
    assert [d.kind for d in defects] == ["control-char"] and seen[-1].startswith("  two.html: 1 problem")
    with pytest.raises(FileNotFoundError, match="no page"):
        checker.check_site(tmp_path, checker.find_chromium(), pages=("three",))


def test_screenshot_is_saved(planted):
    _, shots = planted
    assert [p.name for p in shots] == ["clean.png"]
    assert shots[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_chromium_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "no-such-chromium"))
    with pytest.raises(checker.ChromiumMissing, match="apt-get install -y chromium"):
        checker.find_chromium()
    monkeypatch.delenv("CHROMIUM")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(checker.ChromiumMissing, match="apt-get install -y chromium"):
        checker.find_chromium()
    assert checker.main([str(tmp_path)]) == 2
    assert "apt-get install -y chromium" in capsys.readouterr().err
    assert checker.main(["--find-chromium"]) == 2
    assert "apt-get install -y chromium" in capsys.readouterr().err


def test_find_chromium_prints_the_binary_it_would_use(monkeypatch, capsys):
    monkeypatch.setenv("CHROMIUM", sys.executable)                # any executable will do here
    assert checker.main(["--find-chromium"]) == 0
    assert capsys.readouterr().out == f"{sys.executable}\n"


def test_missing_build_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="jupyter-book build"):
        checker.check_site(tmp_path, chromium=os.devnull)
