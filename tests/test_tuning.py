"""What an attribution object learns about path rows of one shape across calls (:mod:`integrad.engine.tuning`): the
cost per row that sizes later chunks, the memory of the points kept for the next call, and the chunk size that runs
fastest; none of it changes a result."""

from __future__ import annotations

import pytest
import torch

from integrad import IntegratedGradients
from integrad.engine import chunking, parse_bytes, tuning
from integrad.engine import evaluate as engine

from models import STEPS, B, manual_ig, row_activation_bytes

#: Tiny models run faster and steadier on one thread (see conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------- cost per row
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


# ----------------------------------------------------------------------------------------- the points' memory
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


# ------------------------------------------------------------------------ cost per row under a default budget
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


# ------------------------------------------------------------------------------------- the fastest chunk size
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
