"""Blur Integrated Gradients: the blur against scipy, the default sum against PAIR saliency's BlurIG, and the exact
path against a plain loop over scipy's blurs (velocities by central differences), in float64."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from integrad.methods.blur import BlurIntegratedGradients, blur_matrices, gaussian_blur

from _saliency_reference import blur_ig, small_cnn

importlib.import_module("saliency")


def _images(n: int = 3, size: tuple[int, int] = (8, 9), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3) + size, generator=g, dtype=torch.float64)


def _scipy_blur(image: torch.Tensor, sigma: float, radius: int | None = None) -> torch.Tensor:
    """One (C, H, W) image blurred over H and W by scipy (zero padding), with scipy's radius unless given."""
    if sigma == 0:
        return image.clone()
    hwc = image.permute(1, 2, 0).numpy()
    radii = None if radius is None else [radius, radius, 0]
    out = ndimage.gaussian_filter(hwc, sigma=[sigma, sigma, 0], mode="constant", radius=radii)
    return torch.from_numpy(out).permute(2, 0, 1)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _outputs(model: nn.Module, images: torch.Tensor, target: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(images)[torch.arange(len(target)), target]


TARGET = [1, 3, 0]


@pytest.mark.parametrize("sigma", [0.0, 0.05, 0.124, 0.126, 0.7, 2.3, 6.0, 50.0])
def test_the_blur_is_scipys_gaussian_filter_with_zero_padding(sigma):
    images = _images()
    ours, _ = gaussian_blur(images, torch.full((3,), sigma, dtype=torch.float64))
    expected = torch.stack([_scipy_blur(x, sigma) for x in images])
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-14)


def test_each_row_is_blurred_with_its_own_sigma_and_the_radius_can_be_fixed():
    images = _images(4)
    sigmas = torch.tensor([0.0, 1.3, 0.4, 1.3], dtype=torch.float64)
    ours, _ = gaussian_blur(images, sigmas)
    expected = torch.stack([_scipy_blur(x, float(s)) for x, s in zip(images, sigmas)])
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-14)
    fixed, _ = gaussian_blur(images, sigmas, radius=7)
    expected = torch.stack([_scipy_blur(x, float(s), radius=7) for x, s in zip(images, sigmas)])
    torch.testing.assert_close(fixed, expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("radius", [None, 12])
def test_the_sigma_derivative_matches_central_differences(radius):
    images = _images(2)
    for sigma in (0.6, 1.7, 2.9):
        # Away from the points where scipy's radius int(4σ + 0.5) changes, so that the differences see one radius.
        r = radius if radius is not None else int(4 * sigma + 0.5)
        eps = 1e-5
        expected = torch.stack(
            [(_scipy_blur(x, sigma + eps, r) - _scipy_blur(x, sigma - eps, r)) / (2 * eps) for x in images]
        )
        _, derivative = gaussian_blur(images, torch.full((2,), sigma, dtype=torch.float64), True, radius)
        torch.testing.assert_close(derivative, expected, rtol=0, atol=1e-8)
    matrices, derivatives = blur_matrices(torch.tensor([0.0]), 5, derivative=True)
    assert torch.equal(matrices[0], torch.eye(5, dtype=torch.float64)) and not derivatives.any()


@pytest.mark.parametrize(
    "settings",
    [
        {"max_sigma": 5.0, "steps": 20},
        {"max_sigma": 12.0, "steps": 15, "grad_step": 0.05},
        {"max_sigma": 4.0, "steps": 18, "sqrt": True},
        {"max_sigma": 50.0, "steps": 10},
    ],
)
def test_the_default_sum_reproduces_saliency_blur_ig(settings):
    model, images = small_cnn(), _images()
    got = BlurIntegratedGradients(model).attribute(
        images,
        target=TARGET,
        max_sigma=settings["max_sigma"],
        n_steps=settings["steps"],
        grad_step=settings.get("grad_step", 0.01),
        sqrt=settings.get("sqrt", False),
    )
    for i in range(3):
        expected = blur_ig(model, images[i], TARGET[i], **settings)
        assert _relative(got[i], expected) < 1e-9


def test_sqrt_spacing_follows_saliency_one_level_at_a_time():
    """saliency with ``sqrt=True`` and ``batch_size > 1`` weights every level of a batch by the last level's σ step;
    the sum is the one of ``batch_size=1``."""
    model, images = small_cnn(), _images(1)
    settings = {"max_sigma": 6.0, "steps": 16, "sqrt": True}
    got = BlurIntegratedGradients(model).attribute(images, target=1, max_sigma=6.0, n_steps=16, sqrt=True)[0]
    one_at_a_time = blur_ig(model, images[0], 1, batch_size=1, **settings)
    batched = blur_ig(model, images[0], 1, batch_size=4, **settings)
    assert _relative(got, one_at_a_time) < 1e-9
    assert _relative(batched, one_at_a_time) > 1e-2
    # With even spacing every step is the same, and the batch size does not matter.
    even = blur_ig(model, images[0], 1, batch_size=4, max_sigma=6.0, steps=16)
    got = BlurIntegratedGradients(model).attribute(images, target=1, max_sigma=6.0, n_steps=16)[0]
    assert _relative(got, even) < 1e-9


def test_the_default_sums_delta_compares_with_scipys_ends():
    model, images = small_cnn(), _images()
    attributions, delta = BlurIntegratedGradients(model).attribute(
        images, target=TARGET, max_sigma=5.0, n_steps=30, return_convergence_delta=True
    )
    blurred = torch.stack([_scipy_blur(x, 5.0) for x in images])
    change = _outputs(model, images, TARGET) - _outputs(model, blurred, TARGET)
    torch.testing.assert_close(delta, attributions.sum((1, 2, 3)) - change, rtol=0, atol=1e-13)


def _loop_exact_path(model, image, target, max_sigma, n, sqrt=False):
    """Σ_k w_k ∇F(γ(α_k)) ⊙ γ′(α_k) over Gauss–Legendre nodes, γ(α) = scipy's blur at σ(α) with the radius of
    σ(0), γ′ by central differences of scipy's blur."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    end = math.sqrt(max_sigma) if sqrt else max_sigma
    radius = int(4 * end + 0.5)

    def sigma(a):
        return math.sqrt((1 - a) * max_sigma) if sqrt else (1 - a) * max_sigma

    total = torch.zeros_like(image)
    eps = 1e-6
    for node, weight in zip(nodes, weights):
        a = (node + 1) / 2
        z = _scipy_blur(image, sigma(a), radius).requires_grad_()
        (g,) = torch.autograd.grad(model(z.unsqueeze(0))[0, target], z)
        velocity = (_scipy_blur(image, sigma(a + eps), radius) - _scipy_blur(image, sigma(a - eps), radius)) / (2 * eps)
        total += weight / 2 * g * velocity
    return total


@pytest.mark.parametrize("sqrt", [False, True])
def test_a_rule_integrates_along_the_exact_path(sqrt):
    model, images = small_cnn(), _images(2)
    got = BlurIntegratedGradients(model).attribute(
        images, target=TARGET[:2], max_sigma=4.0, n_steps=24, method="gausslegendre", sqrt=sqrt
    )
    for i in range(2):
        expected = _loop_exact_path(model, images[i], TARGET[i], 4.0, 24, sqrt)
        assert _relative(got[i], expected) < 1e-7


def test_the_exact_path_is_complete_up_to_the_rule():
    model, images = small_cnn(), _images()
    blurred = torch.stack([_scipy_blur(x, 5.0) for x in images])
    change = _outputs(model, images, TARGET) - _outputs(model, blurred, TARGET)
    blur = BlurIntegratedGradients(model)
    gaps = []
    for n in (8, 32, 128):
        attributions = blur.attribute(images, target=TARGET, max_sigma=5.0, n_steps=n, method="gausslegendre")
        gaps.append(float((attributions.sum((1, 2, 3)) - change).abs().max()))
    scale = float(change.abs().max())
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-12 * scale + 1e-15
    attributions, delta = blur.attribute(
        images, target=TARGET, max_sigma=5.0, n_steps="auto", tolerance=1e-6, return_convergence_delta=True
    )
    assert float((attributions.sum((1, 2, 3)) - change).abs().max()) < 1e-8 * scale
    torch.testing.assert_close(delta, attributions.sum((1, 2, 3)) - change, rtol=0, atol=1e-14)
    assert bool((blur.last_report.error_estimate <= 1e-6).all())
    # With square-root spacing the path starts at σ = √σ_max; σ′(α) grows as 1/σ toward the image, where the rule
    # converges more slowly.
    blurred = torch.stack([_scipy_blur(x, math.sqrt(5.0)) for x in images])
    change = _outputs(model, images, TARGET) - _outputs(model, blurred, TARGET)
    attributions = blur.attribute(images, target=TARGET, max_sigma=5.0, n_steps=96, method="gausslegendre", sqrt=True)
    assert float((attributions.sum((1, 2, 3)) - change).abs().max()) < 1e-7 * float(change.abs().max())


@pytest.mark.parametrize("method", [None, "riemann_trapezoid"])
def test_an_examples_attributions_do_not_depend_on_the_batch_or_the_chunks(method):
    model, images = small_cnn(), _images()
    blur = BlurIntegratedGradients(model)
    settings = {"max_sigma": 3.0, "n_steps": 12, "method": method}
    together = blur.attribute(images, target=TARGET, **settings)
    for i in range(3):
        alone = blur.attribute(images[i : i + 1], target=TARGET[i], **settings)
        torch.testing.assert_close(alone[0], together[i], rtol=1e-12, atol=1e-15)
    for rows in (1, 5, 7):
        chunked = blur.attribute(images, target=TARGET, internal_batch_size=rows, **settings)
        torch.testing.assert_close(chunked, together, rtol=1e-12, atol=1e-15)
    assert blur.last_report.chunk_rows == 7
    budgeted = blur.attribute(images, target=TARGET, memory_budget="300KiB", **settings)
    torch.testing.assert_close(budgeted, together, rtol=1e-12, atol=1e-15)
    assert blur.last_report.chunks > 1


def test_float32_images_give_float32_attributions():
    model, images = small_cnn(), _images()
    reference = BlurIntegratedGradients(model).attribute(images, target=TARGET, max_sigma=3.0, n_steps=12)
    blur = BlurIntegratedGradients(model.float())
    for method in (None, "gausslegendre"):
        got = blur.attribute(images.float(), target=TARGET, max_sigma=3.0, n_steps=12, method=method)
        assert got.dtype == torch.float32
        if method is None:
            assert _relative(got.double(), reference) < 1e-4


def test_tuple_inputs_are_blurred_one_by_one():
    model, images = small_cnn(), _images()

    class Split(nn.Module):
        def forward(self, a, b):
            return model(torch.cat([a, b], 1))

    whole = BlurIntegratedGradients(model).attribute(images, target=TARGET, max_sigma=3.0, n_steps=10)
    a, b = BlurIntegratedGradients(Split()).attribute(
        (images[:, :1], images[:, 1:]), target=TARGET, max_sigma=3.0, n_steps=10
    )
    torch.testing.assert_close(torch.cat([a, b], 1), whole, rtol=1e-12, atol=1e-15)


def test_bad_arguments_are_refused_with_the_parameter_named():
    model, images = small_cnn(), _images()
    blur = BlurIntegratedGradients(model)
    with pytest.raises(ValueError, match=r"inputs must be images shaped \(N, C, H, W\).*\(3, 5\)"):
        blur.attribute(torch.zeros(3, 5, dtype=torch.float64), target=0)
    with pytest.raises(ValueError, match=r"inputs\[1\] must be images"):
        blur.attribute((images, images[:, :, 0]), target=0)
    for bad, error in (
        (0, ValueError),
        (-1.0, ValueError),
        (math.inf, ValueError),
        ("5", TypeError),
        (True, TypeError),
    ):
        with pytest.raises(error, match="max_sigma must be a positive finite number"):
            blur.attribute(images, target=TARGET, max_sigma=bad)
    with pytest.raises(ValueError, match="grad_step must be a positive finite number"):
        blur.attribute(images, target=TARGET, grad_step=0.0)
    with pytest.raises(TypeError, match="sqrt must be True or False"):
        blur.attribute(images, target=TARGET, sqrt="yes")
    with pytest.raises(ValueError, match="method must be one of"):
        blur.attribute(images, target=TARGET, method="simpson")
    with pytest.raises(ValueError, match="n_steps must be"):
        blur.attribute(images, target=TARGET, n_steps=0)
    with pytest.raises(ValueError, match="internal_batch_size must be a positive int"):
        blur.attribute(images, target=TARGET, internal_batch_size=0)


def test_the_callers_images_and_model_are_left_alone():
    model, images = small_cnn(), _images()
    kept_images = images.clone()
    kept_weights = [p.detach().clone() for p in model.parameters()]
    for method in (None, "gausslegendre"):
        BlurIntegratedGradients(model).attribute(images, target=TARGET, max_sigma=3.0, n_steps=6, method=method)
    assert torch.equal(images, kept_images) and not images.requires_grad
    assert all(torch.equal(p, k) for p, k in zip(model.parameters(), kept_weights))
    assert all(p.grad is None for p in model.parameters())
