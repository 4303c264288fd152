"""Tests for integrad.viz.features: the order, colours and labels of the bars, errors."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from integrad.viz import save_figure  # noqa: E402
from integrad.viz.features import feature_bars  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_feature_bars_order_and_colours():
    scores = torch.tensor([0.1, -3.0, 2.0, -0.5, 1.0])
    names = ["a", "b", "c", "d", "e"]
    ax = feature_bars(scores, names, title="tabular")
    bars = list(ax.patches)
    assert [p.get_width() for p in bars] == pytest.approx([-3.0, 2.0, 1.0, -0.5, 0.1])
    # Top to bottom on screen: the y axis is inverted and bars are placed at increasing y.
    assert ax.yaxis_inverted()
    ys = [p.get_y() for p in bars]
    assert ys == sorted(ys)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b", "c", "e", "d", "a"]
    for p in bars:
        r, _, b, _ = p.get_facecolor()
        assert (r > b) if p.get_width() > 0 else (b > r)
    assert ax.get_title() == "tabular"


def test_feature_bars_top_k_and_default_names():
    ax = feature_bars(np.array([[0.2, -0.9, 0.4]]), top_k=2)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["feature 1", "feature 2"]
    assert len(ax.patches) == 2
    ax = feature_bars([1.0, 2.0], top_k=10)
    assert len(ax.patches) == 2


def test_feature_bars_bad_arguments():
    with pytest.raises(ValueError, match="top_k"):
        feature_bars([1.0, 2.0], top_k=0)
    with pytest.raises(ValueError, match="feature_names"):
        feature_bars([1.0, 2.0], ["only one"])
    with pytest.raises(ValueError, match="scores"):
        feature_bars(np.ones((2, 3)))


def test_labels_and_titles_are_shown_literally(tmp_path):
    names = ["price_$_usd_$", "a$^$b", "revenue ($M) - cost ($M)"]
    ax = feature_bars([3.0, -2.0, 1.0], names, title="total $x$")
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert ax.get_title() == "total $x$"
    assert save_figure(ax, tmp_path / "bars.png").read_bytes()[:8] == PNG_SIGNATURE


def test_iterables_of_labels_are_accepted():
    ax = feature_bars([1.0, -3.0], (f"f{i}" for i in range(2)))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["f1", "f0"]
    with pytest.raises(ValueError, match="feature_names"):
        feature_bars([1.0, 2.0], "ab")
