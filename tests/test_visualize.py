"""Tests for integrad.visualize, the public path of the pictures: its names, and importing it without matplotlib."""

from __future__ import annotations

import importlib
import re
import sys

import numpy as np
import pytest

import integrad
import integrad.viz
from integrad import visualize as viz


def test_the_public_path_re_exports_the_functions_of_integrad_viz():
    assert viz.__all__ == integrad.viz.__all__
    for name in integrad.viz.__all__:
        assert getattr(viz, name) is getattr(integrad.viz, name), name
    expected = {
        "normalize_attribution",
        "image_heatmap",
        "image_side_by_side",
        "text_html",
        "feature_bars",
        "integrand_profile",
        "path_integrand",
        "save_figure",
    }
    assert expected <= set(viz.__all__)
    # Only the public functions: the shared helpers stay inside integrad.viz.
    assert not [name for name in vars(viz) if not name.startswith("__") and name not in viz.__all__]


def test_missing_matplotlib_gives_install_hint(monkeypatch):
    # None in sys.modules makes an import fail, whether matplotlib was imported before or not.
    loaded = [m for m in sys.modules if m.startswith("matplotlib.")]
    for name in ["matplotlib", "matplotlib.pyplot", *loaded]:
        monkeypatch.setitem(sys.modules, name, None)
    # The package itself imports without matplotlib: import every module of it again.
    for name in [
        m for m in sys.modules if m in ("integrad.visualize", "integrad.viz") or m.startswith("integrad.viz.")
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(integrad, "visualize", viz, raising=False)
    monkeypatch.setattr(integrad, "viz", integrad.viz, raising=False)
    fresh = importlib.import_module("integrad.visualize")
    assert fresh is not viz and fresh.feature_bars is not viz.feature_bars
    with pytest.raises(ImportError, match=re.escape('pip install "integrad[viz]"')):
        fresh.feature_bars([1.0, 2.0])
    with pytest.raises(ImportError, match=re.escape('pip install "integrad[viz]"')):
        fresh.image_heatmap(np.ones((3, 3)))
    # The pure functions need no matplotlib.
    assert "<span" in fresh.text_html(["a"], [1.0])
    assert fresh.normalize_attribution([2.0, -1.0], "all", 100).tolist() == [1.0, -0.5]
