"""A memory budget holds: the resident memory a call adds at most stays within 1.10 × ``memory_budget``, and the
meter that sizes the chunks counts what a chunk's forward and backward pass really hold.

Measured as a user would, in a child process per budget: one warm-up call, the allocator's free pages handed back
(``malloc_trim``) and the kernel's high-water mark reset (``/proc/self/clear_refs``), then the measured call; its
peak increase is the high-water mark over the resident set before it. The children run with glibc's default
settings, as users do (see ``benchmarks/budget.py``). The same child measures the call without a budget (every row
in one pass), which must need well over the budget, or the budget would not be what limits the call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from integrad.engine import chunking, evaluate
from integrad.engine.chunking import ActivationMeter

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


# ------------------------------------------------------------------------------------------------------ the meter
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
