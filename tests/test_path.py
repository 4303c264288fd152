"""PathIntegratedGradients along any path (:mod:`integrad.methods.path`): a reparametrised line, a curved path, tuple
inputs, the delta at the path's ends, the caller's tensors left alone; and the gradients primitive
``gradients_and_outputs``. The path types themselves are tested in test_paths.

The references here never call integrad's engine: they loop over Gauss–Legendre nodes from numpy and take
``torch.autograd.grad`` at each point, in float64.
"""

from __future__ import annotations

import torch
from torch import nn

from integrad import IntegratedGradients, PathIntegratedGradients, gradients_and_outputs

from models import curved_path, loop_path_integral, relative_max_error


def test_squared_reparametrisation_gives_the_straight_line_attributions(setup):
    model, x, base, _, target = setup

    def squared(alphas):
        a = alphas.view(-1, 1, 1)
        return base + a * a * (x - base), 2 * a * (x - base).expand(len(alphas), *x.shape)

    straight = IntegratedGradients(model).attribute(x, base, target=target, n_steps=64)
    along = PathIntegratedGradients(model).attribute(x, squared, target=target, n_steps=64)
    assert relative_max_error(along, straight) < 1e-9
    ig_auto = PathIntegratedGradients(model)
    automatic = ig_auto.attribute(x, squared, target=target, n_steps="auto", tolerance=1e-6)
    assert relative_max_error(automatic, straight) < 1e-5
    assert bool((ig_auto.last_report.error_estimate <= 1e-6).all())


def test_a_curved_path_matches_a_plain_loop_and_is_complete(setup):
    model, x, base, v, target = setup
    fn = curved_path(x, base, v)
    rows = torch.arange(4)

    def f(z):
        return model(z)[rows, target]

    expected = loop_path_integral(
        f,
        lambda a: fn(torch.tensor([a], dtype=torch.float64))[0][0],
        lambda a: fn(torch.tensor([a], dtype=torch.float64))[1][0],
        40,
    )
    pig = PathIntegratedGradients(model)
    got, delta = pig.attribute(x, fn, target=target, n_steps=40, return_convergence_delta=True)
    assert relative_max_error(got, expected) < 1e-6
    # Completeness: the path runs from x′ to x, whatever it does between.
    with torch.no_grad():
        change = f(x) - f(base)
    torch.testing.assert_close(got.sum(1), change, rtol=1e-7, atol=1e-9)
    assert float(delta.abs().max()) < 1e-8
    # It is not the straight line's answer.
    assert relative_max_error(IntegratedGradients(model).attribute(x, base, target=target, n_steps=40), got) > 1e-3
    for rows_per_pass in (1, 3, 7, 40):
        again = pig.attribute(x, fn, target=target, n_steps=40, internal_batch_size=rows_per_pass)
        assert relative_max_error(again, got) < 1e-12


def test_a_curved_path_over_tuple_inputs(setup):
    model, x, base, v, target = setup
    fn = curved_path(x, base, v)

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
    assert relative_max_error(torch.cat(automatic, 1), whole) < 1e-5


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


def test_the_caller_tensors_are_left_alone(setup):
    model, x, base, v, target = setup
    keep = [t.clone() for t in (x, base, v)]
    PathIntegratedGradients(model).attribute(x, curved_path(x, base, v), target=target, n_steps=5)
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
