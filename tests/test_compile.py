"""Every method on a model wrapped with ``torch.compile`` (inductor, CPU) gives the eager model's attributions.

The engine's memory meter counts what autograd saves through saved-tensor hooks, which the forward pass of a
compiled model calls from inside dynamo's frame evaluation: the meter must run as plain Python there, not be traced
into the model's graph. Layer and neuron methods put forward hooks on a layer inside the compiled model, and dynamo
does not guard its graphs on hooks added after they were traced (``torch._dynamo.config.skip_nnmodule_hook_guards``):
a model that already ran compiled, on several batch sizes (one graph with dynamic shapes), would run without them.
Their passes run the eager model inside the wrapper, and the tests give them exactly that model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

from integrad import (
    IDGI,
    XRAI,
    BlurIntegratedGradients,
    DiscretizedIntegratedGradients,
    ExpectedGradients,
    GradientShap,
    GuidedIntegratedGradients,
    IntegratedGradients,
    InternalInfluence,
    LayerConductance,
    LayerGradientShap,
    LayerIntegratedGradients,
    LayerSequentialIntegratedGradients,
    NeuronConductance,
    NeuronIntegratedGradients,
    NoiseTunnel,
    PathIntegratedGradients,
    SequentialIntegratedGradients,
)
from integrad.paths import StraightLine
from integrad.probes import uncompiled

#: A fixed rule in one pass, the same under a budget that several metered chunks share, and ``"auto"``.
SETTINGS = [
    {"n_steps": 24},
    {"n_steps": 24, "memory_budget": "48KiB"},
    {"n_steps": "auto", "tolerance": 1e-3},
]
#: A fixed rule, in one pass and under a budget (for methods without ``"auto"``).
FIXED = SETTINGS[:2]
#: The settings of methods that choose their own points.
OWN = [{}, {"memory_budget": "48KiB"}]


@pytest.fixture(scope="module")
def models():
    """A ReLU network on ``(5, 1, 3, 4)`` images (a sequence of 3 rows of 4 along dim 2), eager and compiled."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        eager = nn.Sequential(
            nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
        ).eval()
    x = torch.rand(5, 1, 3, 4, generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    compiled = torch.compile(eager)
    yield eager, compiled, x
    torch._dynamo.reset()


def inner(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


def seeded(call):
    """``call`` after torch's and numpy's global generators are seeded (methods that draw from them)."""

    def run(model, x, **settings):
        torch.manual_seed(7)
        np.random.seed(7)
        return call(model, x, **settings)

    return run


def bent_points(x: torch.Tensor, k: int = 6) -> torch.Tensor:
    """``(k + 1, N, ...)`` points from 0 to ``x``, bent off the straight line in between."""
    alphas = torch.linspace(0, 1, k + 1).view(-1, 1, 1, 1, 1)
    bend = 0.1 * torch.sin(torch.pi * alphas) * torch.cos(torch.arange(12.0)).view(1, 1, 1, 3, 4)
    return alphas * x + bend


BACKGROUND = torch.rand(4, 1, 3, 4, generator=torch.Generator().manual_seed(2))
#: Three regions per image: the rows of the 3 x 4 grid.
SEGMENTS = torch.arange(12).view(3, 4).div(4, rounding_mode="floor").expand(5, 3, 4).contiguous()
#: A unit of the second hidden layer that is active on the examples.
NEURON = 6

#: name: (call, whether it puts hooks on a layer, the settings it runs with)
METHODS = {
    "IntegratedGradients": (lambda m, x, **s: IntegratedGradients(m).attribute(x, target=1, **s), False, SETTINGS),
    "NoiseTunnel": (
        lambda m, x, **s: NoiseTunnel(IntegratedGradients(m)).attribute(
            x, nt_samples=3, stdevs=0.1, generator=torch.Generator().manual_seed(3), target=0, **s
        ),
        False,
        SETTINGS,
    ),
    "PathIntegratedGradients": (
        lambda m, x, **s: PathIntegratedGradients(m).attribute(
            x, StraightLine((torch.full_like(x, 0.2),), (x,)), target=1, **s
        ),
        False,
        SETTINGS,
    ),
    "BlurIntegratedGradients": (
        lambda m, x, **s: BlurIntegratedGradients(m).attribute(x, target=1, max_sigma=2.0, n_steps=20, **s),
        False,
        OWN,
    ),
    "GuidedIntegratedGradients": (
        lambda m, x, **s: GuidedIntegratedGradients(m).attribute(x, target=1, n_steps=20, **s),
        False,
        OWN,
    ),
    "ExpectedGradients": (
        lambda m, x, **s: ExpectedGradients(m).attribute(x, BACKGROUND, target=2, n_steps=4, **s),
        False,
        OWN,
    ),
    "GradientShap": (
        seeded(lambda m, x, **s: GradientShap(m).attribute(x, BACKGROUND, n_samples=6, stdevs=0.1, target=0, **s)),
        False,
        OWN,
    ),
    "IDGI": (lambda m, x, **s: IDGI(IntegratedGradients(m)).attribute(x, target=1, **s), False, FIXED),
    "SequentialIntegratedGradients": (
        lambda m, x, **s: SequentialIntegratedGradients(m).attribute(x, target=1, sequence_dim=2, **s),
        False,
        SETTINGS,
    ),
    "DiscretizedIntegratedGradients": (
        lambda m, x, **s: DiscretizedIntegratedGradients(m).attribute(x, bent_points(x), target=1, **s),
        False,
        OWN,
    ),
    "XRAI": (lambda m, x, **s: XRAI(m).attribute(x, target=1, segments=SEGMENTS, **s), False, FIXED),
    "LayerIntegratedGradients": (
        lambda m, x, **s: LayerIntegratedGradients(m, inner(m)[3]).attribute(x, target=2, **s),
        True,
        SETTINGS,
    ),
    "NeuronIntegratedGradients": (
        lambda m, x, **s: NeuronIntegratedGradients(m, inner(m)[4]).attribute(x, NEURON, **s),
        True,
        SETTINGS,
    ),
    "LayerConductance": (
        lambda m, x, **s: LayerConductance(m, inner(m)[3]).attribute(x, target=2, **s),
        True,
        FIXED,
    ),
    "NeuronConductance": (
        lambda m, x, **s: NeuronConductance(m, inner(m)[4]).attribute(x, NEURON, target=2, **s),
        True,
        FIXED,
    ),
    "InternalInfluence": (
        lambda m, x, **s: InternalInfluence(m, inner(m)[3]).attribute(x, target=2, **s),
        True,
        FIXED,
    ),
    "LayerGradientShap": (
        seeded(
            lambda m, x, **s: LayerGradientShap(m, inner(m)[3]).attribute(
                x, BACKGROUND, n_samples=6, stdevs=0.1, target=0, **s
            )
        ),
        True,
        OWN,
    ),
    "LayerSequentialIntegratedGradients": (
        lambda m, x, **s: LayerSequentialIntegratedGradients(m, inner(m)[0]).attribute(
            x, target=1, sequence_dim=1, **s
        ),
        True,
        SETTINGS,
    ),
}


def run_compiled_before(compiled: nn.Module, x: torch.Tensor) -> None:
    """Inference as a service runs it before anyone explains: batches of several sizes, so that dynamo compiles
    one graph with a dynamic batch dimension, traced with no hooks on any layer."""
    with torch.no_grad():
        for rows in (3, 7, 11, 120):
            compiled(torch.rand((rows,) + tuple(x.shape[1:])))


@pytest.mark.parametrize("name", list(METHODS))
def test_compiled_model_gives_the_eager_attributions(models, name):
    eager, compiled, x = models
    attribute, hooks, settings_list = METHODS[name]
    run_compiled_before(compiled, x)
    for settings in settings_list:
        expected = attribute(eager, x, **settings)
        got = attribute(compiled, x, **settings)
        scale = float(expected.abs().max())
        assert scale > 0
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale, msg=lambda m, s=settings: f"{s}: {m}")
        assert got.dtype == expected.dtype == x.dtype
    if not hooks:
        assert counters["stats"]["unique_graphs"] > 0  # the model ran compiled


def test_the_passes_through_layer_hooks_run_the_model_inside_the_wrapper(models):
    eager, compiled, _ = models
    assert uncompiled(compiled) is eager
    assert LayerIntegratedGradients(compiled, eager[3]).hooked_forward is eager
    assert IntegratedGradients(compiled).forward_func is compiled  # what the user passed stays as it was

    def f(z):
        return eager(z).sum(1)

    assert uncompiled(torch.compile(f)) is f
    assert uncompiled(f) is f and uncompiled(eager) is eager


def test_a_model_compiled_in_place_runs_its_layer_hooks(models):
    eager, _, x = models
    in_place = torch.nn.Sequential(*eager)  # the same modules, compiled with Module.compile()
    in_place.compile()
    run_compiled_before(in_place, x)
    assert uncompiled(in_place) == in_place._call_impl
    got = LayerIntegratedGradients(in_place, in_place[3]).attribute(x, target=2, n_steps=24)
    expected = LayerIntegratedGradients(eager, eager[3]).attribute(x, target=2, n_steps=24)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_a_budget_on_a_compiled_model_meters_its_chunks_and_holds(models):
    # The first chunk under a budget runs with the meter's saved-tensor hooks; later chunks are sized from what it
    # measured. On a compiled model, the meter sees the tensors the compiled graph saves.
    eager, compiled, x = models
    torch._dynamo.reset()
    ig = IntegratedGradients(compiled)
    got = ig.attribute(x, target=2, n_steps=64, memory_budget="48KiB")
    report = ig.last_report
    assert report.chunks > 1 and report.rows == 64 * x.shape[0]
    expected = IntegratedGradients(eager).attribute(x, target=2, n_steps=64)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    learned = ig._row_shapes.values()[0].row_cost
    assert learned is not None and report.chunk_rows * learned <= 48 * 2**10


def test_a_layer_inside_a_submodule_compiled_on_its_own_is_refused_by_name(models):
    eager, _, x = models
    model = nn.Sequential(*eager[:2], nn.Sequential(*eager[2:5]), eager[5])
    model[2] = torch.compile(model[2])
    with pytest.raises(ValueError, match=r"layer \(Linear\) is inside '2', a submodule compiled on its own"):
        LayerIntegratedGradients(model, model[2]._orig_mod[1])
    in_place = nn.Sequential(*eager[:2], nn.Sequential(*eager[2:5]), eager[5])
    in_place[2].compile()
    with pytest.raises(ValueError, match="compiled on its own"):
        NeuronIntegratedGradients(in_place, in_place[2][2])
    # The compiled submodule itself, and layers outside it, run their hooks outside its graph.
    run_compiled_before(model, x)
    got = LayerIntegratedGradients(model, model[2]).attribute(x, target=2, n_steps=24)
    expected = LayerIntegratedGradients(eager, eager[4]).attribute(x, target=2, n_steps=24)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    got = LayerIntegratedGradients(model, model[1]).attribute(x, target=2, n_steps=24)
    expected = LayerIntegratedGradients(eager, eager[1]).attribute(x, target=2, n_steps=24)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
