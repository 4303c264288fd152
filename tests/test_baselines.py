"""Baselines: each one's mathematics, determinism, validation, and the name registry."""

import math

import pytest
import torch

from integrad.explainers import baselines as B
from integrad.explainers.baselines import BASELINES, ConfiguredBaseline, get_baseline_fn


@pytest.fixture
def images():
    return torch.rand(3, 2, 6, 7, generator=torch.Generator().manual_seed(1)) * 4 - 1


@pytest.fixture
def table():
    return torch.randn(5, 4, generator=torch.Generator().manual_seed(2))


def test_registry_holds_every_documented_name():
    assert set(BASELINES) == {"zeros", "mean", "invert", "gaussian_blur", "uniform", "gaussian", "token"}
    for name, fn in BASELINES.items():
        assert isinstance(fn.TUNABLES, dict), name
        assert set(fn.KINDS) <= set(B.KINDS), name


def test_zeros_for_floats_and_token_ids(images):
    baseline = B.zeros(images)
    assert baseline.shape == images.shape and baseline.dtype == images.dtype
    assert torch.count_nonzero(baseline) == 0
    ids = torch.tensor([[101, 7, 102]])
    assert torch.equal(B.zeros(ids), torch.zeros_like(ids))


def test_mean_per_example_and_channel_for_images(images):
    baseline = B.mean(images)
    for n in range(images.shape[0]):
        for c in range(images.shape[1]):
            expected = images[n, c].sum() / images[n, c].numel()
            torch.testing.assert_close(baseline[n, c], torch.full_like(baseline[n, c], expected.item()))


def test_mean_per_feature_over_the_batch_otherwise(table):
    baseline = B.mean(table)
    for n in range(table.shape[0]):
        torch.testing.assert_close(baseline[n], table.sum(0) / table.shape[0])
    sequences = torch.randn(4, 3, 5)
    torch.testing.assert_close(B.mean(sequences)[2], sequences.sum(0) / 4)
    # One example is its own batch mean: IG from this baseline attributes nothing.
    assert torch.equal(B.mean(table[:1]), table[:1])


def test_invert_is_max_plus_min_minus_x_per_channel(images):
    baseline = B.invert(images)
    for n in range(images.shape[0]):
        for c in range(images.shape[1]):
            channel = images[n, c]
            torch.testing.assert_close(baseline[n, c], channel.max() + channel.min() - channel)


def test_invert_is_an_involution(images, table):
    torch.testing.assert_close(B.invert(B.invert(images)), images)
    torch.testing.assert_close(B.invert(B.invert(table)), table)
    torch.testing.assert_close(B.invert(table), table.max(0).values + table.min(0).values - table)


def test_gaussian_kernel_is_sum_normalised_symmetric_gaussian():
    kernel = B.gaussian_kernel1d(7, 1.5, dtype=torch.float64)
    assert kernel.shape == (7,)
    assert math.isclose(kernel.sum().item(), 1.0, rel_tol=1e-12)
    torch.testing.assert_close(kernel, kernel.flip(0))
    # Ratios of neighbouring taps are those of exp(-t^2 / 2 sigma^2).
    for t in range(1, 4):
        assert math.isclose((kernel[3 + t] / kernel[3]).item(), math.exp(-(t**2) / (2 * 1.5**2)), rel_tol=1e-12)


def test_blur_preserves_a_constant_image():
    constant = torch.full((2, 3, 8, 8), 0.37)
    torch.testing.assert_close(B.gaussian_blur(constant, sigma=1.0), constant)
    # A kernel wider than the image is reduced to the largest size reflect padding allows.
    torch.testing.assert_close(B.gaussian_blur(constant, sigma=4.0), constant)
    torch.testing.assert_close(B.gaussian_blur(constant[:, 0], sigma=2.0), constant[:, 0])


def test_blur_of_an_impulse_is_the_outer_product_of_the_kernel():
    impulse = torch.zeros(1, 1, 15, 15, dtype=torch.float64)
    impulse[0, 0, 7, 7] = 1.0
    blurred = B.gaussian_blur(impulse, kernel_size=5, sigma=1.2)
    kernel = B.gaussian_kernel1d(5, 1.2, dtype=torch.float64)
    expected = torch.zeros(15, 15, dtype=torch.float64)
    expected[5:10, 5:10] = torch.outer(kernel, kernel)
    torch.testing.assert_close(blurred[0, 0], expected)
    assert math.isclose(blurred.sum().item(), 1.0, rel_tol=1e-12)


def test_blur_acts_on_each_channel_separately():
    image = torch.zeros(1, 2, 9, 9)
    image[0, 0] = 1.0
    blurred = B.gaussian_blur(image, sigma=1.0)
    torch.testing.assert_close(blurred[0, 0], image[0, 0])
    assert torch.count_nonzero(blurred[0, 1]) == 0


def test_blur_rejects_bad_inputs():
    with pytest.raises(ValueError, match="kernel_size"):
        B.gaussian_blur(torch.rand(1, 1, 8, 8), kernel_size=4)
    with pytest.raises(ValueError, match="sigma"):
        B.gaussian_blur(torch.rand(1, 1, 8, 8), sigma=-1.0)
    with pytest.raises(ValueError, match="3-D .* or 4-D"):
        B.gaussian_blur(torch.rand(4, 8))
    with pytest.raises(TypeError, match="floating-point"):
        B.gaussian_blur(torch.ones(1, 1, 8, 8, dtype=torch.long))


def test_uniform_noise_is_deterministic_given_seed_and_in_range(images):
    state = torch.get_rng_state()
    first, again, other = B.uniform(images, seed=3), B.uniform(images, seed=3), B.uniform(images, seed=4)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must be untouched"
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.min() >= images.min() and first.max() <= images.max()
    bounded = B.uniform(images, low=2.0, high=2.5, seed=0)
    assert bounded.min() >= 2.0 and bounded.max() <= 2.5
    with pytest.raises(ValueError, match="low <= high"):
        B.uniform(images, low=1.0, high=0.0)


def test_gaussian_is_input_plus_seeded_noise():
    x = torch.rand(200, 50, generator=torch.Generator().manual_seed(5))
    baseline = B.gaussian(x, std=0.3, seed=7)
    assert torch.equal(baseline, B.gaussian(x, std=0.3, seed=7))
    assert not torch.equal(baseline, B.gaussian(x, std=0.3, seed=8))
    noise = (baseline - x).double()
    assert abs(noise.mean().item()) < 0.01
    assert abs(noise.std().item() - 0.3) < 0.01
    assert torch.equal(B.gaussian(x, std=0.0), x)
    with pytest.raises(ValueError, match="std"):
        B.gaussian(x, std=-0.1)
    with pytest.raises(TypeError, match="seed"):
        B.gaussian(x, seed=1.5)


def test_token_fills_the_id_and_keeps_listed_ids():
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 7592, 102, 0]])
    assert torch.equal(B.token(ids, token_id=103), torch.full_like(ids, 103))
    kept = B.token(ids, token_id=0, keep_ids=(101, 102))
    assert torch.equal(kept, torch.tensor([[101, 0, 0, 102], [101, 0, 102, 0]]))
    with pytest.raises(TypeError, match="integer token ids"):
        B.token(torch.rand(2, 3))


def test_token_configured_forms_agree():
    ids = torch.tensor([[5, 6, 7]])
    configured = B.token(103)
    assert isinstance(configured, ConfiguredBaseline)
    assert configured == get_baseline_fn("token", token_id=103)
    assert repr(configured) == "token(token_id=103)"
    assert torch.equal(configured(ids), torch.full_like(ids, 103))


def test_get_baseline_fn_resolves_names_and_callables(images):
    fn = get_baseline_fn("gaussian_blur", sigma=2.0)
    torch.testing.assert_close(fn(images), B.gaussian_blur(images, sigma=2.0))
    assert get_baseline_fn(" Zeros ").fn is B.zeros

    def custom(inputs, scale=1.0):
        return inputs * scale

    assert get_baseline_fn(custom) is custom
    torch.testing.assert_close(get_baseline_fn(custom, scale=0.5)(images), images * 0.5)


def test_get_baseline_fn_errors_name_the_accepted_forms():
    with pytest.raises(ValueError, match=r"unknown baseline_fn 'blurry'.*gaussian_blur.*token"):
        get_baseline_fn("blurry")
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['radius'\].*sigma"):
        get_baseline_fn("gaussian_blur", radius=3)
    with pytest.raises(TypeError, match="baseline_fn must be a name"):
        get_baseline_fn(3)


def test_baselines_leave_inputs_unchanged(images):
    copy = images.clone()
    for name in ("zeros", "mean", "invert", "gaussian_blur", "uniform", "gaussian"):
        get_baseline_fn(name)(images)
    assert torch.equal(images, copy)


def test_input_kinds_select_fitting_baselines():
    assert B.input_kind(torch.tensor([[1, 2]])) == "token"
    assert B.input_kind(torch.rand(1, 1, 8, 8)) == "image"
    assert B.input_kind(torch.rand(2, 3)) == "tabular"
    assert B.baselines_for("token") == ("zeros", "token")
    assert "gaussian_blur" in B.baselines_for("image") and "token" not in B.baselines_for("image")
    assert "gaussian_blur" not in B.baselines_for("tabular")
    with pytest.raises(ValueError, match="kind must be one of"):
        B.baselines_for("audio")
