"""LayerConductance and NeuronConductance: captum's arguments and numbers, and the mathematics behind them.

Everything runs in float64. captum forms its Riemann positions with float32 ``linspace`` and its step sizes as a
float32 tensor, so agreement is asked to 1e-7 of each map's largest entry; captum's ``riemann_trapezoid`` weights
sum to ``(n − 1)/n`` and its neuron-conductance result is rescaled by ``n/(n − 1)`` to the true trapezoid rule
(layer conductance uses the positions alone, so it needs no rescaling). The independent references are plain loops
over the rule's points with ``torch.autograd.grad``.
"""

from __future__ import annotations

import contextlib
import inspect

import pytest
import torch
from captum.attr import LayerConductance as CaptumLayerConductance
from captum.attr import NeuronConductance as CaptumNeuronConductance
from torch import nn

from integrad import IntegratedGradients
from integrad.methods.conductance import LayerConductance, NeuronConductance
from integrad.rules import alphas_and_weights

from models import METHODS, SmallCNN, ThreeInputs, WithExtras, assert_close_scaled, mlp, randn, seeded

RTOL = 1e-7


def _rescaled(result, method: str, n_steps: int):
    """captum's trapezoid result scaled to the true trapezoid rule."""
    if method != "riemann_trapezoid":
        return result
    if isinstance(result, tuple):
        return tuple(r * n_steps / (n_steps - 1) for r in result)
    return result * n_steps / (n_steps - 1)


def _gap(model, x, base, target):
    rows = torch.arange(x.shape[0])
    with torch.no_grad():
        return model(x)[rows, target] - model(base)[rows, target]


class PairLayer(nn.Module):
    """A layer whose value is a pair of tensors."""

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


class InPlaceAfter(nn.Module):
    """A ReLU that writes into the layer's output in place right after the layer."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(5, 6)
        self.relu = nn.ReLU(inplace=True)
        self.second = nn.Linear(6, 3)

    def forward(self, x):
        return self.second(torch.tanh(self.relu(self.first(x))))


class Counted(nn.Module):
    """``model`` with a counter of the rows that reach the part after ``model[2]``."""

    def __init__(self, model: nn.Sequential) -> None:
        super().__init__()
        self.body = model
        self.rows_after = 0

    def forward(self, x):
        h = self.body[2](self.body[1](self.body[0](x)))
        self.rows_after += h.shape[0]
        return self.body[4](self.body[3](h))


def _deep(seed: int = 0) -> nn.Sequential:
    return seeded(
        lambda: nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Softplus(), nn.Linear(6, 3)), seed
    )


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
    _assert_captums_interface(LayerConductance, CaptumLayerConductance)
    # A neuron's conductances add up to no difference of the model's output: no convergence delta (captum's
    # has_convergence_delta() is False too).
    _assert_captums_interface(NeuronConductance, CaptumNeuronConductance, left_out=("compute_convergence_delta",))
    model = _deep()
    assert LayerConductance(model, model[2]).has_convergence_delta()
    assert not NeuronConductance(model, model[2]).has_convergence_delta()
    maps = randn(2, 3, 4, 4)
    assert torch.equal(LayerConductance.interpolate(maps, (7, 7)), CaptumLayerConductance.interpolate(maps, (7, 7)))


# ------------------------------------------------------------------------------------------------ LayerConductance


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target", [1, [0, 2, 1, 2], "tensor"])
def test_layer_conductance_matches_captum(method, target):
    model = _deep(seed=1)
    x, base = randn(4, 5, seed=2), randn(4, 5, seed=3) * 0.3
    target = torch.tensor([2, 0, 0, 1]) if isinstance(target, str) else target
    ours, delta = LayerConductance(model, model[2]).attribute(
        x, base, target=target, n_steps=9, method=method, return_convergence_delta=True
    )
    theirs, their_delta = CaptumLayerConductance(model, model[2]).attribute(
        x, base, target=target, n_steps=9, method=method, return_convergence_delta=True
    )
    assert ours.shape == (4, 6) and ours.dtype == torch.float64 and delta.shape == (4,)
    assert_close_scaled(ours, theirs.detach(), RTOL)
    # The delta is Σ conductances − (F(x) − F(x′)), both as captum returns it and as computed here.
    gap = _gap(model, x, base, torch.as_tensor(target).expand(4))
    torch.testing.assert_close(delta, ours.sum(1) - gap, rtol=0, atol=1e-13)
    torch.testing.assert_close(delta, their_delta.detach(), rtol=0, atol=RTOL * float(gap.abs().max()))


def test_layer_conductance_is_the_discrete_layer_path_sum():
    """Σ_{k<n} ∂F/∂h(h_k) · (h_{k+1} − h_k) over the rule's n + 1 positions, by a plain loop."""
    model = _deep(seed=4)
    x, base, target = randn(3, 5, seed=5), randn(3, 5, seed=6) * 0.2, torch.tensor([0, 1, 2])
    n_steps = 6
    alphas, _ = alphas_and_weights("riemann_middle", n_steps + 1)
    rows = torch.arange(3)
    expected = 0
    for a, b in zip(alphas[:-1], alphas[1:]):
        with torch.no_grad():
            h_next = model[:3](base + float(b) * (x - base))
        h = model[:3](base + float(a) * (x - base)).detach().requires_grad_()
        (g,) = torch.autograd.grad(model[3:](h)[rows, target].sum(), h)
        expected = expected + g * (h_next - h.detach())
    got = LayerConductance(model, model[2]).attribute(x, base, target=target, n_steps=n_steps, method="riemann_middle")
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_layer_conductance_is_exact_for_a_model_linear_after_the_layer():
    """With F linear in h and positions from 0 to 1 the sum telescopes: Σ conductances = F(x) − F(x′) exactly."""
    body = seeded(lambda: nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)))
    x, base = randn(4, 5, seed=7), randn(4, 5, seed=8)
    target = [0, 1, 2, 0]
    for n_steps in (1, 3, 20):
        got, delta = LayerConductance(body, body[1]).attribute(
            x, base, target=target, n_steps=n_steps, method="riemann_trapezoid", return_convergence_delta=True
        )
        torch.testing.assert_close(got.sum(1), _gap(body, x, base, torch.tensor(target)), rtol=0, atol=1e-13)
        assert float(delta.abs().max()) < 1e-13


def test_layer_conductance_on_tuple_inputs_with_extras_and_layer_inputs():
    model = seeded(ThreeInputs, seed=9)
    xs = (randn(3, 4, seed=10), randn(3, 2, 3, seed=11), randn(3, 5, seed=12))
    bases = (0.1, randn(1, 2, 3, seed=13), randn(3, 5, seed=14))
    for to_input in (False, True):
        for method in ("gausslegendre", "riemann_right"):
            kwargs = dict(target=[2, 0, 1], n_steps=7, method=method, attribute_to_layer_input=to_input)
            ours = LayerConductance(model, model.b).attribute(xs, bases, **kwargs)
            theirs = CaptumLayerConductance(model, model.b).attribute(xs, bases, **kwargs)
            assert_close_scaled(ours, theirs.detach(), RTOL)
    extras = seeded(WithExtras, seed=15)
    x, mask = randn(4, 5, seed=16), (randn(4, 5, seed=17) > 0).double()
    kwargs = dict(target=1, additional_forward_args=(mask, "double"), n_steps=5, return_convergence_delta=True)
    ours, delta = LayerConductance(extras, extras.body[0]).attribute(x, **kwargs)
    theirs, their_delta = CaptumLayerConductance(extras, extras.body[0]).attribute(x, **kwargs)
    assert_close_scaled(ours, theirs.detach(), RTOL)
    torch.testing.assert_close(delta, their_delta.detach(), rtol=0, atol=1e-10)


def test_layer_conductance_of_a_layer_with_a_pair_of_values():
    model = seeded(PairModel, seed=18)
    x, base = randn(3, 5, seed=19), randn(3, 5, seed=20) * 0.5
    ours = LayerConductance(model, model.pair).attribute(x, base, target=[0, 2, 1], n_steps=8)
    theirs = CaptumLayerConductance(model, model.pair).attribute(x, base, target=[0, 2, 1], n_steps=8)
    assert isinstance(ours, tuple) and [t.shape for t in ours] == [(3, 4), (3, 3)]
    assert_close_scaled(ours, tuple(t.detach() for t in theirs), RTOL)


def test_layer_conductance_on_a_cnn_in_any_chunks():
    model = seeded(SmallCNN, seed=21)
    x = randn(3, 2, 6, 6, seed=22)
    conductance = LayerConductance(model, model.conv1)
    whole = conductance.attribute(x, target=3, n_steps=10)
    theirs = CaptumLayerConductance(model, model.conv1).attribute(x, target=3, n_steps=10, internal_batch_size=9)
    assert_close_scaled(whole, theirs.detach(), RTOL)
    for options in ({"internal_batch_size": 1}, {"internal_batch_size": 7}, {"memory_budget": "64KiB"}):
        assert_close_scaled(conductance.attribute(x, target=3, n_steps=10, **options), whole, 1e-13)
    assert conductance.last_report.rows == 30


def test_layer_conductance_runs_the_model_after_the_layer_once_per_row():
    """The layer's values come from passes stopped at the layer: only the n_steps · batch gradient rows go on."""
    model = Counted(_deep(seed=23))
    x = randn(4, 5, seed=24)
    LayerConductance(model, model.body[2]).attribute(x, target=0, n_steps=6)
    assert model.rows_after == 6 * 4


def test_an_example_does_not_depend_on_its_batch():
    model = _deep(seed=25)
    x, base = randn(5, 5, seed=26), randn(5, 5, seed=27)
    target = [0, 1, 2, 1, 0]
    together = LayerConductance(model, model[2]).attribute(x, base, target=target, n_steps=7)
    for i in range(5):
        alone = LayerConductance(model, model[2]).attribute(x[i : i + 1], base[i : i + 1], target=target[i], n_steps=7)
        torch.testing.assert_close(alone, together[i : i + 1], rtol=1e-13, atol=1e-15)


def test_dtype_is_kept_and_the_caller_is_left_alone():
    model = _deep(seed=28).float()
    x, base = randn(3, 5, seed=29, dtype=torch.float32), randn(3, 5, seed=30, dtype=torch.float32)
    keep = (x.clone(), base.clone())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got, delta = LayerConductance(model, model[2]).attribute(
        x, base, target=1, n_steps=5, return_convergence_delta=True
    )
    assert got.dtype == torch.float32 and delta.dtype == torch.float32
    neuron = NeuronConductance(model, model[2]).attribute(x, 1, base, target=1, n_steps=5)
    assert neuron.dtype == torch.float32
    assert torch.equal(x, keep[0]) and torch.equal(base, keep[1]) and not x.requires_grad
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_bad_arguments_are_refused_with_the_parameter_named():
    model = _deep()
    x = randn(2, 5)
    conductance = LayerConductance(model, model[2])
    with pytest.raises(ValueError, match="n_steps must be"):
        conductance.attribute(x, target=0, n_steps=0)
    with pytest.raises(ValueError, match="n_steps must be"):
        conductance.attribute(x, target=0, n_steps="auto")
    with pytest.raises(ValueError, match="method must be one of"):
        conductance.attribute(x, target=0, method="simpson")
    with pytest.raises(TypeError, match="attribute_to_layer_input must be True or False"):
        conductance.attribute(x, target=0, attribute_to_layer_input="yes")
    with pytest.raises(TypeError, match="layer must be a torch.nn.Module"):
        LayerConductance(model, "model[2]")
    with pytest.raises(ValueError, match="layer .* is not a submodule"):
        LayerConductance(model, nn.Linear(2, 2))
    with pytest.raises(TypeError, match="neuron_selector must be"):
        NeuronConductance(model, model[2]).attribute(x, 1.5, target=0)
    with pytest.raises(ValueError, match=r"neuron_selector\[0\] = 9 is out of range"):
        NeuronConductance(model, model[2]).attribute(x, (9,), target=0)


# ------------------------------------------------------------------------------------------------ NeuronConductance


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("selector", [3, (slice(1, 4),), "callable"])
def test_neuron_conductance_matches_captum(method, selector):
    model = _deep(seed=31)
    x, base = randn(4, 5, seed=32), randn(4, 5, seed=33) * 0.2
    if selector == "callable":

        def selector(h):
            return h[:, 0] + 2 * h[:, 4]

    kwargs = dict(baselines=base, target=[1, 0, 2, 1], n_steps=11, method=method)
    ours = NeuronConductance(model, model[2]).attribute(x, selector, **kwargs)
    with pytest.warns(UserWarning) if callable(selector) else contextlib.nullcontext():
        theirs = CaptumNeuronConductance(model, model[2]).attribute(x, selector, **kwargs)
    assert ours.shape == x.shape and ours.dtype == torch.float64
    assert_close_scaled(ours, _rescaled(theirs.detach(), method, 11), RTOL)


def test_neuron_conductance_on_tuple_inputs_layer_inputs_and_local_attribution():
    model = seeded(ThreeInputs, seed=34)
    xs = (randn(3, 4, seed=35), randn(3, 2, 3, seed=36), randn(3, 5, seed=37))
    for to_input in (False, True):
        for multiply in (True, False):
            kwargs = dict(target=[2, 0, 1], n_steps=6, method="gausslegendre", attribute_to_neuron_input=to_input)
            # A layer every input reaches (captum's neuron gradients need every input to be used).
            ours = NeuronConductance(model, model.head, multiply_by_inputs=multiply).attribute(xs, 1, **kwargs)
            theirs = CaptumNeuronConductance(model, model.head, multiply_by_inputs=multiply).attribute(xs, 1, **kwargs)
            assert_close_scaled(ours, tuple(t.detach() for t in theirs), RTOL)
    # A neuron that two of the inputs do not reach: their conductances are zeros.
    first, second, third = NeuronConductance(model, model.b).attribute(xs, 4, target=0, n_steps=6)
    assert torch.equal(first, torch.zeros_like(first)) and torch.equal(third, torch.zeros_like(third))
    assert float(second.abs().max()) > 0
    cnn = seeded(SmallCNN, seed=38)
    x = randn(2, 2, 6, 6, seed=39)
    ours = NeuronConductance(cnn, cnn.conv1).attribute(x, (1, 2, 3), target=2, n_steps=8, internal_batch_size=5)
    theirs = CaptumNeuronConductance(cnn, cnn.conv1).attribute(x, (1, 2, 3), target=2, n_steps=8, internal_batch_size=4)
    assert_close_scaled(ours, _rescaled(theirs.detach(), "riemann_trapezoid", 8), RTOL)
    budgeted = NeuronConductance(cnn, cnn.conv1).attribute(x, (1, 2, 3), target=2, n_steps=8, memory_budget="48KiB")
    assert_close_scaled(budgeted, ours, 1e-13)


def test_neuron_conductance_is_the_flow_of_integrated_gradients_through_the_neuron():
    """A plain loop of (x − x′) Σ_k w_k ∂F/∂n ∂n/∂x; and summed over every neuron of a layer that all paths cross,
    the input's integrated gradients (the chain rule, at each point of the same rule)."""
    model = _deep(seed=40)
    x, base, target = randn(3, 5, seed=41), randn(3, 5, seed=42) * 0.4, torch.tensor([2, 1, 0])
    rows = torch.arange(3)
    alphas, weights = alphas_and_weights("gausslegendre", 12)
    expected = 0
    for a, w in zip(alphas, weights):
        z = (base + float(a) * (x - base)).requires_grad_()
        h = model[:3](z)
        (dfdh,) = torch.autograd.grad(model[3:](h)[rows, target].sum(), h, retain_graph=True)
        (dndx,) = torch.autograd.grad(h[:, 2].sum(), z)
        expected = expected + float(w) * dfdh[:, 2:3] * dndx
    expected = expected * (x - base)
    conductance = NeuronConductance(model, model[2])
    got = conductance.attribute(x, 2, base, target=target, n_steps=12, method="gausslegendre")
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    total = sum(conductance.attribute(x, j, base, target=target, n_steps=12, method="gausslegendre") for j in range(6))
    ig = IntegratedGradients(model).attribute(x, base, target=target, n_steps=12, method="gausslegendre")
    torch.testing.assert_close(total, ig, rtol=1e-11, atol=1e-13)


def test_neuron_conductance_with_an_in_place_operation_after_the_layer():
    model = seeded(InPlaceAfter, seed=43)
    x = randn(4, 5, seed=44)
    ours = NeuronConductance(model, model.first).attribute(x, 1, target=[0, 1, 2, 0], n_steps=9, method="riemann_left")
    theirs = CaptumNeuronConductance(model, model.first).attribute(
        x, 1, target=[0, 1, 2, 0], n_steps=9, method="riemann_left"
    )
    assert_close_scaled(ours, theirs.detach(), RTOL)


def test_neuron_conductance_with_auto_steps_converges_to_the_fine_rule():
    model = mlp(seed=45, n_in=5, hidden=8, n_out=3, dtype=torch.float64)
    x = randn(3, 5, seed=46)
    conductance = NeuronConductance(model, model[1])
    fine = conductance.attribute(x, 4, target=1, n_steps=64, method="gausslegendre")
    automatic = conductance.attribute(x, 4, target=1, n_steps="auto", tolerance=1e-8)
    assert_close_scaled(automatic, fine, 1e-6)
    assert conductance.last_report.error_estimate is not None


# ------------------------------------------------------------------------------------------------------ grad_kwargs


def test_create_graph_differentiates_layer_conductance():
    """With ``create_graph=True`` the conductances can be differentiated with respect to the parameters after the
    layer, as a plain loop of ``∂F/∂h(h_k) · (h_{k+1} − h_k)`` with the layer's values taken without a graph. (captum
    0.9's LayerConductance does not hand its grad_kwargs on: its result has no graph through the gradients.)"""
    model = _deep(seed=46)
    x = randn(3, 5, seed=47)
    alphas, _ = alphas_and_weights("gausslegendre", 7)
    with torch.no_grad():
        h = [model[:2](float(a) * x) for a in alphas]
    expected = 0
    for k in range(6):
        z = h[k].clone().requires_grad_()
        (g,) = torch.autograd.grad(model[2:](z)[:, 1].sum(), z, create_graph=True)
        expected = expected + g * (h[k + 1] - h[k])
    ours = LayerConductance(model, model[1]).attribute(x, target=1, n_steps=6, grad_kwargs={"create_graph": True})
    assert ours.requires_grad
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-14)
    after = [model[2].weight, model[2].bias, model[4].weight]
    mine = torch.autograd.grad(ours.square().sum(), [model[0].weight] + after, allow_unused=True)
    assert mine[0] is None
    expected_grads = torch.autograd.grad(expected.square().sum(), after)
    for chunks in (None, 4):
        again = LayerConductance(model, model[1]).attribute(
            x, target=1, n_steps=6, internal_batch_size=chunks, grad_kwargs={"create_graph": True}
        )
        for a, b in zip(torch.autograd.grad(again.square().sum(), after), expected_grads):
            assert float(b.abs().max()) > 0
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert all(p.grad is None for p in model.parameters())


def test_grad_kwargs_options_and_refusals():
    model = _deep(seed=48)
    x = randn(2, 5, seed=49)
    conductance, neuron = LayerConductance(model, model[2]), NeuronConductance(model, model[2])
    plain, plain_neuron = conductance.attribute(x, target=0, n_steps=5), neuron.attribute(x, 1, target=0, n_steps=5)
    for options in ({"retain_graph": True}, {"allow_unused": True, "materialize_grads": True}, {"create_graph": False}):
        got = conductance.attribute(x, target=0, n_steps=5, grad_kwargs=options)
        assert torch.equal(got, plain) and not got.requires_grad
        assert torch.equal(neuron.attribute(x, 1, target=0, n_steps=5, grad_kwargs=options), plain_neuron)
    with pytest.raises(ValueError, match="grad_kwargs with create_graph=True is not supported by NeuronConductance"):
        neuron.attribute(x, 1, target=0, grad_kwargs={"create_graph": True})
    with pytest.raises(ValueError, match="grad_kwargs holds"):
        conductance.attribute(x, target=0, grad_kwargs={"create_grpah": True})
    with pytest.raises(ValueError, match="memory_budget"):
        conductance.attribute(x, target=0, grad_kwargs={"create_graph": True}, memory_budget="1MiB")
