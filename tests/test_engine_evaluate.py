"""The engine's evaluation (:mod:`integrad.engine.evaluate`): gradients and values at a path's rows, in chunks, reduced
as the method asks; dtypes kept, per-example arguments kept with their rows, unused inputs given zeros."""

from __future__ import annotations

import pytest
import torch

from integrad import IntegratedGradients
from integrad.engine import evaluate as engine
from integrad.paths import StraightLine

from models import STEPS, B, TwoInputs, manual_ig, mlp

#: Tiny models run faster and steadier on one thread (see conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------- dtypes and inputs
def test_float64_inputs_stay_float64_and_match_reference():
    model = mlp(dtype=torch.float64)
    x = torch.randn(3, 6, dtype=torch.float64)
    got = IntegratedGradients(model).attribute(x, target=1, n_steps=32, internal_batch_size=5)
    assert got.dtype == torch.float64
    ref = manual_ig(lambda z: model(z)[:, 1], x, torch.zeros(1, 6), n=32)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_multiple_inputs_with_per_example_argument_chunked():
    model = TwoInputs()
    g = torch.Generator().manual_seed(1)
    x1, x2, scale = torch.randn(4, 4, generator=g), torch.randn(4, 2, 3, generator=g), torch.rand(4, generator=g) + 0.5
    ig = IntegratedGradients(model)
    whole = ig.attribute((x1, x2), target=[0, 1, 2, 0], additional_forward_args=(scale,), n_steps=16)
    parts = ig.attribute(
        (x1, x2), target=[0, 1, 2, 0], additional_forward_args=(scale,), n_steps=16, internal_batch_size=3
    )
    for a, b in zip(whole, parts):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # Example 2 alone (scale and target taken from its row) gives the same attributions: rows are not mixed up.
    alone = ig.attribute((x1[2:3], x2[2:3]), target=2, additional_forward_args=(scale[2:3],), n_steps=16)
    for a, b in zip(alone, parts):
        torch.testing.assert_close(a[0], b[2], rtol=1e-5, atol=1e-6)


def test_an_input_the_output_does_not_depend_on_gets_zeros():
    model = mlp()
    x, unused = torch.randn(3, 6), torch.randn(3, 2)
    a, b = IntegratedGradients(lambda z, u: model(z)).attribute((x, unused), target=1, n_steps=8, internal_batch_size=5)
    assert torch.equal(b, torch.zeros_like(unused))
    torch.testing.assert_close(a, IntegratedGradients(model).attribute(x, target=1, n_steps=8))


# --------------------------------------------------------------------------------------------- evaluate_rows
def test_values_are_returned_only_when_asked_and_do_not_change_the_sums(data):
    model, x, base = data
    probe = lambda points, examples: model(points[0])[:, 1]  # noqa: E731
    path = StraightLine((base.expand_as(x),), (x,))
    rows = engine.method_rows(path, "gausslegendre", STEPS)
    kept_sum, dropped_sum = engine.WeightedSum(rows, path), engine.WeightedSum(rows, path)
    values = engine.evaluate_rows(probe, path, rows, kept_sum, engine.Chunking(rows=3 * B))
    none = engine.evaluate_rows(probe, path, rows, dropped_sum, engine.Chunking(rows=3 * B), keep_values=False)
    assert none is None
    torch.testing.assert_close(dropped_sum.sums[0], kept_sum.sums[0], rtol=0, atol=0)
    with torch.no_grad():
        points = base + rows.alphas.float().view(-1, 1) * (x - base).repeat(STEPS, 1)
        torch.testing.assert_close(values, model(points)[:, 1].double(), rtol=1e-6, atol=1e-7)


def test_no_rows_give_zero_sums_without_running_the_model(data):
    model, x, base = data

    def probe(points, examples):
        raise AssertionError("the model must not run for no rows")

    empty = torch.zeros(0, dtype=torch.long)
    path = StraightLine((base.expand_as(x),), (x,))
    rows = engine.Rows(empty, torch.zeros(0, dtype=torch.float64), torch.zeros(0, 2, dtype=torch.float64), empty, 3)
    reduction = engine.WeightedSum(rows, path)
    values = engine.evaluate_rows(probe, path, rows, reduction, engine.Chunking(rows=4))
    sums = reduction.sums
    assert len(sums) == 1 and sums[0].shape == (2, 3) + x.shape[1:] and not bool(sums[0].any())
    assert values.shape == (0,)
