"""One model and one attribution object shared by several threads (a web service's thread pool): every call gives
what it gives alone, its hooks act only on its own forward passes, its report reaches its own thread, and a call
that fails leaves the others and the model undisturbed.

Results are compared exactly: ``internal_batch_size`` is pinned, so every call runs the same chunks as the call made
alone, and the same float operations in the same order (one intra-op thread) give the same bits. The one test under
the default memory budget compares float64 results with a tolerance instead, since the chunk sizes a CPU speed
tuning picks from call to call change the order of the sums.
"""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from torch import nn

from integrad.explainers import IntegratedGradients as IntegratedGradientsExplainer
from integrad.methods.conductance import LayerConductance, NeuronConductance
from integrad.methods.integrated_gradients import IntegratedGradients
from integrad.methods.internal_influence import InternalInfluence
from integrad.methods.layer import LayerIntegratedGradients
from integrad.methods.neuron import NeuronIntegratedGradients
from integrad.methods.noise_tunnel import NoiseTunnel
from integrad.methods.sequential import LayerSequentialIntegratedGradients
from integrad.probes import LayerNotRun, replaced

from models import (
    TextClassifier,
    deep_mlp,
    no_hooks_left,
)

#: Tiny models run faster and steadier on one thread (see conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


THREADS = 8
CALLS = 20
ROWS = 16  # internal_batch_size of every call: fixed chunks, the same in every thread


def in_threads(call, threads: int = THREADS, calls: int = CALLS) -> list[list]:
    """``call(thread, k)`` for ``k < calls`` in each of ``threads`` threads started together; the results by thread.

    An exception in a thread is re-raised here (the first one), so that a failure names its cause.
    """
    start = threading.Barrier(threads)
    results: list[list] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def work(t: int) -> None:
        start.wait()
        try:
            for k in range(calls):
                results[t].append(call(t, k))
        except BaseException as error:  # re-raised in the main thread
            errors.append(error)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a thread did not finish"
    if errors:
        raise errors[0]
    return results


def assert_identical(got, expected, what: str) -> None:
    if isinstance(expected, (tuple, list)):
        assert type(got) is type(expected) and len(got) == len(expected), what
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_identical(g, e, f"{what}[{i}]")
        return
    assert got.dtype == expected.dtype and got.shape == expected.shape, what
    assert torch.equal(got, expected), f"{what}: max difference {float((got - expected).abs().max()):.3e}"


def batches(count: int, rows: int, features: int) -> list[torch.Tensor]:
    return [torch.randn(rows, features, generator=torch.Generator().manual_seed(i)) for i in range(count)]


def check_against_alone(run, cases: int) -> None:
    """Every call ``run(case)`` made from the threads (case ``(t + k) % cases``: each thread goes through every case,
    and at any moment the threads run different cases) equals the same call made alone."""
    alone = [run(case) for case in range(cases)]
    results = in_threads(lambda t, k: ((t + k) % cases, run((t + k) % cases)))
    for t, calls in enumerate(results):
        for k, (case, got) in enumerate(calls):
            assert_identical(got, alone[case], f"thread {t}, call {k} (case {case})")


# ---------------------------------------------------------------------------------------------------- methods
def test_integrated_gradients_with_deltas():
    model = deep_mlp().eval()
    inputs = batches(4, 3, 6)
    ig = IntegratedGradients(model)

    def run(case):
        return ig.attribute(
            inputs[case], target=case % 4, n_steps=16, internal_batch_size=ROWS, return_convergence_delta=True
        )

    check_against_alone(run, len(inputs))


def test_layer_integrated_gradients_on_a_hidden_layer():
    model = deep_mlp().eval()
    inputs = batches(4, 3, 6)
    lig = LayerIntegratedGradients(model, model[2])

    def run(case):
        return lig.attribute(
            inputs[case], target=case % 4, n_steps=16, internal_batch_size=ROWS, return_convergence_delta=True
        )

    check_against_alone(run, len(inputs))
    assert no_hooks_left(model)


def test_layer_integrated_gradients_on_token_embeddings_and_to_layer_input():
    model = TextClassifier().eval()
    ids = torch.tensor([[3, 5, 7, 11, 0, 0], [2, 9, 4, 0, 0, 0], [13, 14, 15, 16, 17, 18]])
    mask = (ids != 0).long()
    embedding = LayerIntegratedGradients(model, model.embed)
    hidden = LayerIntegratedGradients(model, model.hidden)
    layers = LayerIntegratedGradients(model, [model.embed, model.head])

    def run(case):
        rows = [case % 3, (case + 1) % 3]
        args = dict(target=case % 3, additional_forward_args=(mask[rows],), n_steps=8, internal_batch_size=ROWS)
        return (
            embedding.attribute(ids[rows], baselines=0, **args),
            hidden.attribute(ids[rows], baselines=0, attribute_to_layer_input=True, **args),
            layers.attribute(ids[rows], baselines=0, **args),
        )

    check_against_alone(run, 6)
    assert no_hooks_left(model)


def test_neuron_integrated_gradients():
    model = deep_mlp().eval()
    inputs = batches(4, 3, 6)
    nig = NeuronIntegratedGradients(model, model[2])

    def run(case):
        return nig.attribute(inputs[case], neuron_selector=case, n_steps=16, internal_batch_size=ROWS)

    check_against_alone(run, len(inputs))
    assert no_hooks_left(model)


def test_the_other_layer_methods():
    # Conductance, internal influence and layer Sequential IG put hooks on the layer as layer IG does. (Layer
    # GradientShap draws from numpy's and torch's global generators, which the threads share, so its results are
    # not reproducible from thread to thread; its hooks are those of layer IG.)
    model = deep_mlp().eval()
    inputs = batches(4, 3, 6)
    conductance = LayerConductance(model, model[2])
    neuron = NeuronConductance(model, model[2])
    influence = InternalInfluence(model, model[2])
    sequential = LayerSequentialIntegratedGradients(model, model[2])

    def run(case):
        x, target = inputs[case], case % 4
        settings = dict(n_steps=8, internal_batch_size=ROWS)
        return (
            conductance.attribute(x, target=target, return_convergence_delta=True, **settings),
            neuron.attribute(x, case, target=target, **settings),
            influence.attribute(x, target=target, **settings),
            sequential.attribute(x, target=target, **settings),
        )

    check_against_alone(run, len(inputs))
    assert no_hooks_left(model)


@pytest.mark.parametrize("wrapped", ["ig", "layer"])
def test_noise_tunnel_with_a_generator_per_call(wrapped):
    """Each call draws its noise from a generator of its own, seeded by its case: the same noise as alone, whatever
    the other threads draw meanwhile (torch's global generator would hand each call whatever the others left)."""
    model = deep_mlp().eval()
    inputs = batches(4, 3, 6)
    method = IntegratedGradients(model) if wrapped == "ig" else LayerIntegratedGradients(model, model[2])
    tunnel = NoiseTunnel(method)

    def run(case):
        return tunnel.attribute(
            inputs[case],
            nt_type=("smoothgrad", "smoothgrad_sq", "vargrad")[case % 3],
            nt_samples=3,
            nt_samples_batch_size=2,
            stdevs=0.3,
            generator=torch.Generator().manual_seed(case),
            target=case % 4,
            n_steps=8,
            internal_batch_size=ROWS,
        )

    check_against_alone(run, len(inputs))
    assert no_hooks_left(model)


@pytest.mark.parametrize("layer", [None, "2"])
def test_explainer(layer):
    model = deep_mlp().eval()
    inputs = batches(4, 3, 6)
    explainer = IntegratedGradientsExplainer(model, n_steps=16, layer=layer, internal_batch_size=ROWS)

    def run(case):
        return explainer.attribute(inputs[case], targets=torch.tensor([case % 4, 1, 2]))

    check_against_alone(run, len(inputs))
    assert no_hooks_left(model)


def test_explainer_with_seeded_noise():
    # noise_seed gives every call a generator of its own: the same noise as alone, whatever the other threads draw.
    model = deep_mlp().eval()
    inputs = batches(4, 3, 6)
    explainer = IntegratedGradientsExplainer(
        model, n_steps=8, noise_level=0.2, nt_samples=3, noise_seed=11, internal_batch_size=ROWS
    )

    def run(case):
        return explainer.attribute(inputs[case], targets=torch.tensor([case % 4, 1, 2]))

    check_against_alone(run, len(inputs))
    other = IntegratedGradientsExplainer(model, n_steps=8, noise_level=0.2, nt_samples=3, noise_seed=12)
    assert not torch.equal(other.attribute(inputs[0], targets=torch.tensor([0, 1, 2])), run(0))
    with pytest.raises(ValueError, match="noise_seed must be an int from 0"):
        IntegratedGradientsExplainer(model, noise_level=0.2, noise_seed=-1)


def test_default_memory_budget_float64():
    """Chunk sizes chosen from the memory budget and tuned across calls: the object's learned chunk sizes are taken
    out and put back by each call; results agree to float64 rounding."""
    model = deep_mlp().double().eval()
    inputs = [x.double() for x in batches(4, 3, 6)]
    ig = IntegratedGradients(model)
    lig = LayerIntegratedGradients(model, model[2])

    def run(case):
        return (ig.attribute(inputs[case], target=1, n_steps=32), lig.attribute(inputs[case], target=1, n_steps=32))

    alone = [run(case) for case in range(4)]
    for t, calls in enumerate(in_threads(lambda t, k: ((t + k) % 4, run((t + k) % 4)), calls=4)):
        for case, got in calls:
            torch.testing.assert_close(got, alone[case], rtol=1e-10, atol=1e-14, msg=f"thread {t}, case {case}")


# ---------------------------------------------------------------------------------------------------- state
def test_each_thread_reads_its_own_report():
    """``last_report`` after a call is that call's report in the calling thread, while other threads' calls finish
    meanwhile; a thread that has made no call reads the last report finished anywhere."""
    model = deep_mlp().eval()
    inputs = batches(4, 3, 6)
    ig = IntegratedGradients(model)
    lig = LayerIntegratedGradients(model, model[2])

    def call(t, k):
        method = ig if t % 2 else lig
        steps = 8 + t  # each thread its own number of steps, so reports differ between threads
        _, delta = method.attribute(
            inputs[k % 4], target=1, n_steps=steps, internal_batch_size=ROWS, return_convergence_delta=True
        )
        report = method.last_report
        return bool(torch.equal(report.delta, delta)) and report.steps.tolist() == [steps] * 3

    results = in_threads(call)
    assert all(all(calls) for calls in results)
    # The main thread made no call: it reads a report of one of the threads' calls.
    assert ig.last_report is not None and ig.last_report.steps[0] in [8 + t for t in range(1, THREADS, 2)]


def test_layer_expansion_switch_is_per_call():
    """A model that cannot run expanded at the layer (a mask from before the layer meets the expanded rows): calls
    that find it out switch it off for later calls, and none of them fails or differs from the call made alone."""
    model = TextClassifier().eval()
    ids = torch.tensor([[3, 5, 7, 11, 0, 0], [2, 9, 4, 0, 0, 0], [13, 14, 15, 16, 17, 18]])
    mask = (ids != 0).long()
    alone = LayerIntegratedGradients(model, model.embed, expand_at_layer=False).attribute(
        ids, baselines=0, target=2, additional_forward_args=(mask,), n_steps=16, internal_batch_size=6
    )
    shared = LayerIntegratedGradients(model, model.embed)

    def run(t, k):
        return shared.attribute(
            ids, baselines=0, target=2, additional_forward_args=(mask,), n_steps=16, internal_batch_size=6
        )

    for calls in in_threads(run, calls=3):
        for got in calls:
            torch.testing.assert_close(got, alone, rtol=1e-6, atol=1e-7)
    assert shared._expand["enabled"] is False


def test_batch_norm_statistics_restored_after_overlapping_calls():
    """A model left in training mode: every call puts the running statistics back; calls that overlap put back the
    statistics from before the first of them, not what another call had written meanwhile."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).train()
    before = {n: b.clone() for n, b in model.named_buffers()}
    ig = IntegratedGradients(model)
    inputs = batches(4, 5, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        in_threads(lambda t, k: ig.attribute(inputs[k % 4], target=0, n_steps=8, internal_batch_size=10), calls=5)
    for name, value in model.named_buffers():
        assert torch.equal(value, before[name]), name
    assert no_hooks_left(model)


# ---------------------------------------------------------------------------------------------------- failures
class FailsOnRequest(nn.Module):
    """``deep_mlp`` whose forward raises after the hidden layers when its extra argument says so."""

    def __init__(self):
        super().__init__()
        self.body = deep_mlp()

    def forward(self, x, fail):
        hidden = self.body[:4](x)
        if bool(fail.any()):
            raise ArithmeticError("the model refuses this batch")
        return self.body[4](hidden)


@pytest.mark.parametrize("kind", ["ig", "layer", "neuron"])
def test_a_failing_call_leaves_no_hooks_and_the_others_undisturbed(kind):
    model = FailsOnRequest().eval()
    inputs = batches(4, 3, 6)
    if kind == "ig":
        method = IntegratedGradients(model)
    elif kind == "layer":
        method = LayerIntegratedGradients(model, model.body[2])
    else:
        method = NeuronIntegratedGradients(model, model.body[2])

    def run(case, fail: bool):
        flags = torch.full((3,), fail)
        common = dict(additional_forward_args=(flags,), n_steps=12, internal_batch_size=ROWS)
        if kind == "neuron":
            # The neuron's forward stops at its layer, before the model can raise: it fails in its own selector.
            def selector(value):
                if fail:
                    raise ArithmeticError("the model refuses this batch")
                return value[:, case]

            return method.attribute(inputs[case], neuron_selector=selector, **common)
        return method.attribute(inputs[case], target=case % 4, **common)

    alone = [run(case, False) for case in range(4)]

    def call(t, k):
        if t % 2:  # every other thread fails on every call
            with pytest.raises(ArithmeticError, match="refuses"):
                run(k % 4, True)
            return None
        return k % 4, run(k % 4, False)

    for t, calls in enumerate(in_threads(call)):
        for k, outcome in enumerate(calls):
            if outcome is not None:
                assert_identical(outcome[1], alone[outcome[0]], f"thread {t}, call {k}")
    assert no_hooks_left(model)


def test_plain_forward_passes_in_other_threads_are_not_hooked():
    """While attribution calls replace and capture a layer in some threads, the model's ordinary forward passes in
    other threads (the same web service serving predictions) see the layer as it is."""
    model = deep_mlp().eval()
    inputs = batches(4, 3, 6)
    with torch.no_grad():
        predictions = [model(x) for x in inputs]
    lig = LayerIntegratedGradients(model, model[2])
    nig = NeuronIntegratedGradients(model, model[2])

    def call(t, k):
        x = inputs[k % 4]
        if t % 3 == 0:
            return lig.attribute(x, target=1, n_steps=16, internal_batch_size=ROWS) is not None
        if t % 3 == 1:
            return nig.attribute(x, neuron_selector=1, n_steps=16, internal_batch_size=ROWS) is not None
        with torch.no_grad():
            return bool(torch.equal(model(x), predictions[k % 4]))

    assert all(all(calls) for calls in in_threads(call))
    assert no_hooks_left(model)


def test_several_layers_hooked_from_many_threads():
    """Layers that feed each other, integrated one after the other: every call installs and removes hooks on three
    modules, in many threads at once."""
    model = deep_mlp().eval()
    x = batches(1, 2, 6)[0]
    lig = LayerIntegratedGradients(model, [model[0], model[2], model[4]])
    expected = lig.attribute(x, target=0, n_steps=4, internal_batch_size=8)
    for calls in in_threads(lambda t, k: lig.attribute(x, target=0, n_steps=4, internal_batch_size=8)):
        for got in calls:
            assert_identical(got, expected, "three layers")
    assert no_hooks_left(model)


class LayerInItsOwnThread(nn.Module):
    """Runs its hidden layer in a thread it starts itself, as ``nn.DataParallel`` runs replicas on several devices."""

    def __init__(self):
        super().__init__()
        self.body = deep_mlp()

    def forward(self, x):
        hidden = {}
        worker = threading.Thread(target=lambda: hidden.update(value=self.body[2](self.body[1](self.body[0](x)))))
        worker.start()
        worker.join()
        return self.body[4](self.body[3](hidden["value"]))


def test_a_layer_run_in_the_forwards_own_thread_is_refused_not_ignored():
    """Hooks act only where their call runs: a layer the forward runs in a thread of its own is out of their reach,
    which the layer methods say instead of returning attributions of a layer they could not replace."""
    model = LayerInItsOwnThread().eval()
    x = batches(1, 2, 6)[0]
    with pytest.raises(ValueError, match="threads of its own"):
        LayerIntegratedGradients(model, model.body[2]).attribute(x, target=0, n_steps=4)
    with pytest.raises(ValueError, match="threads of its own"):
        NeuronIntegratedGradients(model, model.body[2]).attribute(x, neuron_selector=0, n_steps=4)
    with pytest.raises(LayerNotRun, match="threads of its own"):
        with replaced([model.body[2]], [torch.zeros(2, 16)], use_input=False):
            model(x)
    assert no_hooks_left(model)
