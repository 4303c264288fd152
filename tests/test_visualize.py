"""Tests for integrad.visualize: normalisation math, what the plots contain, HTML, PNG output, errors."""

from __future__ import annotations

import importlib
import re
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import integrad  # noqa: E402
from integrad import visualize as viz  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _seed_and_close_figures():
    torch.manual_seed(0)
    yield
    plt.close("all")


def _heatmap_data(ax):
    return np.asarray(ax.images[-1].get_array(), dtype=np.float64)


# ---------------------------------------------------------------------------
# normalize_attribution
# ---------------------------------------------------------------------------


def test_normalize_all_is_signed_and_symmetric():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(6, 7))
    out = viz.normalize_attribution(values, "all", 100.0)
    peak = np.abs(values).max()
    np.testing.assert_allclose(out, values / peak)
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert np.isclose(np.abs(out).max(), 1.0)
    # Same scale for both signs: flipping every sign flips the result.
    np.testing.assert_allclose(viz.normalize_attribution(-values, "all", 100.0), -out)
    np.testing.assert_array_equal(np.sign(out), np.sign(values))


def test_percentile_clipping_clips_exactly_the_top_values():
    rng = np.random.default_rng(1)
    magnitudes = np.arange(1.0, 102.0)  # 101 values: the 90th percentile is exactly 91
    signs = rng.choice([-1.0, 1.0], size=magnitudes.size)
    values = rng.permutation(magnitudes) * signs
    out = viz.normalize_attribution(values, "all", 90.0)
    limit = 91.0
    above = np.abs(values) > limit
    assert above.sum() == 10
    np.testing.assert_array_equal(out[above], np.sign(values[above]))
    np.testing.assert_allclose(out[~above], values[~above] / limit)
    assert np.sum(np.abs(out) == 1.0) == 11  # the ten clipped values plus 91 itself


def test_sign_modes():
    values = np.array([-4.0, -2.0, 0.0, 1.0, 3.0])
    np.testing.assert_allclose(viz.normalize_attribution(values, "all", 100), values / 4.0)
    np.testing.assert_allclose(viz.normalize_attribution(values, "positive", 100), [0, 0, 0, 1 / 3, 1])
    np.testing.assert_allclose(viz.normalize_attribution(values, "negative", 100), [1, 0.5, 0, 0, 0])
    np.testing.assert_allclose(viz.normalize_attribution(values, "absolute", 100), [1, 0.5, 0, 0.25, 0.75])
    # A hidden sign does not set the scale of the shown one.
    lopsided = np.array([-100.0, 1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(viz.normalize_attribution(lopsided, "positive", 100), [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(viz.normalize_attribution(lopsided, "negative", 100), [1, 0, 0, 0, 0])
    for sign in ("positive", "negative", "absolute"):
        out = viz.normalize_attribution(np.random.default_rng(2).normal(size=50), sign, 95)
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_normalize_degenerate_inputs():
    assert not np.any(viz.normalize_attribution(np.zeros((3, 3)), "all", 99))
    assert not np.any(viz.normalize_attribution(-np.ones(4), "positive", 99))
    # 99% of the values are zero, so the 99th percentile is 0: fall back to the largest magnitude.
    sparse = np.zeros(200)
    sparse[17] = -5.0
    out = viz.normalize_attribution(sparse, "all", 99)
    assert out[17] == -1.0 and np.count_nonzero(out) == 1


def test_normalize_accepts_tensors_without_modifying_them():
    t = torch.randn(2, 5, requires_grad=True)
    before = t.detach().clone()
    out = viz.normalize_attribution(t, "all", 80)
    assert isinstance(out, np.ndarray) and out.shape == (2, 5) and out.dtype == np.float64
    np.testing.assert_allclose(out, viz.normalize_attribution(before.numpy(), "all", 80))
    assert torch.equal(t.detach(), before)


@pytest.mark.parametrize("bad", ["bogus", "ALL", None, 1])
def test_unknown_sign_raises(bad):
    with pytest.raises(ValueError, match="sign"):
        viz.normalize_attribution(np.ones(3), bad, 99)
    with pytest.raises(ValueError, match="sign"):
        viz.image_heatmap(np.ones((4, 4)), sign=bad)


@pytest.mark.parametrize("bad", [0, -5, 100.5, float("nan"), True, "99"])
def test_bad_clip_percentile_raises(bad):
    with pytest.raises(ValueError, match="clip_percentile"):
        viz.normalize_attribution(np.ones(3), "all", bad)


def test_non_finite_attribution_raises():
    with pytest.raises(ValueError, match="attribution"):
        viz.normalize_attribution(np.array([1.0, np.nan]), "all", 99)
    with pytest.raises(ValueError, match="attribution"):
        viz.normalize_attribution(np.array([]), "all", 99)


# ---------------------------------------------------------------------------
# image_heatmap / image_side_by_side
# ---------------------------------------------------------------------------


def test_heatmap_data_is_the_normalised_channel_sum():
    attr = torch.randn(3, 8, 9)
    before = attr.clone()
    ax = viz.image_heatmap(attr, clip_percentile=95.0)
    expected = viz.normalize_attribution(attr.double().sum(0).numpy(), "all", 95.0)
    np.testing.assert_allclose(_heatmap_data(ax), expected, rtol=1e-6, atol=1e-12)
    assert ax.images[-1].get_clim() == (-1.0, 1.0)
    assert len(ax.images) == 1
    assert torch.equal(attr, before)
    # (1, C, H, W) and an already reduced (H, W) give the same picture.
    ax4 = viz.image_heatmap(attr[None], clip_percentile=95.0)
    ax2 = viz.image_heatmap(attr.sum(0), clip_percentile=95.0)
    np.testing.assert_allclose(_heatmap_data(ax4), expected, rtol=1e-6, atol=1e-12)
    # Summing channels in float32 first rounds differently; agree to float32 precision.
    np.testing.assert_allclose(_heatmap_data(ax2), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sign", ["positive", "negative", "absolute"])
def test_heatmap_one_sided_modes(sign):
    attr = np.random.default_rng(3).normal(size=(5, 5))
    ax = viz.image_heatmap(attr, sign=sign, clip_percentile=100.0, colorbar=False, title="t")
    np.testing.assert_allclose(_heatmap_data(ax), viz.normalize_attribution(attr, sign, 100.0))
    assert ax.images[-1].get_clim() == (0.0, 1.0)
    assert ax.get_title() == "t"


def test_heatmap_default_colours_are_red_positive_blue_negative():
    attr = np.array([[1.0, -1.0]])
    ax = viz.image_heatmap(attr, clip_percentile=100.0, colorbar=False)
    rgba = ax.images[-1].to_rgba(_heatmap_data(ax))
    positive, negative = rgba[0, 0], rgba[0, 1]
    assert positive[0] > positive[2] and negative[2] > negative[0]


def test_overlay_draws_image_below_heatmap():
    rng = np.random.default_rng(4)
    attr = rng.normal(size=(3, 6, 7))
    image = torch.rand(3, 6, 7)
    before = image.clone()
    ax = viz.image_heatmap(attr, image, overlay_alpha=0.3)
    assert len(ax.images) == 2
    base, heat = ax.images
    np.testing.assert_allclose(np.asarray(base.get_array()), image.permute(1, 2, 0).numpy(), rtol=1e-6)
    assert heat.get_alpha() == pytest.approx(0.3)
    np.testing.assert_allclose(np.asarray(heat.get_array()), viz.normalize_attribution(attr.sum(0), "all", 99.0))
    assert torch.equal(image, before)


def test_overlay_greyscale_and_uint8_images():
    attr = np.ones((4, 4))
    grey = np.arange(16, dtype=np.uint8).reshape(1, 4, 4) * 10
    ax = viz.image_heatmap(attr, grey, colorbar=False)
    base = ax.images[0]
    assert np.asarray(base.get_array()).shape == (4, 4)
    assert base.get_cmap().name == "gray"
    np.testing.assert_allclose(np.asarray(base.get_array()), grey[0] / 255.0)
    # Channels-last images are accepted too.
    hwc = np.random.default_rng(5).random((4, 4, 3))
    ax = viz.image_heatmap(attr, hwc, colorbar=False)
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), hwc)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (16,), (1, 1, 1, 4, 4)])
def test_heatmap_wrong_attribution_shape_raises(shape):
    with pytest.raises(ValueError, match="attribution"):
        viz.image_heatmap(np.ones(shape))


def test_heatmap_bad_image_and_alpha_raise():
    with pytest.raises(ValueError, match="image"):
        viz.image_heatmap(np.ones((4, 4)), np.ones((3, 5, 5)))
    with pytest.raises(ValueError, match="image"):
        viz.image_heatmap(np.ones((4, 4)), np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="overlay_alpha"):
        viz.image_heatmap(np.ones((4, 4)), np.ones((4, 4)), overlay_alpha=1.5)


def test_side_by_side_panels():
    image = torch.rand(3, 5, 5)
    attrs = {"ig": torch.randn(3, 5, 5), "smoothgrad": torch.randn(3, 5, 5)}
    fig = viz.image_side_by_side(image, attrs, sign="positive", clip_percentile=90)
    panels = [a for a in fig.axes if a.images]
    assert [a.get_title() for a in panels] == ["input", "ig", "smoothgrad"]
    np.testing.assert_allclose(np.asarray(panels[0].images[0].get_array()), image.permute(1, 2, 0).numpy(), rtol=1e-6)
    for panel, attr in zip(panels[1:], attrs.values()):
        np.testing.assert_allclose(
            _heatmap_data(panel), viz.normalize_attribution(attr.double().sum(0), "positive", 90), rtol=1e-6, atol=1e-12
        )
    fig = viz.image_side_by_side(image, [attrs["ig"]], titles=["mine"])
    assert [a.get_title() for a in fig.axes if a.images] == ["input", "mine"]


def test_side_by_side_bad_arguments():
    image = np.random.default_rng(6).random((4, 4))
    with pytest.raises(ValueError, match="titles"):
        viz.image_side_by_side(image, [np.ones((4, 4))], titles=["a", "b"])
    with pytest.raises(ValueError, match="attributions"):
        viz.image_side_by_side(image, [])
    with pytest.raises(ValueError, match="attributions"):
        viz.image_side_by_side(image, [np.ones((4, 4)), np.ones((5, 5))])
    with pytest.raises(TypeError, match="ax"):
        viz.image_side_by_side(image, [np.ones((4, 4))], ax=None)


# ---------------------------------------------------------------------------
# text_html
# ---------------------------------------------------------------------------

_SPAN = re.compile(
    r'<span style="background-color: rgba\((\d+), (\d+), (\d+), ([0-9.]+)\);[^"]*" title="([^"]*)">(.*?)</span>'
)


def test_text_html_escapes_and_colours_by_sign():
    tokens = ["<script>alert(1)</script>", "good", "bad", "a&b", '"q"']
    scores = torch.tensor([0.5, 2.0, -1.0, 0.0, -2.0])
    before = scores.clone()
    out = viz.text_html(tokens, scores, title="<b>review</b>")
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
    out = viz.text_html([f"t{i}" for i in range(101)], scores, clip_percentile=90)
    alphas = np.array([float(s[3]) for s in _SPAN.findall(out)])
    np.testing.assert_allclose(alphas[:90], scores[:90] / 91.0, atol=1e-4)
    assert np.all(alphas[90:] == 1.0)


def test_text_html_bad_arguments():
    with pytest.raises(ValueError, match="tokens and scores"):
        viz.text_html(["a", "b"], [1.0])
    with pytest.raises(TypeError, match="tokens"):
        viz.text_html("ab", [1.0, 2.0])
    with pytest.raises(ValueError, match="scores"):
        viz.text_html(["a", "b"], np.ones((2, 4)))
    with pytest.raises(ValueError, match="clip_percentile"):
        viz.text_html(["a"], [1.0], clip_percentile=0)


# ---------------------------------------------------------------------------
# feature_bars
# ---------------------------------------------------------------------------


def test_feature_bars_order_and_colours():
    scores = torch.tensor([0.1, -3.0, 2.0, -0.5, 1.0])
    names = ["a", "b", "c", "d", "e"]
    ax = viz.feature_bars(scores, names, title="tabular")
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
    ax = viz.feature_bars(np.array([[0.2, -0.9, 0.4]]), top_k=2)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["feature 1", "feature 2"]
    assert len(ax.patches) == 2
    ax = viz.feature_bars([1.0, 2.0], top_k=10)
    assert len(ax.patches) == 2


def test_feature_bars_bad_arguments():
    with pytest.raises(ValueError, match="top_k"):
        viz.feature_bars([1.0, 2.0], top_k=0)
    with pytest.raises(ValueError, match="feature_names"):
        viz.feature_bars([1.0, 2.0], ["only one"])
    with pytest.raises(ValueError, match="scores"):
        viz.feature_bars(np.ones((2, 3)))


# ---------------------------------------------------------------------------
# path_integrand
# ---------------------------------------------------------------------------


def _legend_number(ax, prefix):
    for text in ax.get_legend().get_texts():
        label = text.get_text()
        if label.startswith(prefix):
            return float(label.split("=")[-1])
    raise AssertionError(f"no legend entry starting with {prefix!r}")


def _line(ax, gid):
    return next(line for line in ax.lines if line.get_gid() == gid)


def _nodes(ax):
    return next(c for c in ax.collections if c.get_gid() == "rule-nodes")


class _SumOfPowers(torch.nn.Module):
    def __init__(self, power):
        super().__init__()
        self.power = power

    def forward(self, x):
        return (x**self.power).sum(dim=1)


@pytest.mark.parametrize("power", [2, 3])
@pytest.mark.parametrize("method,n_steps", [("gausslegendre", 4), ("riemann_left", 5), ("riemann_trapezoid", 3)])
def test_path_integrand_known_integrand(method, n_steps, power):
    from integrad import IntegratedGradients, rules

    x = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
    before = x.clone()
    ig = IntegratedGradients(_SumOfPowers(power))
    ax = viz.path_integrand(ig, x, method=method, n_steps=n_steps, n_dense=11, example=1)
    # Zero baseline: F(αx) = α^p S with S = Σ x_i^p, so g(α) = p α^(p−1) S and F(x) − F(0) = S.
    total = float((x[1].double() ** power).sum())

    def g(alpha):
        return power * np.asarray(alpha) ** (power - 1) * total

    dense = _line(ax, "integrand-dense")
    np.testing.assert_allclose(dense.get_xdata(), np.linspace(0, 1, 11))
    np.testing.assert_allclose(dense.get_ydata(), g(np.linspace(0, 1, 11)), rtol=1e-5, atol=1e-6)

    alphas, weights = rules.alphas_and_weights(method, n_steps)
    nodes = _nodes(ax).get_offsets()
    np.testing.assert_allclose(nodes[:, 0], alphas)
    np.testing.assert_allclose(nodes[:, 1], g(alphas), rtol=1e-5, atol=1e-6)
    sizes = _nodes(ax).get_sizes()
    np.testing.assert_allclose(sizes / sizes.max(), weights / weights.max())

    quadrature = float(np.sum(weights * g(alphas)))
    assert _legend_number(ax, "Σ w·g(α)") == pytest.approx(quadrature, rel=1e-6)
    assert _legend_number(ax, "F(x) − F(x′)") == pytest.approx(total, rel=1e-6)
    assert _legend_number(ax, "delta") == pytest.approx(quadrature - total, rel=1e-2, abs=1e-6)
    n = n_steps
    if method == "gausslegendre":  # exact for polynomials of degree ≤ 2n − 1
        assert quadrature == pytest.approx(total, rel=1e-9)
    elif method == "riemann_left":  # α_k = k/n: Σ_k (1/n) p (k/n)^(p−1) S
        closed_form = {2: (n - 1) / n, 3: (n - 1) * (2 * n - 1) / (2 * n**2)}[power]
        assert quadrature == pytest.approx(total * closed_form, rel=1e-9)
    else:  # trapezoid on 0, ½, 1 with weights ¼, ½, ¼
        closed_form = {2: 1.0, 3: 1.125}[power]
        assert quadrature == pytest.approx(total * closed_form, rel=1e-9)
    assert torch.equal(x, before)


class _SteepSigmoid(torch.nn.Module):
    def forward(self, x):
        z = 12.0 * (x.sum(dim=1) - 1.5)
        return torch.stack([torch.sigmoid(z), -torch.sigmoid(z)], dim=1)


def test_path_integrand_exact_value_comes_from_the_model_endpoints():
    from integrad import IntegratedGradients

    x = torch.tensor([[1.0, 1.2], [0.3, 0.1]], requires_grad=True)
    ig = IntegratedGradients(_SteepSigmoid())
    ax = viz.path_integrand(ig, x, target=0, method="riemann_right", n_steps=3, n_dense=5)
    exact = float(torch.sigmoid(torch.tensor(12.0 * (2.2 - 1.5))) - torch.sigmoid(torch.tensor(-18.0)))
    assert _legend_number(ax, "F(x) − F(x′)") == pytest.approx(exact, rel=1e-6)
    # A trapezoid over the coarse dense curve is far from it: the exact value is not read off the curve.
    dense = _line(ax, "integrand-dense")
    ys, xs = np.asarray(dense.get_ydata()), np.asarray(dense.get_xdata())
    trapezoid = float(np.sum(0.5 * (ys[1:] + ys[:-1]) * np.diff(xs)))
    assert abs(trapezoid - exact) > 0.1 * exact
    # Nodes sit where the rule puts them, and the quadrature is their weighted sum.
    nodes = _nodes(ax).get_offsets()
    np.testing.assert_allclose(nodes[:, 0], [1 / 3, 2 / 3, 1.0])
    assert _legend_number(ax, "Σ w·g(α)") == pytest.approx(nodes[:, 1].mean(), rel=1e-6)
    assert x.grad is None


def test_path_integrand_delta_matches_the_core_convergence_delta():
    from integrad import IntegratedGradients

    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x = 3 * torch.randn(3, 4)
    ig = IntegratedGradients(model)
    _, delta = ig.attribute(x, target=[0, 2, 1], method="riemann_middle", n_steps=7, return_convergence_delta=True)
    for example in range(3):
        ax = viz.path_integrand(
            ig, x, target=[0, 2, 1], method="riemann_middle", n_steps=7, n_dense=20, example=example
        )
        quadrature = _legend_number(ax, "Σ w·g(α)")
        exact = _legend_number(ax, "F(x) − F(x′)")
        assert quadrature - exact == pytest.approx(float(delta[example]), abs=1e-4)


class _TwoInputs(torch.nn.Module):
    def forward(self, a, b, scale):
        first = scale * (a * b).sum(dim=1)
        second = a.sum(dim=1) + (b**2).sum(dim=1)
        return torch.stack([first, second], dim=1)


def test_path_integrand_tuple_inputs_targets_baselines_and_args():
    from integrad import IntegratedGradients

    torch.manual_seed(0)
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    scale = torch.tensor([1.0, 2.0, -0.5])
    b_base = torch.randn(1, 4)
    ig = IntegratedGradients(_TwoInputs())
    e = 1
    ax = viz.path_integrand(
        ig,
        (a, b),
        baselines=(0.0, b_base),
        target=[1, 0, 1],
        additional_forward_args=(scale,),
        method="riemann_middle",
        n_steps=6,
        n_dense=9,
        example=e,
    )
    # Target 0 for example 1: F = s Σ a·b on the path a(α) = α a, b(α) = b' + α (b − b'),
    # so g(α) = s [Σ a b' + 2 α Σ a (b − b')], linear, and F(x) − F(x') = s Σ a b.
    s, ae, be, bb = float(scale[e]), a[e].double(), b[e].double(), b_base[0].double()
    grid = np.linspace(0, 1, 9)
    expected = s * (float((ae * bb).sum()) + 2 * grid * float((ae * (be - bb)).sum()))
    np.testing.assert_allclose(_line(ax, "integrand-dense").get_ydata(), expected, rtol=1e-4, atol=1e-5)
    exact = s * float((ae * be).sum())
    assert _legend_number(ax, "F(x) − F(x′)") == pytest.approx(exact, rel=1e-5, abs=1e-6)
    # The midpoint rule is exact for a linear integrand.
    assert _legend_number(ax, "Σ w·g(α)") == pytest.approx(exact, rel=1e-5, abs=1e-5)

    profile = viz.integrand_profile(
        ig, (a, b), [0.0, 0.5, 1.0], baselines=(0.0, b_base), target=[1, 0, 1], additional_forward_args=(scale,)
    )
    assert profile.shape == (3, 3)
    np.testing.assert_allclose(profile[e], expected[[0, 4, 8]], rtol=1e-4, atol=1e-5)


def test_path_integrand_accepts_an_explainer_and_uses_its_baseline():
    from integrad.explainers import IntegratedGradients as IGExplainer
    from integrad.explainers.baselines import get_baseline_fn

    x = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [2.0, 0.0, -1.0]])
    explainer = IGExplainer(_SumOfPowers(2), baseline_fn="mean")
    ax = viz.path_integrand(explainer, x, method="gausslegendre", n_steps=2, n_dense=5, example=1)
    # The "mean" baseline is computed from the whole batch, as explainer.attribute does.
    base = get_baseline_fn("mean")(x)[1].double()
    xe = x[1].double()
    assert _legend_number(ax, "F(x) − F(x′)") == pytest.approx(float((xe**2).sum() - (base**2).sum()), rel=1e-5)
    # g(α) = 2 (x′ + α (x − x′))·(x − x′) is linear: two Gauss–Legendre nodes integrate it exactly.
    grid = np.linspace(0, 1, 5)
    expected = [2 * float(((base + a * (xe - base)) * (xe - base)).sum()) for a in grid]
    np.testing.assert_allclose(_line(ax, "integrand-dense").get_ydata(), expected, rtol=1e-5, atol=1e-6)
    assert _legend_number(ax, "Σ w·g(α)") == pytest.approx(_legend_number(ax, "F(x) − F(x′)"), rel=1e-5)


def test_path_integrand_bad_arguments():
    from integrad import IntegratedGradients

    ig = IntegratedGradients(_SumOfPowers(2))
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="example"):
        viz.path_integrand(ig, x, example=2)
    with pytest.raises(ValueError, match="n_dense"):
        viz.path_integrand(ig, x, n_dense=1)
    with pytest.raises(ValueError, match="n_steps"):
        viz.path_integrand(ig, x, n_steps="auto")
    with pytest.raises(TypeError, match="explainer_or_ig"):
        viz.path_integrand(_SumOfPowers(2), x)
    with pytest.raises(ValueError, match="method"):
        viz.path_integrand(ig, x, method="simpson")


# ---------------------------------------------------------------------------
# save_figure and the optional dependency
# ---------------------------------------------------------------------------


def test_save_figure_writes_a_non_blank_png(tmp_path):
    ax = viz.image_heatmap(np.random.default_rng(7).normal(size=(3, 6, 6)))
    number = ax.figure.number
    path = viz.save_figure(ax, tmp_path / "sub" / "heat.png", dpi=50)
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 10 and pixels.shape[1] > 10
    assert np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0).shape[0] > 10
    assert not plt.fignum_exists(number)


def test_save_figure_bad_arguments(tmp_path):
    fig = viz.feature_bars([1.0, -1.0]).figure
    with pytest.raises(ValueError, match="path"):
        viz.save_figure(fig, tmp_path / "bars.pdf")
    with pytest.raises(ValueError, match="dpi"):
        viz.save_figure(fig, tmp_path / "bars.png", dpi=0)
    with pytest.raises(TypeError, match="fig_or_ax"):
        viz.save_figure("figure", tmp_path / "bars.png")
    assert not (tmp_path / "bars.png").exists()


def test_missing_matplotlib_gives_install_hint(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    # The module itself imports without matplotlib.
    monkeypatch.delitem(sys.modules, "integrad.visualize")
    monkeypatch.setattr(integrad, "visualize", viz, raising=False)
    fresh = importlib.import_module("integrad.visualize")
    assert fresh is not viz
    with pytest.raises(ImportError, match=re.escape('pip install "integrad[viz]"')):
        fresh.feature_bars([1.0, 2.0])
    with pytest.raises(ImportError, match=re.escape('pip install "integrad[viz]"')):
        fresh.image_heatmap(np.ones((3, 3)))
    # The pure functions need no matplotlib.
    assert "<span" in fresh.text_html(["a"], [1.0])
    assert fresh.normalize_attribution([2.0, -1.0], "all", 100).tolist() == [1.0, -0.5]


# ---------------------------------------------------------------------------
# layouts, labels, figures left open, argument checks
# ---------------------------------------------------------------------------


def test_channels_last_attribution_is_refused_naming_the_layout():
    attr_hwc = np.random.default_rng(0).normal(size=(32, 24, 3))
    for call in (
        lambda: viz.image_heatmap(attr_hwc),
        lambda: viz.image_heatmap(attr_hwc, np.random.default_rng(1).random((32, 24, 3))),
        lambda: viz.image_heatmap(attr_hwc[None]),
        lambda: viz.image_side_by_side(np.random.default_rng(1).random((32, 24)), [attr_hwc]),
    ):
        with pytest.raises(ValueError, match=r"attribution must have shape .*\(C, H, W\).*\(H, W, C\)"):
            call()
    assert plt.get_fignums() == []
    # Channels first wins where both readings fit, as for images; other channel counts are fine.
    square = np.random.default_rng(2).normal(size=(3, 8, 3))
    np.testing.assert_allclose(
        _heatmap_data(viz.image_heatmap(square, sign="all", clip_percentile=100)),
        viz.normalize_attribution(square.sum(0), "all", 100),
    )
    assert _heatmap_data(viz.image_heatmap(np.ones((16, 4, 5)))).shape == (4, 5)


def test_failed_drawing_leaves_no_figure_open():
    with pytest.raises(ValueError):
        viz.image_heatmap(np.random.default_rng(0).normal(size=(8, 8)), cmap="no-such-colour-map")
    assert plt.get_fignums() == []
    # A figure the caller owns stays theirs.
    fig, ax = plt.subplots()
    with pytest.raises(ValueError):
        viz.image_heatmap(np.ones((4, 4)), ax=ax, cmap="no-such-colour-map")
    assert plt.get_fignums() == [fig.number]


def test_labels_and_titles_are_shown_literally(tmp_path):
    names = ["price_$_usd_$", "a$^$b", "revenue ($M) - cost ($M)"]
    ax = viz.feature_bars([3.0, -2.0, 1.0], names, title="total $x$")
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert ax.get_title() == "total $x$"
    assert viz.save_figure(ax, tmp_path / "bars.png").read_bytes()[:8] == PNG_SIGNATURE

    ax = viz.image_heatmap(np.ones((4, 4)), title="$^$")
    assert ax.get_title() == "$^$"
    viz.save_figure(ax, tmp_path / "heat.png")
    fig = viz.image_side_by_side(np.ones((4, 4)), {"a$^$b": np.ones((4, 4))})
    viz.save_figure(fig, tmp_path / "side.png")


def test_iterables_of_labels_are_accepted():
    ax = viz.feature_bars([1.0, -3.0], (f"f{i}" for i in range(2)))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["f1", "f0"]
    fig = viz.image_side_by_side(np.ones((4, 4)), [np.ones((4, 4))], titles=(t for t in ["mine"]))
    assert [a.get_title() for a in fig.axes if a.images] == ["input", "mine"]
    with pytest.raises(ValueError, match="feature_names"):
        viz.feature_bars([1.0, 2.0], "ab")


def test_side_by_side_refuses_an_overlay_alpha_it_cannot_use():
    with pytest.raises(TypeError, match="overlay_alpha"):
        viz.image_side_by_side(np.ones((4, 4)), [np.ones((4, 4))], overlay_alpha=0.2)
    assert plt.get_fignums() == []


def test_text_html_errors_name_scores_and_always_check_clip_percentile():
    with pytest.raises(ValueError, match="^scores contains NaN"):
        viz.text_html(["a", "b"], [1.0, float("nan")])
    with pytest.raises(ValueError, match="^scores contains NaN"):
        viz.text_html(["a"], torch.tensor([float("inf")]))
    for bad in (500, "x", 0):
        with pytest.raises(ValueError, match="clip_percentile"):
            viz.text_html([], [], clip_percentile=bad)
    assert "<div" in viz.text_html([], [])


# ---------------------------------------------------------------------------
# path_integrand / integrand_profile: model outputs, caller's tensors, explainers
# ---------------------------------------------------------------------------


class _WritesIntoItsInput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        x -= 0.5
        return self.linear(x)


def test_path_integrand_leaves_the_callers_tensors_alone():
    ig = integrad.IntegratedGradients(_WritesIntoItsInput().eval())
    for n in (2, 1):
        x, b = torch.ones(n, 4), torch.zeros(n, 4)
        viz.path_integrand(ig, x, baselines=b, target=0, n_dense=3, n_steps=2)
        assert bool((x == 1).all()) and bool((b == 0).all()), (n, x, b)
    x, b = torch.ones(2, 4), torch.zeros(1, 4)  # a baseline broadcast to the input
    viz.path_integrand(ig, x, baselines=b, target=0, n_dense=3, n_steps=2, example=1)
    assert bool((x == 1).all()) and bool((b == 0).all())


class _LogitsOutput(torch.nn.Module):
    """Returns an object with a .logits tensor, as transformers' models do."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.inner(x))


def test_path_integrand_reads_logits_outputs():
    torch.manual_seed(3)
    inner = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).eval()
    x = torch.randn(2, 4)
    plain = viz.path_integrand(integrad.IntegratedGradients(inner), x, target=1, n_dense=5, n_steps=4, example=1)
    wrapped = viz.path_integrand(
        integrad.IntegratedGradients(_LogitsOutput(inner)), x, target=1, n_dense=5, n_steps=4, example=1
    )
    for prefix in ("F(x) − F(x′)", "Σ w·g(α)"):
        assert _legend_number(wrapped, prefix) == pytest.approx(_legend_number(plain, prefix), rel=1e-6)
    with torch.no_grad():
        exact = float(inner(x[1:])[0, 1] - inner(torch.zeros(1, 4))[0, 1])
    assert _legend_number(wrapped, "F(x) − F(x′)") == pytest.approx(exact, rel=1e-5)


def test_integrand_profile_uses_the_explainers_baseline():
    from integrad.explainers import IntegratedGradients as IGExplainer

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).eval()
    x = torch.randn(5, 4) + 3
    explainer = IGExplainer(model, n_steps=8, baseline_fn="mean")
    got = viz.integrand_profile(explainer, x, [0.25, 0.5], target=0)
    expected = viz.integrand_profile(explainer.core, x, [0.25, 0.5], target=0, baselines=x.mean(0, keepdim=True))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    # g is the weight times (x - x'): with the mean baseline it differs from the zeros baseline.
    zeros = viz.integrand_profile(explainer.core, x, [0.25, 0.5], target=0)
    assert not np.allclose(got, zeros)
    # Explicit baselines win over the explainer's.
    np.testing.assert_allclose(viz.integrand_profile(explainer, x, [0.5], target=0, baselines=0.0), zeros[:, 1:])
    with pytest.raises(ValueError, match=r"alphas must lie in \[0, 1\]"):
        viz.integrand_profile(explainer, x, [0.5, 1.5], target=0)


# ---------------------------------------------------------------------------
# report: plot_attributions, HtmlReport, the backend
# ---------------------------------------------------------------------------


def test_plot_attributions_checks_first_and_leaves_no_figure_open(tmp_path):
    from integrad.report import plot_attributions

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
    from integrad.report import plot_attributions

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

    from integrad.report import HtmlReport

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
    from integrad import report

    chosen = []
    monkeypatch.setattr(matplotlib, "use", lambda name, *a, **k: chosen.append(name))
    # As before pyplot's first import: the backend is still open.
    monkeypatch.delitem(sys.modules, "matplotlib.pyplot")
    monkeypatch.setattr(viz, "_import_matplotlib", lambda name: plt if name == "matplotlib.pyplot" else matplotlib)

    monkeypatch.setenv("MPLBACKEND", "svg")
    report._use_agg()
    assert chosen == []

    monkeypatch.delenv("MPLBACKEND")
    monkeypatch.setenv("DISPLAY", ":0")
    report._use_agg()  # writes files only: Agg even with a display
    assert chosen == ["Agg"]
    viz._pyplot()  # may show windows: the display's backend stays
    assert chosen == ["Agg"]
