"""Guided Integrated Gradients against PAIR saliency's GuidedIG, example by example in float64, and its behaviour:
the straight line at ``max_dist=0``, zeros where the input is the baseline, one batch evaluation per step."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn

from integrad import IntegratedGradients
from integrad.methods.guided import GuidedIntegratedGradients

from _saliency_reference import guided_ig, quantile_accepting_interpolation, small_cnn

importlib.import_module("saliency")

TARGET = [1, 3, 0, 2]


@pytest.fixture
def saliency_quantile(monkeypatch):
    """saliency's Guided IG passes ``interpolation=`` to ``numpy.quantile``, which NumPy 2.4 no longer takes."""
    monkeypatch.setattr(np, "quantile", quantile_accepting_interpolation(np.quantile))


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four (3, 6, 6) images and baselines: the third example is its baseline, and the second shares its baseline's
    first channel."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand((4, 3, 6, 6), generator=g, dtype=torch.float64)
    baselines = 0.3 * torch.rand((4, 3, 6, 6), generator=g, dtype=torch.float64)
    images[2] = baselines[2]
    images[1, 0] = baselines[1, 0]
    return images, baselines


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


@pytest.mark.parametrize(
    ("fraction", "max_dist"), [(0.25, 0.02), (0.1, 0.1), (0.5, 1.0), (1.0, 0.02), (0.25, 0.0), (0.013, 0.3)]
)
def test_guided_ig_reproduces_saliency_per_example(saliency_quantile, fraction, max_dist):
    model = small_cnn()
    images, baselines = _batch()
    got = GuidedIntegratedGradients(model).attribute(
        images, baselines, target=TARGET, n_steps=25, fraction=fraction, max_dist=max_dist
    )
    for i in range(4):
        expected = guided_ig(
            model, images[i], baselines[i], TARGET[i], x_steps=25, fraction=fraction, max_dist=max_dist
        )
        if i == 2:
            assert torch.equal(got[i], torch.zeros_like(got[i])) and torch.equal(expected, torch.zeros_like(expected))
        else:
            assert _relative(got[i], expected) < 1e-8


def test_features_at_their_baseline_get_zero_and_the_rest_add_up(saliency_quantile):
    model = small_cnn()
    images, baselines = _batch()
    guided = GuidedIntegratedGradients(model)
    attributions, delta = guided.attribute(images, baselines, target=TARGET, n_steps=40, return_convergence_delta=True)
    assert torch.equal(attributions[1, 0], torch.zeros_like(attributions[1, 0]))
    assert torch.equal(attributions[2], torch.zeros_like(attributions[2]))
    rows = torch.arange(4)
    with torch.no_grad():
        change = model(images)[rows, TARGET] - model(baselines)[rows, TARGET]
    torch.testing.assert_close(delta, attributions.sum((1, 2, 3)) - change, rtol=0, atol=1e-14)
    # A left Riemann sum along the path: the gap closes as the steps shrink.
    finer = guided.attribute(images, baselines, target=TARGET, n_steps=320)
    gap_fine = (finer.sum((1, 2, 3)) - change).abs()
    assert bool((gap_fine[[0, 1, 3]] < delta.abs()[[0, 1, 3]] / 2).all())
    assert float(gap_fine.max()) < 1e-2 * float(change.abs().max())


def test_no_deviation_is_integrated_gradients_left_riemann_sum():
    model = small_cnn()
    images, baselines = _batch()
    guided = GuidedIntegratedGradients(model).attribute(images, baselines, target=TARGET, n_steps=30, max_dist=0.0)
    straight = IntegratedGradients(model).attribute(images, baselines, target=TARGET, n_steps=30, method="riemann_left")
    torch.testing.assert_close(guided, straight, rtol=1e-12, atol=1e-15)


def test_the_batch_advances_together_one_evaluation_per_step():
    model = small_cnn()
    images, baselines = _batch()
    calls = []

    def counted(x):
        calls.append(x.shape[0])
        return model(x)

    GuidedIntegratedGradients(counted).attribute(images, baselines, target=TARGET, n_steps=12)
    assert calls == [4] * 12
    calls.clear()
    GuidedIntegratedGradients(counted).attribute(images, baselines, target=TARGET, n_steps=12, internal_batch_size=3)
    assert calls == [3, 1] * 12


def test_an_examples_attributions_do_not_depend_on_the_batch_or_the_chunks():
    model = small_cnn()
    images, baselines = _batch()
    guided = GuidedIntegratedGradients(model)
    together = guided.attribute(images, baselines, target=TARGET, n_steps=20, fraction=0.2, max_dist=0.1)
    for i in (0, 3):
        alone = guided.attribute(
            images[i : i + 1], baselines[i : i + 1], target=TARGET[i], n_steps=20, fraction=0.2, max_dist=0.1
        )
        torch.testing.assert_close(alone[0], together[i], rtol=1e-12, atol=1e-15)
    for rows in (1, 3):
        chunked = guided.attribute(
            images, baselines, target=TARGET, n_steps=20, fraction=0.2, max_dist=0.1, internal_batch_size=rows
        )
        torch.testing.assert_close(chunked, together, rtol=1e-12, atol=1e-15)
    assert guided.last_report.rows == 4 * 20 and guided.last_report.chunk_rows == 3
    budgeted = guided.attribute(
        images, baselines, target=TARGET, n_steps=20, fraction=0.2, max_dist=0.1, memory_budget="20KiB"
    )
    torch.testing.assert_close(budgeted, together, rtol=1e-12, atol=1e-15)
    assert guided.last_report.chunk_rows < 4


def test_tuple_inputs_form_one_feature_vector():
    model = small_cnn()
    images, baselines = _batch()

    class Split(nn.Module):
        def forward(self, a, b):
            return model(torch.cat([a, b], 1))

    whole = GuidedIntegratedGradients(model).attribute(images, baselines, target=TARGET, n_steps=15, fraction=0.3)
    a, b = GuidedIntegratedGradients(Split()).attribute(
        (images[:, :2], images[:, 2:]), (baselines[:, :2], baselines[:, 2:]), target=TARGET, n_steps=15, fraction=0.3
    )
    torch.testing.assert_close(torch.cat([a, b], 1), whole, rtol=1e-12, atol=1e-15)


def test_float32_inputs_give_float32_attributions():
    model = small_cnn()
    images, baselines = _batch()
    reference = GuidedIntegratedGradients(model).attribute(images, baselines, target=TARGET, n_steps=15, max_dist=0)
    got = GuidedIntegratedGradients(model.float()).attribute(
        images.float(), baselines.float(), target=TARGET, n_steps=15, max_dist=0
    )
    assert got.dtype == torch.float32
    assert _relative(got.double(), reference) < 1e-4


def test_bad_arguments_are_refused_with_the_parameter_named():
    model = small_cnn()
    images, baselines = _batch()
    guided = GuidedIntegratedGradients(model)
    # A number out of range is a ValueError, anything else a TypeError; both name the parameter.
    for bad in (0, 0.0, -0.1, 1.5, "0.5", True, None):
        error = ValueError if isinstance(bad, (int, float)) and not isinstance(bad, bool) else TypeError
        with pytest.raises(error, match=r"fraction must be a number in \(0, 1\]"):
            guided.attribute(images, baselines, target=TARGET, fraction=bad)
    for bad, error in ((-0.01, ValueError), (1.01, ValueError), ("0", TypeError)):
        with pytest.raises(error, match=r"max_dist must be a number in \[0, 1\]"):
            guided.attribute(images, baselines, target=TARGET, max_dist=bad)
    for bad in (0, 2.5, "auto"):
        with pytest.raises(ValueError, match="n_steps must be a positive int"):
            guided.attribute(images, baselines, target=TARGET, n_steps=bad)
    with pytest.raises(ValueError, match="baselines has shape"):
        guided.attribute(images, baselines[:, :2], target=TARGET)
    with pytest.raises(TypeError, match="return_convergence_delta must be True or False"):
        guided.attribute(images, baselines, target=TARGET, return_convergence_delta="yes")


def test_the_callers_tensors_are_left_alone():
    model = small_cnn()
    images, baselines = _batch()
    kept = images.clone(), baselines.clone()
    GuidedIntegratedGradients(model).attribute(images, baselines, target=TARGET, n_steps=5)
    assert torch.equal(images, kept[0]) and torch.equal(baselines, kept[1])
    assert not images.requires_grad and not baselines.requires_grad
    assert all(p.grad is None for p in model.parameters())
