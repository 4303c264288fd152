"""InternalInfluence: captum's arguments and numbers, and the layer gradient integrated along the input path.

Everything runs in float64. captum's step sizes are a float32 tensor, so agreement is asked to 1e-7 of each map's
largest entry, with captum's ``riemann_trapezoid`` result rescaled by ``n/(n − 1)`` to the true trapezoid rule. The
independent reference is a plain loop over the rule's points with ``torch.autograd.grad``.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from captum.attr import InternalInfluence as CaptumInternalInfluence
from torch import nn

from integrad import IntegratedGradients
from integrad.methods.internal_influence import InternalInfluence
from integrad.rules import alphas_and_weights

from models import METHODS, SmallCNN, ThreeInputs, WithExtras, assert_close_scaled, randn, seeded

RTOL = 1e-7


def _rescaled(result, method: str, n_steps: int):
    if method != "riemann_trapezoid":
        return result
    if isinstance(result, tuple):
        return tuple(r * n_steps / (n_steps - 1) for r in result)
    return result * n_steps / (n_steps - 1)


def _deep(seed: int = 0) -> nn.Sequential:
    return seeded(
        lambda: nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Softplus(), nn.Linear(6, 3)), seed
    )


class PairLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 4)
        self.b = nn.Linear(5, 3)

    def forward(self, x):
        return torch.tanh(self.a(x)), torch.sigmoid(self.b(x))


class PairModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair = PairLayer()
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        a, b = self.pair(x)
        return self.head(torch.cat([a * b.sum(1, keepdim=True), b], 1))


POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _parameters(function) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(function).parameters.items() if n != "self"}


def _assert_accepts_captums(ours, theirs, what: str) -> None:
    """Every captum parameter, of the same kind and default; the same positional order; ours keyword-only."""
    mine, captums = _parameters(ours), _parameters(theirs)
    for name, their in captums.items():
        assert name in mine, f"{what}: captum's {name!r} is missing"
        assert mine[name].kind == their.kind and mine[name].default == their.default, f"{what}: {name!r}"
    positional = [n for n, p in mine.items() if p.kind in POSITIONAL]
    assert positional == [n for n, p in captums.items() if p.kind in POSITIONAL], f"{what}: positional order"
    assert all(mine[n].kind is inspect.Parameter.KEYWORD_ONLY for n in set(mine) - set(captums)), what


def _assert_captums_interface(ours, theirs, left_out=()) -> None:
    """captum's constructor, attribute and every public member (but those left out on purpose)."""
    _assert_accepts_captums(ours.__init__, theirs.__init__, f"{ours.__name__}.__init__")
    for name in (n for n in dir(theirs) if not n.startswith("_")):
        if name in left_out:
            assert not hasattr(ours, name), name
            continue
        assert hasattr(ours, name), f"{ours.__name__} has no {name}"
        if callable(getattr(theirs, name)):
            _assert_accepts_captums(getattr(ours, name), getattr(theirs, name), f"{ours.__name__}.{name}")
    assert ours.get_name() == theirs.get_name()


def test_the_interface_is_captums():
    # Layer gradients add up to no difference of the model's output: no convergence delta (captum's
    # has_convergence_delta() is False too).
    _assert_captums_interface(InternalInfluence, CaptumInternalInfluence, left_out=("compute_convergence_delta",))
    model = _deep()
    assert InternalInfluence(model, model[0]).has_convergence_delta() is False


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target", [2, [0, 2, 1, 1]])
def test_matches_captum(method, target):
    model = _deep(seed=1)
    x, base = randn(4, 5, seed=2), randn(4, 5, seed=3) * 0.3
    ours = InternalInfluence(model, model[2]).attribute(x, base, target=target, n_steps=9, method=method)
    theirs = CaptumInternalInfluence(model, model[2]).attribute(x, base, target=target, n_steps=9, method=method)
    assert ours.shape == (4, 6) and ours.dtype == torch.float64
    assert_close_scaled(ours, _rescaled(theirs.detach(), method, 9), RTOL)


def test_is_the_layer_gradient_integrated_by_a_plain_loop():
    model = _deep(seed=4)
    x, base, target = randn(3, 5, seed=5), randn(3, 5, seed=6) * 0.2, torch.tensor([1, 2, 0])
    rows = torch.arange(3)
    alphas, weights = alphas_and_weights("gausslegendre", 10)
    expected = 0
    for a, w in zip(alphas, weights):
        h = model[:2](base + float(a) * (x - base)).detach().requires_grad_()
        (g,) = torch.autograd.grad(model[2:](h)[rows, target].sum(), h)
        expected = expected + float(w) * g
    got = InternalInfluence(model, model[1]).attribute(x, base, target=target, n_steps=10)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_at_the_model_input_it_is_the_path_averaged_gradient():
    """The first layer's input is the model's input: internal influence there is integrated gradients without the
    multiplication by x − x′."""
    model = _deep(seed=7)
    x, base, target = randn(4, 5, seed=8), randn(4, 5, seed=9), [2, 0, 1, 2]
    for method in ("gausslegendre", "riemann_trapezoid"):
        got = InternalInfluence(model, model[0]).attribute(
            x, base, target=target, n_steps=13, method=method, attribute_to_layer_input=True
        )
        local = IntegratedGradients(model, multiply_by_inputs=False).attribute(
            x, base, target=target, n_steps=13, method=method
        )
        torch.testing.assert_close(got, local, rtol=1e-13, atol=1e-15)


def test_tuple_inputs_extras_layer_inputs_and_pairs():
    model = seeded(ThreeInputs, seed=10)
    xs = (randn(3, 4, seed=11), randn(3, 2, 3, seed=12), randn(3, 5, seed=13))
    bases = (0.2, randn(1, 2, 3, seed=14), randn(3, 5, seed=15))
    for to_input in (False, True):
        kwargs = dict(target=[1, 0, 2], n_steps=7, method="riemann_middle", attribute_to_layer_input=to_input)
        ours = InternalInfluence(model, model.head).attribute(xs, bases, **kwargs)
        theirs = CaptumInternalInfluence(model, model.head).attribute(xs, bases, **kwargs)
        assert_close_scaled(ours, theirs.detach(), RTOL)
    extras = seeded(WithExtras, seed=16)
    x, mask = randn(4, 5, seed=17), (randn(4, 5, seed=18) > 0).double()
    kwargs = dict(target=2, additional_forward_args=(mask, "double"), n_steps=6)
    ours = InternalInfluence(extras, extras.body[1]).attribute(x, **kwargs)
    theirs = CaptumInternalInfluence(extras, extras.body[1]).attribute(x, **kwargs)
    assert_close_scaled(ours, theirs.detach(), RTOL)
    pair = seeded(PairModel, seed=19)
    x = randn(3, 5, seed=20)
    ours = InternalInfluence(pair, pair.pair).attribute(x, target=[0, 1, 2], n_steps=5)
    theirs = CaptumInternalInfluence(pair, pair.pair).attribute(x, target=[0, 1, 2], n_steps=5)
    assert isinstance(ours, tuple) and [t.shape for t in ours] == [(3, 4), (3, 3)]
    assert_close_scaled(ours, tuple(t.detach() for t in theirs), RTOL)


def test_any_chunks_give_the_same_result_and_examples_do_not_mix():
    model = seeded(SmallCNN, seed=21)
    x = randn(3, 2, 6, 6, seed=22)
    influence = InternalInfluence(model, model.conv2)
    whole = influence.attribute(x, target=1, n_steps=8)
    theirs = CaptumInternalInfluence(model, model.conv2).attribute(x, target=1, n_steps=8, internal_batch_size=6)
    assert_close_scaled(whole, theirs.detach(), RTOL)
    for options in ({"internal_batch_size": 1}, {"internal_batch_size": 5}, {"memory_budget": "128KiB"}):
        assert_close_scaled(influence.attribute(x, target=1, n_steps=8, **options), whole, 1e-13)
    assert influence.last_report.rows == 24 and influence.last_report.steps.tolist() == [8, 8, 8]
    for i in range(3):
        alone = influence.attribute(x[i : i + 1], target=1, n_steps=8)
        torch.testing.assert_close(alone, whole[i : i + 1], rtol=1e-13, atol=1e-15)


def test_dtype_is_kept_and_the_caller_is_left_alone():
    model = _deep(seed=23).float()
    x = randn(3, 5, seed=24, dtype=torch.float32)
    keep = x.clone()
    got = InternalInfluence(model, model[2]).attribute(x, target=0, n_steps=4)
    assert got.dtype == torch.float32
    assert torch.equal(x, keep) and not x.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_bad_arguments_are_refused_with_the_parameter_named():
    model = _deep()
    x = randn(2, 5)
    influence = InternalInfluence(model, model[2])
    with pytest.raises(ValueError, match="n_steps must be"):
        influence.attribute(x, target=0, n_steps=0)
    with pytest.raises(ValueError, match="n_steps must be"):
        influence.attribute(x, target=0, n_steps="auto")
    with pytest.raises(ValueError, match="method must be one of"):
        influence.attribute(x, target=0, method="simpson")
    with pytest.raises(TypeError, match="attribute_to_layer_input must be True or False"):
        influence.attribute(x, target=0, attribute_to_layer_input=1)
    with pytest.raises(TypeError, match="inputs has dtype torch.int64"):
        influence.attribute(torch.ones(2, 5, dtype=torch.long), target=0)
    with pytest.raises(ValueError, match="target"):
        influence.attribute(x, target=[0, 1, 2])
    with pytest.raises(ValueError, match="layer .* is not a submodule"):
        InternalInfluence(model, nn.Linear(2, 2))


def test_create_graph_differentiates_as_captum():
    model = _deep(seed=25)
    x = randn(3, 5, seed=26)
    kwargs = dict(target=2, n_steps=7, method="riemann_middle", grad_kwargs={"create_graph": True})
    ours = InternalInfluence(model, model[1]).attribute(x, **kwargs)
    theirs = CaptumInternalInfluence(model, model[1]).attribute(x, **kwargs)
    assert ours.requires_grad
    assert_close_scaled(ours.detach(), theirs.detach(), RTOL)
    after = [model[2].weight, model[2].bias, model[4].weight]
    for a, b in zip(torch.autograd.grad(ours.square().sum(), after), torch.autograd.grad(theirs.square().sum(), after)):
        assert float(a.abs().max()) > 0
        assert_close_scaled(a, b, 1e-6)
    plain = InternalInfluence(model, model[1]).attribute(
        x, target=2, n_steps=7, method="riemann_middle", grad_kwargs={"retain_graph": True}
    )
    assert not plain.requires_grad
    torch.testing.assert_close(plain, ours.detach(), rtol=1e-13, atol=1e-15)
    with pytest.raises(ValueError, match="grad_kwargs holds"):
        InternalInfluence(model, model[1]).attribute(x, target=2, grad_kwargs={"grad_outputs": None})
