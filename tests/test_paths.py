"""Paths as an axis of their own: PathIntegratedGradients along any path, the path types, and the gradients primitive.

The references here never call integrad's engine: they loop over Gauss–Legendre nodes from numpy and take
``torch.autograd.grad`` at each point, in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from integrad import IntegratedGradients, PathIntegratedGradients, gradients_and_outputs
from integrad.paths import DiscretePath, FunctionPath, StraightLine


def _model(seed: int = 0, n_in: int = 5, n_out: int = 3) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(n_in, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, n_out))
    return net.double().eval()


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _gl(n: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return (nodes + 1) / 2, weights / 2


def _loop_path_integral(f, gamma, gamma_dot, n: int) -> torch.Tensor:
    """Σ_k w_k ∇f(γ(α_k)) ⊙ γ′(α_k), one autograd call per node."""
    alphas, weights = _gl(n)
    total = 0
    for a, w in zip(alphas, weights):
        z = gamma(float(a)).detach().requires_grad_()
        (g,) = torch.autograd.grad(f(z).sum(), z)
        total = total + w * g * gamma_dot(float(a))
    return total


def _relative(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture
def setup():
    model = _model()
    x, base, v = _randn(4, 5, seed=1), _randn(4, 5, seed=2) * 0.1, _randn(4, 5, seed=3)
    target = torch.tensor([0, 1, 2, 0])
    return model, x, base, v, target


def _curved(x, base, v):
    """γ(α) = x′ + α (x − x′) + sin(πα) v, from x′ to x."""

    def fn(alphas):
        a = alphas.view(-1, 1, 1)
        points = base + a * (x - base) + torch.sin(math.pi * a) * v
        velocities = (x - base).expand_as(points) + math.pi * torch.cos(math.pi * a) * v
        return points, velocities

    return fn


def test_squared_reparametrisation_gives_the_straight_line_attributions(setup):
    model, x, base, _, target = setup

    def squared(alphas):
        a = alphas.view(-1, 1, 1)
        return base + a * a * (x - base), 2 * a * (x - base).expand(len(alphas), *x.shape)

    straight = IntegratedGradients(model).attribute(x, base, target=target, n_steps=64)
    along = PathIntegratedGradients(model).attribute(x, squared, target=target, n_steps=64)
    assert _relative(along, straight) < 1e-9
    ig_auto = PathIntegratedGradients(model)
    automatic = ig_auto.attribute(x, squared, target=target, n_steps="auto", tolerance=1e-6)
    assert _relative(automatic, straight) < 1e-5
    assert bool((ig_auto.last_report.error_estimate <= 1e-6).all())


def test_a_curved_path_matches_a_plain_loop_and_is_complete(setup):
    model, x, base, v, target = setup
    fn = _curved(x, base, v)
    rows = torch.arange(4)

    def f(z):
        return model(z)[rows, target]

    expected = _loop_path_integral(
        f,
        lambda a: fn(torch.tensor([a], dtype=torch.float64))[0][0],
        lambda a: fn(torch.tensor([a], dtype=torch.float64))[1][0],
        40,
    )
    pig = PathIntegratedGradients(model)
    got, delta = pig.attribute(x, fn, target=target, n_steps=40, return_convergence_delta=True)
    assert _relative(got, expected) < 1e-6
    # Completeness: the path runs from x′ to x, whatever it does between.
    with torch.no_grad():
        change = f(x) - f(base)
    torch.testing.assert_close(got.sum(1), change, rtol=1e-7, atol=1e-9)
    assert float(delta.abs().max()) < 1e-8
    # It is not the straight line's answer.
    assert _relative(IntegratedGradients(model).attribute(x, base, target=target, n_steps=40), got) > 1e-3
    for rows_per_pass in (1, 3, 7, 40):
        again = pig.attribute(x, fn, target=target, n_steps=40, internal_batch_size=rows_per_pass)
        assert _relative(again, got) < 1e-12


def test_a_curved_path_over_tuple_inputs(setup):
    model, x, base, v, target = setup
    fn = _curved(x, base, v)

    def pair(alphas):
        points, velocities = fn(alphas)
        return (points[..., :2], points[..., 2:]), (velocities[..., :2], velocities[..., 2:])

    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, a, b):
            return self.inner(torch.cat([a, b], 1))

    whole = PathIntegratedGradients(model).attribute(x, fn, target=target, n_steps=24)
    a, b = PathIntegratedGradients(Split()).attribute((x[:, :2], x[:, 2:]), pair, target=target, n_steps=24)
    torch.testing.assert_close(torch.cat([a, b], 1), whole, rtol=1e-12, atol=1e-14)
    automatic = PathIntegratedGradients(Split()).attribute(
        (x[:, :2], x[:, 2:]), pair, target=target, n_steps="auto", tolerance=1e-7
    )
    assert _relative(torch.cat(automatic, 1), whole) < 1e-5


def test_the_path_function_is_called_per_chunk_on_its_positions(setup):
    model, x, base, v, target = setup
    fn = _curved(x, base, v)
    calls = []

    def counted(alphas):
        calls.append(alphas.clone())
        return fn(alphas)

    PathIntegratedGradients(model).attribute(
        x, counted, target=target, n_steps=10, method="riemann_trapezoid", internal_batch_size=8
    )
    # 10 steps of 4 examples in chunks of 8 rows: two steps per call, in order, float64 positions.
    assert len(calls) == 5 and all(c.dtype == torch.float64 and c.numel() == 2 for c in calls)
    torch.testing.assert_close(torch.cat(calls), torch.linspace(0, 1, 10, dtype=torch.float64))


def test_auto_hands_the_path_function_no_more_positions_than_the_chunk_holds(setup):
    # Rows of "auto" ask each example for its own positions. fn builds every position's points for the whole batch,
    # so a chunk of 16 rows of 8 examples may hand it 2 positions at a time, whatever the chunk's distinct positions.
    model, x, base, v, target = setup
    x, base, v = (torch.cat([t, 0.5 * t]) for t in (x, base, v))
    target = torch.cat([target, target])
    fn = _curved(x, base, v)
    sizes = []

    def counted(alphas):
        sizes.append(alphas.numel())
        return fn(alphas)

    ig = PathIntegratedGradients(model)
    chunked = ig.attribute(x, counted, target=target, n_steps="auto", tolerance=1e-8, internal_batch_size=16)
    assert sizes and max(sizes) <= 16 // x.shape[0]
    whole = ig.attribute(x, fn, target=target, n_steps="auto", tolerance=1e-8)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    expected = _loop_path_integral(
        lambda z: model(z).gather(1, target[:, None]),
        lambda a: fn(torch.tensor([a]))[0][0],
        lambda a: fn(torch.tensor([a]))[1][0],
        64,
    )
    assert _relative(chunked, expected) < 1e-7


def test_the_delta_compares_with_the_ends_of_the_path(setup):
    model, x, base, v, target = setup

    def shifted(alphas):
        # From x′ + v to x + v: not the inputs at all.
        a = alphas.view(-1, 1, 1)
        return base + v + a * (x - base), (x - base).expand(len(alphas), *x.shape)

    got, delta = PathIntegratedGradients(model).attribute(
        x, shifted, target=target, n_steps=48, return_convergence_delta=True
    )
    rows = torch.arange(4)
    with torch.no_grad():
        change = model(x + v)[rows, target] - model(base + v)[rows, target]
    torch.testing.assert_close(got.sum(1) - change, delta, rtol=0, atol=1e-12)
    assert float(delta.abs().max()) < 1e-9


def test_a_straight_line_object_gives_integrated_gradients(setup):
    model, x, base, _, target = setup
    line = StraightLine((base,), (x,))
    torch.testing.assert_close(
        PathIntegratedGradients(model).attribute(x, line, target=target, n_steps=20),
        IntegratedGradients(model).attribute(x, base, target=target, n_steps=20),
        rtol=0,
        atol=0,
    )


def test_a_discrete_path_sums_gradients_times_segment_displacements(setup):
    model, x, base, v, target = setup
    k = 6
    grid = torch.linspace(0, 1, k + 1, dtype=torch.float64).view(-1, 1, 1)
    points = base + grid * (x - base) + torch.sin(math.pi * grid) * v * 0.3
    rows = torch.arange(4)
    expected = 0
    for j in range(k):
        z = points[j].clone().requires_grad_()
        (g,) = torch.autograd.grad(model(z)[rows, target].sum(), z)
        expected = expected + g * (points[j + 1] - points[j])
    pig = PathIntegratedGradients(model)
    got, delta = pig.attribute(x, DiscretePath(points), target=target, return_convergence_delta=True)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        change = model(points[-1])[rows, target] - model(points[0])[rows, target]
    torch.testing.assert_close(delta, got.sum(1) - change, rtol=0, atol=1e-12)
    assert pig.last_report.steps.tolist() == [k] * 4
    for rows_per_pass in (1, 5, 24):
        again = pig.attribute(x, DiscretePath(points), target=target, internal_batch_size=rows_per_pass)
        torch.testing.assert_close(again, got, rtol=1e-13, atol=1e-15)


def test_auto_refuses_paths_it_cannot_certify(setup):
    model, x, base, v, target = setup
    points = torch.stack([base, x])
    with pytest.raises(ValueError, match="n_steps='auto' needs a smooth path"):
        PathIntegratedGradients(model).attribute(x, DiscretePath(points), target=target, n_steps="auto")
    steps = FunctionPath(_curved(x, base, v), (x,), smooth=False)
    with pytest.raises(ValueError, match="n_steps='auto' needs a smooth path"):
        PathIntegratedGradients(model).attribute(x, steps, target=target, n_steps="auto")


def test_bad_paths_are_refused_with_the_parameter_named(setup):
    model, x, base, v, target = setup
    pig = PathIntegratedGradients(model)
    with pytest.raises(TypeError, match="path must be a callable"):
        pig.attribute(x, "straight", target=target)
    with pytest.raises(TypeError, match=r"path must return a pair \(points, velocities\)"):
        pig.attribute(x, lambda a: x, target=target)
    with pytest.raises(ValueError, match=r"path returned points with shape \(4, 5\); expected \(K, \*input.shape\)"):
        pig.attribute(x, lambda a: (x, x), target=target)
    with pytest.raises(ValueError, match=r"path returned velocities"):
        pig.attribute(x, lambda a: (x.expand(len(a), 4, 5), x), target=target)
    with pytest.raises(ValueError, match="path is built on tensors of shapes"):
        pig.attribute(x, StraightLine((base[:2],), (x[:2],)), target=target)
    with pytest.raises(ValueError, match="points must hold at least two positions"):
        DiscretePath(x.unsqueeze(0))


def test_the_caller_tensors_are_left_alone(setup):
    model, x, base, v, target = setup
    keep = [t.clone() for t in (x, base, v)]
    PathIntegratedGradients(model).attribute(x, _curved(x, base, v), target=target, n_steps=5)
    for t, k in zip((x, base, v), keep):
        assert torch.equal(t, k) and not t.requires_grad


def test_gradients_and_outputs_match_autograd_in_any_chunks(setup):
    model, x, _, _, target = setup
    rows = torch.arange(4)
    z = x.clone().requires_grad_()
    out = model(z)[rows, target]
    (expected,) = torch.autograd.grad(out.sum(), z)
    for options in ({}, {"internal_batch_size": 1}, {"internal_batch_size": 3}, {"memory_budget": "1MiB"}):
        grads, outputs = gradients_and_outputs(model, x, target=target, **options)
        torch.testing.assert_close(grads, expected, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(outputs, out.detach(), rtol=1e-13, atol=1e-15)
    assert not x.requires_grad
    (ga, gb), _ = gradients_and_outputs(lambda a, b: model(torch.cat([a, b], 1)), (x[:, :2], x[:, 2:]), target=target)
    torch.testing.assert_close(torch.cat([ga, gb], 1), expected, rtol=1e-13, atol=1e-15)
