"""Whatever happens, the caller's model and tensors come back as they were: no hooks, same flags, same values, no
gradients accumulated on parameters, no saved-tensor hooks left installed; the model's own exceptions propagate
unchanged; a call under ``torch.no_grad()`` works and gives the same result."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from integrad import IntegratedGradients, LayerIntegratedGradients, NeuronIntegratedGradients, NoiseTunnel

from models import (
    Body,
    FailsOnCall,
    TextClassifier,
    TwoBranch,
    deep_mlp,
    mlp,
    no_hooks_left,
    saved_tensor_hooks_left,
)

#: Tiny models run faster and steadier on one thread (see conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(model: nn.Module, tensors: dict) -> dict:
    return {
        "training": {name: m.training for name, m in model.named_modules()},
        "param_requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "param_values": {n: p.detach().clone() for n, p in model.named_parameters()},
        "param_grads": {n: p.grad for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "tensor_values": {k: v.detach().clone() for k, v in tensors.items()},
        "tensor_requires_grad": {k: v.requires_grad for k, v in tensors.items()},
        "tensor_grads": {k: v.grad for k, v in tensors.items() if v.is_leaf},
        "tensor_versions": {k: v._version for k, v in tensors.items()},
    }


def assert_unchanged(model: nn.Module, tensors: dict, before: dict) -> None:
    after = snapshot(model, tensors)
    assert no_hooks_left(model)
    assert not saved_tensor_hooks_left()
    assert after["training"] == before["training"]
    assert after["param_requires_grad"] == before["param_requires_grad"]
    for n, v in before["param_values"].items():
        assert torch.equal(after["param_values"][n], v), n
    assert all(g is None for g in after["param_grads"].values())
    assert after["buffers"].keys() == before["buffers"].keys()
    for n, v in before["buffers"].items():
        assert torch.equal(after["buffers"][n], v), n
    for k, v in before["tensor_values"].items():
        # Bit-identical, NaN-aware: view as raw bytes.
        assert torch.equal(
            after["tensor_values"][k].view(torch.uint8) if v.is_floating_point() else after["tensor_values"][k],
            v.view(torch.uint8) if v.is_floating_point() else v,
        ), k
    assert after["tensor_requires_grad"] == before["tensor_requires_grad"]
    assert after["tensor_grads"] == before["tensor_grads"]
    assert after["tensor_versions"] == before["tensor_versions"]


def later_backward_works(model: nn.Module, x: torch.Tensor) -> None:
    """An ordinary training step after the call: gradients reach the parameters, then are cleared again."""
    loss = model(x.detach()).float().square().mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)


def _calls():
    """(name, model, run(model, tensors), tensors) for each method, with training mode and grad flags mixed."""
    torch.manual_seed(0)
    x = torch.randn(3, 6, requires_grad=True)
    base = torch.randn(1, 6)
    yield (
        "ig",
        mlp(),
        lambda m, t: IntegratedGradients(m).attribute(
            t["x"], baselines=t["base"], target=1, n_steps=12, return_convergence_delta=True
        ),
        {"x": x, "base": base},
    )
    yield (
        "ig_auto_budget",
        mlp(),
        lambda m, t: IntegratedGradients(m).attribute(t["x"], target=1, n_steps="auto", memory_budget="64KiB"),
        {"x": x},
    )
    yield (
        "layer_list",
        deep_mlp(),
        lambda m, t: LayerIntegratedGradients(m, [m[0], m[2], m[4]]).attribute(
            t["x"], baselines=t["base"], target=2, n_steps=10, return_convergence_delta=True
        ),
        {"x": x, "base": base},
    )
    yield (
        "layer_input",
        deep_mlp(),
        lambda m, t: LayerIntegratedGradients(m, m[2]).attribute(
            t["x"], target=2, n_steps=10, attribute_to_layer_input=True, internal_batch_size=4
        ),
        {"x": x},
    )
    yield (
        "layer_create_graph",
        deep_mlp(),
        lambda m, t: LayerIntegratedGradients(m, m[2]).attribute(
            t["x"], target=2, n_steps=10, internal_batch_size=8, grad_kwargs={"create_graph": True}
        ),
        {"x": x},
    )
    yield (
        "neuron",
        deep_mlp(),
        lambda m, t: NeuronIntegratedGradients(m, m[2]).attribute(t["x"], 3, baselines=t["base"], n_steps=10),
        {"x": x, "base": base},
    )
    yield (
        "noise_tunnel",
        mlp(),
        lambda m, t: NoiseTunnel(IntegratedGradients(m)).attribute(
            t["x"], nt_samples=3, stdevs=0.1, target=0, n_steps=6, baselines=t["base"], draw_baseline_from_distrib=True
        ),
        {"x": x, "base": torch.randn(4, 6)},
    )
    yield (
        "noise_tunnel_generator",
        mlp(),
        lambda m, t: NoiseTunnel(LayerIntegratedGradients(m, m[0])).attribute(
            t["x"],
            nt_samples=3,
            stdevs=0.1,
            target=0,
            n_steps=6,
            generator=torch.Generator().manual_seed(3),
            baselines=t["base"],
            draw_baseline_from_distrib=True,
        ),
        {"x": x, "base": torch.randn(4, 6)},
    )


CALLS = list(_calls())


@pytest.mark.parametrize("name,model,run,tensors", CALLS, ids=[c[0] for c in CALLS])
@pytest.mark.parametrize("training", [True, False])
def test_successful_call_leaves_everything_as_it_was(name, model, run, tensors, training):
    model.train(training)
    # A frozen first layer: its flag must stay off, the others on.
    first = next(model.parameters())
    first.requires_grad_(False)
    before = snapshot(model, tensors)
    run(model, tensors)
    assert_unchanged(model, tensors, before)
    first.requires_grad_(True)
    later_backward_works(model, tensors["x"])


@pytest.mark.parametrize("name,model,run,tensors", CALLS, ids=[c[0] for c in CALLS])
def test_same_result_under_no_grad(name, model, run, tensors):
    torch.manual_seed(1)
    np.random.seed(1)  # NoiseTunnel draws baselines from numpy's generator
    free = run(model, tensors)
    torch.manual_seed(1)
    np.random.seed(1)
    with torch.no_grad():
        inside = run(model, tensors)
    assert torch.is_grad_enabled()

    def flat(r):
        parts = r if isinstance(r, (tuple, list)) else [r]
        return [t for part in parts for t in (part if isinstance(part, (tuple, list)) else [part])]

    for a, b in zip(flat(free), flat(inside), strict=True):
        torch.testing.assert_close(a, b)


class ModelError(Exception):
    """An exception type of the user's own, which nothing in integrad can know about."""


@pytest.mark.parametrize("when", [1, 3])
@pytest.mark.parametrize(
    "kind", ["ig", "ig_chunked", "ig_auto", "layer", "layer_list", "layer_create_graph", "neuron", "noise_tunnel"]
)
def test_model_exception_propagates_unchanged_and_state_is_restored(kind, when):
    torch.manual_seed(0)
    inner = deep_mlp() if kind.startswith("layer") or kind == "neuron" else mlp()
    error = ModelError("the model refuses: code 17")
    model = FailsOnCall(inner, error, when=when)
    x = torch.randn(4, 6)
    tensors = {"x": x}
    model.train()
    before = snapshot(model, tensors)
    run = {
        "ig": lambda: IntegratedGradients(model).attribute(
            x, target=0, n_steps=6, return_convergence_delta=True, internal_batch_size=12
        ),
        "ig_chunked": lambda: IntegratedGradients(model).attribute(x, target=0, n_steps=6, internal_batch_size=3),
        "ig_auto": lambda: IntegratedGradients(model).attribute(x, target=0, n_steps="auto", internal_batch_size=9),
        "layer": lambda: LayerIntegratedGradients(model, inner[2]).attribute(
            x, target=0, n_steps=6, internal_batch_size=5
        ),
        "layer_list": lambda: LayerIntegratedGradients(model, [inner[0], inner[2]]).attribute(x, target=0, n_steps=6),
        "layer_create_graph": lambda: LayerIntegratedGradients(model, inner[2]).attribute(
            x, target=0, n_steps=6, internal_batch_size=5, grad_kwargs={"create_graph": True}
        ),
        "neuron": lambda: NeuronIntegratedGradients(model, inner[2]).attribute(x, 1, n_steps=6, internal_batch_size=5),
        "noise_tunnel": lambda: NoiseTunnel(IntegratedGradients(model)).attribute(
            x, nt_samples=4, nt_samples_batch_size=1, target=0, n_steps=4
        ),
    }[kind]
    with pytest.raises(ModelError) as info:
        run()
    assert info.value is error
    assert str(info.value) == "the model refuses: code 17"
    assert model.calls == when, "the failing call must not be retried"
    assert_unchanged(model, tensors, before)
    later_backward_works(inner, x)


class NormalisedBody(nn.Module):
    """Linear, batch norm, dropout, then a layer that can be told to raise (after batch norm has run)."""

    def __init__(self, fail: bool = False):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(21)
            self.first = nn.Linear(6, 8)
            self.norm = nn.BatchNorm1d(8)
            self.drop = nn.Dropout(0.2)
            self.head = nn.Linear(8, 3)
        self.fail = fail

    def forward(self, x):
        h = self.drop(torch.relu(self.norm(self.first(x))))
        if self.fail:
            raise ModelError("after the batch norm")
        return self.head(h)


TRAINING_CALLS = {
    "ig": lambda m, x: IntegratedGradients(m).attribute(x, target=0, n_steps=6, internal_batch_size=8),
    "delta": lambda m, x: IntegratedGradients(m).compute_convergence_delta((x,), 0.0, (x,), target=0),
    "layer": lambda m, x: LayerIntegratedGradients(m, m.first).attribute(x, target=0, n_steps=6),
    "neuron": lambda m, x: NeuronIntegratedGradients(m, m.head).attribute(x, 1, n_steps=6),
    "noise_tunnel": lambda m, x: NoiseTunnel(IntegratedGradients(m)).attribute(x, nt_samples=2, target=0, n_steps=4),
}


@pytest.mark.parametrize("fail", [False, True])
@pytest.mark.parametrize("kind", list(TRAINING_CALLS))
def test_training_mode_warns_and_batch_norm_statistics_are_put_back(kind, fail):
    # Every forward in training mode moves batch norm's running statistics: they come back as they were, also when
    # the model raises; and the caller is told that the attributions of such a model are not meaningful.
    model = NormalisedBody(fail=fail).train()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-1, 1)
    x = torch.randn(4, 6)
    before = snapshot(model, {"x": x})
    with pytest.warns(RuntimeWarning, match=r"training mode, where BatchNorm1d, Dropout make .*model.eval\(\)"):
        if fail:
            with pytest.raises(ModelError):
                TRAINING_CALLS[kind](model, x)
        else:
            TRAINING_CALLS[kind](model, x)
    assert_unchanged(model, {"x": x}, before)
    # The statistics did move during the call (so putting them back is what kept them).
    model.fail = False
    model(x)
    assert not torch.equal(model.norm.running_mean, before["buffers"]["norm.running_mean"])


@pytest.mark.parametrize("kind", list(TRAINING_CALLS))
def test_no_warning_in_eval_mode_or_without_such_modules(kind):
    x = torch.randn(4, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TRAINING_CALLS[kind](NormalisedBody().eval(), x)
        model = NormalisedBody().train()
        model.norm, model.drop = nn.Identity(), nn.Identity()
        TRAINING_CALLS[kind](model, x)


def test_model_runtime_error_propagates_with_its_message():
    model = FailsOnCall(mlp(), RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x6 and 7x16)"), when=1)
    x = torch.randn(4, 6)
    with pytest.raises(RuntimeError, match=r"mat1 and mat2 shapes cannot be multiplied \(4x6 and 7x16\)"):
        IntegratedGradients(model).attribute(x, target=0, n_steps=6)
    assert model.calls == 1
    assert no_hooks_left(model) and not saved_tensor_hooks_left()


@pytest.mark.parametrize(
    "make",
    [
        lambda m, x: LayerIntegratedGradients(m, m[0]).attribute(x, target=9),
        lambda m, x: NeuronIntegratedGradients(m, m[2]).attribute(x, (0, 0)),
        lambda m, x: NeuronIntegratedGradients(m, m[2]).attribute(x, 99, attribute_to_neuron_input=True),
        lambda m, x: IntegratedGradients(m).attribute(x, target=0, memory_budget="nonsense"),
        lambda m, x: LayerIntegratedGradients(m, [m[0], m[2]]).attribute(x, n_steps=4),
    ],
    ids=["layer_target", "neuron_indices", "neuron_input_range", "budget", "layer_list_no_target"],
)
def test_argument_errors_leave_no_hooks(make):
    model = deep_mlp()
    x = torch.randn(2, 6)
    before = snapshot(model, {"x": x})
    with pytest.raises((ValueError, TypeError)):
        make(model, x)
    assert_unchanged(model, {"x": x}, before)


def test_token_ids_and_mask_are_untouched_by_layer_ig():
    model = TextClassifier()
    ids = torch.tensor([[3, 5, 7, 0], [2, 9, 0, 0]])
    mask = (ids != 0).long()
    base = torch.zeros_like(ids)
    tensors = {"ids": ids, "mask": mask, "base": base}
    before = snapshot(model, tensors)
    LayerIntegratedGradients(model, model.embed).attribute(
        ids, baselines=base, target=1, additional_forward_args=(mask,), n_steps=8
    )
    assert_unchanged(model, tensors, before)


def test_frozen_model_and_leaf_inputs_that_require_grad():
    # A frozen model (eval, no parameter gradients) with an input that is itself a leaf with a .grad already set:
    # that .grad must not be touched or accumulated into.
    model = TwoBranch().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(3, 5, requires_grad=True)
    x.grad = torch.full_like(x, 7.0)
    before = snapshot(model, {"x": x})
    IntegratedGradients(model).attribute(x, target=1, n_steps=8)
    LayerIntegratedGradients(model, [model.left, model.right]).attribute(x, target=1, n_steps=8)
    assert_unchanged(model, {"x": x}, before)
    assert torch.equal(x.grad, torch.full_like(x, 7.0))


def test_no_saved_tensor_hooks_after_budget_retries_and_later_hooks_work():
    model = mlp(hidden=256)
    x = torch.randn(6, 6)
    # A budget of a few rows forces chunks to be stopped mid-forward and retried.
    IntegratedGradients(model).attribute(x, target=0, n_steps=20, memory_budget="24KiB")
    assert not saved_tensor_hooks_left()
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        y = model(x.requires_grad_()).sum()
    assert packed, "a hook installed by the caller after the call must see the saved tensors"
    y.backward()
    assert x.grad is not None and model[0].weight.grad is not None


def test_nested_inside_callers_saved_tensor_hooks():
    # The caller's own saved-tensor hooks are active around the call: they stay installed afterwards.
    model = mlp()
    x = torch.randn(3, 6)
    outer = torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)
    with outer:
        a = IntegratedGradients(model).attribute(x, target=0, n_steps=8, memory_budget="1MiB")
        assert saved_tensor_hooks_left()
    assert not saved_tensor_hooks_left()
    torch.testing.assert_close(a, IntegratedGradients(model).attribute(x, target=0, n_steps=8))


def test_neuron_early_exit_restores_state_of_the_tail():
    model = Body(armed=False).train()
    x = torch.randn(3, 5)
    before = snapshot(model, {"x": x})
    NeuronIntegratedGradients(model, model.mid).attribute(x, 2, n_steps=8)
    assert_unchanged(model, {"x": x}, before)
    # The forward that early exit cut short leaves the model usable for an ordinary forward afterwards.
    assert model(x).shape == (3, 2)


def test_callers_own_hooks_and_gradients_survive():
    # Hooks the caller registered stay registered (and keep firing); gradients already accumulated on parameters
    # and on a baseline that requires grad are neither cleared nor added to.
    model = deep_mlp()
    seen = []
    own_post = model[2].register_forward_hook(lambda m, a, out: seen.append("post"))
    own_pre = model[0].register_forward_pre_hook(lambda m, a: seen.append("pre"))
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    grads_before = {n: p.grad.clone() for n, p in model.named_parameters()}
    x = torch.randn(3, 6)
    base = torch.randn(1, 6, requires_grad=True)
    base.grad = torch.ones_like(base)
    try:
        IntegratedGradients(model).attribute(x, baselines=base, target=0, n_steps=6, return_convergence_delta=True)
        LayerIntegratedGradients(model, [model[0], model[2]]).attribute(x, baselines=base, target=0, n_steps=6)
        NeuronIntegratedGradients(model, model[2]).attribute(x, 1, baselines=base, n_steps=6)
        assert list(model[2]._forward_hooks.values())[0] is not None and len(model[2]._forward_hooks) == 1
        assert len(model[0]._forward_pre_hooks) == 1
        assert len(model[0]._forward_hooks) == 0 and len(model[2]._forward_pre_hooks) == 0
        assert "post" in seen and "pre" in seen
        for n, p in model.named_parameters():
            assert torch.equal(p.grad, grads_before[n]), n
        assert torch.equal(base.grad, torch.ones_like(base))
        assert base.requires_grad and base.is_leaf
    finally:
        own_post.remove()
        own_pre.remove()
    assert no_hooks_left(model)


class Centring(nn.Module):
    """Writes into its input (``x -= 0.5``, then an in-place ReLU) before a small MLP; counts its calls."""

    def __init__(self, inplace: bool = True):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(22)
            self.body = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        self.inplace = inplace
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.inplace:
            x -= 0.5
            x = torch.relu_(x)
        else:
            x = torch.relu(x - 0.5)
        return self.body(x)


@pytest.mark.parametrize("kind", ["ig", "ig_auto", "neuron"])
def test_a_model_writing_into_its_input_gets_copies_of_the_points(kind):
    # autograd forbids writing into the path points (captum fails there): the chunk is run again with copies, the
    # caller's tensors are untouched, and later calls hand over copies from the start.
    x = torch.rand(4, 6) + 0.2
    tensors = {"x": x}
    model, twin = Centring(), Centring(inplace=False)
    before = snapshot(model, tensors)
    call = {
        "ig": lambda m, o: o.attribute(x, target=1, n_steps=8, internal_batch_size=16, return_convergence_delta=True),
        "ig_auto": lambda m, o: o.attribute(x, target=1, n_steps="auto", internal_batch_size=16),
        "neuron": lambda m, o: o.attribute(x, 2, n_steps=8, internal_batch_size=16),
    }[kind]
    make = (lambda m: NeuronIntegratedGradients(m, m.body[0])) if kind == "neuron" else IntegratedGradients
    ours, theirs = make(model), make(twin)
    got = call(model, ours)
    expected = call(twin, theirs)
    for g, e in zip(
        got if isinstance(got, tuple) else (got,), expected if isinstance(expected, tuple) else (expected,)
    ):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-7)
    assert_unchanged(model, tensors, before)
    # One chunk was run twice in the first call; the second call runs each chunk once, like the twin.
    assert model.calls == twin.calls + 1
    model.calls = twin.calls = 0
    call(model, ours)
    call(twin, theirs)
    assert model.calls == twin.calls > 0
