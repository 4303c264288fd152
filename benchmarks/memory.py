"""Peak-memory measurement for the benchmarks.

CUDA exposes an allocator high-water mark (``torch.cuda.max_memory_allocated``);
the CPU allocator does not.  On CPU the peak is reconstructed from the
allocation events that the torch profiler records with ``profile_memory=True``:
every tensor allocation and free is an event carrying its signed size, so
replaying them in time order and taking the maximum of the running sum gives
the peak of live tensor bytes above the level at which measurement started.

Run ``python -m benchmarks.memory`` to self-check the measurement against known
allocations and against the process's resident-set high-water mark.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["peak_memory", "peak_rss_delta", "self_check", "format_bytes"]


def format_bytes(n: float | None) -> str:
    """Human-readable byte count (MiB based)."""
    if n is None:
        return "n/a"
    n = float(n)
    if abs(n) >= 1024**3:
        return f"{n / 1024**3:.2f} GiB"
    if abs(n) >= 1024**2:
        return f"{n / 1024**2:.1f} MiB"
    if abs(n) >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n:.0f} B"


def _allocation_events(prof) -> list[tuple[int, int]]:
    """(time_ns, signed bytes) for every CPU allocation/free the profiler saw."""
    from torch._C._profiler import _EventType

    events: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            fields = node.extra_fields
            if fields.device.type == "cpu":
                events.append((node.start_time_ns, int(fields.alloc_size)))
        stack.extend(node.children)
    events.sort(key=lambda e: e[0])
    return events


def _cpu_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    live = 0
    peak = 0
    for _, size in _allocation_events(prof):
        live += size
        if live > peak:
            peak = live
    return result, peak


def _cuda_peak(fn: Callable[[], Any], device: torch.device) -> tuple[Any, int]:
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - start
    return result, int(peak)


def peak_memory(fn: Callable[[], Any], device: str | torch.device = "cpu") -> tuple[Any, int]:
    """Run ``fn()`` once and return ``(result, peak_bytes)``.

    ``peak_bytes`` is the maximum, over the call, of live tensor bytes above the
    level at the start of the call (so tensors kept alive in ``result`` count,
    and tensors that existed before the call do not).

    Parameters
    ----------
    fn : callable
        Zero-argument callable to measure.
    device : str or torch.device
        ``"cpu"`` uses the profiler's allocation events; a CUDA device uses the
        CUDA caching allocator's statistics.

    Returns
    -------
    tuple
        ``(fn(), peak_bytes)``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_peak(fn, device)
    if device.type != "cpu":
        raise ValueError(f"device must be 'cpu' or a CUDA device, got {device!r}")
    return _cpu_peak(fn)


def _read_hwm() -> int:
    with open("/proc/self/status") as fh:
        text = fh.read()
    kb = int(re.search(r"VmHWM:\s+(\d+)\s+kB", text).group(1))
    rss = int(re.search(r"VmRSS:\s+(\d+)\s+kB", text).group(1))
    return kb * 1024, rss * 1024


def peak_rss_delta(fn: Callable[[], Any]) -> tuple[Any, int | None]:
    """Independent cross-check: growth of the resident-set high-water mark.

    Resets the kernel's high-water mark (``/proc/self/clear_refs``, value 5)
    and reports ``VmHWM - VmRSS(before)``.  This counts pages actually touched,
    includes allocator slack and non-tensor memory, so it only approximates the
    tensor peak; it is used to validate :func:`peak_memory`, not in the tables.
    Returns ``None`` for the size where the reset is not permitted.
    """
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return fn(), None
    _, rss0 = _read_hwm()
    result = fn()
    hwm, _ = _read_hwm()
    return result, hwm - rss0


def self_check(verbose: bool = True) -> bool:
    """Check :func:`peak_memory` on CPU against known sizes and the RSS peak."""
    ok = True
    mb = 1_000_000

    def one_tensor():
        return torch.ones(25 * mb)  # 100 MB of float32

    def transient():
        a = torch.ones(25 * mb)  # 100 MB
        b = a + 1  # 200 MB live
        del a  # 100 MB live
        c = torch.ones(10 * mb)  # 140 MB live
        return float(b[0] + c[0])  # nothing kept

    def model_step():
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(3, 32, 3, padding=1)
        x = torch.randn(64, 3, 64, 64, requires_grad=True)
        y = torch.relu(conv(x))
        (g,) = torch.autograd.grad(y.sum(), x)
        return g

    checks = [
        ("100 MB tensor kept", one_tensor, 100 * mb),
        ("transient 200 MB peak, nothing kept", transient, 200 * mb),
    ]
    for name, fn, expected in checks:
        _, peak = peak_memory(fn)
        good = abs(peak - expected) <= 0.01 * expected + 64 * 1024
        ok &= good
        if verbose:
            print(
                f"[memory self-check] {name}: measured {peak / mb:.2f} MB, expected {expected / mb:.0f} MB"
                f" -> {'ok' if good else 'MISMATCH'}"
            )
    # Conv forward/backward: peak from the profiler vs peak resident growth.
    _, peak = peak_memory(model_step)
    _, rss = peak_rss_delta(model_step)
    if rss is not None:
        good = abs(peak - rss) <= 0.15 * max(peak, rss)
        ok &= good
        if verbose:
            print(
                f"[memory self-check] conv fwd+bwd: profiler {peak / mb:.1f} MB, RSS high-water {rss / mb:.1f} MB"
                f" -> {'ok' if good else 'MISMATCH'}"
            )
    return ok


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    raise SystemExit(0 if self_check() else 1)
