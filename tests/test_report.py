"""Tests for integrad.viz.report: plot_attributions, HtmlReport, the file backend,"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from integrad.viz import (
    _figures,  # noqa: E402
    report,  # noqa: E402
)
from integrad.viz.report import HtmlReport, plot_attributions  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _seed_and_close_figures():
    torch.manual_seed(0)
    yield
    plt.close("all")


def test_plot_attributions_checks_first_and_leaves_no_figure_open(tmp_path):
    nan = torch.full((2, 1, 8, 8), float("nan"))
    with pytest.raises(ValueError, match="attributions contains NaN"):
        plot_attributions(tmp_path / "a.png", "image", torch.rand(2, 1, 8, 8), nan)
    with pytest.raises(ValueError, match="titles"):
        plot_attributions(tmp_path / "b.png", "features", None, torch.randn(3, 4), titles=["only one"])
    with pytest.raises(ValueError, match="titles must be a sequence of strings, one per example; got str"):
        plot_attributions(tmp_path / "b.png", "features", None, torch.randn(3, 4), titles="abc")
    with pytest.raises(ValueError, match="feature_names must be a sequence of strings; got int"):
        plot_attributions(tmp_path / "b.png", "features", None, torch.randn(3, 4), feature_names=4)
    with pytest.raises(ValueError, match="attributions"):
        plot_attributions(tmp_path / "c.png", "features", None, torch.zeros(0, 4))
    assert plt.get_fignums() == []
    assert not list(tmp_path.iterdir())


def test_plot_attributions_labels_iterables_and_odd_images(tmp_path):
    path = plot_attributions(
        tmp_path / "bars.png",
        "features",
        None,
        torch.randn(2, 3),
        titles=(f"$x_{i}$ at 5$" for i in range(2)),
        feature_names=(n for n in ["price_$_usd_$", "a$^$b", "c"]),
    )
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    # Two channels cannot be drawn as an image: the heatmaps are drawn alone.
    path = plot_attributions(tmp_path / "two.png", "image", torch.rand(2, 2, 6, 6), torch.randn(2, 2, 6, 6))
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    # Attributions of a layer whose width is 3 are (C, H, W), not (H, W, C).
    path = plot_attributions(tmp_path / "layer.png", "image", None, torch.randn(1, 5, 4, 3))
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert plt.get_fignums() == []


def test_html_report_creates_its_folder_and_encodes_file_names(tmp_path):
    import html.parser
    from urllib.parse import unquote, urlsplit

    report = HtmlReport("Attributions")
    report.image("digit #3.png", "a digit")
    report.links([("results", "run 50%? #2.html"), ("nested", "sub dir/a&b.html")])
    path = report.write(tmp_path / "new" / "deeper" / "index.html")
    assert path.is_file()

    class Refs(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.refs = []

        def handle_starttag(self, tag, attrs):
            self.refs += [v for k, v in attrs if k in ("src", "href")]

    parser = Refs()
    parser.feed(path.read_text(encoding="utf-8"))
    assert [unquote(urlsplit(ref).path) for ref in parser.refs] == [
        "digit #3.png",
        "run 50%? #2.html",
        "sub dir/a&b.html",
    ]
    assert all(not urlsplit(ref).scheme and not ref.startswith("/") for ref in parser.refs)


def test_file_backend_is_not_forced_over_the_users_choice(monkeypatch):
    chosen = []
    monkeypatch.setattr(matplotlib, "use", lambda name, *a, **k: chosen.append(name))
    # As before pyplot's first import: the backend is still open.
    monkeypatch.delitem(sys.modules, "matplotlib.pyplot")
    monkeypatch.setattr(_figures, "import_matplotlib", lambda name: plt if name == "matplotlib.pyplot" else matplotlib)

    monkeypatch.setenv("MPLBACKEND", "svg")
    report._use_agg()
    assert chosen == []

    monkeypatch.delenv("MPLBACKEND")
    monkeypatch.setenv("DISPLAY", ":0")
    report._use_agg()  # writes files only: Agg even with a display
    assert chosen == ["Agg"]
    _figures.pyplot()  # may show windows: the display's backend stays
    assert chosen == ["Agg"]


@pytest.mark.parametrize("name", ["max_examples", "top_k"])
@pytest.mark.parametrize("bad", [0, -1, 2.0, True, None])
def test_plot_attributions_refuses_counts_below_one(tmp_path, name, bad):
    with pytest.raises(ValueError, match=f"^{name} must be an integer >= 1"):
        plot_attributions(tmp_path / "a.png", "features", None, torch.randn(2, 3), **{name: bad})
    assert plt.get_fignums() == []
    assert not list(tmp_path.iterdir())


def test_plot_attributions_draws_at_most_max_examples(tmp_path):
    # Only the examples drawn need a title: three examples, two drawn, two titles.
    titles = ["first", "second"]
    path = plot_attributions(tmp_path / "a.png", "features", None, torch.randn(3, 4), titles=titles, max_examples=2)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ValueError, match="titles"):
        plot_attributions(tmp_path / "b.png", "features", None, torch.randn(3, 4), titles=titles, max_examples=3)
    assert plt.get_fignums() == []
