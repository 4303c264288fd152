"""Every bad argument is rejected with a ValueError or TypeError whose message names the parameter and the forms it
accepts. Where captum fails on the same call, a comment says how (usually a bare AssertionError or IndexError from
deep inside); these tests assert integrad's own messages only."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch import nn

from integrad import IntegratedGradients, LayerIntegratedGradients, NeuronIntegratedGradients
from integrad.engine import parse_bytes

from models import (
    Body,
    TextClassifier,
    TwoInputs,
    mlp,
)

#: Tiny models run faster and steadier on one thread (see conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

BAD = (ValueError, TypeError)


def expect(call, *words, types=BAD):
    """Run ``call``; it must raise one of ``types`` with every word in the message (case-insensitive)."""
    with pytest.raises(types) as info:
        call()
    message = str(info.value).lower()
    for word in words:
        assert word.lower() in message, f"{word!r} missing from: {info.value}"
    return info.value


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = mlp()
    x = torch.randn(3, 6)
    return model, IntegratedGradients(model), x


# ---------------------------------------------------------------------------------------------------- method
@pytest.mark.parametrize("method", ["simpson", "GaussLegendre", "", None, 3])
def test_bad_method(setup, method):
    # captum 0.9: a bare AssertionError.
    _, ig, x = setup
    expect(lambda: ig.attribute(x, target=0, method=method), "method", "gausslegendre", "riemann_trapezoid")


# ---------------------------------------------------------------------------------------------------- n_steps
@pytest.mark.parametrize("n_steps", [0, -3, 2.5, 10.0, True, False, "bad", None])
def test_bad_n_steps(setup, n_steps):
    # captum 0.9: n_steps=0 is a bare AssertionError; 2.5 a TypeError from NumPy ("deg must be an integer").
    _, ig, x = setup
    expect(lambda: ig.attribute(x, target=0, n_steps=n_steps), "n_steps", "int", "auto")


def test_trapezoid_needs_two_points(setup):
    _, ig, x = setup
    expect(lambda: ig.attribute(x, target=0, n_steps=1, method="riemann_trapezoid"), "n_steps", ">= 2", "trapezoid")
    # Two points is the smallest valid trapezoid rule.
    assert ig.attribute(x, target=0, n_steps=2, method="riemann_trapezoid").shape == x.shape


# ---------------------------------------------------------------------------------------------------- chunking
@pytest.mark.parametrize("size", [0, -1, 2.5, True, "4"])
def test_bad_internal_batch_size(setup, size):
    _, ig, x = setup
    expect(lambda: ig.attribute(x, target=0, internal_batch_size=size), "internal_batch_size", "positive int")


@pytest.mark.parametrize("budget", ["lots", "12 parsecs", "MiB", "1.2.3GB", "-5MB", ""])
def test_bad_memory_budget_string(setup, budget):
    _, ig, x = setup
    expect(lambda: ig.attribute(x, target=0, memory_budget=budget), "memory_budget", "256MiB")


@pytest.mark.parametrize("budget", [-1, 0, "0", "0KB"])
def test_non_positive_memory_budget(setup, budget):
    _, ig, x = setup
    expect(lambda: ig.attribute(x, target=0, memory_budget=budget), "memory_budget", "positive")


@pytest.mark.parametrize("budget", [1.5e9, True, [1024]])
def test_memory_budget_of_wrong_type(setup, budget):
    _, ig, x = setup
    expect(lambda: ig.attribute(x, target=0, memory_budget=budget), "memory_budget", "bytes", "256MiB")


def test_internal_batch_size_and_memory_budget_together(setup):
    _, ig, x = setup
    expect(
        lambda: ig.attribute(x, target=0, internal_batch_size=4, memory_budget="1MiB"),
        "internal_batch_size",
        "memory_budget",
        "not both",
    )


# ---------------------------------------------------------------------------------------------------- tolerance
@pytest.mark.parametrize("tolerance", [0, 1, -0.1, 1.5, "small", True, None])
def test_bad_tolerance_with_auto(setup, tolerance):
    _, ig, x = setup
    expect(lambda: ig.attribute(x, target=0, n_steps="auto", tolerance=tolerance), "tolerance", "(0, 1)")


@pytest.mark.parametrize("tolerance", [-0.1, "small"])
def test_bad_tolerance_with_fixed_steps(setup, tolerance):
    # A bad value is a bad argument even when the fixed rule does not use it: silently accepting it hides typos
    # such as passing tolerance where n_steps="auto" was meant.
    _, ig, x = setup
    expect(lambda: ig.attribute(x, target=0, n_steps=8, tolerance=tolerance), "tolerance", "(0, 1)")


# ---------------------------------------------------------------------------------------------------- delta flag
@pytest.mark.parametrize("flag", [1, 0, "yes", None])
def test_return_convergence_delta_must_be_bool(setup, flag):
    _, ig, x = setup
    expect(
        lambda: ig.attribute(x, target=0, return_convergence_delta=flag),
        "return_convergence_delta",
        "True",
        "False",
        types=TypeError,
    )


@pytest.mark.parametrize("kwargs", [{}, {"return_convergence_delta": True}, {"n_steps": "auto"}])
def test_an_empty_batch_is_an_error(setup, kwargs):
    _, ig, x = setup
    expect(lambda: ig.attribute(x[:0], target=0, **kwargs), "inputs", "no examples", "at least one")


def test_numpy_numbers_are_numbers(setup):
    # Counts, indices and the tolerance often come out of numpy arithmetic; numpy bools stay refused as numbers.
    _, ig, x = setup
    plain = ig.attribute(x, target=1, n_steps=8, internal_batch_size=4)
    same = ig.attribute(x, target=np.int64(1), n_steps=np.int32(8), internal_batch_size=np.int64(4))
    torch.testing.assert_close(same, plain, rtol=0, atol=0)
    listed = ig.attribute(x, target=[np.int64(1)] * x.shape[0], n_steps=8, internal_batch_size=4)
    torch.testing.assert_close(listed, plain, rtol=0, atol=0)
    auto = ig.attribute(x, target=1, n_steps="auto", tolerance=1e-3)
    torch.testing.assert_close(
        ig.attribute(x, target=1, n_steps="auto", tolerance=np.float32(1e-3)), auto, rtol=0, atol=0
    )
    expect(lambda: ig.attribute(x, target=0, n_steps=np.bool_(True)), "n_steps", "int")
    expect(lambda: ig.attribute(x, target=0, n_steps="auto", tolerance=np.bool_(True)), "tolerance", "(0, 1)")


def test_numpy_bools_are_bools(setup):
    _, ig, x = setup
    got, delta = ig.attribute(x, target=0, return_convergence_delta=np.bool_(True))
    assert delta.shape == (x.shape[0],)
    assert isinstance(ig.attribute(x, target=0, return_convergence_delta=np.bool_(False)), torch.Tensor)


# ---------------------------------------------------------------------------------------------------- baselines
def test_baseline_of_wrong_feature_shape(setup):
    # captum 0.9: a bare AssertionError.
    _, ig, x = setup
    expect(lambda: ig.attribute(x, baselines=torch.zeros(3, 5), target=0), "baselines", "(3, 5)", "first dimension 1")


def test_baseline_of_wrong_batch(setup):
    _, ig, x = setup
    expect(lambda: ig.attribute(x, baselines=torch.zeros(2, 6), target=0), "baselines", "(2, 6)", "first dimension 1")


@pytest.mark.parametrize("shape", [(6,), (1, 1, 6), (3, 6, 1)])
def test_baseline_of_other_dimensionality(setup, shape):
    _, ig, x = setup
    expect(lambda: ig.attribute(x, baselines=torch.zeros(shape), target=0), "baselines", str(shape), "broadcasting")


def test_baseline_with_dimensions_of_size_one_broadcasts(setup):
    # As in captum, a baseline with size 1 in a dimension holds one value along it (here one per feature row).
    _, ig, x = setup
    for shape in [(1, 1), (x.shape[0], 1), (1, x.shape[1])]:
        b = torch.linspace(-0.5, 0.5, shape[0] * shape[1]).reshape(shape)
        got = ig.attribute(x, baselines=b, target=0)
        expected = ig.attribute(x, baselines=b.expand_as(x).clone(), target=0)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
        assert not torch.allclose(got, ig.attribute(x, target=0))  # the baseline was used


def test_baseline_tuple_of_wrong_length():
    model = TwoInputs()
    x1, x2 = torch.randn(2, 4), torch.randn(2, 2, 3)
    ig = IntegratedGradients(model)
    expect(
        lambda: ig.attribute((x1, x2), baselines=(torch.zeros(2, 4),), target=0),
        "baselines",
        "length 1",
        "2 inputs",
        "tuple with one of these per input",
    )
    expect(lambda: ig.attribute((x1, x2), baselines=torch.zeros(2, 4), target=0), "baselines", "one baseline per input")


@pytest.mark.parametrize("baseline", [[0.0] * 6, "zeros", True, object()])
def test_baseline_that_is_not_a_tensor_or_number(setup, baseline):
    _, ig, x = setup
    expect(lambda: ig.attribute(x, baselines=baseline, target=0), "baselines", "number", "tensor", types=TypeError)


def test_baseline_shape_error_inside_tuple():
    model = TwoInputs()
    ig = IntegratedGradients(model)
    expect(
        lambda: ig.attribute(
            (torch.randn(2, 4), torch.randn(2, 2, 3)), baselines=(0.0, torch.zeros(2, 3, 2)), target=0
        ),
        "baselines[1]",
        "(2, 3, 2)",
    )


# ---------------------------------------------------------------------------------------------------- target
@pytest.mark.parametrize("target", [4, 100, [0, 4, 1]])
def test_target_out_of_range(setup, target):
    # captum 0.9: a bare IndexError ("index 4 is out of bounds for dimension 1 with size 4").
    _, ig, x = setup
    expect(lambda: ig.attribute(x, target=target), "target", "outside", "(4,)")


def test_negative_target_out_of_range(setup):
    _, ig, x = setup
    expect(lambda: ig.attribute(x, target=-5), "target", "-5", "outside")
    # Within range, a negative index counts from the end, as in Python indexing.
    torch.testing.assert_close(ig.attribute(x, target=-1, n_steps=8), ig.attribute(x, target=3, n_steps=8))


def test_target_list_of_wrong_length(setup):
    # captum 0.9: a bare AssertionError ("Target list length does not match output!").
    _, ig, x = setup
    expect(lambda: ig.attribute(x, target=[0, 1]), "target", "length 2", "3 examples")
    expect(lambda: ig.attribute(x, target=torch.tensor([0, 1])), "target", "(2,)", "3 examples")


def test_target_tuple_of_wrong_length_for_output_dims(setup):
    model, ig, x = setup
    expect(lambda: ig.attribute(x, target=(1, 2)), "target", "2 index", "1 dimension")

    def grid(z):  # output (N, 2, 2): two indices per example needed
        return model(z).view(-1, 2, 2)

    ig3 = IntegratedGradients(grid)
    expect(lambda: ig3.attribute(x, target=1), "target", "1 index", "2 dimension")
    expect(lambda: ig3.attribute(x, target=(1, 0, 1)), "target", "3 index", "2 dimension")
    # The right number of indices works and picks the same output as the flat index would.
    flat = IntegratedGradients(model).attribute(x, target=3, n_steps=8)
    torch.testing.assert_close(ig3.attribute(x, target=(1, 1), n_steps=8), flat)


def test_target_missing_for_vector_output(setup):
    # captum 0.9: a bare AssertionError ("Target not provided when necessary ...").
    _, ig, x = setup
    expect(lambda: ig.attribute(x), "target is required", "target=")


def test_target_missing_is_fine_for_scalar_output(setup):
    model, _, x = setup
    ig = IntegratedGradients(lambda z: model(z)[:, 2])
    torch.testing.assert_close(ig.attribute(x, n_steps=8), IntegratedGradients(model).attribute(x, target=2, n_steps=8))


@pytest.mark.parametrize(
    "target", [torch.tensor([0.0, 1.0, 2.0]), torch.tensor(1.0), torch.tensor([True, False, True])]
)
def test_float_or_bool_tensor_target(setup, target):
    _, ig, x = setup
    expect(lambda: ig.attribute(x, target=target), "target", "integer", types=TypeError)


@pytest.mark.parametrize("target", [1.0, "cat", True, [0, "a", 1], {0: 1}])
def test_target_of_wrong_type(setup, target):
    _, ig, x = setup
    expect(lambda: ig.attribute(x, target=target), "target", types=TypeError)


# ---------------------------------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("inputs", [[[0.0] * 6], "x", 3.0])
def test_inputs_that_are_not_tensors(setup, inputs):
    _, ig, _ = setup
    expect(lambda: ig.attribute(inputs, target=0), "inputs", "torch.Tensor", "tuple of tensors", types=TypeError)


def test_inputs_tuple_holding_a_non_tensor(setup):
    model = TwoInputs()
    ig = IntegratedGradients(model)
    expect(lambda: ig.attribute((torch.randn(2, 4), [1.0]), target=0), "inputs[1]", "torch.Tensor", types=TypeError)


def test_integer_inputs_for_input_ig(setup):
    # captum 0.9: no error at all.
    _, ig, _ = setup
    ids = torch.randint(0, 5, (3, 6))
    err = expect(lambda: ig.attribute(ids, target=0), "inputs", "torch.int64", "floating-point", types=TypeError)
    assert "LayerIntegratedGradients" in str(err)


def test_inputs_with_different_batch_sizes():
    ig = IntegratedGradients(TwoInputs())
    expect(
        lambda: ig.attribute((torch.randn(2, 4), torch.randn(3, 2, 3)), target=0), "inputs", "same batch size", "[2, 3]"
    )


def test_empty_inputs_tuple(setup):
    _, ig, _ = setup
    expect(lambda: ig.attribute((), target=0), "inputs", "non-empty tuple")


def test_zero_dimensional_input(setup):
    _, ig, _ = setup
    expect(lambda: ig.attribute(torch.tensor(1.0), target=0), "inputs", "batch dimension", "0-d")


# ---------------------------------------------------------------------------------------------------- extra args
def test_additional_forward_args_with_wrong_batch():
    # captum 0.9: a RuntimeError from inside the model ("The size of tensor a (150) must match ...").
    ig = IntegratedGradients(TwoInputs())
    x1, x2 = torch.randn(3, 4), torch.randn(3, 2, 3)
    expect(
        lambda: ig.attribute((x1, x2), target=0, additional_forward_args=torch.ones(2)),
        "additional_forward_args[0]",
        "(2,)",
        "one row per example",
        "dim 0 = 3",
    )


def test_additional_forward_args_constant_forms_are_passed_through():
    model = TwoInputs()
    ig = IntegratedGradients(model)
    x1, x2 = torch.randn(3, 4), torch.randn(3, 2, 3)
    # A 0-d tensor is not per-example: it is passed unchanged and broadcasts inside the model.
    a = ig.attribute((x1, x2), target=0, additional_forward_args=torch.tensor(2.0), n_steps=8)
    b = ig.attribute((x1, x2), target=0, additional_forward_args=torch.full((3,), 2.0), n_steps=8)
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------------- neurons
@pytest.mark.parametrize("selector", ["3", 1.5, [0, 1], True, None, (0, 1.0)])
def test_neuron_selector_of_bad_type(selector):
    model = Body(armed=False)
    nig = NeuronIntegratedGradients(model, model.mid)
    expect(
        lambda: nig.attribute(torch.randn(2, 5), selector),
        "neuron_selector",
        "int",
        "tuple",
        "callable",
        types=TypeError,
    )


def test_neuron_selector_with_wrong_number_of_indices():
    # captum 0.9: a bare AssertionError ("Cannot choose target column with output shape ...").
    model = Body(armed=False)
    nig = NeuronIntegratedGradients(model, model.mid)
    expect(lambda: nig.attribute(torch.randn(2, 5), (1, 2)), "neuron_selector", "2 index", "(6,)")


@pytest.mark.parametrize("selector", [6, -7, (10,)])
def test_neuron_selector_out_of_range(selector):
    # captum 0.9: a bare IndexError ("index 6 is out of bounds for dimension 1 with size 6").
    model = Body(armed=False)
    nig = NeuronIntegratedGradients(model, model.mid)
    expect(lambda: nig.attribute(torch.randn(2, 5), selector), "neuron_selector", "out of range", "size 6")


def test_neuron_selector_callable_returning_wrong_shape():
    model = Body(armed=False)
    nig = NeuronIntegratedGradients(model, model.mid)
    expect(lambda: nig.attribute(torch.randn(2, 5), lambda v: v[:, :2]), "neuron_selector", "one scalar per example")
    expect(lambda: nig.attribute(torch.randn(2, 5), lambda v: 1.0), "neuron_selector", "tensor", types=TypeError)


# ---------------------------------------------------------------------------------------------------- layers
def test_layer_not_in_model():
    # captum 0.9: a bare AssertionError at attribute time ("Forward hook did not obtain any outputs ...").
    model = mlp()
    stranger = nn.Linear(6, 16)
    expect(lambda: LayerIntegratedGradients(model, stranger), "layer", "not a submodule", "named_modules")
    expect(lambda: LayerIntegratedGradients(model, [model[0], stranger]), "layer[1]", "not a submodule")
    expect(lambda: NeuronIntegratedGradients(model, stranger), "layer", "not a submodule")
    expect(lambda: LayerIntegratedGradients(model, "0"), "layer", "nn.Module", types=TypeError)
    expect(lambda: LayerIntegratedGradients(model, []), "layer", "non-empty")


class _WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(6, 3)
        self.unused = nn.Linear(6, 3)

    def forward(self, x):
        return self.used(x)


def test_layer_that_never_runs():
    model = _WithUnused()
    x = torch.randn(2, 6)
    expect(lambda: LayerIntegratedGradients(model, model.unused).attribute(x, target=0), "layer", "did not run")
    expect(
        lambda: LayerIntegratedGradients(model, [model.used, model.unused]).attribute(x, target=0),
        "layer",
        "did not run",
    )
    expect(lambda: NeuronIntegratedGradients(model, model.unused).attribute(x, 0), "layer", "did not run")


@pytest.mark.parametrize("wrap", [lambda out: {"logits": out}, lambda out: (out, out), lambda out: out.tolist()])
def test_model_output_that_is_not_a_tensor(wrap):
    # captum 0.9: an AttributeError ("'dict' object has no attribute 'shape'").
    model = mlp()

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return wrap(self.inner(x))

    wrapped = Wrapped()
    x = torch.randn(2, 6)
    expect(
        lambda: IntegratedGradients(wrapped).attribute(x, target=0),
        "forward_func",
        "torch.Tensor",
        "logits",
        types=TypeError,
    )
    expect(
        lambda: LayerIntegratedGradients(wrapped, model[0]).attribute(x, target=0),
        "forward_func",
        "torch.Tensor",
        types=TypeError,
    )


def test_model_output_without_batch_dimension():
    model = mlp()
    ig = IntegratedGradients(lambda z: model(z).sum())
    expect(lambda: ig.attribute(torch.randn(3, 6)), "forward_func", "dimension 0")


def test_forward_func_and_flags_at_construction():
    expect(lambda: IntegratedGradients("model"), "forward_func", "callable", types=TypeError)
    expect(lambda: IntegratedGradients(mlp(), multiply_by_inputs=1), "multiply_by_inputs", types=TypeError)


def test_layer_ig_flag_errors():
    model = TextClassifier()
    lig = LayerIntegratedGradients(model, model.embed)
    ids, mask = torch.randint(1, 20, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    expect(
        lambda: lig.attribute(ids, target=0, additional_forward_args=(mask,), attribute_to_layer_input="yes"),
        "attribute_to_layer_input",
        types=TypeError,
    )
    expect(lambda: lig.attribute(ids, target=0, additional_forward_args=(mask[:1],)), "additional_forward_args[0]")
    expect(lambda: lig.attribute(ids, target=3, additional_forward_args=(mask,)), "target", "outside")


# ---------------------------------------------------------------------------------------------------- parse_bytes
def test_parse_bytes_errors_name_the_parameter():
    expect(lambda: parse_bytes("big", name="budget"), "budget", "256MiB")
    expect(lambda: parse_bytes(None), "memory_budget", types=TypeError)


class WithLogits(nn.Module):
    """Returns an output object holding ``.logits``, as transformers' models do."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return types.SimpleNamespace(logits=self.inner(x), hidden_states=None)


def test_an_output_object_with_logits_is_attributed_through_its_logits(setup):
    from integrad.explainers import IntegratedGradients as Explainer

    model, ig, x = setup
    wrapped = WithLogits(model)
    t = torch.tensor([0, 1, 2])
    expected = ig.attribute(x, target=t, n_steps=12)
    torch.testing.assert_close(
        IntegratedGradients(wrapped).attribute(x, target=t, n_steps=12), expected, rtol=0, atol=0
    )
    torch.testing.assert_close(Explainer(wrapped, n_steps=12).attribute(x, t), expected, rtol=0, atol=0)
    layer = LayerIntegratedGradients(wrapped, model[0]).attribute(x, target=t, n_steps=12)
    torch.testing.assert_close(layer, LayerIntegratedGradients(model, model[0]).attribute(x, target=t, n_steps=12))
    # An output that is neither a tensor nor holds one under .logits is still an error naming what is accepted.
    expect(
        lambda: IntegratedGradients(lambda z: {"scores": model(z)}).attribute(x, target=0),
        "forward_func",
        "torch.Tensor",
        ".logits",
        types=TypeError,
    )


@pytest.mark.parametrize("noise_level", [0.0, 0.1])
def test_the_explainer_rejects_an_empty_batch_by_name(setup, noise_level):
    from integrad.explainers import IntegratedGradients as Explainer

    model, _, x = setup
    expect(lambda: Explainer(model, noise_level=noise_level).attribute(x[:0], 0), "inputs", "no examples")
