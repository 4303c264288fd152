"""Profile one side of one workload: where does the time go?

    python -m benchmarks.profile mlp [--side integrad|captum|floor|integrad_budget] [--threads 2]
                                     [--reps 5] [--rows 25] [--cprofile]

Warms the callable up, then runs it ``--reps`` times under the torch profiler
and prints the operators sorted by self CPU time (``--cprofile`` prints the
Python-level cProfile view instead, sorted by cumulative time, which shows
interpreter overhead such as argument handling and hooks).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys

import torch

from . import workloads as W


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    p.add_argument("workload", choices=sorted(W.BUILDERS))
    p.add_argument("--side", default="integrad")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--rows", type=int, default=25, help="table rows to print")
    p.add_argument("--cprofile", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ig_mod, why = W.load_integrad()
    if ig_mod is None and args.side.startswith("integrad"):
        p.error(f"integrad is not importable: {why}")
    device = torch.device(args.device)
    case = W.BUILDERS[args.workload](ig_mod, device, True)
    fns = {"captum": case.captum, "integrad": case.integrad, "floor": case.floor, **case.extra}
    if fns.get(args.side) is None:
        p.error(f"--side must be one of {[k for k, v in fns.items() if v is not None]}")
    fn = fns[args.side]
    for _ in range(max(1, case.warmup)):
        fn()
    reps = args.reps * case.inner
    if args.cprofile:
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(reps):
            fn()
        pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(args.rows)
        print(s.getvalue())
        return 0
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(reps):
            fn()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"{args.workload} / {args.side}: {reps} calls")
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
