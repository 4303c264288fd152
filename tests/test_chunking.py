"""Chunking (:mod:`integrad.engine.chunking`): chunking never changes results, a memory budget bounds what one chunk
keeps alive, allocation failures shrink the chunk and retry it, any other failure propagates at once, and
``parse_bytes`` reads a budget.

A memory budget holds for the process too: the resident memory a call adds at most stays within 1.10 ×
``memory_budget``, and the meter that sizes the chunks counts what a chunk's forward and backward pass really hold.
Measured as a user would, in a child process per budget: one warm-up call, the allocator's free pages handed back
(``malloc_trim``) and the kernel's high-water mark reset (``/proc/self/clear_refs``), then the measured call; its
peak increase is the high-water mark over the resident set before it. The children run with glibc's default
settings, as users do (see ``benchmarks/budget.py``). The same child measures the call without a budget (every row
in one pass), which must need well over the budget, or the budget would not be what limits the call.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from integrad import IntegratedGradients, LayerIntegratedGradients, NeuronIntegratedGradients
from integrad.engine import chunking, evaluate, parse_bytes
from integrad.engine.chunking import ActivationMeter

from models import (
    STEPS,
    WIDE,
    B,
    Counting,
    RowLimited,
    deadline,
    deep_mlp,
    manual_ig,
    mlp,
    row_activation_bytes,
    saved_tensor_hooks_left,
)

#: Tiny models run faster and steadier on one thread (see conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------------- chunks
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


# ------------------------------------------------------------------------------------ the budget of a process
CHILD = textwrap.dedent(
    """
    import ctypes, gc, json, re, sys
    import torch
    from torch import nn
    from integrad.methods.integrated_gradients import IntegratedGradients

    def status(field):
        with open("/proc/self/status") as fh:
            return int(re.search(field + r":\\s+(\\d+)\\s+kB", fh.read()).group(1)) * 1024

    def peak_increase(call):
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = status("VmRSS")
        call()
        return status("VmHWM") - before

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 16 * 16, 10),
    ).eval()
    x = torch.randn(4, 3, 64, 64)
    budget = sys.argv[1]
    ig = IntegratedGradients(model)
    budgeted = lambda: ig.attribute(x, target=3, n_steps=50, memory_budget=budget)
    whole = lambda: ig.attribute(x, target=3, n_steps=50, internal_batch_size=200)
    budgeted()
    peak = peak_increase(budgeted)
    chunks = ig.last_report.chunks
    whole()
    print(json.dumps({"peak": peak, "chunks": chunks, "whole": peak_increase(whole)}))
    """
)


def measure(budget: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, budget], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and os.access("/proc/self/clear_refs", os.W_OK)),
    reason="the resident-set high-water mark can be reset on Linux only",
)
@pytest.mark.parametrize("budget, mib", [("24MiB", 24), ("64MiB", 64)])
def test_peak_resident_memory_of_a_call_stays_within_the_budget(budget, mib):
    result = measure(budget)
    limit = mib * 2**20
    assert result["whole"] > 1.5 * limit, result  # without the budget the call needs more: the budget is what limits
    assert result["chunks"] > 1, result
    assert result["peak"] <= 1.10 * limit, (result["peak"] / 2**20, result)


# -------------------------------------------------------------------------------------------------- the meter
def tensor_peak(fn) -> int:
    """The most bytes of CPU tensors alive at once during ``fn()`` beyond those alive before, from the allocation
    and free events the profiler records (an account independent of the meter's hooks)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, int(node.extra_fields.alloc_size)))
        stack.extend(node.children)
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak


class AttentionBlock(nn.Module):
    """Pre-norm self-attention and a GELU feed-forward with residual connections, mean-pooled."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.attention = nn.MultiheadAttention(width, 4, batch_first=True)
        self.feed = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)

    def forward(self, x):
        h = self.norm1(x)
        h = x + self.attention(h, h, h, need_weights=False)[0]
        return (h + self.feed(self.norm2(h))).mean(1)


def _models():
    torch.manual_seed(0)
    return {
        "mlp": (
            nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 10)),
            (64,),
        ),
        "cnn": (
            nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(32 * 8 * 8, 10),
            ),
            (3, 32, 32),
        ),
        "attention": (nn.Sequential(AttentionBlock(), nn.Linear(32, 10)), (24, 32)),
    }  # fmt: skip


@pytest.mark.parametrize("name", ["mlp", "cnn", "attention"])
@pytest.mark.parametrize("rows", [8, 32])
def test_the_meter_counts_what_forward_and_backward_hold(name, rows):
    # Of a chunk's forward and backward pass, the meter must not count less than the tensors really alive at the
    # worst moment (the backward pass's gradients included), nor so much more that chunks shrink for nothing.
    model, shape = _models()[name]
    model.eval()
    points = (torch.randn(rows, *shape, generator=torch.Generator().manual_seed(1)),)
    examples = torch.arange(rows)

    def probe(z, _):
        return model(z[0])[:, 1]

    evaluate._gradients(probe, points, examples, torch.float32, None)  # first-call allocations out of the way
    meter = ActivationMeter(None, rows=rows)
    peak = tensor_peak(lambda: evaluate._gradients(probe, points, examples, torch.float32, meter))
    assert peak <= meter.counted <= 1.5 * peak, (peak, meter.counted)
    # What the allocator kept besides the tensors (the process's resident memory) may add to that, up to its cap.
    assert meter.counted <= meter.used <= chunking.ALLOCATOR_SHARE_CAP * meter.counted
    assert meter._backward is not None and meter._backward.peak > meter.saved  # the backward pass was followed


@pytest.mark.parametrize("raised", [True, False])
def test_on_cuda_a_chunk_that_raises_the_allocators_high_water_mark_is_measured_by_it(monkeypatch, raised):
    # What no hook sees (a convolution's workspace) shows in the CUDA allocator's high-water mark, which the meter
    # reads without resetting it: when the chunk raised it, the chunk's peak is the new mark less what was allocated
    # at its start. The allocator is played here by two counters (the logic needs no GPU).
    marks = iter([50 * 2**20, 120 * 2**20 if raised else 50 * 2**20])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 10 * 2**20)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: next(marks))
    meter = ActivationMeter(None, rows=4, fixed=1024, device=torch.device("cuda", 0))
    meter.gradients([torch.zeros(4, 8)])
    assert meter.used == (110 * 2**20 if raised else 1024 + 3 * 4 * 8 * 4)


# ----------------------------------------------------------------------------------------------- OOM back-off
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


# ------------------------------------------------------------------------------------------------ parse_bytes
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
