"""Tests for integrad.viz.images: the normalisation's mathematics, what the heatmaps and panels contain, errors."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from integrad.viz import save_figure  # noqa: E402
from integrad.viz.images import image_heatmap, image_side_by_side, normalize_attribution  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_close_figures():
    torch.manual_seed(0)
    yield
    plt.close("all")


def _heatmap_data(ax):
    return np.asarray(ax.images[-1].get_array(), dtype=np.float64)


def test_normalize_all_is_signed_and_symmetric():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(6, 7))
    out = normalize_attribution(values, "all", 100.0)
    peak = np.abs(values).max()
    np.testing.assert_allclose(out, values / peak)
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert np.isclose(np.abs(out).max(), 1.0)
    # Same scale for both signs: flipping every sign flips the result.
    np.testing.assert_allclose(normalize_attribution(-values, "all", 100.0), -out)
    np.testing.assert_array_equal(np.sign(out), np.sign(values))


def test_percentile_clipping_clips_exactly_the_top_values():
    rng = np.random.default_rng(1)
    magnitudes = np.arange(1.0, 102.0)  # 101 values: the 90th percentile is exactly 91
    signs = rng.choice([-1.0, 1.0], size=magnitudes.size)
    values = rng.permutation(magnitudes) * signs
    out = normalize_attribution(values, "all", 90.0)
    limit = 91.0
    above = np.abs(values) > limit
    assert above.sum() == 10
    np.testing.assert_array_equal(out[above], np.sign(values[above]))
    np.testing.assert_allclose(out[~above], values[~above] / limit)
    assert np.sum(np.abs(out) == 1.0) == 11  # the ten clipped values plus 91 itself


def test_sign_modes():
    values = np.array([-4.0, -2.0, 0.0, 1.0, 3.0])
    np.testing.assert_allclose(normalize_attribution(values, "all", 100), values / 4.0)
    np.testing.assert_allclose(normalize_attribution(values, "positive", 100), [0, 0, 0, 1 / 3, 1])
    np.testing.assert_allclose(normalize_attribution(values, "negative", 100), [1, 0.5, 0, 0, 0])
    np.testing.assert_allclose(normalize_attribution(values, "absolute", 100), [1, 0.5, 0, 0.25, 0.75])
    # A hidden sign does not set the scale of the shown one.
    lopsided = np.array([-100.0, 1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(normalize_attribution(lopsided, "positive", 100), [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(normalize_attribution(lopsided, "negative", 100), [1, 0, 0, 0, 0])
    for sign in ("positive", "negative", "absolute"):
        out = normalize_attribution(np.random.default_rng(2).normal(size=50), sign, 95)
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_normalize_degenerate_inputs():
    assert not np.any(normalize_attribution(np.zeros((3, 3)), "all", 99))
    assert not np.any(normalize_attribution(-np.ones(4), "positive", 99))
    # 99% of the values are zero, so the 99th percentile is 0: fall back to the largest magnitude.
    sparse = np.zeros(200)
    sparse[17] = -5.0
    out = normalize_attribution(sparse, "all", 99)
    assert out[17] == -1.0 and np.count_nonzero(out) == 1


def test_normalize_accepts_tensors_without_modifying_them():
    t = torch.randn(2, 5, requires_grad=True)
    before = t.detach().clone()
    out = normalize_attribution(t, "all", 80)
    assert isinstance(out, np.ndarray) and out.shape == (2, 5) and out.dtype == np.float64
    np.testing.assert_allclose(out, normalize_attribution(before.numpy(), "all", 80))
    assert torch.equal(t.detach(), before)


@pytest.mark.parametrize("bad", ["bogus", "ALL", None, 1])
def test_unknown_sign_raises(bad):
    with pytest.raises(ValueError, match="sign"):
        normalize_attribution(np.ones(3), bad, 99)
    with pytest.raises(ValueError, match="sign"):
        image_heatmap(np.ones((4, 4)), sign=bad)


@pytest.mark.parametrize("bad", [0, -5, 100.5, float("nan"), True, "99"])
def test_bad_clip_percentile_raises(bad):
    with pytest.raises(TypeError if isinstance(bad, (bool, str)) else ValueError, match="clip_percentile"):
        normalize_attribution(np.ones(3), "all", bad)


def test_non_finite_attribution_raises():
    with pytest.raises(ValueError, match="attribution"):
        normalize_attribution(np.array([1.0, np.nan]), "all", 99)
    with pytest.raises(ValueError, match="attribution"):
        normalize_attribution(np.array([]), "all", 99)


def test_heatmap_data_is_the_normalised_channel_sum():
    attr = torch.randn(3, 8, 9)
    before = attr.clone()
    ax = image_heatmap(attr, clip_percentile=95.0)
    expected = normalize_attribution(attr.double().sum(0).numpy(), "all", 95.0)
    np.testing.assert_allclose(_heatmap_data(ax), expected, rtol=1e-6, atol=1e-12)
    assert ax.images[-1].get_clim() == (-1.0, 1.0)
    assert len(ax.images) == 1
    assert torch.equal(attr, before)
    # (1, C, H, W) and an already reduced (H, W) give the same picture.
    ax4 = image_heatmap(attr[None], clip_percentile=95.0)
    ax2 = image_heatmap(attr.sum(0), clip_percentile=95.0)
    np.testing.assert_allclose(_heatmap_data(ax4), expected, rtol=1e-6, atol=1e-12)
    # Summing channels in float32 first rounds differently; agree to float32 precision.
    np.testing.assert_allclose(_heatmap_data(ax2), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sign", ["positive", "negative", "absolute"])
def test_heatmap_one_sided_modes(sign):
    attr = np.random.default_rng(3).normal(size=(5, 5))
    ax = image_heatmap(attr, sign=sign, clip_percentile=100.0, colorbar=False, title="t")
    np.testing.assert_allclose(_heatmap_data(ax), normalize_attribution(attr, sign, 100.0))
    assert ax.images[-1].get_clim() == (0.0, 1.0)
    assert ax.get_title() == "t"


def test_heatmap_default_colours_are_red_positive_blue_negative():
    attr = np.array([[1.0, -1.0]])
    ax = image_heatmap(attr, clip_percentile=100.0, colorbar=False)
    rgba = ax.images[-1].to_rgba(_heatmap_data(ax))
    positive, negative = rgba[0, 0], rgba[0, 1]
    assert positive[0] > positive[2] and negative[2] > negative[0]


def test_overlay_draws_image_below_heatmap():
    rng = np.random.default_rng(4)
    attr = rng.normal(size=(3, 6, 7))
    image = torch.rand(3, 6, 7)
    before = image.clone()
    ax = image_heatmap(attr, image, overlay_alpha=0.3)
    assert len(ax.images) == 2
    base, heat = ax.images
    np.testing.assert_allclose(np.asarray(base.get_array()), image.permute(1, 2, 0).numpy(), rtol=1e-6)
    assert heat.get_alpha() == pytest.approx(0.3)
    np.testing.assert_allclose(np.asarray(heat.get_array()), normalize_attribution(attr.sum(0), "all", 99.0))
    assert torch.equal(image, before)


def test_overlay_greyscale_and_uint8_images():
    attr = np.ones((4, 4))
    grey = np.arange(16, dtype=np.uint8).reshape(1, 4, 4) * 10
    ax = image_heatmap(attr, grey, colorbar=False)
    base = ax.images[0]
    assert np.asarray(base.get_array()).shape == (4, 4)
    assert base.get_cmap().name == "gray"
    np.testing.assert_allclose(np.asarray(base.get_array()), grey[0] / 255.0)
    # Channels-last images are accepted too.
    hwc = np.random.default_rng(5).random((4, 4, 3))
    ax = image_heatmap(attr, hwc, colorbar=False)
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), hwc)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (16,), (1, 1, 1, 4, 4)])
def test_heatmap_wrong_attribution_shape_raises(shape):
    with pytest.raises(ValueError, match="attribution"):
        image_heatmap(np.ones(shape))


def test_heatmap_bad_image_and_alpha_raise():
    with pytest.raises(ValueError, match="image"):
        image_heatmap(np.ones((4, 4)), np.ones((3, 5, 5)))
    with pytest.raises(ValueError, match="image"):
        image_heatmap(np.ones((4, 4)), np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="overlay_alpha"):
        image_heatmap(np.ones((4, 4)), np.ones((4, 4)), overlay_alpha=1.5)


def test_side_by_side_panels():
    image = torch.rand(3, 5, 5)
    attrs = {"ig": torch.randn(3, 5, 5), "smoothgrad": torch.randn(3, 5, 5)}
    fig = image_side_by_side(image, attrs, sign="positive", clip_percentile=90)
    panels = [a for a in fig.axes if a.images]
    assert [a.get_title() for a in panels] == ["input", "ig", "smoothgrad"]
    np.testing.assert_allclose(np.asarray(panels[0].images[0].get_array()), image.permute(1, 2, 0).numpy(), rtol=1e-6)
    for panel, attr in zip(panels[1:], attrs.values()):
        np.testing.assert_allclose(
            _heatmap_data(panel), normalize_attribution(attr.double().sum(0), "positive", 90), rtol=1e-6, atol=1e-12
        )
    fig = image_side_by_side(image, [attrs["ig"]], titles=["mine"])
    assert [a.get_title() for a in fig.axes if a.images] == ["input", "mine"]


def test_side_by_side_bad_arguments():
    image = np.random.default_rng(6).random((4, 4))
    with pytest.raises(ValueError, match="titles"):
        image_side_by_side(image, [np.ones((4, 4))], titles=["a", "b"])
    with pytest.raises(ValueError, match="attributions"):
        image_side_by_side(image, [])
    with pytest.raises(ValueError, match="attributions"):
        image_side_by_side(image, [np.ones((4, 4)), np.ones((5, 5))])
    with pytest.raises(TypeError, match="ax"):
        image_side_by_side(image, [np.ones((4, 4))], ax=None)


def test_channels_last_attribution_is_refused_naming_the_layout():
    attr_hwc = np.random.default_rng(0).normal(size=(32, 24, 3))
    for call in (
        lambda: image_heatmap(attr_hwc),
        lambda: image_heatmap(attr_hwc, np.random.default_rng(1).random((32, 24, 3))),
        lambda: image_heatmap(attr_hwc[None]),
        lambda: image_side_by_side(np.random.default_rng(1).random((32, 24)), [attr_hwc]),
    ):
        with pytest.raises(ValueError, match=r"attribution must have shape .*\(C, H, W\).*\(H, W, C\)"):
            call()
    assert plt.get_fignums() == []
    # Channels first wins where both readings fit, as for images; other channel counts are fine.
    square = np.random.default_rng(2).normal(size=(3, 8, 3))
    np.testing.assert_allclose(
        _heatmap_data(image_heatmap(square, sign="all", clip_percentile=100)),
        normalize_attribution(square.sum(0), "all", 100),
    )
    assert _heatmap_data(image_heatmap(np.ones((16, 4, 5)))).shape == (4, 5)


def test_failed_drawing_leaves_no_figure_open():
    with pytest.raises(ValueError):
        image_heatmap(np.random.default_rng(0).normal(size=(8, 8)), cmap="no-such-colour-map")
    assert plt.get_fignums() == []
    # A figure the caller owns stays theirs.
    fig, ax = plt.subplots()
    with pytest.raises(ValueError):
        image_heatmap(np.ones((4, 4)), ax=ax, cmap="no-such-colour-map")
    assert plt.get_fignums() == [fig.number]


def test_image_titles_are_shown_literally(tmp_path):
    ax = image_heatmap(np.ones((4, 4)), title="$^$")
    assert ax.get_title() == "$^$"
    save_figure(ax, tmp_path / "heat.png")
    fig = image_side_by_side(np.ones((4, 4)), {"a$^$b": np.ones((4, 4))})
    save_figure(fig, tmp_path / "side.png")


def test_side_by_side_accepts_an_iterable_of_titles():
    fig = image_side_by_side(np.ones((4, 4)), [np.ones((4, 4))], titles=(t for t in ["mine"]))
    assert [a.get_title() for a in fig.axes if a.images] == ["input", "mine"]


def test_side_by_side_refuses_an_overlay_alpha_it_cannot_use():
    with pytest.raises(TypeError, match="overlay_alpha"):
        image_side_by_side(np.ones((4, 4)), [np.ones((4, 4))], overlay_alpha=0.2)
    assert plt.get_fignums() == []
