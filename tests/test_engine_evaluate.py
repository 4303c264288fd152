"""The engine: chunking never changes results, a memory budget bounds what one chunk keeps alive, allocation
failures shrink the chunk and retry it, and any other failure propagates at once."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from integrad import IntegratedGradients, LayerIntegratedGradients, NeuronIntegratedGradients
from integrad.engine import chunking, parse_bytes, tuning
from integrad.engine import evaluate as engine
from integrad.paths import StraightLine

from models import (
    Counting,
    RowLimited,
    TwoInputs,
    deadline,
    deep_mlp,
    manual_ig,
    mlp,
    row_activation_bytes,
    saved_tensor_hooks_left,
)

#: Tiny models run faster and steadier on one thread (see conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

B, STEPS = 4, 10  # 40 path rows per call


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(3)
    return deep_mlp(hidden=32), torch.randn(B, 6, generator=g), torch.randn(1, 6, generator=g)


def _methods(model):
    """kind -> (method object, call(method, x, base, **chunking))."""
    return {
        "ig": (
            IntegratedGradients(model),
            lambda m, x, base, **kw: m.attribute(
                x, baselines=base, target=torch.tensor([0, 1, 2, 3]), n_steps=STEPS, return_convergence_delta=True, **kw
            ),
        ),
        "layer": (
            LayerIntegratedGradients(model, model[2]),
            lambda m, x, base, **kw: m.attribute(
                x, baselines=base, target=3, n_steps=STEPS, return_convergence_delta=True, **kw
            ),
        ),
        "layer_list": (
            LayerIntegratedGradients(model, [model[0], model[2]]),
            lambda m, x, base, **kw: m.attribute(x, baselines=base, target=1, n_steps=STEPS, **kw),
        ),
        "neuron": (
            NeuronIntegratedGradients(model, model[2]),
            lambda m, x, base, **kw: m.attribute(x, (slice(0, 5),), baselines=base, n_steps=STEPS, **kw),
        ),
    }


def _flat(result):
    out = []
    for part in result if isinstance(result, (tuple, list)) else [result]:
        out.extend(_flat(part) if isinstance(part, (tuple, list)) else [part])
    return out


CHUNKINGS = [
    dict(internal_batch_size=1),
    dict(internal_batch_size=7),
    dict(internal_batch_size=B),
    dict(internal_batch_size=10_000),
    dict(memory_budget="4KiB"),
    dict(memory_budget="4GiB"),
]


@pytest.mark.parametrize("kind", ["ig", "layer", "layer_list", "neuron"])
@pytest.mark.parametrize("chunking", CHUNKINGS, ids=lambda c: f"{next(iter(c))}={next(iter(c.values()))}")
def test_chunked_equals_unchunked(data, kind, chunking):
    model, x, base = data
    method, run = _methods(model)[kind]
    whole = _flat(run(method, x, base, internal_batch_size=B * STEPS))
    assert method.last_report.chunks == 1
    chunked = _flat(run(method, x, base, **chunking))
    report = method.last_report
    size = chunking.get("internal_batch_size")
    if size is not None:
        assert report.chunk_rows == min(size, B * STEPS)
        assert report.chunks == -(-B * STEPS // size)
    elif chunking["memory_budget"] == "4KiB":
        assert report.chunks > 1
    assert report.rows == B * STEPS
    assert len(whole) == len(chunked)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_chunked_equals_reference_and_report_counts_rows(data):
    model, x, base = data
    ig = IntegratedGradients(model)
    got = ig.attribute(x, baselines=base, target=2, n_steps=STEPS, internal_batch_size=7)
    twin = copy.deepcopy(model).double()
    ref = manual_ig(lambda z: twin(z)[:, 2], x, base, n=STEPS)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)
    report = ig.last_report
    assert report.rows == B * STEPS
    assert report.chunk_rows == 7
    assert report.chunks == -(-B * STEPS // 7)
    assert torch.equal(report.steps, torch.full((B,), STEPS))


def test_internal_batch_size_bounds_every_forward_pass():
    model = Counting(mlp())
    x = torch.randn(B, 6)
    IntegratedGradients(model).attribute(
        x, target=0, n_steps=STEPS, internal_batch_size=7, return_convergence_delta=True
    )
    assert max(model.sizes) <= 7
    assert sum(model.sizes[: -(-B * STEPS // 7)]) == B * STEPS


def test_layer_ig_forward_passes_respect_internal_batch_size():
    # The forward that records the layer's values at inputs and baselines is a forward pass like any other: it
    # must not exceed the rows per pass the caller allowed.
    model = Counting(mlp())
    x = torch.randn(B, 6)
    LayerIntegratedGradients(model, model.inner[0]).attribute(x, target=0, n_steps=STEPS, internal_batch_size=3)
    assert max(model.sizes) <= 3, f"forward passes of {sorted(set(model.sizes))} rows"


# ---------------------------------------------------------------------------------------------------- budgets
WIDE = 512


@pytest.fixture(scope="module")
def wide():
    torch.manual_seed(0)
    return mlp(n_in=16, hidden=WIDE, n_out=3), torch.randn(6, 16)


@pytest.mark.parametrize("budget", ["96KiB", "256KiB", "1MiB"])
def test_memory_budget_bounds_the_activations_of_a_chunk(wide, budget):
    model, x = wide
    per_row = row_activation_bytes(model, x)
    assert per_row >= WIDE * 4  # the hidden activation alone
    ig = IntegratedGradients(model)
    with deadline(6, f"attribute(memory_budget={budget!r})"):
        got = ig.attribute(x, target=1, n_steps=40, memory_budget=budget)
    report = ig.last_report
    assert report.chunk_rows * per_row <= parse_bytes(budget)
    assert report.rows == 40 * x.shape[0]
    torch.testing.assert_close(
        got, ig.attribute(x, target=1, n_steps=40, internal_batch_size=240), rtol=1e-5, atol=1e-6
    )


def test_later_calls_size_their_first_chunk_from_what_earlier_calls_measured(wide, monkeypatch):
    # Before anything is measured, the first chunk is kept small; a later call on rows of the same shape starts
    # from the cost per row measured before, so it needs fewer chunks, and still none over the budget.
    model, x = wide
    per_row = row_activation_bytes(model, x)
    ig = IntegratedGradients(model)
    meters = []
    real = engine.ActivationMeter
    monkeypatch.setattr(engine, "ActivationMeter", lambda *a, **k: meters.append(real(*a, **k)) or meters[-1])
    first = ig.attribute(x, target=1, n_steps=40, memory_budget="2MiB")
    cold = ig.last_report
    # Only the first chunk is metered; the next is sized from what it measured.
    assert len(meters) == 1 and cold.chunks == 2
    second = ig.attribute(x, target=1, n_steps=40, memory_budget="2MiB")
    warm = ig.last_report
    assert len(meters) == 1, "a later call on rows of the same shape needs no meter"
    assert warm.chunks < cold.chunks, (cold, warm)
    assert warm.chunk_rows * per_row <= parse_bytes("2MiB")
    # What fits is what fits: the same number of chunks as a fresh object that knew nothing needs at least.
    assert warm.chunks >= -(-warm.rows // (parse_bytes("2MiB") // per_row))
    torch.testing.assert_close(second, first, rtol=1e-5, atol=1e-6)
    fresh = IntegratedGradients(model)
    fresh.attribute(x, target=1, n_steps=40, memory_budget="2MiB")
    assert fresh.last_report.chunks == cold.chunks


def _point_buffers(ig):
    """The points' memory each row shape keeps between calls (None where none is kept)."""
    return [m.point_buffers for m in ig._row_shapes.values()]


def test_the_points_memory_is_reused_by_later_calls_and_never_returned(data):
    model, x, base = data
    ig = IntegratedGradients(model)
    inputs_before = x.clone()
    first = ig.attribute(x, baselines=base, target=1, n_steps=STEPS)
    (kept,) = _point_buffers(ig)
    assert kept is not None and kept[0].shape == (B * STEPS, 6)
    address = kept[0].data_ptr()
    second = ig.attribute(x, baselines=base, target=1, n_steps=STEPS)
    (again,) = _point_buffers(ig)
    assert again[0].data_ptr() == address, "the second call wrote its points into the same memory"
    # The results are the same, and no result shares memory with the kept points: a third call on other
    # inputs, which overwrites them, changes neither result nor the inputs.
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    keep = first.clone()
    ig.attribute(2 * x, baselines=base, target=1, n_steps=STEPS)
    assert torch.equal(first, keep) and torch.equal(x, inputs_before)
    for result in (first, second):
        storage = result.untyped_storage().data_ptr()
        assert storage != address
    exact = manual_ig(lambda z: model(z.float())[:, 1], x, base, STEPS).float()
    torch.testing.assert_close(first, exact, rtol=1e-5, atol=1e-6)


def test_the_points_memory_is_not_kept_when_large(data, monkeypatch):
    model, x, base = data
    monkeypatch.setattr(tuning, "POINTS_KEPT_BYTES", B * STEPS * 6 * 4 - 1)  # one byte less than the points
    ig = IntegratedGradients(model)
    ig.attribute(x, baselines=base, target=1, n_steps=STEPS)
    assert _point_buffers(ig) == [None]
    monkeypatch.setattr(tuning, "POINTS_KEPT_BYTES", B * STEPS * 6 * 4)
    ig.attribute(x, baselines=base, target=1, n_steps=STEPS)
    assert _point_buffers(ig)[0] is not None


def test_a_model_that_raises_leaves_no_points_memory_in_use(data):
    model, x, base = data
    ig = IntegratedGradients(model)
    ig.attribute(x, baselines=base, target=1, n_steps=STEPS)

    class Boom(RuntimeError):
        pass

    def fail(_module, _inputs):
        raise Boom("model failed")

    handle = model[0].register_forward_pre_hook(fail)
    try:
        with pytest.raises(Boom):
            ig.attribute(x, baselines=base, target=1, n_steps=STEPS)
    finally:
        handle.remove()
    # The next call works and agrees with a fresh object.
    torch.testing.assert_close(
        ig.attribute(x, baselines=base, target=1, n_steps=STEPS),
        IntegratedGradients(model).attribute(x, baselines=base, target=1, n_steps=STEPS),
        rtol=0,
        atol=0,
    )


def test_what_chunks_learn_survives_a_default_budget_that_follows_the_free_memory(wide, monkeypatch):
    # The default budget is a share of the free memory, different at every call here; the cost per row measured
    # by the first call still sizes the next, which needs no meter.
    model, x = wide
    budgets = iter([2**24 + k * 4096 for k in range(10)])
    monkeypatch.setattr(chunking, "default_budget", lambda device: next(budgets))
    meters = []
    real = engine.ActivationMeter
    monkeypatch.setattr(engine, "ActivationMeter", lambda *a, **k: meters.append(real(*a, **k)) or meters[-1])
    ig = IntegratedGradients(model)
    for _ in range(3):
        ig.attribute(x, target=1, n_steps=40)
    assert len(meters) == 1 and len(ig._row_shapes) == 1


def _injected_clock(monkeypatch, seconds_per_row):
    """The engine's clock advances by ``n × seconds_per_row(n)`` for each chunk of ``n`` rows, and only then."""
    clock = [0.0]
    real = engine._gradients

    def timed(probe, points, *rest):
        n = points[0].shape[0]
        clock[0] += n * seconds_per_row(n)
        return real(probe, points, *rest)

    monkeypatch.setattr(engine, "_gradients", timed)
    monkeypatch.setattr(engine, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: clock[0])}))


def test_chunk_size_tuning_halves_while_faster_and_keeps_the_best(wide, monkeypatch):
    # A clock of our own: a chunk of n rows takes n × per_row(n), faster per row down to 60 rows, and 30 rows gain
    # less than SPEED_GAIN. Calls alternate between the best size so far and half of it until each has run three
    # times (the first call, metered, and the second, still warming up, do not count).
    model, x = wide
    _injected_clock(monkeypatch, {240: 1.0, 120: 0.7, 60: 0.5, 30: 0.49}.__getitem__)
    ig = IntegratedGradients(model)
    sizes, results = [], []
    for _ in range(22):
        results.append(ig.attribute(x, target=1, n_steps=40, memory_budget="64MiB"))
        sizes.append(ig.last_report.chunk_rows)
    assert sizes == [
        240,
        240,
        120,
        240,
        120,
        240,
        120,
        240,
        60,
        120,
        60,
        120,
        60,
        120,
        30,
        60,
        30,
        60,
        30,
        60,
        60,
        60,
    ], sizes
    for got in results[1:]:
        torch.testing.assert_close(got, results[0], rtol=1e-5, atol=1e-6)
    # An explicit internal_batch_size is never tuned.
    fixed = IntegratedGradients(model)
    for _ in range(5):
        fixed.attribute(x, target=1, n_steps=40, internal_batch_size=240)
        assert fixed.last_report.chunk_rows == 240


def test_chunk_size_tuning_is_not_fooled_by_a_machine_getting_faster(wide, monkeypatch):
    # The first three unmetered calls run 50% slower per row (a process warming up), whatever their size; halving
    # the chunks changes nothing. Timed one size after the other, or counting the first call of the process, the
    # half would look faster and be kept; alternating the two sizes from the second, it is not.
    model, x = wide
    calls = [0]
    _injected_clock(monkeypatch, lambda n: 1.5 if calls[0] in (1, 2, 3) else 1.0)
    ig = IntegratedGradients(model)
    sizes = []
    for _ in range(11):
        ig.attribute(x, target=1, n_steps=40, memory_budget="64MiB")
        sizes.append(ig.last_report.chunk_rows)
        calls[0] += 1
    assert sizes[-3:] == [240, 240, 240], sizes
    (memory,) = ig._row_shapes.values()
    assert memory.settled and memory.cap == 240


def test_chunk_size_tuning_settles_when_rows_are_spread_below_the_size_it_tries(wide, monkeypatch):
    # 210 rows in steps of 6: half of 210 is tried as a cap of 102 rows, which spreads the rows over three chunks of
    # 72; a cap of 48 gives five of 42. Chunks over 100 rows run slower per row; 42 rows gain nothing over 72.
    model, x = wide
    _injected_clock(monkeypatch, lambda n: 1.0 if n > 100 else 0.7)
    ig = IntegratedGradients(model)
    sizes = []
    for _ in range(16):
        ig.attribute(x, target=1, n_steps=35, memory_budget="64MiB")
        sizes.append(ig.last_report.chunk_rows)
    assert sizes == [210, 210, 72, 210, 72, 210, 72, 210, 42, 72, 42, 72, 42, 72, 72, 72], sizes
    (memory,) = ig._row_shapes.values()
    assert memory.settled


def test_chunk_size_tuning_ignores_calls_whose_budget_cuts_their_chunks(wide, monkeypatch):
    # Calls with a budget for about 20 rows run their small chunks fast per row. Counted with the calls under a
    # larger budget, they would settle the chunk size of those at theirs, or make every size look as fast. Under the
    # larger budget, 120 rows are faster per row than 240, and 60 no faster than 120.
    model, x = wide
    _injected_clock(monkeypatch, lambda n: 1.0 if n >= 200 else 0.7 if n >= 100 else 0.69 if n >= 30 else 0.1)
    ig = IntegratedGradients(model)
    tight = int(20 * row_activation_bytes(model, x))
    sizes = []
    for _ in range(18):
        ig.attribute(x, target=1, n_steps=40, memory_budget="64MiB")
        sizes.append(ig.last_report.chunk_rows)
        ig.attribute(x, target=1, n_steps=40, memory_budget=tight)
        assert ig.last_report.chunk_rows < 30
    assert sizes[-3:] == [120, 120, 120], sizes


def test_smaller_budget_gives_more_smaller_chunks(wide):
    model, x = wide
    reports = []
    for budget in ["2MiB", "256KiB", "96KiB"]:
        ig = IntegratedGradients(model)
        with deadline(6, f"attribute(memory_budget={budget!r})"):
            ig.attribute(x, target=1, n_steps=40, memory_budget=budget)
        reports.append(ig.last_report)
    rows = [r.chunk_rows for r in reports]
    chunks = [r.chunks for r in reports]
    assert rows[0] > rows[1] > rows[2], rows
    assert chunks[0] < chunks[1] < chunks[2], chunks


def test_memory_budget_with_layer_and_neuron(wide):
    model, x = wide
    per_row = row_activation_bytes(model, x)
    for method, call in [
        (
            LayerIntegratedGradients(model, model[1]),
            lambda m: m.attribute(x, target=0, n_steps=30, memory_budget="128KiB"),
        ),
        (NeuronIntegratedGradients(model, model[1]), lambda m: m.attribute(x, 4, n_steps=30, memory_budget="128KiB")),
    ]:
        with deadline(6, "attribute(memory_budget='128KiB')"):
            call(method)
        assert method.last_report.chunk_rows * per_row <= 128 * 1024
        assert method.last_report.chunks > 1


def test_budget_smaller_than_one_row_runs_one_row_at_a_time_or_says_so(wide):
    # Fewer bytes than a single row needs: either one row per pass (the least the engine can do) with a warning
    # naming memory_budget, or an error naming it. It must not loop forever.
    model, x = wide
    ig = IntegratedGradients(model)
    with deadline(6, "attribute(memory_budget=1)"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            got = ig.attribute(x[:2], target=1, n_steps=4, memory_budget=1)
        except (ValueError, RuntimeError, MemoryError) as error:
            assert "memory_budget" in str(error)
        else:
            assert ig.last_report.chunk_rows == 1
            assert any("memory_budget" in str(w.message) for w in caught)
            torch.testing.assert_close(got, ig.attribute(x[:2], target=1, n_steps=4))
    assert not saved_tensor_hooks_left()


def test_parameters_do_not_count_against_the_budget():
    # A model whose weights (1 MiB) dwarf its per-row activations (~4 KiB): the weights exist whatever the chunk
    # size, so a budget of 256 KiB still allows many rows per pass. Autograd saves views of the weights (the
    # transposed weight of a Linear), which are not activations either.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 1024), nn.Tanh(), nn.Linear(1024, 2))
    x = torch.randn(4, 256)
    per_row = row_activation_bytes(model, x)
    assert per_row < 8 * 1024
    ig = IntegratedGradients(model)
    with deadline(6, "attribute(memory_budget='256KiB') on a model with 1 MiB of weights"):
        got = ig.attribute(x, target=1, n_steps=20, memory_budget="256KiB")
    assert ig.last_report.chunk_rows * per_row <= 256 * 1024
    assert ig.last_report.chunk_rows >= 8
    torch.testing.assert_close(got, ig.attribute(x, target=1, n_steps=20), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- OOM back-off
ERRORS = {
    "cuda_oom": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "cpu_alloc": lambda: RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes."),
    "memory_error": lambda: MemoryError(),
}


@pytest.mark.parametrize("error", list(ERRORS))
@pytest.mark.parametrize("limit", [1, 13, 30])
def test_out_of_memory_shrinks_the_chunk_and_retries(error, limit):
    inner = mlp()
    x = torch.randn(B, 6)
    model = RowLimited(inner, limit, ERRORS[error])
    ig = IntegratedGradients(model)
    got, delta = ig.attribute(x, target=2, n_steps=STEPS, return_convergence_delta=True)
    assert model.failures > 0
    assert ig.last_report.chunk_rows <= limit
    assert ig.last_report.rows == B * STEPS
    ref_ig = IntegratedGradients(inner)
    ref, ref_delta = ref_ig.attribute(
        x, target=2, n_steps=STEPS, return_convergence_delta=True, internal_batch_size=B * STEPS
    )
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(delta, ref_delta, rtol=1e-4, atol=1e-5)
    assert not saved_tensor_hooks_left()


def test_out_of_memory_with_auto_steps():
    inner = mlp()
    x = torch.randn(3, 6)
    model = RowLimited(inner, 10, ERRORS["cuda_oom"])
    ig = IntegratedGradients(model)
    got = ig.attribute(x, target=0, n_steps="auto", tolerance=1e-4)
    assert ig.last_report.chunk_rows <= 10 and model.failures > 0
    ref_ig = IntegratedGradients(inner)
    torch.testing.assert_close(got, ref_ig.attribute(x, target=0, n_steps="auto", tolerance=1e-4), rtol=1e-5, atol=1e-6)
    assert torch.equal(ig.last_report.steps, ref_ig.last_report.steps)


@pytest.mark.parametrize("kind", ["neuron", "layer"])
def test_out_of_memory_back_off_for_layer_and_neuron(kind):
    inner = deep_mlp()
    x = torch.randn(4, 6)
    model = RowLimited(inner, 3, ERRORS["cuda_oom"])
    if kind == "neuron":
        got = NeuronIntegratedGradients(model, inner[2]).attribute(x, 1, n_steps=10)
        ref = NeuronIntegratedGradients(inner, inner[2]).attribute(x, 1, n_steps=10)
    else:
        got = LayerIntegratedGradients(model, inner[2]).attribute(x, target=1, n_steps=10)
        ref = LayerIntegratedGradients(inner, inner[2]).attribute(x, target=1, n_steps=10)
    assert model.failures > 0
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("limit", [1, 3, 13])
def test_a_size_that_ran_out_of_memory_is_not_tried_again_and_again(limit):
    # Each failed attempt costs a partial forward pass (on a GPU: allocations up to the failure). Once a size has
    # failed, the engine should not grow back to it for every chunk: the failures stay logarithmic in the rows.
    model = RowLimited(mlp(), limit, ERRORS["cuda_oom"])
    total = 8 * 40
    IntegratedGradients(model).attribute(torch.randn(8, 6), target=0, n_steps=40)
    assert model.failures <= 2 * math.ceil(math.log2(total)), f"{model.failures} failed attempts for {total} rows"


@pytest.mark.parametrize("error", list(ERRORS))
def test_out_of_memory_for_a_single_row_is_raised(error):
    model = RowLimited(mlp(), 0, ERRORS[error])
    with pytest.raises(type(ERRORS[error]())) as info:
        IntegratedGradients(model).attribute(torch.randn(3, 6), target=0, n_steps=4)
    assert str(info.value) == str(ERRORS[error]())
    # It halves down to one row and then gives up: a bounded number of attempts.
    assert model.calls <= 1 + (3 * 4).bit_length() + 1
    assert not saved_tensor_hooks_left()


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad value inside forward"),
        RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
        KeyError("missing"),
        TypeError("forward() got an unexpected keyword"),
    ],
)
def test_ordinary_model_errors_are_never_retried(error):
    calls = []

    def forward(z):
        calls.append(z.shape[0])
        raise error

    with pytest.raises(type(error)) as info:
        IntegratedGradients(forward).attribute(torch.randn(3, 6), target=0, n_steps=20)
    assert info.value is error
    assert len(calls) == 1
    assert not saved_tensor_hooks_left()


def test_auto_steps_leave_the_budget_room_for_the_gradients_they_keep(monkeypatch):
    # n_steps="auto" keeps gradients between its rounds (up to half the budget in the piecewise-linear phase): the
    # chunks evaluated meanwhile get only what is left, so that the two together stay within the budget.
    torch.manual_seed(0)
    model = mlp(n_in=256, hidden=64, n_out=3, act=nn.ReLU)
    x = torch.rand(8, 256)
    budget = parse_bytes("2MiB")
    seen = []
    real = chunking.Chunking.record

    def record(self, rows):
        seen.append((rows, self.held, self.row_cost))
        return real(self, rows)

    monkeypatch.setattr(chunking.Chunking, "record", record)
    ig = IntegratedGradients(model)
    got = ig.attribute(x, target=1, n_steps="auto", tolerance=1e-3, memory_budget=budget)
    assert max(held for _, held, _ in seen) > budget // 8  # the rounds do keep gradients
    sized = [(rows, held, cost) for rows, held, cost in seen if cost is not None and rows > 1]
    assert sized and all(rows * cost <= max(budget - held, budget // 4) for rows, held, cost in sized), sized
    # The budget decides which examples keep gradients (others go on with panels): both meet the tolerance.
    unlimited = IntegratedGradients(model).attribute(x, target=1, n_steps="auto", tolerance=1e-3)
    assert bool(((got - unlimited).abs().sum(1) <= 2e-3 * unlimited.abs().sum(1)).all())


def test_budget_and_oom_together_never_exceed_the_failing_size(wide):
    model, x = wide
    limited = RowLimited(model, 9, ERRORS["cpu_alloc"])
    ig = IntegratedGradients(limited)
    with deadline(6, "attribute(memory_budget='2MiB')"):
        got = ig.attribute(x, target=0, n_steps=10, memory_budget="2MiB")
    assert ig.last_report.chunk_rows <= 9
    torch.testing.assert_close(got, IntegratedGradients(model).attribute(x, target=0, n_steps=10), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- dtypes
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


# ---------------------------------------------------------------------------------------------------- parse_bytes
@pytest.mark.parametrize(
    "text,expected",
    [
        ("256MiB", 256 * 2**20),
        ("1.5GB", 1_500_000_000),
        ("512k", 512 * 1024),
        ("512K", 512 * 1024),
        ("2 GiB", 2 * 2**30),
        ("10kb", 10_000),
        ("3M", 3 * 2**20),
        ("1g", 2**30),
        ("100", 100),
        ("100B", 100),
        (" 64 MB ", 64_000_000),
        (".5KiB", 512),
        (4096, 4096),
        (1, 1),
    ],
)
def test_parse_bytes(text, expected):
    got = parse_bytes(text)
    assert got == expected and isinstance(got, int)


def test_parse_bytes_rejects():
    for bad in ["", "MB", "12 parsecs", "1e6", "-1MB", "1,000"]:
        with pytest.raises(ValueError, match="memory_budget"):
            parse_bytes(bad)
    for bad in [-4, 0, "0MiB"]:
        with pytest.raises(ValueError, match="positive"):
            parse_bytes(bad)
    for bad in [1.5, None, True, b"1MB"]:
        with pytest.raises(TypeError, match="memory_budget"):
            parse_bytes(bad)


def test_an_input_the_output_does_not_depend_on_gets_zeros():
    model = mlp()
    x, unused = torch.randn(3, 6), torch.randn(3, 2)
    a, b = IntegratedGradients(lambda z, u: model(z)).attribute((x, unused), target=1, n_steps=8, internal_batch_size=5)
    assert torch.equal(b, torch.zeros_like(unused))
    torch.testing.assert_close(a, IntegratedGradients(model).attribute(x, target=1, n_steps=8))


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_middle"])
def test_convergence_delta_end_points_take_one_forward_pass(method):
    """Rules without both end points evaluate F(x′) and F(x) for the whole batch in one forward pass, and
    compute_convergence_delta likewise: never one example at a time."""
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    x = torch.randn(5, 6)
    sizes = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    ig = IntegratedGradients(model)
    attributions, delta = ig.attribute(x, target=1, n_steps=8, method=method, return_convergence_delta=True)
    assert sizes == [40, 10]  # the path in one chunk, then both end points together
    sizes.clear()
    again = ig.compute_convergence_delta(attributions, torch.zeros_like(x), x, target=1)
    assert sizes == [10]
    torch.testing.assert_close(again, delta)


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
