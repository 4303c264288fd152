"""captum's interface, parameter by parameter: every parameter of captum's constructors and methods for the classes
integrad mirrors is accepted, in the same place, with the same default (so a parameter a new captum adds shows up
here as a failure), and ``grad_kwargs`` does what captum's does.

integrad's own parameters come after captum's, keyword-only, so that no positional call means something else.
"""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest
import torch
from torch import nn

from integrad.methods.conductance import LayerConductance, NeuronConductance
from integrad.methods.gradient_shap import GradientShap, LayerGradientShap
from integrad.methods.integrated_gradients import IntegratedGradients
from integrad.methods.internal_influence import InternalInfluence
from integrad.methods.layer import LayerIntegratedGradients
from integrad.methods.neuron import NeuronIntegratedGradients
from integrad.methods.noise_tunnel import NoiseTunnel

from models import (
    deep_mlp,
    gl_rule,
    no_hooks_left,
)

#: Tiny models run faster and steadier on one thread (see conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

captum_attr = importlib.import_module("captum.attr")

PAIRS = [
    (IntegratedGradients, captum_attr.IntegratedGradients),
    (LayerIntegratedGradients, captum_attr.LayerIntegratedGradients),
    (NeuronIntegratedGradients, captum_attr.NeuronIntegratedGradients),
    (NoiseTunnel, captum_attr.NoiseTunnel),
    (GradientShap, captum_attr.GradientShap),
    (LayerGradientShap, captum_attr.LayerGradientShap),
    (LayerConductance, captum_attr.LayerConductance),
    (NeuronConductance, captum_attr.NeuronConductance),
    (InternalInfluence, captum_attr.InternalInfluence),
]
IDS = [ours.__name__ for ours, _ in PAIRS]

#: captum's members that integrad leaves out on purpose, with the reason.
LEFT_OUT = {
    # captum's compares the attributions with F(end) − F(start) of the model output, which a neuron's attributions do
    # not add up to; both say has_convergence_delta() is False.
    ("NeuronIntegratedGradients", "compute_convergence_delta"),
    ("NeuronConductance", "compute_convergence_delta"),
    ("InternalInfluence", "compute_convergence_delta"),
}

POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def parameters(function) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(function).parameters.items() if n != "self"}


def assert_accepts_captums(ours, theirs, what: str) -> None:
    mine, captums = parameters(ours), parameters(theirs)
    for name, theirs_p in captums.items():
        assert name in mine, f"{what}: captum's parameter {name!r} is missing"
        p = mine[name]
        assert p.kind == theirs_p.kind, (
            f"{what}: {name!r} is {p.kind.description}, captum's {theirs_p.kind.description}"
        )
        if theirs_p.default is inspect.Parameter.empty:
            assert p.default is inspect.Parameter.empty, f"{what}: {name!r} has a default, captum's is required"
        else:
            assert p.default == theirs_p.default, f"{what}: {name!r} defaults to {p.default!r}, captum's to " + repr(
                theirs_p.default
            )
    positional = [n for n, p in mine.items() if p.kind in POSITIONAL]
    assert positional == [n for n, p in captums.items() if p.kind in POSITIONAL], f"{what}: positional order"
    for name in set(mine) - set(captums):
        assert mine[name].kind == inspect.Parameter.KEYWORD_ONLY, f"{what}: integrad's {name!r} is not keyword-only"


# ---------------------------------------------------------------------------------------------------- signatures
@pytest.mark.parametrize("ours,theirs", PAIRS, ids=IDS)
def test_constructor_and_attribute_take_captums_parameters(ours, theirs):
    assert_accepts_captums(ours.__init__, theirs.__init__, f"{ours.__name__}.__init__")
    assert_accepts_captums(ours.attribute, theirs.attribute, f"{ours.__name__}.attribute")


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=IDS)
def test_every_public_member_of_captums_class(ours, theirs):
    for name in (n for n in dir(theirs) if not n.startswith("_")):
        if (ours.__name__, name) in LEFT_OUT:
            assert not hasattr(ours, name)
            continue
        assert hasattr(ours, name), f"{ours.__name__} has no {name}"
        member, captums = getattr(ours, name), getattr(theirs, name)
        if callable(captums) and not isinstance(captums, type):
            assert_accepts_captums(member, captums, f"{ours.__name__}.{name}")


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=IDS)
def test_get_name_is_captums(ours, theirs):
    assert ours.get_name() == theirs.get_name()


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=IDS)
def test_attribute_future_raises_not_implemented_as_captums_does(ours, theirs):
    model = deep_mlp().eval()
    if ours is NoiseTunnel:
        pair = [NoiseTunnel(IntegratedGradients(model)), theirs(captum_attr.IntegratedGradients(model))]
    elif "layer" in inspect.signature(ours).parameters:
        pair = [ours(model, model[2]), theirs(model, model[2])]
    else:
        pair = [ours(model), theirs(model)]
    # Every integrad method has it; captum's where its class does.
    for method in pair[:1] + [m for m in pair[1:] if hasattr(m, "attribute_future")]:
        with pytest.raises(NotImplementedError, match="attribute_future"):
            method.attribute_future()


@pytest.mark.parametrize("mode,size", [("nearest", (7, 9)), ("bilinear", (6, 6)), ("nearest", 5)])
def test_interpolate_is_captums(mode, size):
    maps = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    got = LayerIntegratedGradients.interpolate(maps, size, mode)
    assert torch.equal(got, captum_attr.LayerIntegratedGradients.interpolate(maps, size, mode))
    with pytest.raises(ValueError, match="layer_attribution"):
        LayerIntegratedGradients.interpolate(torch.ones(3, 4), 5)


# ---------------------------------------------------------------------------------------------------- grad_kwargs
def model64() -> nn.Sequential:
    return deep_mlp(in_dim=3, hidden=5, out=2, seed=3).double().eval()


def inputs64() -> torch.Tensor:
    return torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def reference_with_graph(model, x, baseline, split: int, target: int, alphas, weights, multiply: bool = True):
    """Layer IG of ``model[:split]``'s output by an explicit loop, every path gradient keeping its graph."""
    head, tail = model[:split], model[split:]
    with torch.no_grad():
        end, start = head(x), head(baseline)
    total = torch.zeros_like(end)
    for alpha, weight in zip(alphas, weights):
        z = (start + float(alpha) * (end - start)).requires_grad_()
        (gradient,) = torch.autograd.grad(tail(z)[:, target].sum(), z, create_graph=True)
        total = total + float(weight) * gradient
    return total * (end - start) if multiply else total


def trapezoid(n: int) -> tuple[np.ndarray, np.ndarray]:
    weights = np.full(n, 1.0 / (n - 1))
    weights[[0, -1]] /= 2
    return np.linspace(0.0, 1.0, n), weights


def tail_parameters(model) -> list[torch.Tensor]:
    return [model[2].weight, model[2].bias, model[4].weight]


def test_create_graph_as_captum():
    """``create_graph=True``: captum's attributions and their gradients with respect to the parameters after the
    layer (the only ones their graph reaches: the path's ends are taken without a graph, by both)."""
    model, x = model64(), inputs64()
    kwargs = dict(target=1, n_steps=12, grad_kwargs={"create_graph": True})
    ours = LayerIntegratedGradients(model, model[1]).attribute(x, **kwargs)
    theirs = captum_attr.LayerIntegratedGradients(model, model[1]).attribute(x, **kwargs)
    # captum multiplies by its step sizes in float32: agreement to float32's precision.
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)
    every = [model[0].weight] + tail_parameters(model)
    ours_grads = torch.autograd.grad(ours.square().sum(), every, allow_unused=True)
    theirs_grads = torch.autograd.grad(theirs.square().sum(), every, allow_unused=True)
    assert ours_grads[0] is None and theirs_grads[0] is None
    for mine, captums in zip(ours_grads[1:], theirs_grads[1:]):
        assert float(mine.abs().max()) > 0
        torch.testing.assert_close(mine, captums, rtol=1e-6, atol=1e-9)
    assert all(p.grad is None for p in model.parameters())
    assert no_hooks_left(model)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
@pytest.mark.parametrize("internal_batch_size", [None, 7])
@pytest.mark.parametrize("multiply", [True, False])
def test_create_graph_against_a_loop(method, internal_batch_size, multiply):
    """In chunks of any size, the attributions and their second-order gradients are those of one explicit loop in
    float64. (captum's, in chunks, lose part of the graph: its gradients then differ from the loop's.)"""
    model, x = model64(), inputs64()
    baseline = torch.full_like(x, 0.3)
    n = 10
    alphas, weights = gl_rule(n) if method == "gausslegendre" else trapezoid(n)
    got, delta = LayerIntegratedGradients(model, model[1], multiply_by_inputs=multiply).attribute(
        x,
        baselines=baseline,
        target=0,
        n_steps=n,
        method=method,
        internal_batch_size=internal_batch_size,
        return_convergence_delta=True,
        grad_kwargs={"create_graph": True},
    )
    expected = reference_with_graph(model, x, baseline, 2, 0, alphas, weights, multiply)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    assert got.dtype == torch.float64 and not delta.requires_grad
    parameters_after = tail_parameters(model)
    for mine, loop in zip(
        torch.autograd.grad(got.square().sum(), parameters_after),
        torch.autograd.grad(expected.square().sum(), parameters_after),
    ):
        torch.testing.assert_close(mine, loop, rtol=1e-12, atol=1e-14)


def test_create_graph_through_noise_tunnel():
    """grad_kwargs reaches the layer method through NoiseTunnel: without noise, the same graph as the method's."""
    model, x = model64(), inputs64()
    lig = LayerIntegratedGradients(model, model[1])
    kwargs = dict(target=1, n_steps=8, grad_kwargs={"create_graph": True})
    alone = lig.attribute(x, **kwargs)
    smoothed = NoiseTunnel(lig).attribute(x, nt_samples=2, stdevs=0.0, **kwargs)
    torch.testing.assert_close(smoothed, alone, rtol=1e-12, atol=1e-14)
    for a, b in zip(
        torch.autograd.grad(smoothed.sum(), tail_parameters(model)),
        torch.autograd.grad(alone.sum(), tail_parameters(model)),
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


class SideBranch(nn.Module):
    """A layer computed in the forward pass whose value the output does not use."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.used, self.side, self.head = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        self.side(x)
        return self.head(torch.tanh(self.used(x)))


def test_unused_layer_has_zero_attributions_as_captum_with_materialize_grads():
    """captum needs ``materialize_grads=True`` for a layer the output does not use (else autograd refuses), and then
    returns zeros; integrad returns the same zeros with or without it."""
    model = SideBranch().eval()
    x = torch.randn(3, 3, generator=torch.Generator().manual_seed(2))
    theirs = captum_attr.LayerIntegratedGradients(model, model.side).attribute(
        x, target=0, grad_kwargs={"materialize_grads": True}
    )
    lig = LayerIntegratedGradients(model, model.side)
    for grad_kwargs in [None, {"materialize_grads": True}, {"allow_unused": True, "materialize_grads": True}]:
        ours = lig.attribute(x, target=0, grad_kwargs=grad_kwargs)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        assert torch.equal(ours.abs(), theirs.abs())  # zeros (captum's have signs)
    with pytest.raises(RuntimeError, match="not have been used"):
        captum_attr.LayerIntegratedGradients(model, model.side).attribute(x, target=0)


def test_options_that_change_nothing():
    """retain_graph, allow_unused, materialize_grads and only_inputs leave the result as it is, with no graph."""
    model = deep_mlp().eval()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    lig = LayerIntegratedGradients(model, model[2])
    plain = lig.attribute(x, target=2, n_steps=8)
    for options in [
        {},
        {"retain_graph": True},
        {"retain_graph": None, "allow_unused": None},
        {"materialize_grads": True, "allow_unused": True},
        {"only_inputs": True},
        {"create_graph": False},
    ]:
        got = lig.attribute(x, target=2, n_steps=8, grad_kwargs=options)
        assert torch.equal(got, plain) and not got.requires_grad, options
    float32 = lig.attribute(x, target=2, n_steps=8, grad_kwargs={"create_graph": True})
    assert float32.dtype == torch.float32 and float32.requires_grad
    torch.testing.assert_close(float32.detach(), plain, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "grad_kwargs,extra,error,words",
    [
        ([("create_graph", True)], {}, TypeError, ["grad_kwargs", "dict"]),
        ({"grad_outputs": None}, {}, ValueError, ["grad_kwargs", "grad_outputs", "create_graph"]),
        ({"is_grads_batched": True}, {}, ValueError, ["grad_kwargs", "is_grads_batched"]),
        ({"create_grpah": True}, {}, ValueError, ["grad_kwargs", "create_grpah", "retain_graph"]),
        ({"create_graph": 1}, {}, TypeError, ["grad_kwargs['create_graph']", "True or False"]),
        ({"create_graph": True}, {"n_steps": "auto"}, ValueError, ["create_graph", "n_steps"]),
        ({"create_graph": True}, {"memory_budget": "64MiB"}, ValueError, ["create_graph", "memory_budget"]),
    ],
)
def test_bad_grad_kwargs_are_refused_before_the_model_runs(grad_kwargs, extra, error, words):
    model = deep_mlp().eval()
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
    with pytest.raises(error) as info:
        LayerIntegratedGradients(model, model[2]).attribute(x, target=0, grad_kwargs=grad_kwargs, **extra)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert not calls
