"""Tests for integrad.viz._figures: the PNG written by save_figure, its errors, no figure left open."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from integrad.viz._figures import save_figure  # noqa: E402
from integrad.viz.features import feature_bars  # noqa: E402
from integrad.viz.images import image_heatmap  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_save_figure_writes_a_non_blank_png(tmp_path):
    ax = image_heatmap(np.random.default_rng(7).normal(size=(3, 6, 6)))
    number = ax.figure.number
    path = save_figure(ax, tmp_path / "sub" / "heat.png", dpi=50)
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 10 and pixels.shape[1] > 10
    assert np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0).shape[0] > 10
    assert not plt.fignum_exists(number)


def test_save_figure_bad_arguments(tmp_path):
    fig = feature_bars([1.0, -1.0]).figure
    with pytest.raises(ValueError, match="path"):
        save_figure(fig, tmp_path / "bars.pdf")
    with pytest.raises(ValueError, match="dpi"):
        save_figure(fig, tmp_path / "bars.png", dpi=0)
    with pytest.raises(TypeError, match="fig_or_ax"):
        save_figure("figure", tmp_path / "bars.png")
    assert not (tmp_path / "bars.png").exists()
