"""Tests for integrad.viz.text: escaping, colours by sign, opacity by size, errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from integrad.viz.text import text_html

_SPAN = re.compile(
    r'<span style="background-color: rgba\((\d+), (\d+), (\d+), ([0-9.]+)\);[^"]*" title="([^"]*)">(.*?)</span>'
)


def test_text_html_escapes_and_colours_by_sign():
    tokens = ["<script>alert(1)</script>", "good", "bad", "a&b", '"q"']
    scores = torch.tensor([0.5, 2.0, -1.0, 0.0, -2.0])
    before = scores.clone()
    out = text_html(tokens, scores, title="<b>review</b>")
    assert "<script>" not in out and "<b>review" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out and "&lt;b&gt;review&lt;/b&gt;" in out
    spans = _SPAN.findall(out)
    assert [s[5] for s in spans] == ["&lt;script&gt;alert(1)&lt;/script&gt;", "good", "bad", "a&amp;b", "&quot;q&quot;"]
    for (r, _, b, alpha, title, _), score in zip(spans, scores.tolist()):
        r, b, alpha = int(r), int(b), float(alpha)
        if score > 0:
            assert r > b
        elif score < 0:
            assert b > r
        # Opacity is |score| over the largest |score| (clip_percentile=100).
        assert alpha == pytest.approx(abs(score) / 2.0, abs=1e-4)
        assert float(title) == pytest.approx(score)
    assert torch.equal(scores, before)


def test_text_html_percentile_saturates_top_scores():
    scores = np.arange(1.0, 102.0)  # 90th percentile is 91
    out = text_html([f"t{i}" for i in range(101)], scores, clip_percentile=90)
    alphas = np.array([float(s[3]) for s in _SPAN.findall(out)])
    np.testing.assert_allclose(alphas[:90], scores[:90] / 91.0, atol=1e-4)
    assert np.all(alphas[90:] == 1.0)


def test_text_html_bad_arguments():
    with pytest.raises(ValueError, match="tokens and scores"):
        text_html(["a", "b"], [1.0])
    with pytest.raises(TypeError, match="tokens"):
        text_html("ab", [1.0, 2.0])
    with pytest.raises(ValueError, match="scores"):
        text_html(["a", "b"], np.ones((2, 4)))
    with pytest.raises(ValueError, match="clip_percentile"):
        text_html(["a"], [1.0], clip_percentile=0)


def test_text_html_errors_name_scores_and_always_check_clip_percentile():
    with pytest.raises(ValueError, match="^scores contains NaN"):
        text_html(["a", "b"], [1.0, float("nan")])
    with pytest.raises(ValueError, match="^scores contains NaN"):
        text_html(["a"], torch.tensor([float("inf")]))
    for bad, error in ((500, ValueError), ("x", TypeError), (0, ValueError)):
        with pytest.raises(error, match="clip_percentile"):
            text_html([], [], clip_percentile=bad)
    assert "<div" in text_html([], [])
