"""The path types (:mod:`integrad.paths`): a function of the positions, called per chunk on the chunk's own positions;
the straight line; discrete points; which paths ``n_steps="auto"`` can certify; bad paths refused by name.
PathIntegratedGradients along them is tested in test_path.

The references here never call integrad's engine: they loop over Gauss–Legendre nodes from numpy and take
``torch.autograd.grad`` at each point, in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from integrad import IntegratedGradients, PathIntegratedGradients
from integrad.paths import DiscretePath, FunctionPath, StraightLine

from models import curved_path, loop_path_integral, relative_max_error


def test_the_path_function_is_called_per_chunk_on_its_positions(setup):
    model, x, base, v, target = setup
    fn = curved_path(x, base, v)
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
    fn = curved_path(x, base, v)
    sizes = []

    def counted(alphas):
        sizes.append(alphas.numel())
        return fn(alphas)

    ig = PathIntegratedGradients(model)
    chunked = ig.attribute(x, counted, target=target, n_steps="auto", tolerance=1e-8, internal_batch_size=16)
    assert sizes and max(sizes) <= 16 // x.shape[0]
    whole = ig.attribute(x, fn, target=target, n_steps="auto", tolerance=1e-8)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    expected = loop_path_integral(
        lambda z: model(z).gather(1, target[:, None]),
        lambda a: fn(torch.tensor([a]))[0][0],
        lambda a: fn(torch.tensor([a]))[1][0],
        64,
    )
    assert relative_max_error(chunked, expected) < 1e-7


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
    steps = FunctionPath(curved_path(x, base, v), (x,), smooth=False)
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


def test_paths_take_one_tensor_as_well_as_a_tuple(setup):
    model, x, base, v, target = setup
    fn = curved_path(x, base, v)
    ig = PathIntegratedGradients(model)
    as_tensor = ig.attribute(x, FunctionPath(fn, x), target=target, n_steps=16)
    torch.testing.assert_close(as_tensor, ig.attribute(x, FunctionPath(fn, (x,)), target=target, n_steps=16))
    line = ig.attribute(x, StraightLine(base, x), target=target, n_steps=16)
    torch.testing.assert_close(line, ig.attribute(x, StraightLine((base,), (x,)), target=target, n_steps=16))
    with pytest.raises(TypeError, match="start must be a tensor or a tuple of tensors"):
        StraightLine([1.0, 2.0], x)
    with pytest.raises(ValueError, match="needs a smooth path"):
        ig.attribute(x, FunctionPath(fn, x, smooth=False), target=target, n_steps="auto")
