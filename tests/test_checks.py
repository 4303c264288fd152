"""Tests for integrad.viz._checks: each shared check refuses a bad value the same way in every function using it."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from integrad.viz._checks import as_array, check_int, check_labels  # noqa: E402
from integrad.viz._figures import save_figure  # noqa: E402
from integrad.viz.features import feature_bars  # noqa: E402
from integrad.viz.images import image_heatmap, image_side_by_side, normalize_attribution  # noqa: E402
from integrad.viz.report import plot_attributions  # noqa: E402
from integrad.viz.text import text_html  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _message(call, error: type[Exception] = ValueError) -> str:
    with pytest.raises(error) as caught:
        call()
    return str(caught.value)


def _error(bad) -> type[Exception]:
    """A number out of range is a ValueError; anything else (a bool, a string, None) a TypeError."""
    return TypeError if isinstance(bad, (bool, str)) or bad is None else ValueError


@pytest.mark.parametrize("bad", [0, -5, 100.5, float("nan"), float("inf"), True, "99", None])
def test_clip_percentile_is_refused_alike_everywhere(bad):
    image = np.ones((4, 4))
    messages = {
        _message(lambda: normalize_attribution(image, "all", bad), _error(bad)),
        _message(lambda: image_heatmap(image, clip_percentile=bad), _error(bad)),
        _message(lambda: image_side_by_side(image, [image], clip_percentile=bad), _error(bad)),
        _message(lambda: text_html(["a"], [1.0], clip_percentile=bad), _error(bad)),
    }
    assert messages == {f"clip_percentile must be a number in (0, 100] (100 = no clipping); got {bad!r}"}
    assert plt.get_fignums() == []


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf"), False, "0.5", None])
def test_overlay_alpha_must_be_a_number_in_0_1(bad):
    with pytest.raises(_error(bad), match=rf"^overlay_alpha must be a number in \[0, 1\]; got {re.escape(repr(bad))}$"):
        image_heatmap(np.ones((4, 4)), np.ones((4, 4)), overlay_alpha=bad)
    assert plt.get_fignums() == []


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "100", None])
def test_dpi_must_be_a_positive_number(bad, tmp_path):
    fig = feature_bars([1.0, -1.0]).figure
    with pytest.raises(_error(bad), match=rf"^dpi must be a positive number; got {re.escape(repr(bad))}$"):
        save_figure(fig, tmp_path / "bars.png", dpi=bad)
    assert not (tmp_path / "bars.png").exists()


def test_labels_must_be_an_iterable_but_not_a_string(tmp_path):
    image = np.ones((4, 4))
    calls = {
        "feature_names": lambda: feature_bars([1.0, 2.0], "ab"),
        "titles": lambda: image_side_by_side(image, [image, image], titles="ab"),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=f"^{name} must be a sequence of .*; got str 'ab'"):
            call()
    with pytest.raises(ValueError, match="^titles must be a sequence of strings, one per example; got str 'ab'"):
        plot_attributions(tmp_path / "a.png", "features", None, torch.randn(2, 3), titles="ab")
    with pytest.raises(ValueError, match="^feature_names must be a sequence of strings; got int 4"):
        plot_attributions(tmp_path / "a.png", "features", None, torch.randn(2, 3), feature_names=4)
    assert plt.get_fignums() == []


def test_label_counts_exact_or_at_least():
    assert check_labels(None, "titles", "strings") is None
    assert check_labels((n for n in [1, "b"]), "titles", "strings", 2) == ["1", "b"]
    with pytest.raises(ValueError, match=r"^titles must be a sequence of strings; 2 needed, got 3: \['a', 'b', 'c'\]"):
        check_labels(["a", "b", "c"], "titles", "strings", 2)
    assert check_labels(["a", "b", "c"], "titles", "strings", 2, at_least=True) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="^titles must be a sequence of strings; at least 2 needed, got 1"):
        check_labels(["a"], "titles", "strings", 2, at_least=True)
    # The same check in the public functions: exactly one name per score, exactly one title per attribution.
    with pytest.raises(ValueError, match="^feature_names must be .*; 2 needed, got 1"):
        feature_bars([1.0, 2.0], ["only one"])
    with pytest.raises(ValueError, match="^titles must be .*; 1 needed, got 2"):
        image_side_by_side(np.ones((4, 4)), [np.ones((4, 4))], titles=["a", "b"])


def test_integers_refuse_bools_floats_and_values_out_of_range():
    assert check_int(np.int64(3), "top_k", 1) == 3 and type(check_int(np.int64(3), "top_k", 1)) is int
    assert check_int(0, "example", 0, below=2) == 0
    for bad in (True, 2.0, "2", None, 0):
        with pytest.raises(ValueError, match=f"^top_k must be an integer >= 1; got {bad!r}$"):
            check_int(bad, "top_k", 1)
    with pytest.raises(ValueError, match=r"^example must be an integer in \[0, 2\); got 2$"):
        check_int(2, "example", 0, below=2)


def test_as_array_copies_and_names_what_it_accepts():
    for value in (torch.arange(4, dtype=torch.float64), np.arange(4, dtype=np.float64)):
        before = value.clone() if isinstance(value, torch.Tensor) else value.copy()
        array = as_array(value, "scores")
        array += 1.0  # a copy: the caller's data stays as it was
        assert array.dtype == np.float64
        assert (value == before).all()
    np.testing.assert_array_equal(as_array(torch.tensor([1.5, -2.0], dtype=torch.bfloat16), "scores"), [1.5, -2.0])
    np.testing.assert_array_equal(as_array([[1, 2], [3, 4]], "scores"), [[1.0, 2.0], [3.0, 4.0]])
    for bad, match in [
        (torch.ones(2, dtype=torch.complex64), "^scores must be real-valued"),
        (np.ones(2, dtype=complex), "^scores must be real-valued"),
        ("12", "^scores must be a torch.Tensor, numpy.ndarray or sequence of numbers; got str"),
        (None, "^scores must be a torch.Tensor, numpy.ndarray or sequence of numbers; got NoneType"),
        ([[1.0], [1.0, 2.0]], "^scores must be a torch.Tensor, numpy.ndarray or sequence of numbers; got list"),
        (np.array(["a"]), "^scores must be .* got an array of dtype <U1"),
    ]:
        with pytest.raises(TypeError, match=match):
            as_array(bad, "scores")
