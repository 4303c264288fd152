"""IDGI against the formula as a plain loop (autograd at each point, float64) on the points of integrated gradients,
Blur IG (scipy's blurs) and Guided IG (the points saliency's GuidedIG takes its gradients at), and its properties:
exact completeness, zero-gradient steps, chunks that split steps, batch independence."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from integrad import IntegratedGradients, LayerIntegratedGradients
from integrad.methods.blur import BlurIntegratedGradients
from integrad.methods.guided import GuidedIntegratedGradients
from integrad.methods.idgi import IDGI, ImportantDirectionSum
from integrad.paths import StraightLine

from _saliency_reference import guided_ig, quantile_accepting_interpolation, small_cnn

TARGET = [1, 3, 0]


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand((3, 3, 6, 7), generator=g, dtype=torch.float64)
    return images, 0.3 * torch.rand((3, 3, 6, 7), generator=g, dtype=torch.float64)


def _loop_idgi(f, points: list) -> tuple:
    """``Σ_{j<N} g_j² (f_{j+1} − f_j) / Σ g_j²`` for one example, points ``x_0 … x_N`` (tuples of tensors)."""
    total = [torch.zeros_like(p) for p in points[0]]
    for here, there in zip(points[:-1], points[1:]):
        z = tuple(p.clone().requires_grad_() for p in here)
        out = f(*z)
        grads = torch.autograd.grad(out, z)
        with torch.no_grad():
            change = f(*there) - out.detach()
        norm = sum((g * g).sum() for g in grads)
        for t, g in zip(total, grads):
            t += g * g * change / norm
    return tuple(total)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _ends(model, points_start, points_end, target):
    rows = torch.arange(len(target))
    with torch.no_grad():
        return model(points_end)[rows, target] - model(points_start)[rows, target]


def test_on_integrated_gradients_points_it_is_the_formula_and_complete():
    model = small_cnn()
    images, baselines = _batch()
    n = 12
    got, delta = IDGI(IntegratedGradients(model)).attribute(
        images, baselines=baselines, target=TARGET, n_steps=n, return_convergence_delta=True
    )
    for i in range(3):
        points = [(baselines[i] + j / n * (images[i] - baselines[i]),) for j in range(n + 1)]
        (expected,) = _loop_idgi(lambda z, i=i: model(z.unsqueeze(0))[0, TARGET[i]], points)
        assert _relative(got[i], expected) < 1e-12
    change = _ends(model, baselines, images, TARGET)
    torch.testing.assert_close(got.sum((1, 2, 3)), change, rtol=1e-12, atol=1e-16)
    assert float(delta.abs().max()) < 1e-15


def _scipy_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma == 0:
        return image.clone()
    out = ndimage.gaussian_filter(image.permute(1, 2, 0).numpy(), sigma=[sigma, sigma, 0], mode="constant")
    return torch.from_numpy(out).permute(2, 0, 1)


@pytest.mark.parametrize("sqrt", [False, True])
def test_on_blur_levels_it_is_the_formula_and_complete(sqrt):
    model = small_cnn()
    images, _ = _batch()
    n, max_sigma = 10, 4.0
    got = IDGI(BlurIntegratedGradients(model)).attribute(
        images, target=TARGET, max_sigma=max_sigma, n_steps=n, sqrt=sqrt
    )
    levels = [i * max_sigma / n for i in range(n + 1)]
    levels = [s**0.5 for s in levels] if sqrt else levels
    for i in range(3):
        points = [(_scipy_blur(images[i], s),) for s in reversed(levels)]
        (expected,) = _loop_idgi(lambda z, i=i: model(z.unsqueeze(0))[0, TARGET[i]], points)
        assert _relative(got[i], expected) < 1e-12
    blurred = torch.stack([_scipy_blur(x, levels[-1]) for x in images])
    torch.testing.assert_close(got.sum((1, 2, 3)), _ends(model, blurred, images, TARGET), rtol=1e-12, atol=1e-16)


def test_on_the_guided_path_it_is_the_formula_and_complete(monkeypatch):
    importlib.import_module("saliency")
    monkeypatch.setattr(np, "quantile", quantile_accepting_interpolation(np.quantile))
    model = small_cnn()
    images, baselines = _batch()
    n = 15
    got = IDGI(GuidedIntegratedGradients(model)).attribute(
        images, baselines=baselines, target=TARGET, n_steps=n, fraction=0.2, max_dist=0.1
    )
    for i in range(3):
        visited = []
        guided_ig(model, images[i], baselines[i], TARGET[i], record=visited, x_steps=n, fraction=0.2, max_dist=0.1)
        assert len(visited) == n
        points = [(p,) for p in visited] + [(images[i],)]
        (expected,) = _loop_idgi(lambda z, i=i: model(z.unsqueeze(0))[0, TARGET[i]], points)
        assert _relative(got[i], expected) < 1e-8
    torch.testing.assert_close(got.sum((1, 2, 3)), _ends(model, baselines, images, TARGET), rtol=1e-12, atol=1e-15)


def test_tuple_inputs_share_one_normaliser():
    images, baselines = _batch()
    weights = torch.randn(3 * 6 * 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def model(a, b):
        flat = torch.cat([a.flatten(1), b.flatten(1)], 1)
        return torch.tanh(flat @ weights).unsqueeze(1) + (flat**2).sum(1, keepdim=True) / 50

    parts, starts = (images[:, :1], images[:, 1:]), (baselines[:, :1], baselines[:, 1:])
    n = 7
    a, b = IDGI(IntegratedGradients(model)).attribute(parts, baselines=starts, target=0, n_steps=n)
    for i in range(3):
        points = [tuple(s[i] + j / n * (x[i] - s[i]) for x, s in zip(parts, starts)) for j in range(n + 1)]
        expected = _loop_idgi(lambda u, v: model(u.unsqueeze(0), v.unsqueeze(0))[0, 0], points)
        assert _relative(torch.cat([a[i], b[i]]), torch.cat(expected)) < 1e-12


def test_a_step_of_zero_gradient_adds_nothing():
    # F = relu(Σx − 1.5): zero gradient at the first points of the line from 0 to x (Σx = 3), and at the point
    # just below the kink F's rise to the next point is not credited to anyone.
    def model(x):
        return torch.relu(x.sum(1, keepdim=True) - 1.5)

    x = torch.full((1, 6), 0.5, dtype=torch.float64)
    n = 5  # Σ x_j = 0, 0.6, 1.2, 1.8, 2.4, 3.0
    got, delta = IDGI(IntegratedGradients(model)).attribute(x, target=0, n_steps=n, return_convergence_delta=True)
    assert bool(torch.isfinite(got).all())
    # Steps 3 and 4 (Σ from 1.8) have the gradient 1 everywhere: each feature gets a sixth of F(3.0) − F(1.8).
    torch.testing.assert_close(got, torch.full((1, 6), 1.2 / 6, dtype=torch.float64), rtol=1e-14, atol=0)
    # Step 2 (Σ = 1.2, gradient 0) loses F(1.8) − F(1.2) = 0.3.
    torch.testing.assert_close(delta, torch.tensor([-0.3], dtype=torch.float64), rtol=1e-14, atol=0)


def test_rows_may_arrive_in_chunks_that_split_steps():
    images, baselines = _batch()
    path = StraightLine((baselines,), (images,))
    steps, batch = 5, 3
    g = torch.Generator().manual_seed(3)
    grads = torch.randn((steps * batch,) + images.shape[1:], generator=g, dtype=torch.float64)
    grads[4] = 0.0  # step 1 of example 1: all zero
    values = torch.randn(steps * batch, generator=g, dtype=torch.float64)
    expected = torch.zeros_like(images)
    for b in range(batch):
        for j in range(steps - 1):
            here = grads[j * batch + b]
            norm = (here * here).sum()
            if norm > 0:
                expected[b] += here * here * (values[(j + 1) * batch + b] - values[j * batch + b]) / norm
    for sizes in ([15], [1] * 15, [4, 4, 4, 3], [2, 7, 6]):
        total = ImportantDirectionSum(None, path)
        first = 0
        for size in sizes:
            total.add([grads[first : first + size]], values[first : first + size], first, size, False)
            first += size
        torch.testing.assert_close(total.attributions()[0], expected, rtol=1e-13, atol=1e-16)
        torch.testing.assert_close(total.first_values, values[:batch])
        torch.testing.assert_close(total.last_values, values[-batch:])
        # One step of gradients is kept per example, not all of them.
        assert total.shares.shape == (batch, images[0].numel())
    with pytest.raises(RuntimeError, match="rows must arrive in order"):
        ImportantDirectionSum(None, path).add([grads[3:6]], values[3:6], 3, 3, False)


@pytest.mark.parametrize(
    ("method", "settings"),
    [
        (IntegratedGradients, {"n_steps": 9}),
        (BlurIntegratedGradients, {"n_steps": 9, "max_sigma": 3.0}),
        (GuidedIntegratedGradients, {"n_steps": 9, "max_dist": 0.1}),
    ],
)
def test_an_examples_attributions_do_not_depend_on_the_batch_or_the_chunks(method, settings):
    model = small_cnn()
    images, baselines = _batch()
    if method is not BlurIntegratedGradients:
        settings = dict(settings, baselines=baselines)
    idgi = IDGI(method(model))
    together = idgi.attribute(images, target=TARGET, **settings)
    assert idgi.last_report is not None
    for i in range(3):
        alone_settings = dict(settings)
        if "baselines" in settings:
            alone_settings["baselines"] = baselines[i : i + 1]
        alone = idgi.attribute(images[i : i + 1], target=TARGET[i], **alone_settings)
        torch.testing.assert_close(alone[0], together[i], rtol=1e-12, atol=1e-16)
    for rows in (1, 2, 4, 7):
        chunked = idgi.attribute(images, target=TARGET, internal_batch_size=rows, **settings)
        torch.testing.assert_close(chunked, together, rtol=1e-12, atol=1e-16)


def test_float32_inputs_give_float32_attributions():
    model = small_cnn()
    images, baselines = _batch()
    reference = IDGI(IntegratedGradients(model)).attribute(images, baselines=baselines, target=TARGET, n_steps=10)
    for method in (IntegratedGradients, BlurIntegratedGradients, GuidedIntegratedGradients):
        idgi = IDGI(method(model.float()))
        settings = {"n_steps": 10} if method is BlurIntegratedGradients else {"n_steps": 10, "baselines": baselines}
        got, delta = idgi.attribute(images.float(), target=TARGET, return_convergence_delta=True, **settings)
        assert got.dtype == torch.float32 and delta.dtype == torch.float32
        assert float(delta.abs().max()) < 1e-6
        if method is IntegratedGradients:
            assert _relative(got.double(), reference) < 1e-4


def test_bad_arguments_are_refused_with_the_parameter_named():
    model = small_cnn()
    images, baselines = _batch()
    for bad in ("ig", model, LayerIntegratedGradients(model, model[0])):
        with pytest.raises(TypeError, match="method must be an integrad IntegratedGradients"):
            IDGI(bad)
    idgi = IDGI(IntegratedGradients(model))
    with pytest.raises(TypeError, match="method is not an argument of IDGI over IntegratedGradients"):
        idgi.attribute(images, target=TARGET, method="gausslegendre")
    with pytest.raises(TypeError, match="grad_step is not an argument of IDGI over BlurIntegratedGradients"):
        IDGI(BlurIntegratedGradients(model)).attribute(images, target=TARGET, grad_step=0.01)
    with pytest.raises(ValueError, match="n_steps must be"):
        idgi.attribute(images, target=TARGET, n_steps="auto")
    with pytest.raises(ValueError, match="n_steps must be"):
        IDGI(BlurIntegratedGradients(model)).attribute(images, target=TARGET, n_steps="auto")
    with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\]"):
        IDGI(GuidedIntegratedGradients(model)).attribute(images, target=TARGET, fraction=0)
    with pytest.raises(TypeError, match="return_convergence_delta must be True or False"):
        idgi.attribute(images, target=TARGET, return_convergence_delta=1)


def test_the_callers_tensors_are_left_alone():
    model = small_cnn()
    images, baselines = _batch()
    kept = images.clone(), baselines.clone()
    for method in (IntegratedGradients, GuidedIntegratedGradients):
        IDGI(method(model)).attribute(images, baselines=baselines, target=TARGET, n_steps=4)
    IDGI(BlurIntegratedGradients(model)).attribute(images, target=TARGET, n_steps=4)
    assert torch.equal(images, kept[0]) and torch.equal(baselines, kept[1])
    assert not images.requires_grad and not baselines.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_a_model_in_training_mode_keeps_its_statistics():
    images, baselines = _batch()
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 4 * 5, 4)).double()
    kept = [b.clone() for b in model[1].buffers()]
    with pytest.warns(RuntimeWarning, match="training mode"):
        IDGI(IntegratedGradients(model)).attribute(images, baselines=baselines, target=TARGET, n_steps=3)
    assert all(torch.equal(b, k) for b, k in zip(model[1].buffers(), kept))
